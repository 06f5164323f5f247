"""The pipeline benchmark: memory, wall time and quality of the batch workflow, side by side.

On generated two-speaker conversations (espeak-ng, cached in a folder), with all four stages:

1. peak RSS of everything (orchestrator and workers, sampled together) against the largest
   single stage's peak, and the sum of the stage peaks beside it;
2. the orchestrator's RSS and its growth over the batch;
3. wall time of the stage-major isolated batch (``modelmora transcribe``), of an in-process
   pipeline with the same models loaded once, and of the per-file-subprocess design (one
   subprocess per file, loading every model);
4. Whisper's wall time through the workflow (the transcribe stage: worker start, model load,
   every file, verified release) against calling faster-whisper directly on the same files
   and settings (a process that loads the model and transcribes them): two pairs of runs,
   workflow then direct each time, and the median of each side, since a difference of a few
   percent is within one run's noise on a small shared machine;
5. quality: WER of the workflow and of faster-whisper itself on the same audio, DER on 2- and
   3-speaker conversations, and, when given, WER on a real recording and DER on a real meeting.

Every design runs in its own subprocess, so this process (which scores) never holds a model
and the orchestrator measured is exactly the command users run. The baselines run through
``python -m modelmora.bench.pipeline {inprocess,direct}``; they import ML frameworks, which is
why they are subprocesses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelmora.bench.harness import CONFIG_NAME, cpu_count, run_timed, run_transcribe
from modelmora.units import check_device

__all__ = ["DEFAULT_AUDIO_DIR", "format_table", "make_bench_audio", "run_pipeline_bench"]

logger = logging.getLogger(__name__)

#: Where generated conversations are cached unless ``audio_dir`` says otherwise.
DEFAULT_AUDIO_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "modelmora/bench-pipeline"
)

_LINES = (
    "Let's look at the budget for the next quarter before we decide anything.",
    "The marketing team asked for more money to run the spring campaign.",
    "I think we should wait until the sales numbers come in next week.",
    "That makes sense, but the printing company needs our order by Friday.",
    "Can we ask them to hold the price for another two weeks?",
    "I will call them this afternoon and explain the situation.",
    "Good. What about the new office chairs that people keep asking about?",
    "We ordered twenty chairs yesterday, and they should arrive on Monday.",
    "The server room is too warm again, and the fans are very loud.",
    "Facilities promised to repair the air conditioning before the weekend.",
    "Our customers want an export button in the reporting screen.",
    "Then let's put the export feature at the top of the next sprint.",
    "The training session for new staff starts at nine tomorrow morning.",
    "Please send everyone the agenda and the link to the slides.",
    "The client in Berlin signed the contract this morning.",
    "Great news. Who will manage the project on our side?",
    "Anna has the most experience, so she should lead it.",
    "I agree. I will tell her after lunch and set up a kickoff call.",
    "We still have three open bugs in the payment page.",
    "Two of them are small, but the third one blocks the release.",
    "Let's move the release to Thursday and fix the blocker first.",
    "Fine. I will update the release notes and inform support.",
    "Is there anything else we need to discuss today?",
    "No, I think that's everything. Thank you all for your time.",
)
_VOICE_PAIRS = ((0, 1), (1, 2), (0, 2))


# --- audio -----------------------------------------------------------------------------------


def _script(index: int, speakers: Sequence[int], turns: int = 8) -> list[tuple[int, str]]:
    start = (index * 5) % len(_LINES)
    return [(speakers[t % len(speakers)], _LINES[(start + t) % len(_LINES)]) for t in range(turns)]


def make_bench_audio(folder: str | os.PathLike[str], files: int = 10) -> dict[str, list[Path]]:
    """Generate (or reuse) the benchmark's conversations in ``folder``.

    Args:
        folder: the cache folder.
        files: how many two-speaker conversations (~30 s each).

    Returns:
        ``{"two": [wav...], "three": [wav...]}``; each wav has a ``.rttm`` and ``.txt`` beside it.

    Raises:
        FileNotFoundError: espeak-ng is not installed.
    """
    from modelmora.testing.conversation import (
        DEFAULT_VOICES,
        THREE_SPEAKER_SCRIPT,
        make_conversation,
    )

    root = Path(folder)
    out: dict[str, list[Path]] = {"two": [], "three": []}
    plans: list[tuple[str, Path, list[tuple[int, str]]]] = []
    for i in range(files):
        pair = _VOICE_PAIRS[i % len(_VOICE_PAIRS)]
        script = [(pair.index(s), text) for s, text in _script(i, pair)]
        plans.append(("two", root / f"conv2-{i:02d}.wav", script))
    plans.append(("three", root / "conv3-00.wav", list(THREE_SPEAKER_SCRIPT)))
    plans.append(("three", root / "conv3-01.wav", _script(7, (0, 1, 2), turns=9)))
    for group, wav, script in plans:
        voices = DEFAULT_VOICES
        if group == "two":
            i = int(wav.stem.split("-")[1])
            voices = tuple(DEFAULT_VOICES[v] for v in _VOICE_PAIRS[i % len(_VOICE_PAIRS)])
        if not all(wav.with_suffix(s).is_file() for s in (".wav", ".rttm", ".txt")):
            make_conversation(wav, script, voices)
        out[group].append(wav)
    return out


# --- running the designs ---------------------------------------------------------------------


def _baseline(
    mode: str, files: Sequence[Path], out: Path, log: Path, device: str, max_tokens: int = 64
) -> dict[str, Any]:
    result = out / f"{mode}-{len(list(out.glob(f'{mode}-*.json')))}.json"
    argv = [sys.executable, "-m", "modelmora.bench.pipeline", mode, "--result", str(result)]
    argv += ["--llm-max-tokens", str(max_tokens)]
    wall, cpu, peak, code = run_timed([*argv, "--device", device, *map(str, files)], log)
    if code != 0:
        raise RuntimeError(f"the {mode} baseline failed (exit {code}): see {log}")
    data: dict[str, Any] = json.loads(result.read_text())
    data.update(wall_s=wall, cpu_s=cpu, peak_rss_mb=peak)
    return data


def _texts(out: Path, files: Sequence[Path]) -> list[str]:
    texts = []
    for wav in files:
        data = json.loads((out / f"{wav.stem}.json").read_text())
        texts.append(" ".join(s["text"].strip() for s in data["segments"]))
    return texts


# --- scoring -------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces (the usual WER normalisation)."""
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    import jiwer

    return float(
        jiwer.wer([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])
    )


