"""Speakers across a batch: linking, naming, enrollment and relabelling a finished run.

- :func:`identify` links and names in the current process, on the speaker embeddings the
  diarizer's results carry (no model is loaded for it): the same voice gets one label in every
  file (``link``), and enrolled voices get their names (``library``). It is
  :func:`modelmora.speech.identify.identify`; the batch engine runs that in a worker of the
  ``speakers`` adapter at the end of the diarize stage, so the orchestrator never imports numpy.
- :func:`enroll` embeds clips in a worker (the ``voiceprint`` adapter) and stores the
  voiceprint in a :class:`~modelmora.speech.speakers.SpeakerLibrary`.
- :func:`relabel_run` renames speakers in every output of a finished run, re-rendered from the
  transcripts, all files swapped in together; ``enroll=True`` adds the voices to a library.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelmora.models import ModelSpec
from modelmora.runtime.worker import Worker
from modelmora.speech.formats import FORMATS, RenderOptions, write_outputs
from modelmora.speech.identify import Identification, identify, talk_seconds
from modelmora.speech.speakers import SpeakerLibrary, check_name
from modelmora.speech.transcript import Transcript
from modelmora.workflow.report import REPORT_NAME

__all__ = ["Identification", "enroll", "identify", "parse_relabels", "relabel_run"]

logger = logging.getLogger(__name__)


def enroll(
    name: str,
    clips: Sequence[str | os.PathLike[str]],
    library: SpeakerLibrary,
    *,
    keep_audio: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Enroll ``name`` from audio clips: embeddings made in a worker, stored in ``library``.

    Args:
        name: the person's name.
        clips: audio files of that person alone (any format FFmpeg reads).
        library: where to store the voiceprint.
        keep_audio: copy the clips into the library too (default: embeddings only).
        device: the embedding model's device.
        threads: cap on the worker's numeric threads.

    Returns:
        The speaker's file in the library.

    Raises:
        ValueError: a bad name, no clips, or a clip with too little speech (the message
            names the clip and how much speech it held).
        modelmora.errors.WorkerError: a clip is not usable audio (the worker's message).
    """
    from modelmora.speech.audio import check_audio_file
    from modelmora.speech.speakers import MIN_ENROLL_SPEECH_S

    name = check_name(name)
    if not clips:
        raise ValueError("give at least one clip of the speaker")
    for clip in clips:
        check_audio_file(clip)
    with Worker(
        ModelSpec("voiceprint", {"device": device}), name="voiceprint", threads=threads
    ) as worker:
        outputs = worker.call([{"audio": str(clip)} for clip in clips])
    for clip, output in zip(clips, outputs, strict=True):
        if output["speech_s"] < MIN_ENROLL_SPEECH_S:
            raise ValueError(
                f"{clip}: only {output['speech_s']:.1f} s of speech; enrollment needs at least "
                f"{MIN_ENROLL_SPEECH_S:.0f} s per clip: give a longer clip of {name} talking"
            )
    models = {output["model"] for output in outputs}
    (model,) = models
    return library.add(
        name,
        model,
        [output["embedding"] for output in outputs],
        [output["speech_s"] for output in outputs],
        keep_audio=clips if keep_audio else (),
    )


_RELABEL = re.compile(r"^(?P<old>[^=]+)=(?P<new>.+)$")


