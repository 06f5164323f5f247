"""The batch transcription engine: stage-major, every model in its own worker, resumable.

Data flow of :func:`transcribe_files` (one worker at a time; each stage ends with its worker
stopped and the release verified before the next stage's model loads)::

    files ─► check (missing, empty, folder: failed here, no worker)
          ─► [transcribe worker: Whisper]  each file ─► align ─► .modelmora/<stem>.transcribe.json
          ─► [diarize worker: chosen engine] each file ─► .modelmora/<stem>.diarize.json
          │     [speakers worker: no model] speakers linked across files, named from the library
          │     outputs: <stem>.txt .srt .vtt .json .tsv .rttm
          ─► [summarize worker: LLM]       each file ─► .modelmora/<stem>.summarize.json
          │     <stem>.summary.md
          ─► modelmora-report.json (rewritten after every stage), memory report

Every per-file, per-stage result is saved as soon as it is done, keyed by the file (path, size,
mtime) and the options that shape that stage, so a rerun skips finished work and a crash loses
at most the file in flight. A file that fails (bad audio, a model error, a worker that crashes,
hangs or goes past the memory budget) is recorded and the batch goes on; a crashed worker is
replaced by a fresh one for the remaining files. A failed summary is not a failed file.

Who runs a stage's model over its files is a *stage runner*, chosen by ``options.backend``
(:data:`RUNNERS`): :class:`~modelmora.workflow.local.LocalRunner` (a worker on this machine) or
:class:`~modelmora.workflow.ray.RayRunner` (actors on a Ray cluster's nodes). Both account for
every file through one :class:`~modelmora.workflow.stages.StageBook`; everything else (the
stages, resume, outputs, report) is here and the same for both.

This module never imports an ML framework, nor numpy: the models, and the numeric work of
linking speakers, live in the workers only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelmora.errors import WorkerError
from modelmora.models import ModelSpec
from modelmora.runtime.memory import TreeSampler, gpu_used_mb, process_rss_mb
from modelmora.runtime.worker import Worker
from modelmora.speech.audio import AudioError, check_audio_file
from modelmora.speech.formats import parse_formats, prepare_writers
from modelmora.speech.transcript import Transcript, write_atomic
from modelmora.workflow.inprocess import align
from modelmora.workflow.local import LocalRunner
from modelmora.workflow.options import TranscribeOptions
from modelmora.workflow.ray import RayRunner
from modelmora.workflow.report import REPORT_NAME, BatchReport, FileResult, StageStats
from modelmora.workflow.runlog import run_log
from modelmora.workflow.stages import (
    STATE_DIR,
    Job,
    Run,
    Stage,
    StageBook,
    StageRunner,
    failure_reason,
)

__all__ = [
    "REPORT_NAME",
    "RUNNERS",
    "STATE_DIR",
    "BatchReport",
    "FileResult",
    "StageStats",
    "build_stages",
    "transcribe_files",
]

logger = logging.getLogger(__name__)

_UNSURE_LANGUAGE = 0.5  # below this detection probability the report says to check it

#: The stage runners, by the ``backend`` option value that selects each.
RUNNERS: dict[str, type[StageRunner]] = {r.name: r for r in (LocalRunner, RayRunner)}


# --- per-file state --------------------------------------------------------------------------


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _fingerprint(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output stems, made distinct when two inputs share a name (``a``, ``a-2``...)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = path.stem or "audio"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        stems.append(stem if count == 1 else f"{stem}-{count}")
    if len(set(stems)) != len(stems):  # "a-2" given alongside two "a": fall back to indexes
        stems = [f"{stem}-{i}" for i, stem in enumerate(stems, 1)]
    return stems


# --- stages ------------------------------------------------------------------------------------


def _whisper_stage(run: Run) -> Stage:
    opts = run.options
    params: dict[str, Any] = {
        "model": opts.model,
        "device": opts.device,
        "compute_type": opts.compute_type,
        "language": opts.language,
        "vad_filter": opts.vad_filter,
        "beam_size": opts.beam_size,
        "batch_size": opts.batch_size,
        "initial_prompt": opts.initial_prompt,
        "hotwords": opts.hotwords,
    }
    spec = ModelSpec("whisper", params)

    def accept(job: Job, output: Any) -> None:
        transcript = align(Transcript.from_dict(output))
        job.transcript = transcript.to_dict()
        job.result.duration_s = round(transcript.duration, 3)
        job.result.language = transcript.language
        job.result.language_probability = transcript.language_probability
        if not transcript.segments:
            job.result.note = "no speech detected"
        elif (transcript.language_probability or 1.0) < _UNSURE_LANGUAGE:
            job.result.note = (
                f"language detection unsure ({transcript.language}, probability "
                f"{transcript.language_probability:.2f}): pass --language if it is wrong"
            )
        if not opts.diarize:
            run.write_transcript(job)

    return Stage(
        name="transcribe",
        spec=spec,
        key_params=params,
        upstream=None,
        item=lambda job: {"audio": str(job.path), "language": opts.language},
        accept=accept,
        streams=True,
    )


def _diarize_stage(run: Run) -> Stage:
    opts = run.options
    params: dict[str, Any] = {
        "engine": opts.diarizer,
        "num_speakers": opts.num_speakers,
        "device": opts.device,
    }
    if opts.min_speakers is not None:
        params["min_speakers"] = opts.min_speakers
    if opts.max_speakers is not None:
        params["max_speakers"] = opts.max_speakers
    if opts.diarizer_model is not None:
        params["pipeline"] = opts.diarizer_model
    if opts.hf_token is not None:
        params["hf_token"] = opts.hf_token
    if opts.speakers:  # enrolled voices guide the clustering (True: the default library)
        params["known_voices"] = opts.library or True

    def accept(job: Job, output: Any) -> None:
        assert job.transcript is not None
        job.transcript = {
            **job.transcript,
            **{k: output[k] for k in _DIARIZED if k in output},
        }
        if not (opts.link or opts.speakers):  # else written once the batch is identified
            run.write_transcript(job)

    return Stage(
        name="diarize",
        spec=ModelSpec("diarizer", params),
        key_params={k: v for k, v in params.items() if k != "hf_token"},  # a secret
        upstream="transcribe",
        item=lambda job: {
            "audio": str(job.path),
            "segments": (job.transcript or {}).get("segments", []),
        },
        accept=accept,
    )


_DIARIZED = ("segments", "turns", "speaker_embeddings", "embedding_model")


def _identify(run: Run, jobs: list[Job], stats: StageStats) -> None:
    """Link and name the batch's speakers (end of the diarize stage), then write outputs.

    The comparisons need numpy, which this process must not import (it would keep its memory
    for the rest of the batch), so they run in a short worker of the ``speakers`` adapter: no
    model, only the embeddings the diarizer's results carry. Not in the diarizer's own worker:
    a resumed stage or a crashed worker leaves none to ask, and on Ray it runs on nodes that
    may not see the speaker library. If this worker dies, the files keep their own labels.
    """
    t0 = time.perf_counter()
    done = [j for j in jobs if j.result.ok and j.transcript is not None and not j.written]
    found = _identified(run, [j.transcript or {} for j in done], stats)
    for job, transcript in zip(done, found["transcripts"], strict=True):
        job.transcript = transcript
    for name, level, message in found["log"]:  # the worker's records, as if logged here
        logging.getLogger(name).log(level, "%s", message)
    for warning in found["warnings"]:
        run.say(f"warning: {warning}", style="yellow")
        logger.warning("%s", warning)
    stats.identify_s = time.perf_counter() - t0
    logger.info(
        "speakers: %d people across %d file(s), %d named, in %.3f s",
        found["people"],
        len(done),
        found["named"],
        stats.identify_s,
    )
    for job in done:
        run.write_transcript(job)


def _identified(run: Run, transcripts: list[dict[str, Any]], stats: StageStats) -> dict[str, Any]:
    """The ``speakers`` adapter's output for these transcripts (see :func:`_identify`)."""
    opts = run.options
    unchanged: dict[str, Any] = {
        "transcripts": [Transcript.from_dict(t).to_dict() for t in transcripts],
        "people": 0,
        "named": 0,
        "model": None,
        "warnings": [],
        "log": [],
    }
    if not any(t.get("speaker_embeddings") for t in transcripts):
        return unchanged  # nothing to compare: no worker
    item = {
        "transcripts": transcripts,
        "link": opts.link,
        "speakers": opts.speakers,
        "library": opts.library,
    }
    worker = Worker(
        ModelSpec("speakers"),
        name="speakers",
        memory_limit_mb=opts.memory_budget_mb(),
        threads=opts.threads,
        stderr=run.log_file,
    )
    try:
        worker.start()
        (found,) = worker.call([item], timeout=opts.file_timeout)
    except WorkerError as exc:  # it crashed, hung or went over the budget
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {**unchanged, "warnings": [f"speakers not linked or named: {reason}"]}
    except BaseException:  # Ctrl-C (or a bug): no graceful stop to wait for
        worker.kill()
        raise
    finally:
        stats.released = worker.stop().released and stats.released
    return dict(found)


