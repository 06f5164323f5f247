"""The local stage runner: the stage's model in one worker process on this machine.

One worker runs the stage's files one at a time. A worker that dies on a file (a crash, a
hang past ``file_timeout``, the memory budget) fails that file only: a fresh worker takes the
rest. A model that cannot load (twice: the first death while loading may be a kill) fails the
stage's remaining files. When the batch is interrupted (Ctrl-C), the worker is killed at once
rather than stopped gracefully: its file in flight is abandoned either way, and a graceful stop
would wait for that file to finish.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from modelmora.errors import WorkerCrashed, WorkerStopped
from modelmora.runtime.worker import Worker
from modelmora.workflow.stages import Job, StageBook, StageRunner, failure_reason

__all__ = ["LocalRunner"]

logger = logging.getLogger(__name__)


class LocalRunner(StageRunner):
    """Each stage in its own worker on this machine (``backend="local"``, the default)."""

    name = "local"

    def process(self, book: StageBook, pending: list[Job]) -> None:
        """Run ``pending`` through a worker, replacing it when it dies (see the module doc)."""
        t0 = time.perf_counter()
        worker: Worker | None = None
        try:
            index, last_stopped = 0, None
            while index < len(pending):
                job = pending[index]
                if worker is None:
                    if book.stats.processed or book.stats.failed:
                        book.restarted()
                    try:
                        worker = self._start_retrying(book)
                    except Exception as exc:  # the model cannot load: no file can run
                        book.load_failed(pending[index:], failure_reason(exc, job.path))
                        break
                current = worker
                try:
                    worker = self._one(book, current, job)
                except WorkerStopped as exc:  # it died between two files: this one never reached it
                    _stop(current, book)
                    worker = None
                    if job is not last_stopped:
                        last_stopped = job
                        continue  # the same file, once more, in a new worker
                    book.failed(job, failure_reason(exc, job.path))
                index += 1
        except BaseException:
            if worker is not None:  # interrupted: do not wait for the file in flight
                worker.kill()
            raise
        finally:
            if worker is not None:
                _stop(worker, book)
            book.stats.wall_s = time.perf_counter() - t0

    def _one(self, book: StageBook, worker: Worker, job: Job) -> Worker | None:
        """Run one file; return the worker, or None when it died and was stopped."""
        started = time.perf_counter()
        try:
            output = self._call(book, worker, job)
        except WorkerStopped:
            raise
        except Exception as exc:
            book.file_ended()
            _note_memory(worker, book)
            book.failed(job, failure_reason(exc, job.path))
            if not worker.alive:  # crashed, hung or over budget: it was killed
                _stop(worker, book)
                return None
            return worker
        book.file_ended()
        _note_memory(worker, book)
        book.done(job, output, time.perf_counter() - started)
        return worker

    def _call(self, book: StageBook, worker: Worker, job: Job) -> Any:
        """One file through the worker; a streaming stage's progress moves the bar inside it."""
        timeout = self.options.file_timeout
        if not book.stage.streams:
            (whole,) = worker.call([book.stage.item(job)], timeout=timeout)
            return whole
        output: Any = None
        stream = worker.stream(book.stage.item(job), timeout=timeout)
        try:
            for value in stream:
                if isinstance(value, dict) and "progress_s" in value:
                    book.progress_within(value["progress_s"], value["duration_s"])
                else:
                    output = value
        except BaseException as exc:
            if not isinstance(exc, Exception):  # Ctrl-C: kill first, or closing the stream
                worker.kill()  # would ask the child to cancel and wait for the file in flight
            raise
        finally:
            stream.close()
        return output

    def _start(self, book: StageBook) -> Worker:
        stage = book.stage
        logger.info("stage %s: starting its worker (%s)", stage.name, stage.spec.label())
        worker = Worker(
            stage.spec,
            name=stage.name,
            memory_limit_mb=self.options.memory_budget_mb(),
            threads=self.options.threads,
            stderr=book.run.log_file,
        )
        try:
            worker.start()
        except BaseException:  # a failed or interrupted load: nothing of it may keep running
            worker.kill()
            raise
        book.loaded(worker.load_s or 0.0)
        _note_memory(worker, book)
        return worker

    def _start_retrying(self, book: StageBook) -> Worker:
        """Start the stage's worker; once more if the first died while loading (a kill, the
        OOM killer): only a load that fails again fails the rest of the stage's files."""
        try:
            return self._start(book)
        except WorkerCrashed as exc:
            logger.warning(
                "stage %s: worker died while loading (%s): one more try", book.stage.name, exc
            )
            book.restarted()
            return self._start(book)


def _note_memory(worker: Worker, book: StageBook) -> None:
    if worker.memory is not None:
        book.memory(worker.memory.peak_rss_mb, worker.memory.vram_mb)


def _stop(worker: Worker, book: StageBook) -> None:
    _note_memory(worker, book)
    report = worker.stop()
    book.released(report.released, report.release_s)
