"""Who is who across a batch: the same voice linked across files, enrolled voices named.

:func:`identify` works on the speaker embeddings the diarizer's results carry (one centroid per
speaker of each transcript); no model is loaded for it. It builds on the linking and naming of
:mod:`modelmora.speech.speakers` and so imports numpy: the batch engine runs it in a worker of
the ``speakers`` adapter (:class:`modelmora.models.voiceprint.SpeakersAdapter`), never in the
orchestrator. ``modelmora.workflow.speakers.identify`` is this same function, for calling in
the current process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelmora.speech.linking import link_speakers
from modelmora.speech.speakers import (
    MIN_SPEAKER_S,
    SpeakerLibrary,
    SpeakerMatch,
    match_speakers,
    thresholds_for,
)
from modelmora.speech.transcript import Transcript

__all__ = ["Identification", "identify", "talk_seconds"]


@dataclass
class Identification:
    """What :func:`identify` did to a batch.

    Attributes:
        transcripts: the transcripts, relabelled (same order as given).
        people: distinct people found across the batch.
        named: people given an enrolled name.
        model: the embedding model the speakers were compared with.
        warnings: things the user should hear about (no voiceprint for this model...).
    """

    transcripts: list[Transcript]
    people: int = 0
    named: int = 0
    model: str | None = None
    warnings: list[str] = field(default_factory=list)


def talk_seconds(transcript: Transcript) -> dict[str, float]:
    """Seconds each speaker talks in ``transcript``, from its turns (label → seconds)."""
    talk: dict[str, float] = {}
    for turn in transcript.turns:
        talk[turn.speaker] = talk.get(turn.speaker, 0.0) + turn.end - turn.start
    return talk


def identify(
    transcripts: Sequence[Transcript],
    library: SpeakerLibrary | None = None,
    link: bool = True,
) -> Identification:
    """Link the same voice across files and name enrolled voices.

    Args:
        transcripts: diarized transcripts carrying ``speaker_embeddings`` (others pass as-is).
        library: name speakers whose voices are enrolled here (None: no naming).
        link: give the same person the same anonymous label in every file.

    Returns:
        The relabelled transcripts and counts. A named speaker's label is the name; the
        others are ``SPEAKER_00``, ``SPEAKER_01``... numbered across the batch when linked
        (by first appearance), or kept per file when not.
    """
    usable = [i for i, t in enumerate(transcripts) if t.speaker_embeddings]
    result = Identification(list(transcripts))
    if not usable:
        return result
    models = {transcripts[i].embedding_model for i in usable}
    model = str(sorted(m or "" for m in models)[-1])
    if len(models) > 1:
        result.warnings.append(f"speaker embeddings of several models ({models}): using {model}")
        usable = [i for i in usable if transcripts[i].embedding_model == model]
    result.model = model
    thresholds = thresholds_for(model)
    files = [transcripts[i].speaker_embeddings for i in usable]
    talks = [talk_seconds(transcripts[i]) for i in usable]
    # Too little talk gives an embedding that says little about the voice: such a speaker
    # keeps a label of their own, neither named nor linked.
    heard = [
        {label: v for label, v in f.items() if talk.get(label, 0.0) >= MIN_SPEAKER_S}
        for f, talk in zip(files, talks, strict=True)
    ]
    matches: list[dict[str, SpeakerMatch]] = [{} for _ in files]
    if library is not None:
        enrolled = library.voiceprints(model)
        if not enrolled:
            result.warnings.append(
                f"no speaker in {library.folder} is enrolled with {model}: nobody can be named "
                "(enroll them: modelmora speakers add NAME CLIP...)"
            )
        # The cohort of score normalisation: the file's other speakers, the other enrolled
        # voices, and the batch's other people, each once (linked across files first, so that
        # someone heard in many files weighs as one voice), leaving out this file's people.
        groups, centroids = link_speakers(heard, thresholds, talks)
        for index, speakers in enumerate(heard):
            # Named file by file: one-to-one inside a file, one person may be named in every
            # file.
            present = set(groups[index].values())
            cohort = [c for person, c in enumerate(centroids) if person not in present]
            matches[index] = match_speakers(speakers, enrolled, thresholds, cohort)
    named = [{label: m.name for label, m in found.items() if m.name} for found in matches]
    # The others are linked across files: the named are one person per name already.
    unnamed = [
        {label: v for label, v in f.items() if label not in names}
        for f, names in zip(heard, named, strict=True)
    ]
    if link:
        links, _ = link_speakers(unnamed, thresholds, talks)
    else:
        links = [{label: n for n, label in enumerate(f)} for f in unnamed]
    people: dict[int, str] = {}  # linked person → their anonymous label
    labelled: list[dict[str, str]] = []
    for speakers, file_names, file_links in zip(files, named, links, strict=True):
        mapping: dict[str, str] = {}
        for label in speakers:
            if label in file_names:
                mapping[label] = file_names[label]
            elif not link:
                mapping[label] = label
            elif label in file_links:
                person = file_links[label]
                if person not in people:
                    people[person] = _anonymous(people, [*labelled, mapping])
                mapping[label] = people[person]
            else:  # too little speech: a label of their own
                mapping[label] = _anonymous(people, [*labelled, mapping])
        labelled.append(mapping)
    in_files: dict[str, int] = {}
    for mapping in labelled:
        for label in set(mapping.values()):
            in_files[label] = in_files.get(label, 0) + 1
    for number, (index, mapping) in enumerate(zip(usable, labelled, strict=True)):
        relabelled = transcripts[index].relabel(mapping)
        identities: dict[str, dict[str, Any]] = {}
        for label, new in mapping.items():
            match = matches[number].get(label)
            record: dict[str, Any] = match.to_dict() if match is not None else {"name": None}
            if label not in heard[number]:
                record["too_little_speech"] = True
            identities[new] = {**record, "files": in_files[new]}
        relabelled.speaker_identities = identities
        result.transcripts[index] = relabelled
    result.people = len({label for mapping in labelled for label in mapping.values()})
    result.named = len({name for names in named for name in names.values()})
    return result


def _anonymous(people: Mapping[int, str], labelled: Sequence[Mapping[str, str]]) -> str:
    """The next free ``SPEAKER_NN`` (numbered across the batch by first appearance)."""
    taken = set(people.values()) | {label for m in labelled for label in m.values()}
    number = 0
    while f"SPEAKER_{number:02d}" in taken:
        number += 1
    return f"SPEAKER_{number:02d}"
