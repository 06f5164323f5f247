"""What every stage runner shares: the files, the stages, the batch's state, the bookkeeping.

A *stage runner* runs one stage's model over the files that still need it: the local one
(:mod:`modelmora.workflow.local`, workers on this machine) or the Ray one
(:mod:`modelmora.workflow.ray`, workers on a cluster's nodes). Both account for every file
through one :class:`StageBook`, so a file ends exactly once (done or failed), its progress bar
moves once, and the stage's figures add up the same way whichever runner ran it::

    engine ─► StageBook(run, stage, stats, task) ─► runner.process(book, pending)
                 book.done(job, output, wall_s)     accept + resume state + outputs
                 book.failed(job, reason)           the file's error, the console line
                 book.loaded / restarted / memory / released: the stage's figures
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from rich.console import Console
from rich.progress import Progress

from modelmora.errors import MemoryLimitExceeded, WorkerCrashed, WorkerError, WorkerTimeout
from modelmora.models import ModelSpec
from modelmora.runtime.exits import describe_exit
from modelmora.speech.audio import AudioError
from modelmora.speech.formats import parse_formats, write_outputs
from modelmora.speech.transcript import Transcript, write_atomic
from modelmora.workflow.options import TranscribeOptions
from modelmora.workflow.report import REPORT_VERSION, FileResult, StageStats

__all__ = [
    "STATE_DIR",
    "Job",
    "Run",
    "Stage",
    "StageBook",
    "StageRunner",
    "failure_reason",
]

logger = logging.getLogger(__name__)

#: Folder (inside the output folder) holding the per-file, per-stage results that resume uses.
STATE_DIR = ".modelmora"
_STATE_VERSION = REPORT_VERSION


@dataclass
class Job:
    """One input file as it moves through the stages."""

    path: Path
    result: FileResult
    fingerprint: dict[str, Any] | None = None
    keys: dict[str, str] = field(default_factory=dict)
    transcript: dict[str, Any] | None = None  # aligned, and labelled once diarized
    written: bool = False


def _ok(job: Job) -> bool:
    return job.result.ok


@dataclass
class Stage:
    """How one stage turns a job into a worker input and a worker output back into state.

    Attributes:
        name: the stage (``transcribe``, ``diarize``, ``summarize``).
        spec: the model its worker loads.
        key_params: the options that shape its output (part of the resume key).
        upstream: the stage whose output it reads (its key is part of this one's).
        item: the worker input for a job.
        accept: takes the worker output into the job (and writes what is then final).
        fatal: a failure fails the file (False: only the summary is missing).
        streams: the worker streams progress records (``{"progress_s", "duration_s"}``)
            before the output, so the progress bar moves inside a long file.
        wants: whether a job needs this stage at all.
    """

    name: str
    spec: ModelSpec
    key_params: dict[str, Any]
    upstream: str | None
    item: Callable[[Job], dict[str, Any]]
    accept: Callable[[Job, Any], None]
    fatal: bool = True
    streams: bool = False
    wants: Callable[[Job], bool] = _ok


def failure_reason(exc: BaseException, path: Path) -> str:
    """A one-line reason for a file's failure, without the path the audio errors start with.

    Args:
        exc: what went wrong.
        path: the file it went wrong on.
    """
    if isinstance(exc, WorkerCrashed):
        return (
            f"worker crashed ({describe_exit(exc.exitcode)}); a fresh worker continued "
            "with the rest"
        )
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


class Run:
    """State shared by the stages of one batch: options, folders, log, progress, console.

    Args:
        options: the validated options.
        out_dir: where outputs, the report and the resume state go.
        log_file: the batch's log file (the workers' stderr goes there).
        progress: the progress bars, or None.
        console: where one-line failure messages go, or None.
    """

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

    def say(self, line: str, style: str = "red") -> None:
        """One line on the console (above the progress bars), or nothing without one."""
        if self.console is not None:
            self.console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)

    def cache_path(self, job: Job, stage: str) -> Path:
        """Where the job's saved result of ``stage`` lives."""
        return self.state_dir / f"{job.result.stem}.{stage}.json"

    def load_cached(self, job: Job, stage: str) -> dict[str, Any] | None:
        """The job's saved result of ``stage`` if it is still valid (same key), else None."""
        if self.options.overwrite:
            return None
        try:
            saved = json.loads(self.cache_path(job, stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if saved.get("key") != job.keys[stage] or saved.get("version") != _STATE_VERSION:
            return None
        return dict(saved)

    def save(self, job: Job, stage: str, output: Any, wall_s: float) -> None:
        """Save the job's result of ``stage`` (atomically), keyed for resume."""
        record = {
            "version": _STATE_VERSION,
            "key": job.keys[stage],
            "source": job.fingerprint,
            "wall_s": round(wall_s, 3),
            "output": output,
        }
        write_atomic(self.cache_path(job, stage), [json.dumps(record)])

    def fail(self, job: Job, stage: Stage, reason: str) -> None:
        """Record that ``stage`` failed on ``job`` (the file fails if the stage is fatal)."""
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

    def write_transcript(self, job: Job, formats: list[str] | None = None) -> None:
        """Write the file's transcript outputs (atomically) from its current transcript
        (``formats``: only these, to add the summary to the formats that show it)."""
        if job.transcript is None:
            return
        transcript = Transcript.from_dict(job.transcript)
        summary_md = self.out_dir / f"{job.result.stem}.summary.md"
        summary = (
            summary_md.read_text("utf-8") if job.result.summary.get("status") == "ok" else None
        )
        render = self.options.render_options(str(job.path.resolve()), summary)
        wanted = self.formats if formats is None else formats
        paths = write_outputs(transcript, self.out_dir, job.result.stem, wanted, render)
        if formats is not None:
            return
        job.result.outputs = [str(p) for p in paths]
        job.result.speakers = transcript.speakers
        job.written = True


@dataclass
class StageBook:
    """One stage's accounting: every file it was given ends here once, done or failed.

    Runners call it as things happen; it updates the job, the resume state, the outputs, the
    stage's :class:`StageStats` and the progress bar, the same way for every runner.
    """

    run: Run
    stage: Stage
    stats: StageStats
    task: Any = None  # the stage's progress bar task
    _file_base: float | None = field(default=None, init=False, repr=False)  # bar before the file

    def cached(self, job: Job, saved: dict[str, Any]) -> None:
        """The job's result of this stage was saved by an earlier run."""
        self.stage.accept(job, saved["output"])
        job.result.stages[self.stage.name] = {"status": "cached", "wall_s": saved.get("wall_s")}
        self.stats.cached += 1
        self._advance()

    def done(self, job: Job, output: Any, wall_s: float) -> None:
        """The model answered for ``job`` in ``wall_s`` seconds: take the output, save it.

        A failure to take it (a malformed output, a full disk) fails the file instead.
        """
        try:
            self.stage.accept(job, output)
            self.run.save(job, self.stage.name, output, wall_s)
        except Exception as exc:
            self.failed(job, failure_reason(exc, job.path))
            return
        job.result.stages[self.stage.name] = {"status": "done", "wall_s": round(wall_s, 3)}
        self.stats.processed += 1
        self._advance()

    def failed(self, job: Job, reason: str) -> None:
        """This stage failed on ``job`` for ``reason`` (one line)."""
        self.run.fail(job, self.stage, reason)
        self.stats.failed += 1
        self._advance()

    def load_failed(self, jobs: list[Job], reason: str) -> None:
        """The stage's model cannot load: every job left fails with the same reason."""
        for job in jobs:
            self.failed(job, f"the {self.stage.name} model did not load: {reason}")

    def loaded(self, load_s: float) -> None:
        """A worker of this stage loaded its model in ``load_s`` seconds."""
        self.stats.load_s += load_s

    def restarted(self) -> None:
        """A fresh worker replaces one that died."""
        self.stats.restarts += 1

    def memory(self, peak_rss_mb: float, vram_mb: float | None) -> None:
        """A worker's memory as it last reported it."""
        self.stats.peak_rss_mb = max(self.stats.peak_rss_mb, peak_rss_mb)
        if vram_mb is not None:
            self.stats.peak_vram_mb = max(self.stats.peak_vram_mb or 0.0, vram_mb)

    def released(self, released: bool, release_s: float) -> None:
        """A worker of this stage stopped; ``released``: its memory was verified free."""
        self.stats.released = self.stats.released and released
        self.stats.release_s = max(self.stats.release_s, release_s)

    def _advance(self) -> None:
        if self.run.progress is not None and self.task is not None:
            self.run.progress.advance(self.task)

    def progress_within(self, done_s: float, total_s: float) -> None:
        """How far the file in flight is (seconds of audio done out of ``total_s``)."""
        progress, task = self.run.progress, self.task
        if progress is None or task is None or total_s <= 0:
            return
        if self._file_base is None:
            self._file_base = next(t.completed for t in progress.tasks if t.id == task)
        fraction = min(done_s / total_s, 1.0)
        text = f"{self.stage.name} {done_s:.0f}/{total_s:.0f}s"
        progress.update(task, completed=self._file_base + fraction, description=text)

    def file_ended(self) -> None:
        """The file in flight ended: the bar goes back to whole files (then advances)."""
        if self._file_base is not None and self.run.progress is not None:
            self.run.progress.update(
                self.task, completed=self._file_base, description=self.stage.name
            )
        self._file_base = None


class StageRunner(abc.ABC):
    """Runs a stage's model over the files that still need it; chosen by ``options.backend``.

    A runner is a context manager that lasts the whole batch (the Ray one holds its cluster
    connection): the engine enters it once, then calls :meth:`process` for each stage.

    Args:
        options: the batch's validated options.
    """

    #: The ``backend`` option value that selects this runner.
    name: ClassVar[str]

    def __init__(self, options: TranscribeOptions) -> None:
        self.options = options

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abc.abstractmethod
    def process(self, book: StageBook, pending: list[Job]) -> None:
        """Run ``pending`` through the stage's model; account for each through ``book``.

        Every job of ``pending`` must end in ``book`` (done or failed) exactly once, and
        ``book.stats.wall_s`` must hold the time it took, whatever happens.
        """
