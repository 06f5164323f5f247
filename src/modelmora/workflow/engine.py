"""The batch transcription engine: stage-major, every model in its own worker, resumable.

Data flow of :func:`transcribe_files` (one worker at a time; each stage ends with its worker
stopped and the release verified before the next stage's model loads)::

    files ─► check (missing, empty, folder: failed here, no worker)
          ─► [transcribe worker: Whisper]  each file ─► align ─► .modelmora/<stem>.transcribe.json
          ─► [diarize worker: chosen engine] each file ─► .modelmora/<stem>.diarize.json
          │     speakers linked across files and named from the library (parent, no model)
          │     outputs: <stem>.txt .srt .vtt .json .tsv .rttm
          ─► [summarize worker: LLM]       each file ─► .modelmora/<stem>.summarize.json
          │     <stem>.summary.md
          ─► modelmora-report.json (rewritten after every stage), memory report

Every per-file, per-stage result is saved as soon as it is done, keyed by the file (path, size,
mtime) and the options that shape that stage, so a rerun skips finished work and a crash loses
at most the file in flight. A file that fails (bad audio, a model error, a worker that crashes,
hangs or goes past the memory budget) is recorded and the batch goes on; a crashed worker is
replaced by a fresh one for the remaining files. A failed summary is not a failed file.

This module never imports an ML framework: the models live in the workers only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelmora.errors import MemoryLimitExceeded, WorkerCrashed, WorkerError, WorkerTimeout
from modelmora.models import Adapter, ModelSpec, resolve_adapter
from modelmora.runtime.memory import TreeSampler, gpu_used_mb, process_rss_mb
from modelmora.runtime.worker import Worker
from modelmora.speech.audio import AudioError, check_audio_file
from modelmora.speech.transcript import Transcript, parse_formats, write_atomic, write_outputs
from modelmora.workflow.inprocess import align
from modelmora.workflow.options import TranscribeOptions
from modelmora.workflow.report import (
    REPORT_NAME,
    REPORT_VERSION,
    BatchReport,
    FileResult,
    StageStats,
)
from modelmora.workflow.runlog import run_log

__all__ = [
    "REPORT_NAME",
    "STATE_DIR",
    "BatchReport",
    "CrashOnMatch",
    "FileResult",
    "StageStats",
    "transcribe_files",
]

logger = logging.getLogger(__name__)

#: Folder (inside the output folder) holding the per-file, per-stage results that resume uses.
STATE_DIR = ".modelmora"
_STATE_VERSION = REPORT_VERSION


# --- fault injection (tests) ----------------------------------------------------------------


class CrashOnMatch(Adapter):
    """Wraps an adapter and segfaults on inputs whose audio file name matches a glob.

    A test hook (``TranscribeOptions.crash_on`` / ``$MODELMORA_CRASH_ON``): it makes a real
    native crash in the real worker, so the batch's crash handling is tested end to end.

    Args:
        inner: the adapter kind to wrap.
        pattern: a glob matched against each input's ``audio`` file name.
        params: the wrapped adapter's parameters.
    """

    def __init__(self, inner: str, pattern: str, params: dict[str, Any] | None = None) -> None:
        self.inner = resolve_adapter(inner)(**(params or {}))
        self.pattern = pattern

    def load(self) -> None:
        self.inner.load()

    def predict(self, batch: list[Any]) -> list[Any]:
        for item in batch:
            if fnmatch.fnmatch(Path(str(item.get("audio", ""))).name, self.pattern):
                ctypes.string_at(0)  # SIGSEGV, on purpose
        return list(self.inner.predict(batch))

    def close(self) -> None:
        self.inner.close()


# --- per-file state --------------------------------------------------------------------------


@dataclass
class _Job:
    """One input file as it moves through the stages."""

    path: Path
    result: FileResult
    fingerprint: dict[str, Any] | None = None
    keys: dict[str, str] = field(default_factory=dict)
    transcript: dict[str, Any] | None = None  # aligned, and labelled once diarized
    written: bool = False


@dataclass
class _Stage:
    """How one stage turns a job into a worker input and a worker output back into state."""

    name: str
    spec: ModelSpec
    key_params: dict[str, Any]
    upstream: str | None
    item: Callable[[_Job], dict[str, Any]]
    accept: Callable[[_Job, Any], None]
    fatal: bool = True  # a failure fails the file (False: only the summary is missing)
    wants: Callable[[_Job], bool] = lambda job: job.result.ok


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


def _one_line(exc: BaseException, path: Path) -> str:
    """A one-line reason, without the path the audio errors already start with."""
    if isinstance(exc, WorkerCrashed):
        code = exc.exitcode
        if code is not None and code < 0:
            try:
                what = f"signal {signal.Signals(-code).name}"
            except ValueError:
                what = f"signal {-code}"
        else:
            what = f"exit code {code}"
        return f"worker crashed ({what}); a fresh worker continued with the rest"
    if isinstance(exc, MemoryLimitExceeded):
        return (
            f"worker went over the memory budget ({exc.measured_mb:.0f} MB > "
            f"{exc.limit_mb:.0f} MB) and was killed"
        )
    if isinstance(exc, WorkerTimeout):
        return "timed out (the worker was killed; raise file_timeout for long files)"
    text = (str(exc).strip().splitlines() or [""])[0]
    for prefix in (f"{path}: ", f"{path.absolute()}: "):  # resolve() raises on a link loop
        text = text.removeprefix(prefix)
    if isinstance(exc, (AudioError, WorkerError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the run ---------------------------------------------------------------------------------


class _Run:
    """State shared by the stages of one batch: options, folders, log, progress, report."""

    def __init__(
        self,
        options: TranscribeOptions,
        out_dir: Path,
        log_file: IO[Any],
        progress: Progress | None,
        console: Console | None,
    ) -> None:
        self.options = options
        self.out_dir = out_dir
        self.state_dir = out_dir / STATE_DIR
        self.formats = parse_formats(options.formats)
        self.log_file = log_file
        self.progress = progress
        self.console = console
        self.process: Callable[[_Run, _Stage, list[_Job], StageStats, Any], None] = _process

    def say(self, line: str, style: str = "red") -> None:
        """One line on the console (above the progress bars), or nothing without one."""
        if self.console is not None:
            self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    def cache_path(self, job: _Job, stage: str) -> Path:
        return self.state_dir / f"{job.result.stem}.{stage}.json"

    def load_cached(self, job: _Job, stage: str) -> dict[str, Any] | None:
        if self.options.overwrite:
            return None
        try:
            saved = json.loads(self.cache_path(job, stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if saved.get("key") != job.keys[stage] or saved.get("version") != _STATE_VERSION:
            return None
        return dict(saved)

    def save(self, job: _Job, stage: str, output: Any, wall_s: float) -> None:
        record = {
            "version": _STATE_VERSION,
            "key": job.keys[stage],
            "source": job.fingerprint,
            "wall_s": round(wall_s, 3),
            "output": output,
        }
        write_atomic(self.cache_path(job, stage), [json.dumps(record)])

    def fail(self, job: _Job, stage: _Stage, reason: str) -> None:
        job.result.stages[stage.name] = {"status": "failed", "error": reason}
        job.keys.pop(stage.name, None)  # later stages must not key on work that did not happen
        if stage.fatal:
            job.result.status = "failed"
            job.result.error = f"{stage.name}: {reason}"
            self.say(f"error: {job.path}: {stage.name} failed: {reason}")
        else:
            job.result.summary = {"status": "failed", "reason": reason}
            self.say(f"warning: {job.path}: no summary: {reason}", style="yellow")
        logger.warning("%s: %s failed: %s", job.path, stage.name, reason)

    def write_transcript(self, job: _Job) -> None:
        """Write the file's transcript outputs (atomically) from its current transcript."""
        if job.transcript is None:
            return
        transcript = Transcript.from_dict(job.transcript)
        paths = write_outputs(transcript, self.out_dir, job.result.stem, self.formats)
        job.result.outputs = [str(p) for p in paths]
        job.result.speakers = transcript.speakers
        job.written = True


