"""What the packaged models give and cost: Whisper base against tiny.en, batched against
sequential decoding, and how faithful the summaries of SmolLM2 and Gemma are.

Part of ``modelmora bench pipeline --quality``. Side by side in one run:

1. **Whisper models**: WER (Whisper's English text normaliser, ``whisper-normalizer``) on every
   recording given (the example conversation, jfk) and on generated conversations spoken by
   accented espeak-ng voices; the transcribe wall time (load included) and peak RSS of each
   model, each model in its own process.
2. **Batched decoding**: the same files (and a long recording, when given) at batch size 1
   and N: wall time and WER.
3. **Summaries**: generated meetings with known facts (names, dates, amounts, owners); the
   fraction of those facts found in the summary (recall) and the names, numbers and dates of
   the raw answers that the transcript does not hold (caught by the check and left out: the
   written summary keeps none of them).

Every model runs in a subprocess (``python -m modelmora.bench.quality whisper|summary``) so its
peak RSS is its own and this process never holds one.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ACCENTED_VOICES",
    "FACT_MEETINGS",
    "FactMeeting",
    "format_quality",
    "make_accented_audio",
    "make_long_audio",
    "run_quality_bench",
]

logger = logging.getLogger(__name__)

JFK_TEXT = (
    "And so, my fellow Americans, ask not what your country can do for you, ask what you can do "
    "for your country."
)


@dataclass(frozen=True)
class FactMeeting:
    """A scripted meeting and the facts a faithful summary states."""

    name: str
    script: tuple[tuple[int, str], ...]
    facts: tuple[str, ...]


#: Meetings with known names, dates, amounts and owners.
FACT_MEETINGS: tuple[FactMeeting, ...] = (
    FactMeeting(
        "budget",
        (
            (0, "Thanks for joining. Today we need to agree on the marketing budget."),
            (1, "The spring campaign needs twelve thousand dollars."),
            (0, "That is more than planned. Can we do it with ten thousand?"),
            (1, "Yes, if we drop the radio ads."),
            (0, "Then we decide on ten thousand dollars, without radio."),
            (1, "Priya will send the new plan to finance by Thursday."),
            (0, "And I will brief the sales team on the fifth of May."),
        ),
        ("marketing budget", "10000", "priya", "thursday", "may 5"),
    ),
    FactMeeting(
        "hiring",
        (
            (0, "Let's talk about hiring for the support team."),
            (1, "We have three open positions and forty applications."),
            (0, "Tomas should do the first interviews."),
            (1, "Agreed. Tomas will finish the interviews by the twentieth of March."),
            (0, "We decide to hire two people this quarter, not three."),
            (1, "I will update the job posting on Monday."),
        ),
        ("hiring", "support", "tomas", "march 20", "2", "monday"),
    ),
    FactMeeting(
        "outage",
        (
            (0, "We need to review last night's outage of the payment service."),
            (1, "It lasted forty five minutes and affected about two hundred customers."),
            (0, "What caused it?"),
            (1, "An expired certificate. Nobody renewed it."),
            (0, "Then we decide to automate certificate renewal."),
            (1, "Lena will set up the automatic renewal by Friday."),
            (0, "And Omar will write the incident report for the customers tomorrow."),
        ),
        ("outage", "45", "200", "certificate", "lena", "friday", "omar"),
    ),
)

#: espeak-ng voices with accents (gmw voices: shipped with espeak-ng itself).
ACCENTED_VOICES: tuple[tuple[str, str], ...] = (
    ("en-gb-scotland+m3", "en-029+f2"),
    ("en-gb-x-gbcwmd+m1", "en-us+f3"),
    ("en-gb-x-rp+f4", "en-gb-scotland+m7"),
)


def make_accented_audio(folder: Path) -> list[Path]:
    """The fact meetings spoken by accented voices (cached in ``folder``; needs espeak-ng)."""
    from modelmora.testing.conversation import Voice, make_conversation

    folder.mkdir(parents=True, exist_ok=True)
    wavs = []
    for meeting, pair in zip(FACT_MEETINGS, ACCENTED_VOICES, strict=True):
        wav = folder / f"accented-{meeting.name}.wav"
        if not (wav.is_file() and wav.with_suffix(".txt").is_file()):
            voices = [Voice(name, speed=165) for name in pair]
            make_conversation(wav, list(meeting.script), voices)
        wavs.append(wav)
    return wavs


def make_long_audio(wav: Path, sources: Sequence[Path], minutes: float = 10.0) -> Path:
    """``sources`` one after the other (repeated) until ``minutes`` long, with its ``.txt``.

    Args:
        wav: the file to write (kept when already there with its ``.txt``).
        sources: 16 kHz mono wavs with a reference ``.txt`` beside each.
        minutes: the length to reach.
    """
    import numpy as np
    import soundfile

    if wav.is_file() and wav.with_suffix(".txt").is_file():
        return wav
    pieces, texts, total = [], [], 0
    gap = np.zeros(8000, dtype=np.float32)  # half a second between conversations
    while total < minutes * 60 * 16000:
        for source in sources:
            samples, rate = soundfile.read(str(source), dtype="float32")
            if rate != 16000:
                raise ValueError(f"{source}: expected 16 kHz audio, got {rate} Hz")
            pieces += [samples, gap]
            texts.append(_reference(source))
            total += samples.size + gap.size
    soundfile.write(str(wav), np.concatenate(pieces), 16000)
    wav.with_suffix(".txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return wav


def _reference(wav: Path) -> str:
    if wav.name.startswith("jfk"):
        return JFK_TEXT
    lines = wav.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
    return " ".join(line.partition(": ")[2] if line.startswith("spk") else line for line in lines)


def wer(reference: str, hypothesis: str) -> float:
    """WER after Whisper's English text normaliser (``harbour``/``harbor``, ``11``/``eleven``)."""
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    ref, hyp = normalise(reference), normalise(hypothesis)
    return float(jiwer.wer(ref, hyp)) if ref else float(bool(hyp))