def _summarize_stage(run: Run) -> Stage:
    opts = run.options
    params: dict[str, Any] = {
        "model": opts.llm,
        "n_ctx": opts.llm_n_ctx,
        "max_tokens": opts.llm_max_tokens,
        "remote_model": opts.llm_remote_model,
    }
    if opts.threads:
        params["n_threads"] = opts.threads

    def accept(job: Job, output: Any) -> None:
        _write_summary(run, job, str(output["summary"]).strip(), params)
        facts = output.get("facts") or {}
        job.result.summary = {
            "status": "ok",
            "reason": None,
            "items": facts.get("items"),
            "unsupported": facts.get("unsupported"),
        }
        with_summary = [name for name in run.formats if name in ("html", "docx")]
        if with_summary and job.written:
            run.write_transcript(job, with_summary)

    return Stage(
        name="summarize",
        spec=ModelSpec("llm", params),
        key_params=params,
        upstream="diarize" if opts.diarize else "transcribe",
        item=lambda job: {"task": "summarize", "segments": (job.transcript or {})["segments"]},
        accept=accept,
        fatal=False,
        wants=lambda job: job.transcript is not None and bool(job.transcript["segments"]),
    )


def _write_summary(run: Run, job: Job, text: str, params: dict[str, Any]) -> None:
    llm = params["model"] or "SmolLM2-135M-Instruct (the packaged default)"
    body = text or "_The model returned an empty summary._"
    path = run.out_dir / f"{job.result.stem}.summary.md"
    write_atomic(path, [f"# Summary of {job.path.name}\n\n{body}\n\n---\n_Written by {llm}._\n"])
    job.result.outputs.append(str(path))


