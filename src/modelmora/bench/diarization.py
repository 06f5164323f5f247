"""``modelmora bench diarization DIR``: score diarization engines on labelled recordings.

Every ``DIR/<stem>.wav`` (or ``.flac``) is diarized by each engine asked for, in its own worker
(as the workflow's diarize stage runs it), and scored against its reference: ``DIR/<stem>.rttm``,
else the lines of any RTTM in ``DIR`` whose file id is ``<stem>``. A ``.uem`` file in ``DIR``
gives the scored regions (default: the whole recording). Reported per engine, all files
together and per file: DER with no collar, DER with a 0.5 s collar and overlap skipped (the two
forms pyannote's model cards use), missed speech / false alarm / confusion (no collar), speaker
count found vs reference, real-time factor (diarize time over audio time, model loaded), load
time and the worker's peak RSS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmora.models import ModelSpec
from modelmora.runtime.worker import Worker
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.transcript import Turn, read_rttm

__all__ = ["format_table", "references", "run_diarization_bench"]

logger = logging.getLogger(__name__)

_AUDIO = (".wav", ".flac")


def references(folder: Path, stems: Sequence[str]) -> dict[str, list[Turn]]:
    """Each stem's reference turns: ``folder/<stem>.rttm``, else its lines in any RTTM there.

    Raises:
        ValueError: a stem has no reference.
    """
    refs: dict[str, list[Turn]] = {}
    shared: dict[str, list[Turn]] = {}
    for rttm in sorted(folder.glob("*.rttm")):
        for line in rttm.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 8 and fields[0] == "SPEAKER":
                start = float(fields[3])
                turn = Turn(start, start + float(fields[4]), fields[7])
                shared.setdefault(fields[1], []).append(turn)
    for stem in stems:
        own = folder / f"{stem}.rttm"
        turns = read_rttm(own) if own.is_file() else shared.get(stem)
        if turns is None:
            raise ValueError(
                f"no reference for {stem}: add {own} or its lines to an RTTM in {folder}"
            )
        refs[stem] = turns
    return refs


def _uem(folder: Path) -> dict[str, list[tuple[float, float]]]:
    regions: dict[str, list[tuple[float, float]]] = {}
    for uem in sorted(folder.glob("*.uem")):
        for line in uem.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) >= 4:
                regions.setdefault(fields[0], []).append((float(fields[2]), float(fields[3])))
    return regions


def _annotation(turns: Sequence[Any]) -> Any:
    """Turns (or ``[start, end, speaker]`` lists) as a pyannote Annotation."""
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for index, turn in enumerate(turns):
        if isinstance(turn, Turn):
            start, end, speaker = turn.start, turn.end, turn.speaker
        else:
            start, end, speaker = turn[0], turn[1], turn[2]
        ann[Segment(float(start), float(end)), index] = str(speaker)
    return ann


def _score_engine(
    engine: str,
    files: Sequence[Path],
    refs: dict[str, list[Turn]],
    uem: dict[str, list[tuple[float, float]]],
    device: str,
    params: dict[str, Any],
    threads: int | None,
) -> dict[str, Any]:
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    strict = DiarizationErrorRate()
    forgiving = DiarizationErrorRate(collar=0.5, skip_overlap=True)
    rows, audio_s, work_s, right = [], 0.0, 0.0, 0
    sums = {"missed detection": 0.0, "false alarm": 0.0, "confusion": 0.0, "total": 0.0}
    spec = ModelSpec("diarizer", {"engine": engine, "device": device, **params})
    with Worker(spec, name=f"diarizer:{engine}", load_timeout=1800, threads=threads) as worker:
        load_s = worker.load_s or 0.0
        for path in files:
            duration = load_audio(path).size / SAMPLE_RATE
            t0 = time.perf_counter()
            (output,) = worker.call([{"audio": str(path), "segments": []}], timeout=7200)
            elapsed = time.perf_counter() - t0
            audio_s, work_s = audio_s + duration, work_s + elapsed
            ref, hyp = _annotation(refs[path.stem]), _annotation(output["turns"])
            spans = uem.get(path.stem) or [(0.0, duration)]
            region = Timeline([Segment(s, e) for s, e in spans])
            parts: Any = strict(ref, hyp, uem=region, detailed=True)
            for key in sums:
                sums[key] += parts[key]
            der_collar = forgiving(ref, hyp, uem=region)
            total = parts["total"] or 1.0
            found, expected = len(hyp.labels()), len(ref.labels())
            right += found == expected
            rows.append(
                {
                    "file": path.stem,
                    "der": parts["diarization error rate"],
                    "der_collar": der_collar,
                    "missed": parts["missed detection"] / total,
                    "false_alarm": parts["false alarm"] / total,
                    "confusion": parts["confusion"] / total,
                    "speakers": found,
                    "ref_speakers": expected,
                    "rtf": elapsed / duration,
                }
            )
        peak = worker.memory.peak_rss_mb if worker.memory else None
    total = sums["total"] or 1.0
    return {
        "engine": engine,
        "files": len(files),
        "der": abs(strict),
        "der_collar": abs(forgiving),
        "missed": sums["missed detection"] / total,
        "false_alarm": sums["false alarm"] / total,
        "confusion": sums["confusion"] / total,
        "speakers_right": right,
        "rtf": work_s / audio_s if audio_s else 0.0,
        "load_s": load_s,
        "peak_rss_mb": peak,
        "per_file": rows,
    }


def run_diarization_bench(
    folder: str | Path,
    engines: Sequence[str] = ("default", "resemblyzer"),
    device: str = "cpu",
    params: dict[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Diarize and score every recording of ``folder`` with each engine.

    Args:
        folder: holds ``<stem>.wav`` files and their reference RTTM (see the module docstring).
        engines: engine names (``default``, ``resemblyzer``, ``pyannote``, ``module:Class``).
        device: ``cpu``, ``cuda`` or ``auto``.
        params: extra engine options (the same for every engine).
        threads: cap on the worker's numeric threads (None: the libraries' defaults).

    Returns:
        ``{"folder", "audio_s", "engines": [per-engine results]}``.

    Raises:
        ValueError: no audio in ``folder``, or a file without a reference.
    """
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in _AUDIO)
    if not files:
        raise ValueError(f"no .wav or .flac files in {root}")
    refs = references(root, [p.stem for p in files])
    uem = _uem(root)
    results = [
        _score_engine(e, files, refs, uem, device, dict(params or {}), threads) for e in engines
    ]
    audio_s = sum(load_audio(p).size for p in files) / SAMPLE_RATE
    return {"folder": str(root), "audio_s": round(audio_s, 1), "engines": results}