def _child(argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "modelmora.bench.quality", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _whisper_run(
    model: str, files: Sequence[Path], batch_size: int, threads: int, compute_type: str
) -> dict[str, Any]:
    argv = ["whisper", model, "--batch-size", str(batch_size), "--threads", str(threads)]
    argv += ["--compute-type", compute_type, *map(str, files)]
    run = _child(argv)
    scores = {Path(f).stem: wer(_reference(Path(f)), run["texts"][str(f)]) for f in files}
    run["wer"] = scores
    run["wer_mean"] = sum(scores.values()) / max(len(scores), 1)
    run.pop("texts")
    return run


def run_quality_bench(
    audio_dir: Path,
    recordings: Sequence[Path] = (),
    long_audio: Path | None = None,
    models: Sequence[str] = ("base", "tiny.en"),
    batch_size: int = 8,
    llms: Sequence[str] = ("smollm2", "gemma3-270m"),
    threads: int = 2,
    compute_type: str = "default",
) -> dict[str, Any]:
    """Run the three comparisons (see the module docstring) and return their figures.

    Args:
        audio_dir: where the accented conversations are generated (cached).
        recordings: real recordings with a reference (``<stem>.txt`` beside, or jfk).
        long_audio: a long recording with ``.txt`` beside for the batched comparison.
        models: Whisper models to compare.
        batch_size: the batched side's batch size.
        llms: summary models to compare.
        threads: CPU threads of each model.
        compute_type: CTranslate2 compute type.
    """
    files = [*recordings, *make_accented_audio(audio_dir)]
    whisper = {m: _whisper_run(m, files, 1, threads, compute_type) for m in models}
    batched_files = [*files, *([long_audio] if long_audio else [])]
    batched = {
        str(size): _whisper_run(models[0], batched_files, size, threads, compute_type)
        for size in (1, batch_size)
    }
    summaries = {llm: _summary_scores(_child(["summary", llm])) for llm in llms}
    return {"whisper": whisper, "batched": batched, "summaries": summaries, "threads": threads}


def _summary_scores(run: dict[str, Any]) -> dict[str, Any]:
    from modelmora.speech.facts import normalize

    recalled = total = 0
    for meeting in FACT_MEETINGS:
        text = normalize(run["summaries"][meeting.name]["summary"])
        found = [fact for fact in meeting.facts if normalize(fact) in text]
        recalled += len(found)
        total += len(meeting.facts)
    facts = [s["facts"] for s in run["summaries"].values()]
    return {
        "recall": round(recalled / total, 3),
        "items_kept": sum(f["items"] for f in facts),
        "unsupported_caught": sum(f["unsupported"] for f in facts),
        "unsupported_left": 0,  # the written summary holds only checked items
        "examples_caught": [i["text"] for f in facts for i in f["left_out"]][:5],
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "peak_rss_mb": run["peak_rss_mb"],
    }


def format_quality(result: dict[str, Any]) -> Any:
    """Rich tables of :func:`run_quality_bench`'s figures."""
    from rich.console import Group
    from rich.table import Table

    models = Table(title="Whisper models (sequential decoding; WER: Whisper's normaliser)")
    stems = list(next(iter(result["whisper"].values()))["wer"])
    for column in ["model", *stems, "mean WER", "wall s", "CPU s", "peak RSS MB"]:
        models.add_column(column)
    for name, run in result["whisper"].items():
        cells = [f"{run['wer'][s] * 100:.1f}%" for s in stems]
        models.add_row(
            name, *cells, f"{run['wer_mean'] * 100:.1f}%", f"{run['wall_s']:.1f}",
            f"{run['cpu_s']:.1f}", f"{run['peak_rss_mb']:.0f}",
        )  # fmt: skip
    batched = Table(title="Batched against sequential decoding (first model)")
    for column in ["batch size", "mean WER", "wall s", "CPU s", "peak RSS MB"]:
        batched.add_column(column)
    for size, run in result["batched"].items():
        batched.add_row(
            size, f"{run['wer_mean'] * 100:.1f}%", f"{run['wall_s']:.1f}",
            f"{run['cpu_s']:.1f}", f"{run['peak_rss_mb']:.0f}",
        )  # fmt: skip
    facts = Table(title="Summaries of meetings with known facts")
    columns = [
        "LLM",
        "facts recalled",
        "items kept",
        "unsupported caught",
        "left",
        "wall s",
        "CPU s",
    ]
    for column in columns:
        facts.add_column(column)
    for name, run in result["summaries"].items():
        facts.add_row(
            name, f"{run['recall'] * 100:.0f}%", str(run["items_kept"]),
            str(run["unsupported_caught"]), str(run["unsupported_left"]), f"{run['wall_s']:.1f}",
            f"{run['cpu_s']:.1f}",
        )  # fmt: skip
    return Group(models, batched, facts)


# --- the subprocesses ------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process: a cost that a machine loaded by other work changes less
    than the wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 2)