def build_stages(run: Run) -> list[Stage]:
    """The batch's stages, in order: transcribe, then diarize and summarize when asked for.

    Args:
        run: the batch's shared state (its options decide the stages and their models).
    """
    options = run.options
    stages = [_whisper_stage(run)]
    stages += [_diarize_stage(run)] if options.diarize else []
    stages += [_summarize_stage(run)] if options.summarize else []
    return stages


def _run_stage(run: Run, stage: Stage, jobs: list[Job], runner: StageRunner) -> StageStats:
    """Run one stage over every job that wants it: cached results first, then the runner."""
    stats = StageStats(stage.name, gpu_before_mb=gpu_used_mb())
    todo = [job for job in jobs if stage.wants(job)]
    for job in jobs:
        if job not in todo and job.result.ok:
            job.result.stages[stage.name] = {"status": "skipped"}
    task = run.progress.add_task(stage.name, total=len(todo)) if run.progress else None
    book = StageBook(run, stage, stats, task)
    pending = []
    for job in todo:
        job.keys[stage.name] = _hash(
            [stage.name, stage.key_params, job.keys.get(stage.upstream or "", job.fingerprint)]
        )
        saved = run.load_cached(job, stage.name)
        if saved is None:
            pending.append(job)
        else:
            book.cached(job, saved)
    if pending:
        runner.process(book, pending)
    stats.gpu_after_mb = gpu_used_mb()
    logger.info("stage %s: %s", stage.name, stats)
    return stats


# --- entry point -----------------------------------------------------------------------------