def format_table(result: dict[str, Any]) -> Any:
    """A rich table: one row per engine (all files), then one per engine and file."""
    from rich.table import Table

    table = Table(title=f"diarization on {result['folder']} ({result['audio_s']} s of audio)")
    for column in (
        "engine",
        "file",
        "DER",
        "DER c0.5",
        "miss",
        "FA",
        "conf",
        "spk",
        "RTF",
        "load s",
        "peak MB",
    ):
        table.add_column(column, justify="left" if column in ("engine", "file") else "right")

    def pct(value: float) -> str:
        return f"{100 * value:.1f}%"

    for engine in result["engines"]:
        table.add_row(
            engine["engine"],
            "all",
            pct(engine["der"]),
            pct(engine["der_collar"]),
            pct(engine["missed"]),
            pct(engine["false_alarm"]),
            pct(engine["confusion"]),
            f"{engine['speakers_right']}/{engine['files']} right",
            f"{engine['rtf']:.3f}",
            f"{engine['load_s']:.1f}",
            f"{engine['peak_rss_mb']:.0f}" if engine["peak_rss_mb"] else "-",
        )
    for engine in result["engines"]:
        for row in engine["per_file"]:
            table.add_row(
                engine["engine"],
                row["file"],
                pct(row["der"]),
                pct(row["der_collar"]),
                pct(row["missed"]),
                pct(row["false_alarm"]),
                pct(row["confusion"]),
                f"{row['speakers']}/{row['ref_speakers']}",
                f"{row['rtf']:.3f}",
                "",
                "",
            )
    return table