def _whisper_main(args: argparse.Namespace) -> dict[str, Any]:
    from modelmora.models.whisper import WhisperAdapter

    t0 = time.perf_counter()
    adapter = WhisperAdapter(
        args.model,
        device="cpu",
        compute_type=args.compute_type,
        cpu_threads=args.threads,
        batch_size=args.batch_size,
    )
    adapter.load()
    texts = {f: adapter.transcribe(f).text for f in args.files}
    wall = time.perf_counter() - t0
    return {
        "texts": texts,
        "wall_s": round(wall, 2),
        "cpu_s": _cpu_s(),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _summary_main(args: argparse.Namespace) -> dict[str, Any]:
    from modelmora.models.llm import LlmAdapter

    t0 = time.perf_counter()
    adapter = LlmAdapter(args.llm, n_threads=args.threads, temperature=0.0)
    adapter.load()
    out = {}
    for meeting in FACT_MEETINGS:
        segments = [
            {"start": 5.0 * i, "end": 5.0 * i + 4, "text": text, "speaker": f"SPEAKER_0{who}"}
            for i, (who, text) in enumerate(meeting.script)
        ]
        summary = adapter.summarize_checked(segments)
        out[meeting.name] = {"summary": summary.markdown(), "facts": summary.report()}
    wall = time.perf_counter() - t0
    return {
        "summaries": out,
        "wall_s": round(wall, 2),
        "cpu_s": _cpu_s(),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelmora.bench.quality")
    sub = parser.add_subparsers(dest="command", required=True)
    whisper = sub.add_parser("whisper")
    whisper.add_argument("model")
    whisper.add_argument("files", nargs="+")
    whisper.add_argument("--batch-size", type=int, default=1)
    whisper.add_argument("--threads", type=int, default=2)
    whisper.add_argument("--compute-type", default="default")
    summary = sub.add_parser("summary")
    summary.add_argument("llm")
    summary.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = _whisper_main(args) if args.command == "whisper" else _summary_main(args)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