def _make_progress(console: Console | None) -> Progress | None:
    if console is None:
        return None
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _prepare(paths: Sequence[str | os.PathLike[str]], run: Run) -> list[Job]:
    """Jobs for the inputs; files that are missing, empty or not files fail here."""
    files = [Path(p) for p in paths]
    jobs = []
    for path, stem in zip(files, _unique_stems(files), strict=True):
        job = Job(path, FileResult(str(path), stem))
        if run.options.summarize:
            job.result.summary = {"status": "skipped", "reason": "no transcript"}
        try:
            check_audio_file(path)
            job.fingerprint = _fingerprint(path)
        except (AudioError, OSError) as exc:
            reason = failure_reason(exc, path)
            job.result.status, job.result.error = "failed", f"input: {reason}"
            run.say(f"error: {path}: {reason}")
            logger.warning("%s: %s", path, reason)
        for folder in (run.out_dir, run.state_dir):  # temporary files left by a killed run
            for tmp in folder.glob(f".{job.result.stem}.*.tmp"):
                tmp.unlink(missing_ok=True)
        jobs.append(job)
    return jobs


def _write_report(report: BatchReport) -> None:
    write_atomic(report.report_path, [json.dumps(report.to_dict(), indent=2), "\n"])


def transcribe_files(
    paths: Sequence[str | os.PathLike[str]],
    options: TranscribeOptions | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    console: Console | None = None,
) -> BatchReport:
    """Transcribe a batch of audio files, each stage in its own worker, stage-major.

    Args:
        paths: the audio files (any format FFmpeg reads).
        options: how to transcribe (defaults: bundled tiny.en, no diarization, no summary).
        out_dir: where outputs go (default: ``options.output_dir``); created if missing.
        console: where progress bars and one-line failure messages go (None: nowhere; the
            log file in ``out_dir`` gets everything either way).

    Returns:
        The batch report (also written to ``out_dir/modelmora-report.json``). Its
        ``exit_code`` is 1 when any file failed.

    Raises:
        ValueError: a bad option value (checked before any work).
        OSError: the output folder cannot be created or written.
    """
    options = (options or TranscribeOptions()).validate()
    prepare_writers(parse_formats(options.formats))  # before the baseline: a one-time cost
    before = process_rss_mb()
    t0 = time.perf_counter()
    folder = Path(out_dir if out_dir is not None else options.output_dir)
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    sampler = TreeSampler().start()
    try:
        with run_log(folder) as (log_path, log_file):
            progress = _make_progress(console)
            run = Run(options, folder, log_file, progress, console)
            logger.info("batch of %d file(s) into %s with %s", len(paths), folder, options)
            jobs = _prepare(paths, run)
            report = BatchReport(
                [j.result for j in jobs], [], {}, folder, folder / REPORT_NAME, log_path
            )
            with progress or contextlib.nullcontext(), RUNNERS[options.backend](options) as runner:
                for stage in build_stages(run):
                    report.stages.append(_run_stage(run, stage, jobs, runner))
                    if stage.name == "diarize" and (options.link or options.speakers):
                        _identify(run, jobs, report.stages[-1])
                    _write_report(report)
            _finish(run, jobs, report)
            sampler.stop()
            _write_run_figures(
                report, sampler, before, time.perf_counter() - t0, options.memory_report
            )
            logger.info(
                "batch done: %d ok, %d failed", len(jobs) - len(report.failed), len(report.failed)
            )
    finally:
        sampler.stop()  # an error or Ctrl-C above: it must not keep sampling
    return report


def _finish(run: Run, jobs: list[Job], report: BatchReport) -> None:
    """What is left once every stage ran: transcripts not written yet, summary reasons."""
    for job in jobs:  # a transcript whose diarization failed is still written
        if not job.written:
            run.write_transcript(job)
    for job in jobs:
        if job.result.summary.get("status") == "skipped" and job.transcript is not None:
            job.result.summary["reason"] = "no speech detected"


def _write_run_figures(
    report: BatchReport,
    sampler: TreeSampler,
    rss_before_mb: float,
    wall_s: float,
    memory_report: str | None,
) -> None:
    """The whole run's memory and time into the report; the report and memory report out."""
    report.wall_s = wall_s
    peaks = [s.peak_rss_mb for s in report.stages]
    report.run = {
        "peak_rss_mb": round(sampler.peak_mb, 1),
        "max_stage_peak_mb": round(max(peaks, default=0.0), 1),
        "sum_stage_peaks_mb": round(sum(peaks), 1),
        "orchestrator_rss_before_mb": round(rss_before_mb, 1),
        "orchestrator_rss_after_mb": round(process_rss_mb(), 1),
        "wall_s": round(report.wall_s, 3),
    }
    _write_report(report)
    if memory_report is not None:
        write_atomic(Path(memory_report), [json.dumps(report.memory_report(), indent=2), "\n"])