def _reference_text(wav: Path) -> str:
    lines = wav.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    return " ".join(line.partition(": ")[2] for line in lines)


def _der(
    pairs: Sequence[tuple[Path, Path]], collar: float = 0.0, skip_overlap: bool = False
) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from modelmora.speech.transcript import read_rttm

    def annotation(path: Path) -> Annotation:
        ann = Annotation()
        for turn in read_rttm(path):
            ann[Segment(turn.start, turn.end)] = turn.speaker
        return ann

    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    for reference, hypothesis in pairs:
        metric(annotation(reference), annotation(hypothesis))
    return float(abs(metric))


def _speaker_counts(out: Path, files: Sequence[Path]) -> list[int]:
    from modelmora.speech.transcript import read_rttm

    return [len({t.speaker for t in read_rttm(out / f"{w.stem}.rttm")}) for w in files]


# --- the benchmark ---------------------------------------------------------------------------


def _isolated(files: list[Path], work: Path, log: Path, device: str) -> dict[str, Any]:
    out, report = work / "isolated", work / "memory-report.json"
    flags = ["--diarize", "--summarize", "--device", device, "--memory-report", str(report)]
    wall, cpu, peak, code = run_transcribe(files, out, log, *flags)
    if code != 0:
        raise RuntimeError(f"the isolated batch failed (exit {code}): see {log}")
    memory = json.loads(report.read_text())
    stages = {s["name"]: s for s in memory["stages"]}
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": peak,
        "memory": memory,
        "stages": stages,
        "out": out,
    }


