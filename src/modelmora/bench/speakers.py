"""The speakers benchmark: cross-file linking and naming accuracy, and what they cost.

Two data sets:

- **AMI** excerpts that share speakers (trn07/trn08 four people, trn06/trn09 and trn01/trn02
  one each; reference turns in ``ami.rttm``). Linking accuracy is the fraction of reference
  speakers heard in both files of a pair who get one label in both, and the fraction of
  pairs of different people (across the two files) who get different labels. Naming accuracy:
  each shared person is enrolled from their reference speech in one file and must be named in
  the other (both directions); the people of a file who are not enrolled must stay anonymous.
- **Generated voices** (espeak-ng; voice, pitch and speed varied): eight people are enrolled
  from one monologue each, then named in conversations among them and four strangers.

Each reference speaker of a file is represented by the system speaker that covers most of
their talk. Figures come twice: on the diarizer's own speakers (what users get) and on
speakers cut at the reference turns (linking and naming alone, without diarization errors).

The models run in workers (diarizer, voiceprint); linking and naming run here, timed, with
their peak Python allocation (tracemalloc) beside the diarize stage's wall time and peak RSS.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from modelmora.models import ModelSpec
from modelmora.runtime.worker import Worker
from modelmora.speech.speakers import MIN_ENROLL_SPEECH_S, MIN_SPEAKER_S, SpeakerLibrary
from modelmora.speech.transcript import Transcript, Turn
from modelmora.workflow.speakers import identify

__all__ = ["AMI_PAIRS", "DEFAULT_AMI_DIR", "format_table", "run_speakers_bench"]

logger = logging.getLogger(__name__)

DEFAULT_AMI_DIR = Path(os.environ.get("MODELMORA_AMI_DIR", "ami"))
#: Excerpt pairs that share speakers.
AMI_PAIRS: tuple[tuple[str, str], ...] = (
    ("trn07", "trn08"),
    ("trn06", "trn09"),
    ("trn01", "trn02"),
)

_MONOLOGUE = (
    "Thank you for joining the call today. I would like to walk you through the plan for the "
    "next quarter, starting with the budget, then the hiring, and finally the launch dates we "
    "agreed on last week with the sales team and the engineers."
)
_LINES = (
    "Let's look at the numbers before we decide anything.",
    "The printing company needs our order by Friday afternoon.",
    "I will call them and ask for two more weeks.",
    "What about the new chairs people keep asking about?",
    "We can order them once the budget is approved.",
    "Then let's meet again on Monday at ten.",
)


def _voices() -> list[Any]:
    from modelmora.testing.conversation import Voice

    return [
        Voice("en-us+m3", 150, 30),
        Voice("en-gb+f2", 170, 75),
        Voice("en+m7", 185, 50),
        Voice("en-gb-scotland+m1", 160, 40),
        Voice("en-029+f4", 165, 65),
        Voice("en-us+m5", 140, 55),
        Voice("en-gb-x-rp+f1", 175, 85),
        Voice("en+m2", 200, 20),
        # strangers: never enrolled
        Voice("en-us+f3", 155, 60),
        Voice("en-gb+m4", 170, 35),
        Voice("en-gb-x-gbclan+f5", 180, 70),
        Voice("en+m6", 145, 45),
    ]


_ENROLLED = 8


def _conversations() -> list[list[int]]:
    """Who talks in each generated conversation (voice indexes; 8+ are strangers)."""
    return [[0, 1, 8], [2, 3, 9], [4, 5, 10], [6, 7, 11], [1, 4, 8], [3, 6, 9], [0, 7], [5, 2, 11]]


def _majority(system: Sequence[Turn], reference: Sequence[Turn]) -> dict[str, str]:
    """Reference speaker → the system speaker covering most of their talk."""
    cover: dict[str, dict[str, float]] = {}
    for ref in reference:
        row = cover.setdefault(ref.speaker, {})
        for turn in system:
            shared = min(ref.end, turn.end) - max(ref.start, turn.start)
            if shared > 0:
                row[turn.speaker] = row.get(turn.speaker, 0.0) + shared
    # Ties (a short turn inside another's long one) go to the speaker's own label, so the
    # reference speakers map to themselves.
    return {
        spk: max(row, key=lambda s, spk=spk: (row[s], s == spk))  # type: ignore[misc]
        for spk, row in cover.items()
        if row
    }


def _talk(reference: Sequence[Turn]) -> dict[str, float]:
    """Seconds each reference speaker talks."""
    talk: dict[str, float] = {}
    for turn in reference:
        talk[turn.speaker] = talk.get(turn.speaker, 0.0) + turn.end - turn.start
    return talk


def _rttm_by_file(path: Path) -> dict[str, list[Turn]]:
    by_file: dict[str, list[Turn]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            start = float(fields[3])
            turn = Turn(start, start + float(fields[4]), fields[7])
            by_file.setdefault(fields[1], []).append(turn)
    return by_file


def _reference_transcript(worker: Worker, audio: Path, reference: Sequence[Turn]) -> Transcript:
    """A transcript whose speakers are the reference ones, embedded from their turns."""
    speakers = sorted({t.speaker for t in reference})
    items = [
        {"audio": str(audio), "ranges": [[t.start, t.end] for t in reference if t.speaker == s]}
        for s in speakers
    ]
    outputs = worker.call(items)
    return Transcript(
        turns=list(reference),
        speaker_embeddings={s: o["embedding"] for s, o in zip(speakers, outputs, strict=True)},
        embedding_model=outputs[0]["model"],
    )


def _timed_identify(
    transcripts: list[Transcript], library: SpeakerLibrary | None, link: bool
) -> tuple[list[Transcript], float, float]:
    tracemalloc.start()
    t0 = time.perf_counter()
    result = identify(transcripts, library, link)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result.transcripts, elapsed, peak / 2**20


def _linked_majority(
    before: Transcript, linked: Transcript, reference: list[Turn]
) -> dict[str, str]:
    """Reference speaker → their system speaker's label after linking.

    The system speaker is found before relabelling: its ties go to the reference speaker's own
    label, which the reference-turn transcripts carry until linking renames them.
    """
    renamed = {a.speaker: b.speaker for a, b in zip(before.turns, linked.turns, strict=True)}
    return {ref: renamed[label] for ref, label in _majority(before.turns, reference).items()}


def _link_scores(
    linked: dict[str, Transcript],
    references: dict[str, list[Turn]],
    before: dict[str, Transcript],
) -> dict[str, Any]:
    same_ok = same = diff_ok = diff = 0
    heard_ok = heard = heard_diff_ok = heard_diff = 0
    for first, second in AMI_PAIRS:
        if first not in linked or second not in linked:
            continue
        a = _linked_majority(before[first], linked[first], references[first])
        b = _linked_majority(before[second], linked[second], references[second])
        talk_a, talk_b = _talk(references[first]), _talk(references[second])
        for ref_a, label_a in a.items():
            for ref_b, label_b in b.items():
                # Measurable: both talk long enough to be linked at all (MIN_SPEAKER_S).
                long = min(talk_a[ref_a], talk_b[ref_b]) >= MIN_SPEAKER_S
                if ref_a == ref_b:
                    same += 1
                    same_ok += label_a == label_b
                    heard += long
                    heard_ok += long and label_a == label_b
                else:
                    diff += 1
                    diff_ok += label_a != label_b
                    heard_diff += long
                    heard_diff_ok += long and label_a != label_b
    return {
        "same_person_linked": _ratio(same_ok, same),
        "different_people_apart": _ratio(diff_ok, diff),
        "same_pairs": same,
        "different_pairs": diff,
        "measurable": {
            "min_talk_s": MIN_SPEAKER_S,
            "same_person_linked": _ratio(heard_ok, heard),
            "different_people_apart": _ratio(heard_diff_ok, heard_diff),
            "same_pairs": heard,
            "different_pairs": heard_diff,
        },
    }


def _link_similarities(
    transcripts: dict[str, Transcript], references: dict[str, list[Turn]]
) -> dict[str, list[float]]:
    """Similarities of speakers across the two files of a pair: same person, different."""
    import numpy as np

    same: list[float] = []
    different: list[float] = []
    for first, second in AMI_PAIRS:
        a = _majority(transcripts[first].turns, references[first])
        b = _majority(transcripts[second].turns, references[second])
        for ref_a, label_a in a.items():
            for ref_b, label_b in b.items():
                u = np.asarray(transcripts[first].speaker_embeddings[label_a])
                v = np.asarray(transcripts[second].speaker_embeddings[label_b])
                (same if ref_a == ref_b else different).append(round(float(u @ v), 4))
    return {"same": sorted(same), "different": sorted(different)}


def _ratio(good: int, total: int) -> float | None:
    return round(good / total, 3) if total else None


def _naming_scores(
    named: list[tuple[Transcript, list[Turn], dict[str, str]]],
) -> dict[str, Any]:
    """Per file: the named transcript, its reference, reference speaker → enrolled name.

    A stranger whose system speaker is also an enrolled person's (the diarizer merged their
    voices) cannot be told apart by naming: such cases are counted apart (``merged``), not
    as strangers named. ``measurable`` keeps the enrolled people who talk at least
    :data:`MIN_SPEAKER_S` in the file (the least that is named at all).
    """
    right = enrolled = wrong_named = strangers = merged = 0
    heard = heard_right = 0
    for transcript, reference, names in named:
        talk = _talk(reference)
        cover = _majority(transcript.turns, reference)
        taken = {label for ref, label in cover.items() if ref in names}
        for ref, label in cover.items():
            identity = transcript.speaker_identities.get(label, {})
            if ref in names:
                enrolled += 1
                ok = identity.get("name") == names[ref]
                right += ok
                if talk[ref] >= MIN_SPEAKER_S:
                    heard += 1
                    heard_right += ok
            elif label in taken:
                merged += 1
            else:
                strangers += 1
                wrong_named += identity.get("name") is not None
    return {
        "named_right": _ratio(right, enrolled),
        "strangers_named": _ratio(wrong_named, strangers),
        "enrolled_cases": enrolled,
        "stranger_cases": strangers,
        "strangers_merged_with_enrolled": merged,
        "measurable": {
            "min_talk_s": MIN_SPEAKER_S,
            "named_right": _ratio(heard_right, heard),
            "enrolled_cases": heard,
        },
    }


def _similarities(
    cases: list[tuple[Transcript, list[Turn], dict[str, str]]], library: SpeakerLibrary
) -> dict[str, list[float]]:
    """Cosine similarities behind the naming decisions, for calibrating the thresholds.

    ``genuine``: an enrolled person's speaker to their own voiceprint; ``impostor``: to the
    closest other voiceprint (strangers: to the closest voiceprint at all).
    """
    import numpy as np

    genuine: list[float] = []
    impostor: list[float] = []
    for transcript, reference, names in cases:
        model = transcript.embedding_model or ""
        prints = {n: v.centroid for n, v in library.voiceprints(model).items()}
        if not prints:
            continue
        for ref, label in _majority(transcript.turns, reference).items():
            vector = np.asarray(transcript.speaker_embeddings.get(label, []), dtype=np.float64)
            if vector.size == 0:
                continue
            sims = {
                n: float(vector @ c / (np.linalg.norm(vector) + 1e-12)) for n, c in prints.items()
            }
            own = names.get(ref)
            if own in sims:
                genuine.append(round(sims.pop(own), 4))
            if sims:
                impostor.append(round(max(sims.values()), 4))
    return {"genuine": sorted(genuine), "impostor": sorted(impostor)}


def _diarize_all(
    audio: Sequence[Path], engine: str, library: SpeakerLibrary | None = None
) -> tuple[dict[str, Transcript], dict[str, Any]]:
    outputs: dict[str, Transcript] = {}
    t0 = time.perf_counter()
    params: dict[str, Any] = {"device": "cpu", "engine": engine}
    if library is not None:
        params["known_voices"] = str(library.folder)
    spec = ModelSpec("diarizer", params)
    with Worker(spec, name="diarize") as worker:
        for path in audio:
            (output,) = worker.call([{"audio": str(path), "segments": []}])
            outputs[path.stem] = Transcript.from_dict(output)
        peak = worker.memory.peak_rss_mb if worker.memory else None
    return outputs, {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": peak}


def _ami(folder: Path, voiceprint: Worker, work: Path, engine: str) -> dict[str, Any]:
    references = _rttm_by_file(folder / "ami.rttm")
    stems = [stem for pair in AMI_PAIRS for stem in pair]
    audio = [folder / f"{stem}.wav" for stem in stems]
    diarized, stage = _diarize_all(audio, engine)
    oracle = {
        s: _reference_transcript(voiceprint, folder / f"{s}.wav", references[s]) for s in stems
    }
    result: dict[str, Any] = {"files": stems, "diarize_stage": stage}
    for kind, transcripts in (("diarizer", diarized), ("reference_turns", oracle)):
        linked, link_s, link_mb = _timed_identify([transcripts[s] for s in stems], None, True)
        scores = _link_scores(dict(zip(stems, linked, strict=True)), references, transcripts)
        scores["similarities"] = _link_similarities(transcripts, references)
        naming = _ami_naming(
            transcripts,
            references,
            voiceprint,
            folder,
            work / kind,
            engine if kind == "diarizer" else None,
        )
        result[kind] = {"linking": scores, "naming": naming, "identify_s": round(link_s, 4)}
        result[kind]["identify_peak_mb"] = round(link_mb, 3)
    return result


def _ami_naming(
    transcripts: dict[str, Transcript],
    references: dict[str, list[Turn]],
    voiceprint: Worker,
    folder: Path,
    work: Path,
    engine: str | None = None,
) -> dict[str, Any]:
    """Each shared person enrolled from one file of a pair, named in the other (both ways).

    Enrollment refuses clips with less than MIN_ENROLL_SPEECH_S of speech, so people who say
    less in the source file are not enrolled (``too_little_to_enroll``); they count as people
    not enrolled. The whole batch is identified together (its other speakers are the cohort
    of score normalisation), the target file is scored. With ``engine``, the target is
    diarized again with the library's voices known, as ``transcribe --speakers`` does.
    """
    cases = []
    genuine: list[float] = []
    impostor: list[float] = []
    refused = 0
    stems = list(transcripts)
    for first, second in AMI_PAIRS:
        for source, target in ((first, second), (second, first)):
            shared = {t.speaker for t in references[source]} & {
                t.speaker for t in references[target]
            }
            library = SpeakerLibrary(work / f"{source}-{target}")
            enrolled: set[str] = set()
            for person in sorted(shared):
                ranges = [[t.start, t.end] for t in references[source] if t.speaker == person]
                (out,) = voiceprint.call(
                    [{"audio": str(folder / f"{source}.wav"), "ranges": ranges}]
                )
                if out["speech_s"] < MIN_ENROLL_SPEECH_S:
                    refused += 1
                    continue
                library.add(f"{person}", out["model"], [out["embedding"]], [out["speech_s"]])
                enrolled.add(person)
            given = dict(transcripts)
            if engine is not None and enrolled:
                seeded, _ = _diarize_all([folder / f"{target}.wav"], engine, library)
                given[target] = seeded[target]
            batch = identify([given[s] for s in stems], library, link=True).transcripts
            named = batch[stems.index(target)]
            cases.append((named, references[target], {p: p for p in enrolled}))
            sims = _similarities(
                [(transcripts[target], references[target], {p: p for p in enrolled})], library
            )
            genuine += sims["genuine"]
            impostor += sims["impostor"]
    return {
        **_naming_scores(cases),
        "too_little_to_enroll": refused,
        "similarities": {"genuine": sorted(genuine), "impostor": sorted(impostor)},
    }


def _generated(work: Path, audio_dir: Path, voiceprint: Worker, engine: str) -> dict[str, Any]:
    from modelmora.testing.conversation import espeak_available, make_conversation

    if not espeak_available():
        return {"skipped": "espeak-ng is not installed"}
    voices = _voices()
    audio_dir.mkdir(parents=True, exist_ok=True)
    library = SpeakerLibrary(work / "generated")
    for index in range(_ENROLLED):
        clip = make_conversation(
            audio_dir / f"enroll-{index}.wav", [(0, _MONOLOGUE)], [voices[index]]
        )
        (out,) = voiceprint.call([{"audio": str(clip.wav)}])
        library.add(f"person-{index}", out["model"], [out["embedding"]], [out["speech_s"]])
    files: list[Path] = []
    references: dict[str, tuple[list[Turn], dict[str, int]]] = {}
    for number, talkers in enumerate(_conversations()):
        script = [(i % len(talkers), line) for i, line in enumerate(_LINES)]
        conv = make_conversation(
            audio_dir / f"conversation-{number}.wav", script, [voices[p] for p in talkers]
        )
        files.append(conv.wav)
        references[conv.wav.stem] = (conv.turns, {f"spk{k}": p for k, p in enumerate(talkers)})
    diarized, stage = _diarize_all(files, engine, library)
    stems = [path.stem for path in files]
    named, name_s, name_mb = _timed_identify([diarized[s] for s in stems], library, True)
    cases = []
    for stem, transcript in zip(stems, named, strict=True):
        turns, people = references[stem]
        names = {ref: f"person-{p}" for ref, p in people.items() if p < _ENROLLED}
        cases.append((transcript, turns, names))
    raw = [(diarized[s], c[1], c[2]) for s, c in zip(stems, cases, strict=True)]
    result = {**_naming_scores(cases), "similarities": _similarities(raw, library)}
    # The same stranger in several files: one label everywhere?
    stranger_labels: dict[int, set[str]] = {}
    for (transcript, turns, _), stem in zip(cases, stems, strict=True):
        people = references[stem][1]
        for ref, label in _majority(transcript.turns, turns).items():
            if people[ref] >= _ENROLLED:
                stranger_labels.setdefault(people[ref], set()).add(label)
    linked = sum(1 for labels in stranger_labels.values() if len(labels) == 1)
    return {
        **result,
        "strangers_one_label": _ratio(linked, len(stranger_labels)),
        "files": len(files),
        "diarize_stage": stage,
        "identify_s": round(name_s, 4),
        "identify_peak_mb": round(name_mb, 3),
    }


def run_speakers_bench(
    ami_dir: str | os.PathLike[str] | None = None,
    audio_dir: str | os.PathLike[str] | None = None,
    engine: str = "default",
    parts: Sequence[str] = ("ami", "generated"),
) -> dict[str, Any]:
    """Run both data sets (AMI only when its folder exists).

    Args:
        ami_dir: folder of ``trn01.wav``... and ``ami.rttm`` (default ``$MODELMORA_AMI_DIR`` or
            ``./ami``).
        audio_dir: where generated voices are cached (default: a temporary folder).
        engine: the diarizer engine whose speakers are linked and named.
        parts: which data sets to run (``ami``, ``generated``).

    Returns:
        ``{"ami": {...}, "generated": {...}, "model": ...}``.
    """
    folder = Path(ami_dir) if ami_dir is not None else DEFAULT_AMI_DIR
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with Worker(ModelSpec("voiceprint", {"device": "cpu"}), name="voiceprint") as voiceprint:
            result: dict[str, Any] = {"cpu_count": os.cpu_count(), "engine": engine}
            if "ami" not in parts:
                pass
            elif (folder / "ami.rttm").exists():
                result["ami"] = _ami(folder, voiceprint, work, engine)
            else:
                result["ami"] = {"skipped": f"no {folder / 'ami.rttm'}"}
            audio = Path(audio_dir or work / "audio")
            if "generated" in parts:
                result["generated"] = _generated(work, audio, voiceprint, engine)
    return result


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def format_table(result: dict[str, Any]) -> Table:
    """The result as a rich table, targets beside the figures."""
    title = f"Speakers across files (diarizer {result['engine']}, {result['cpu_count']} CPUs)"
    table = Table(title=title)
    for column in ("data", "speakers from", "measure", "value", "target"):
        table.add_column(column)
    ami = result.get("ami", {})
    for kind in ("diarizer", "reference_turns"):
        if kind not in ami:
            continue
        link, naming = ami[kind]["linking"], ami[kind]["naming"]
        table.add_row(
            "AMI", kind, "same person, one label", _pct(link["same_person_linked"]), "≥ 80 %"
        )
        table.add_row(
            "AMI", kind, "different people apart", _pct(link["different_people_apart"]), "≥ 80 %"
        )
        table.add_row("AMI", kind, "enrolled named right", _pct(naming["named_right"]), "≥ 80 %")
        table.add_row("AMI", kind, "not enrolled, named", _pct(naming["strangers_named"]), "")
        table.add_row("AMI", kind, "linking time", f"{ami[kind]['identify_s'] * 1000:.1f} ms", "")
    if "diarize_stage" in ami:
        stage = ami["diarize_stage"]
        table.add_row(
            "AMI",
            "diarizer",
            "diarize stage",
            f"{stage['wall_s']:.1f} s, {stage['peak_rss_mb']:.0f} MB",
            "",
        )
    generated = result.get("generated", {})
    if "named_right" in generated:
        table.add_row(
            "espeak", "diarizer", "enrolled named right", _pct(generated["named_right"]), "≥ 95 %"
        )
        table.add_row(
            "espeak", "diarizer", "strangers named", _pct(generated["strangers_named"]), "≤ 5 %"
        )
        table.add_row(
            "espeak", "diarizer", "stranger, one label", _pct(generated["strangers_one_label"]), ""
        )
        stage = generated["diarize_stage"]
        table.add_row(
            "espeak",
            "diarizer",
            "link + name cost",
            f"{generated['identify_s'] * 1000:.1f} ms, {generated['identify_peak_mb']:.2f} MB",
            f"stage {stage['wall_s']:.1f} s, {stage['peak_rss_mb']:.0f} MB",
        )
    return table