def parse_relabels(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``OLD=NEW`` arguments (``SPEAKER_03=Maria``; ``SPEAKER_04=SPEAKER_01`` merges two).

    Raises:
        ValueError: a pair without ``=``, a bad name, or one label given twice.
    """
    mapping: dict[str, str] = {}
    for pair in pairs:
        found = _RELABEL.match(pair.strip())
        if found is None:
            raise ValueError(f"bad relabel {pair!r}: write OLD=NEW, e.g. SPEAKER_03=Maria")
        old, new = found["old"].strip(), found["new"].strip()
        if not re.fullmatch(r"SPEAKER_\d+", new):  # an anonymous label merges two speakers
            new = check_name(new)
        if old in mapping:
            raise ValueError(f"{old} is relabelled twice")
        mapping[old] = new
    return mapping


def _run_files(out_dir: Path) -> list[tuple[str, list[str], RenderOptions]]:
    """(stem, formats written, how they were rendered) of every transcript of a run, from
    its report (the run's subtitle shaping and viewer settings are kept on re-rendering)."""
    report_path = out_dir / REPORT_NAME
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(
            f"{out_dir} holds no readable {REPORT_NAME}: give the output folder of a "
            "modelmora transcribe run"
        ) from None
    options = report.get("options") or {}
    rendering = {k: options[k] for k in _RENDERING if options.get(k) is not None}
    files = []
    for entry in report.get("files", []):
        outputs = [Path(p) for p in entry.get("outputs", [])]
        formats = [p.suffix[1:] for p in outputs if p.suffix[1:] in FORMATS]
        if "json" in formats:
            audio = entry.get("path")
            embed = bool(options.get("embed_audio")) and audio is not None
            render = RenderOptions(**rendering, audio=audio, embed_audio=embed)
            files.append((str(entry["stem"]), formats, render))
        elif outputs:
            logger.warning("%s: no JSON transcript written: cannot relabel it", entry["stem"])
    return files


#: The run options that shape the rendered outputs (the fields :class:`RenderOptions` shares).
_RENDERING = (
    "max_line_width",
    "max_line_count",
    "max_duration",
    "min_duration",
    "highlight_words",
    "txt_timestamps",
)


def relabel_run(
    out_dir: str | os.PathLike[str],
    mapping: Mapping[str, str],
    *,
    library: SpeakerLibrary | None = None,
) -> dict[str, Any]:
    """Rename speakers in every output of a finished run, all files swapped in together.

    Each transcript is read back from its ``<stem>.json``, relabelled, and re-rendered in the
    formats the run wrote; ``<stem>.summary.md`` has the labels replaced in its text. Every new
    file is written to a staging folder first, then all are moved into place, so a failure
    leaves the run as it was.

    Args:
        out_dir: the run's output folder.
        mapping: old label → new name.
        library: also enroll each renamed voice here (its embedding from the run's JSON).

    Returns:
        ``{"files": [stems changed], "renamed": {old: new}, "enrolled": [names]}``.

    Raises:
        ValueError: not a run folder, or no file has one of the labels.
    """
    import shutil
    import tempfile

    folder = Path(out_dir)
    files = _run_files(folder)
    staging = Path(tempfile.mkdtemp(prefix=".relabel-", dir=folder))
    changed: list[str] = []
    voices: dict[str, list[tuple[str, list[float], float]]] = {}
    try:
        moves: list[tuple[Path, Path]] = []
        for stem, formats, render in files:
            transcript = Transcript.from_dict(
                json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
            )
            present = {old: new for old, new in mapping.items() if old in transcript.speakers}
            if not present:
                continue
            talk = talk_seconds(transcript)
            for old, new in present.items():
                if old in transcript.speaker_embeddings:
                    vector = transcript.speaker_embeddings[old]
                    voices.setdefault(new, []).append(
                        (transcript.embedding_model or "", vector, talk.get(old, 0.0))
                    )
            relabelled = transcript.relabel(present)
            for old, new in present.items():
                identity = relabelled.speaker_identities.get(new, {})
                name = None if re.fullmatch(r"SPEAKER_\d+", new) else new
                relabelled.speaker_identities[new] = {**identity, "name": name, "renamed_from": old}
            summary = folder / f"{stem}.summary.md"
            if summary.exists():
                staged = _relabel_text(summary, present, staging)
                moves.append((staged, summary))
                render = dataclasses.replace(render, summary=staged.read_text(encoding="utf-8"))
            for path in write_outputs(relabelled, staging, stem, formats, render):
                moves.append((path, folder / path.name))
            changed.append(stem)
        if not changed:
            raise ValueError(
                f"no transcript in {folder} has any of the labels {', '.join(mapping)}: "
                "see the speakers in the outputs (or modelmora-report.json)"
            )
        for source, target in moves:
            os.replace(source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _update_report(folder, mapping)
    enrolled = _enroll_voices(voices, library) if library is not None else []
    return {"files": changed, "renamed": dict(mapping), "enrolled": enrolled}


def _relabel_text(path: Path, mapping: Mapping[str, str], staging: Path) -> Path:
    text = path.read_text(encoding="utf-8")
    for old, new in mapping.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    target = staging / path.name
    target.write_text(text, encoding="utf-8")
    return target


def _update_report(folder: Path, mapping: Mapping[str, str]) -> None:
    from modelmora.paths import write_atomic

    path = folder / REPORT_NAME
    report = json.loads(path.read_text(encoding="utf-8"))
    for entry in report.get("files", []):
        if entry.get("speakers"):
            renamed = [mapping.get(s, s) for s in entry["speakers"]]
            entry["speakers"] = list(dict.fromkeys(renamed))
    write_atomic(path, [json.dumps(report, indent=2), "\n"])


def _enroll_voices(
    voices: Mapping[str, list[tuple[str, list[float], float]]], library: SpeakerLibrary
) -> list[str]:
    enrolled = []
    for name, prints in voices.items():
        by_model: dict[str, list[tuple[list[float], float]]] = {}
        for model, vector, talk in prints:
            by_model.setdefault(model, []).append((vector, talk))
        for model, items in by_model.items():
            library.add(name, model, [v for v, _ in items], [max(t, 0.0) for _, t in items])
        enrolled.append(name)
    return enrolled