def _transcribe_only(files: list[Path], work: Path, log: Path, device: str) -> float:
    """Wall time of the workflow's transcribe stage alone (no diarization, no summary)."""
    report = work / "transcribe-only.json"
    flags = ["--device", device, "-f", "json", "--memory-report", str(report)]
    code = run_transcribe(files, work / "transcribe-only", log, *flags)[3]
    if code != 0:
        raise RuntimeError(f"the transcribe-only batch failed (exit {code}): see {log}")
    stages = json.loads(report.read_text())["stages"]
    return float(next(s["wall_s"] for s in stages if s["name"] == "transcribe"))


def _real_recordings(
    work: Path, log: Path, device: str, jfk: Path | None, meeting: Path | None, rttm: Path | None
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if jfk is not None:
        reference = (
            "And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country."
        )
        out = work / "jfk"
        run_transcribe([jfk], out, log, "--device", device, "-f", "json")
        direct = _baseline("direct", [jfk], work, log, device)
        result["jfk"] = {
            "wer_workflow": _wer([reference], _texts(out, [jfk])),
            "wer_direct": _wer([reference], [direct["texts"][jfk.stem]]),
        }
    if meeting is not None and rttm is not None:
        out = work / "meeting"
        run_transcribe([meeting], out, log, "--device", device, "--diarize", "-f", "rttm,json")
        hyp = out / f"{meeting.stem}.rttm"
        result["meeting"] = {
            "der_no_collar": _der([(rttm, hyp)]),
            "der_collar_0_5_skip_overlap": _der([(rttm, hyp)], collar=0.5, skip_overlap=True),
            "speakers_found": _speaker_counts(out, [meeting])[0],
        }
    return result


def run_pipeline_bench(
    files: int = 10,
    device: str = "auto",
    audio_dir: str | os.PathLike[str] | None = None,
    jfk: str | os.PathLike[str] | None = None,
    meeting: str | os.PathLike[str] | None = None,
    meeting_rttm: str | os.PathLike[str] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    llm_max_tokens: int = 64,
    backend: str = "local",
) -> dict[str, Any]:
    """Run every design on the same conversations and score them (see the module docstring).

    Args:
        files: how many generated two-speaker conversations (~30 s each).
        device: ``auto``, ``cpu`` or ``cuda`` for every design.
        audio_dir: cache folder for the generated audio (default :data:`DEFAULT_AUDIO_DIR`).
        jfk: optional real one-speaker recording of JFK's "ask not" sentence, for WER.
        meeting: optional real meeting excerpt, for DER; needs ``meeting_rttm``.
        meeting_rttm: the meeting's reference RTTM.
        work_dir: where outputs and logs go (default: a temporary folder, removed after).
        backend: ``local``, or ``ray`` for the local batch beside the Ray backend's instead of
            the other designs (see :mod:`modelmora.bench.ray`).
        llm_max_tokens: summary length for every design (short: the LLM dominates the time).

    Returns:
        The figures as a JSON-ready dict (``targets`` holds each figure against its target).

    Raises:
        ValueError: a bad argument.
        RuntimeError: a design failed (its log is named).
    """
    if files < 1:
        raise ValueError(f"files must be at least 1, got {files}")
    check_device(device)
    if (meeting is None) != (meeting_rttm is None):
        raise ValueError("give both --meeting and --meeting-rttm, or neither")
    if backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {backend!r}: use one of local, ray")
    audio = make_bench_audio(audio_dir or DEFAULT_AUDIO_DIR, files)
    with tempfile.TemporaryDirectory(prefix="modelmora-bench-") as tmp:
        work = Path(work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "bench.log"
        (work / CONFIG_NAME).write_text(f"llm_max_tokens: {llm_max_tokens}\n")
        two, three = audio["two"], audio["three"]
        if backend == "ray":
            from modelmora.bench.ray import run_ray_bench

            return run_ray_bench(two, work, log, device)
        iso = _isolated(two, work, log, device)
        inproc = _baseline("inprocess", two, work, log, device, llm_max_tokens)
        per_file = [_baseline("inprocess", [w], work, log, device, llm_max_tokens) for w in two]
        direct = _baseline("direct", two, work, log, device)
        # the transcription figure is small against this machine's noise: a second pair of
        # runs, in the same order (workflow, then direct), and the medians of both pairs
        transcribe_s = [
            iso["stages"]["transcribe"]["wall_s"],
            _transcribe_only(two, work, log, device),
        ]
        direct_s = [direct["wall_s"], _baseline("direct", two, work, log, device)["wall_s"]]
        run_transcribe(three, work / "three", log, "--diarize", "--device", device, "-f", "rttm")
        real = _real_recordings(
            work,
            log,
            device,
            Path(jfk) if jfk else None,
            Path(meeting) if meeting else None,
            Path(meeting_rttm) if meeting_rttm else None,
        )
        references = [_reference_text(w) for w in two]
        quality = {
            "wer_workflow": _wer(references, _texts(iso["out"], two)),
            "wer_direct": _wer(references, [direct["texts"][w.stem] for w in two]),
            "der_2spk": _der(
                [(w.with_suffix(".rttm"), iso["out"] / f"{w.stem}.rttm") for w in two]
            ),
            "der_3spk": _der(
                [(w.with_suffix(".rttm"), work / "three" / f"{w.stem}.rttm") for w in three]
            ),
            "speakers_found_2spk": _speaker_counts(iso["out"], two),
            "speakers_found_3spk": _speaker_counts(work / "three", three),
            **real,
        }
    timings = {"workflow_stage_s": transcribe_s, "direct_s": direct_s}
    return _figures(files, device, two, iso, inproc, per_file, direct, quality, timings)


def _figures(
    files: int,
    device: str,
    two: list[Path],
    iso: dict[str, Any],
    inproc: dict[str, Any],
    per_file: list[dict[str, Any]],
    direct: dict[str, Any],
    quality: dict[str, Any],
    transcription: dict[str, list[float]],
) -> dict[str, Any]:
    run = iso["memory"]["run"]
    growth = run["orchestrator_rss_after_mb"] - run["orchestrator_rss_before_mb"]
    per_file_wall = sum(p["wall_s"] for p in per_file)
    whisper_s = statistics.median(transcription["workflow_stage_s"])
    direct_s = statistics.median(transcription["direct_s"])
    figures: dict[str, Any] = {
        "files": files,
        "device": device,
        "cpus": cpu_count(),
        "audio_s": round(sum(w.stat().st_size / 32000 for w in two), 1),
        "memory": {
            "run_peak_rss_mb": run["peak_rss_mb"],
            "max_stage_peak_mb": run["max_stage_peak_mb"],
            "sum_stage_peaks_mb": run["sum_stage_peaks_mb"],
            "peak_over_max_stage": run["peak_rss_mb"] / run["max_stage_peak_mb"],
            "stages": iso["memory"]["stages"],
            "inprocess_peak_rss_mb": inproc["peak_rss_mb"],
            "per_file_peak_rss_mb": max(p["peak_rss_mb"] for p in per_file),
        },
        "orchestrator": {
            "rss_before_mb": run["orchestrator_rss_before_mb"],
            "rss_after_mb": run["orchestrator_rss_after_mb"],
            "growth_mb": growth,
        },
        "wall": {
            "isolated_s": iso["wall_s"],
            "inprocess_s": inproc["wall_s"],
            "per_file_subprocess_s": per_file_wall,
            "isolated_over_inprocess": iso["wall_s"] / inproc["wall_s"],
            "per_file_over_inprocess": per_file_wall / inproc["wall_s"],
            "isolated_cpu_s": iso["cpu_s"],
            "inprocess_cpu_s": inproc["cpu_s"],
            "per_file_subprocess_cpu_s": sum(p["cpu_s"] for p in per_file),
            "isolated_over_inprocess_cpu": iso["cpu_s"] / inproc["cpu_s"],
        },
        "transcription": {
            "workflow_stage_s": whisper_s,
            "direct_s": direct_s,
            "overhead": whisper_s / direct_s - 1.0,
            "runs": transcription,
        },
        "quality": quality,
    }
    figures["targets"] = _targets(figures)
    return figures


def _targets(f: dict[str, Any]) -> dict[str, dict[str, Any]]:
    q = f["quality"]
    checks: dict[str, tuple[float, str, float]] = {
        "peak_over_max_stage": (f["memory"]["peak_over_max_stage"], "<=", 1.10),
        "orchestrator_rss_mb": (f["orchestrator"]["rss_after_mb"], "<=", 150.0),
        "orchestrator_growth_mb": (f["orchestrator"]["growth_mb"], "<=", 5.0),
        "isolated_over_inprocess": (f["wall"]["isolated_over_inprocess"], "<=", 1.15),
        "transcription_overhead": (f["transcription"]["overhead"], "<=", 0.05),
        "wer_workflow_minus_direct": (q["wer_workflow"] - q["wer_direct"], "<=", 0.0),
        "der_2spk": (q["der_2spk"], "<=", 0.15),
        "der_3spk": (q["der_3spk"], "<=", 0.15),
    }
    if "jfk" in q:
        checks["wer_jfk"] = (q["jfk"]["wer_workflow"], "<=", 0.10)
    if "meeting" in q:
        checks["der_meeting_no_collar"] = (q["meeting"]["der_no_collar"], "<=", 0.30)
    return {
        name: {"value": round(value, 4), "target": f"{op} {bound}", "pass": value <= bound + 1e-9}
        for name, (value, op, bound) in checks.items()
    }


def format_table(f: dict[str, Any]) -> Any:
    """The figures as a rich table (one row per figure, with its target and verdict)."""
    from rich.table import Table

    if f.get("backend") == "ray":
        from modelmora.bench.ray import format_ray_table

        return format_ray_table(f)

    table = Table(
        title=f"pipeline benchmark: {f['files']} files, {f['audio_s']} s of audio, "
        f"device {f['device']}, {f['cpus']} CPUs"
    )
    for column in ("figure", "measured", "beside it", "target"):
        table.add_column(column)
    m, o, w, t, q = f["memory"], f["orchestrator"], f["wall"], f["transcription"], f["quality"]
    verdict = {k: ("PASS" if v["pass"] else "FAIL") for k, v in f["targets"].items()}
    rows = [
        (
            "peak RSS, all processes",
            f"{m['run_peak_rss_mb']:.0f} MB",
            f"largest stage {m['max_stage_peak_mb']:.0f} MB; sum of stages "
            f"{m['sum_stage_peaks_mb']:.0f} MB; in-process {m['inprocess_peak_rss_mb']:.0f} MB",
            f"ratio {m['peak_over_max_stage']:.3f} <= 1.10 {verdict['peak_over_max_stage']}",
        ),
        (
            "orchestrator RSS",
            f"{o['rss_after_mb']:.0f} MB",
            f"growth {o['growth_mb']:+.1f} MB over the batch",
            f"<= 150 MB {verdict['orchestrator_rss_mb']}, <= 5 MB "
            f"{verdict['orchestrator_growth_mb']}",
        ),
        (
            "wall, stage-major isolated",
            f"{w['isolated_s']:.1f} s",
            f"in-process {w['inprocess_s']:.1f} s; per-file subprocess "
            f"{w['per_file_subprocess_s']:.1f} s ({w['per_file_over_inprocess']:.2f}x)",
            f"{w['isolated_over_inprocess']:.3f}x <= 1.15 {verdict['isolated_over_inprocess']}",
        ),
        (
            "Whisper through workflow",
            f"{t['workflow_stage_s']:.1f} s",
            f"faster-whisper direct {t['direct_s']:.1f} s (medians of 2 runs each)",
            f"{t['overhead'] * 100:+.1f}% <= 5% {verdict['transcription_overhead']}",
        ),
        (
            "WER generated",
            f"{q['wer_workflow'] * 100:.1f}%",
            f"faster-whisper itself {q['wer_direct'] * 100:.1f}%",
            f"equal {verdict['wer_workflow_minus_direct']}",
        ),
        (
            "DER 2 speakers",
            f"{q['der_2spk'] * 100:.1f}%",
            f"speakers found {q['speakers_found_2spk']}",
            f"<= 15% {verdict['der_2spk']}",
        ),
        (
            "DER 3 speakers",
            f"{q['der_3spk'] * 100:.1f}%",
            f"speakers found {q['speakers_found_3spk']}",
            f"<= 15% {verdict['der_3spk']}",
        ),
    ]
    if "isolated_cpu_s" in w:
        rows.insert(
            3,
            (
                "CPU time, stage-major isolated",
                f"{w['isolated_cpu_s']:.1f} s",
                f"in-process {w['inprocess_cpu_s']:.1f} s; per-file subprocess "
                f"{w['per_file_subprocess_cpu_s']:.1f} s",
                f"{w['isolated_over_inprocess_cpu']:.3f}x (load-independent)",
            ),
        )
    if "jfk" in q:
        rows.append(
            (
                "WER jfk (real)",
                f"{q['jfk']['wer_workflow'] * 100:.1f}%",
                f"faster-whisper itself {q['jfk']['wer_direct'] * 100:.1f}%",
                f"<= 10% {verdict['wer_jfk']}",
            )
        )
    if "meeting" in q:
        mt = q["meeting"]
        rows.append(
            (
                "DER meeting (real)",
                f"{mt['der_no_collar'] * 100:.1f}% no collar",
                f"{mt['der_collar_0_5_skip_overlap'] * 100:.1f}% collar 0.5 skip overlap; "
                f"speakers found {mt['speakers_found']}",
                f"< 30% {verdict['der_meeting_no_collar']}",
            )
        )
    for row in rows:
        table.add_row(*row)
    return table


# --- baselines (run as subprocesses: they load the models in their own process) -----------------


def _inprocess(files: list[Path], device: str, max_tokens: int) -> dict[str, Any]:
    """The no-isolation pipeline: every model loaded once, in this process."""
    from modelmora.speech.formats import write_outputs
    from modelmora.speech.transcript import write_atomic
    from modelmora.workflow.inprocess import align, diarize, summarize, transcribe

    texts = {}
    out = Path(tempfile.mkdtemp(prefix="modelmora-inprocess-"))
    for wav in files:
        transcript = align(transcribe(wav, device=device))
        transcript = diarize(wav, transcript)
        summary = summarize(transcript, max_tokens=max_tokens)
        write_outputs(transcript, out, wav.stem)
        write_atomic(out / f"{wav.stem}.summary.md", [summary])
        texts[wav.stem] = transcript.text
    return {"texts": texts}


def _direct(files: list[Path], device: str, max_tokens: int) -> dict[str, Any]:
    """faster-whisper called directly, with the workflow's model and settings."""
    from faster_whisper import WhisperModel

    from modelmora.models.whisper import default_whisper_model

    model = WhisperModel(str(default_whisper_model()), device=device, compute_type="default")
    texts = {}
    for wav in files:
        segments, _ = model.transcribe(str(wav), beam_size=5, vad_filter=True, word_timestamps=True)
        texts[wav.stem] = " ".join(s.text.strip() for s in segments if s.text.strip())
    return {"texts": texts}


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="pipeline benchmark baselines (internal)")
    parser.add_argument("mode", choices=("inprocess", "direct"))
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--llm-max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    run = _inprocess if args.mode == "inprocess" else _direct
    t0 = time.perf_counter()
    data = run(args.files, args.device, args.llm_max_tokens)
    data["inner_s"] = time.perf_counter() - t0
    args.result.write_text(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
