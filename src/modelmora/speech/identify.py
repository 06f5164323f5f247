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

from modelmora.speech.speakers import (
    SpeakerLibrary,
    SpeakerMatch,
    link_speakers,
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
    if link:
        links, centroids = link_speakers(
            files,
            thresholds.link,
            [talk_seconds(transcripts[i]) for i in usable],
            thresholds.link_margin,
        )
        people = {p: centroids[p].tolist() for p in range(len(centroids))}
    else:
        links, people, count = [], {}, 0
        for speakers in files:
            links.append({label: count + n for n, label in enumerate(speakers)})
            people.update({count + n: speakers[label] for n, label in enumerate(speakers)})
            count += len(speakers)
    matches: dict[int, SpeakerMatch] = {}
    if library is not None:
        enrolled = library.voiceprints(model)
        if not enrolled:
            result.warnings.append(
                f"no speaker in {library.folder} is enrolled with {model}: nobody can be named "
                "(enroll them: modelmora speakers add NAME CLIP...)"
            )
        matches = match_speakers(people, enrolled, thresholds)
    names = _labels(links, files, matches, link)
    per_person_files: dict[int, int] = {}
    for file_links in links:
        for person in file_links.values():
            per_person_files[person] = per_person_files.get(person, 0) + 1
    for index, file_links in zip(usable, links, strict=True):
        mapping = {label: names[person] for label, person in file_links.items()}
        relabelled = transcripts[index].relabel(mapping)
        relabelled.speaker_identities = {
            names[person]: {
                **(matches[person].to_dict() if person in matches else {"name": None}),
                "files": per_person_files[person],
            }
            for person in file_links.values()
        }
        result.transcripts[index] = relabelled
    result.people = len(people)
    result.named = sum(1 for m in matches.values() if m.name)
    return result


def _labels(
    links: list[dict[str, int]],
    files: list[dict[str, Any]],
    matches: Mapping[int, SpeakerMatch],
    link: bool,
) -> dict[int, str]:
    names: dict[int, str] = {}
    anonymous = 0
    for file_links in links:
        for label, person in file_links.items():
            if person in names:
                continue
            match = matches.get(person)
            if match is not None and match.name:
                names[person] = match.name
            elif link:
                names[person] = f"SPEAKER_{anonymous:02d}"
                anonymous += 1
            else:
                names[person] = label
    return names