# --- stages ------------------------------------------------------------------------------------


def _whisper_stage(run: _Run) -> _Stage:
    opts = run.options
    params: dict[str, Any] = {
        "model": opts.model,
        "device": opts.device,
        "compute_type": opts.compute_type,
        "language": opts.language,
        "vad_filter": opts.vad_filter,
        "beam_size": opts.beam_size,
    }
    spec = ModelSpec("whisper", params)
    if opts.crash_on:
        spec = ModelSpec(
            "modelmora.workflow.engine:CrashOnMatch",
            {"inner": "whisper", "pattern": opts.crash_on, "params": params},
        )

    def accept(job: _Job, output: Any) -> None:
        transcript = align(Transcript.from_dict(output))
        job.transcript = transcript.to_dict()
        job.result.duration_s = round(transcript.duration, 3)
        job.result.language = transcript.language
        if not transcript.segments:
            job.result.note = "no speech detected"
        if not opts.diarize:
            run.write_transcript(job)

    return _Stage(
        name="transcribe",
        spec=spec,
        key_params=params,
        upstream=None,
        item=lambda job: {"audio": str(job.path), "language": opts.language},
        accept=accept,
    )


def _diarize_stage(run: _Run) -> _Stage:
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

    def accept(job: _Job, output: Any) -> None:
        assert job.transcript is not None
        job.transcript = {
            **job.transcript,
            **{k: output[k] for k in _DIARIZED if k in output},
        }
        if not (opts.link or opts.speakers):  # else written once the batch is identified
            run.write_transcript(job)

    return _Stage(
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


def _identify(run: _Run, jobs: list[_Job], stats: StageStats) -> None:
    """Link and name the batch's speakers (end of the diarize stage), then write outputs."""
    from modelmora.speech.speakers import SpeakerLibrary
    from modelmora.workflow.speakers import identify

    opts = run.options
    t0 = time.perf_counter()
    done = [j for j in jobs if j.result.ok and j.transcript is not None and not j.written]
    library = SpeakerLibrary(opts.library) if opts.speakers else None
    result = identify([Transcript.from_dict(j.transcript or {}) for j in done], library, opts.link)
    for job, transcript in zip(done, result.transcripts, strict=True):
        job.transcript = transcript.to_dict()
    for warning in result.warnings:
        run.say(f"warning: {warning}", style="yellow")
        logger.warning("%s", warning)
    stats.identify_s = time.perf_counter() - t0
    logger.info(
        "speakers: %d people across %d file(s), %d named, in %.3f s",
        result.people,
        len(done),
        result.named,
        stats.identify_s,
    )
    for job in done:
        run.write_transcript(job)


def _summarize_stage(run: _Run) -> _Stage:
    opts = run.options
    params: dict[str, Any] = {
        "model": opts.llm,
        "n_ctx": opts.llm_n_ctx,
        "max_tokens": opts.llm_max_tokens,
        "remote_model": opts.llm_remote_model,
    }
    if opts.threads:
        params["n_threads"] = opts.threads

    def accept(job: _Job, output: Any) -> None:
        _write_summary(run, job, str(output["summary"]).strip(), params)
        job.result.summary = {"status": "ok", "reason": None}

    return _Stage(
        name="summarize",
        spec=ModelSpec("llm", params),
        key_params=params,
        upstream="diarize" if opts.diarize else "transcribe",
        item=lambda job: {"task": "summarize", "segments": (job.transcript or {})["segments"]},
        accept=accept,
        fatal=False,
        wants=lambda job: job.transcript is not None and bool(job.transcript["segments"]),
    )


def _write_summary(run: _Run, job: _Job, text: str, params: dict[str, Any]) -> None:
    llm = params["model"] or "the bundled gemma-3 270M base model (a smoke model)"
    body = text or "_The model returned an empty summary._"
    path = run.out_dir / f"{job.result.stem}.summary.md"
    write_atomic(path, [f"# Summary of {job.path.name}\n\n{body}\n\n---\n_Written by {llm}._\n"])
    job.result.outputs.append(str(path))


def _run_stage(run: _Run, stage: _Stage, jobs: list[_Job]) -> StageStats:
    """Run one stage over every job that wants it: cached results first, then one worker."""
    stats = StageStats(stage.name, gpu_before_mb=gpu_used_mb())
    todo = [job for job in jobs if stage.wants(job)]
    for job in jobs:
        if job not in todo and job.result.ok:
            job.result.stages[stage.name] = {"status": "skipped"}
    task = run.progress.add_task(stage.name, total=len(todo)) if run.progress else None
    pending = []
    for job in todo:
        job.keys[stage.name] = _hash(
            [stage.name, stage.key_params, job.keys.get(stage.upstream or "", job.fingerprint)]
        )
        saved = run.load_cached(job, stage.name)
        if saved is None:
            pending.append(job)
            continue
        stage.accept(job, saved["output"])
        job.result.stages[stage.name] = {"status": "cached", "wall_s": saved.get("wall_s")}
        stats.cached += 1
        if run.progress and task is not None:
            run.progress.advance(task)
    if pending:
        run.process(run, stage, pending, stats, task)
    stats.gpu_after_mb = gpu_used_mb()
    logger.info("stage %s: %s", stage.name, stats)
    return stats


def _start(run: _Run, stage: _Stage, stats: StageStats) -> Worker:
    opts = run.options
    logger.info("stage %s: starting its worker (%s)", stage.name, stage.spec.label())
    worker = Worker(
        stage.spec,
        name=stage.name,
        memory_limit_mb=opts.memory_budget_mb(),
        threads=opts.threads,
        stderr=run.log_file,
    )
    worker.start()
    stats.load_s += worker.load_s or 0.0
    _note_memory(worker, stats)
    return worker


def _start_retrying(run: _Run, stage: _Stage, stats: StageStats) -> Worker:
    """Start the stage's worker; once more if the first died while loading (a kill, the OOM
    killer): only a load that fails again fails the rest of the stage's files."""
    try:
        return _start(run, stage, stats)
    except WorkerCrashed as exc:
        logger.warning("stage %s: worker died while loading (%s): one more try", stage.name, exc)
        stats.restarts += 1
        return _start(run, stage, stats)


def _note_memory(worker: Worker, stats: StageStats) -> None:
    if worker.memory is None:
        return
    stats.peak_rss_mb = max(stats.peak_rss_mb, worker.memory.peak_rss_mb)
    if worker.memory.vram_mb is not None:
        stats.peak_vram_mb = max(stats.peak_vram_mb or 0.0, worker.memory.vram_mb)


def _stop(worker: Worker, stats: StageStats) -> None:
    _note_memory(worker, stats)
    report = worker.stop()
    stats.released = stats.released and report.released
    stats.release_s = max(stats.release_s, report.release_s)


def _process(run: _Run, stage: _Stage, pending: list[_Job], stats: StageStats, task: Any) -> None:
    """Run ``pending`` through a worker, replacing it when it dies; every file is accounted."""
    t0 = time.perf_counter()
    worker: Worker | None = None
    try:
        for index, job in enumerate(pending):
            if worker is None:
                if stats.processed or stats.failed:
                    stats.restarts += 1
                try:
                    worker = _start_retrying(run, stage, stats)
                except Exception as exc:  # the model cannot load: no file of this stage can run
                    reason = f"the {stage.name} model did not load: {_one_line(exc, job.path)}"
                    for rest in pending[index:]:
                        run.fail(rest, stage, reason)
                        stats.failed += 1
                    break
            started = time.perf_counter()
            try:
                (output,) = worker.call([stage.item(job)], timeout=run.options.file_timeout)
                stage.accept(job, output)
                run.save(job, stage.name, output, time.perf_counter() - started)
            except Exception as exc:
                run.fail(job, stage, _one_line(exc, job.path))
                stats.failed += 1
                if not worker.alive:  # crashed, hung or over budget: it was killed
                    _stop(worker, stats)
                    worker = None
            else:
                elapsed = round(time.perf_counter() - started, 3)
                job.result.stages[stage.name] = {"status": "done", "wall_s": elapsed}
                stats.processed += 1
            finally:
                if worker is not None:
                    _note_memory(worker, stats)
                if run.progress and task is not None:
                    run.progress.advance(task)
    finally:
        if worker is not None:
            _stop(worker, stats)
        stats.wall_s = time.perf_counter() - t0


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


def _prepare(paths: Sequence[str | os.PathLike[str]], run: _Run) -> list[_Job]:
    """Jobs for the inputs; files that are missing, empty or not files fail here."""
    files = [Path(p) for p in paths]
    jobs = []
    for path, stem in zip(files, _unique_stems(files), strict=True):
        job = _Job(path, FileResult(str(path), stem))
        if run.options.summarize:
            job.result.summary = {"status": "skipped", "reason": "no transcript"}
        try:
            check_audio_file(path)
            job.fingerprint = _fingerprint(path)
        except (AudioError, OSError) as exc:
            reason = _one_line(exc, path)
            job.result.status, job.result.error = "failed", f"input: {reason}"
            run.say(f"error: {path}: {reason}")
            logger.warning("%s: %s", path, reason)
        for folder in (run.out_dir, run.state_dir):  # temporary files left by a killed run
            for tmp in folder.glob(f".{job.result.stem}.*.tmp"):
                tmp.unlink(missing_ok=True)
        jobs.append(job)
    return jobs


@contextlib.contextmanager
def _backend(run: _Run) -> Iterator[None]:
    """For ``backend="ray"``: the stages' models run on a Ray cluster (see ray_backend)."""
    if run.options.backend != "ray":
        yield
        return
    from modelmora.workflow.ray import ray_stage_runner

    with ray_stage_runner(run.options.address) as process:
        run.process = process
        yield


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
    before = process_rss_mb()
    t0 = time.perf_counter()
    folder = Path(out_dir if out_dir is not None else options.output_dir)
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    sampler = TreeSampler().start()
    with run_log(folder) as (log_path, log_file):
        progress = _make_progress(console)
        run = _Run(options, folder, log_file, progress, console)
        logger.info("batch of %d file(s) into %s with %s", len(paths), folder, options)
        jobs = _prepare(paths, run)
        stages = [_whisper_stage(run)]
        stages += [_diarize_stage(run)] if options.diarize else []
        stages += [_summarize_stage(run)] if options.summarize else []
        report = BatchReport(
            [j.result for j in jobs], [], {}, folder, folder / REPORT_NAME, log_path
        )
        with progress or contextlib.nullcontext(), _backend(run):
            for stage in stages:
                report.stages.append(_run_stage(run, stage, jobs))
                if stage.name == "diarize" and (options.link or options.speakers):
                    _identify(run, jobs, report.stages[-1])
                _write_report(report)
        for job in jobs:  # a transcript whose diarization failed is still written
            if not job.written:
                run.write_transcript(job)
        for job in jobs:
            if job.result.summary.get("status") == "skipped" and job.transcript is not None:
                job.result.summary["reason"] = "no speech detected"
        sampler.stop()
        report.wall_s = time.perf_counter() - t0
        peaks = [s.peak_rss_mb for s in report.stages]
        report.run = {
            "peak_rss_mb": round(sampler.peak_mb, 1),
            "max_stage_peak_mb": round(max(peaks, default=0.0), 1),
            "sum_stage_peaks_mb": round(sum(peaks), 1),
            "orchestrator_rss_before_mb": round(before, 1),
            "orchestrator_rss_after_mb": round(process_rss_mb(), 1),
            "wall_s": round(report.wall_s, 3),
        }
        _write_report(report)
        if options.memory_report:
            write_atomic(
                Path(options.memory_report), [json.dumps(report.memory_report(), indent=2), "\n"]
            )
        logger.info(
            "batch done: %d ok, %d failed", len(jobs) - len(report.failed), len(report.failed)
        )
    return report
