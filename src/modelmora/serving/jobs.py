"""Durable asynchronous jobs: a SQLite job store and the runner that feeds it to the scheduler.

A job is one model input accepted now and run later. It is written to SQLite (WAL journal,
``synchronous=FULL``) before the server answers 202, so a job accepted is never lost: when the
server starts, jobs left ``running`` by a previous process are put back to ``queued`` and every
queued job is run again. One row per job::

    id, model, input (JSON), priority, status, result (JSON), error, error_type,
    created_at, started_at, finished_at, attempts

Status moves ``queued → running → succeeded | failed``; ``cancelled`` can be set from
``queued`` or ``running`` (a running job's result is then dropped when it arrives).

The :class:`JobRunner` thread claims queued jobs (highest priority first, oldest first), hands
each to ``scheduler.submit`` and records the future's outcome. It keeps at most
``max_in_flight`` jobs in the scheduler, so a large backlog stays in the database rather than in
memory, and backs off when the scheduler says its queue is full or a model is unhealthy.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from modelmora.errors import WorkerLost
from modelmora.serving.config import PRIORITIES, RANK

__all__ = [
    "PRIORITIES",
    "STATUSES",
    "Job",
    "JobNotFound",
    "JobRunner",
    "JobStore",
]

logger = logging.getLogger(__name__)

#: Job states.
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
_FINAL = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    priority TEXT NOT NULL,
    rank INTEGER NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    error_type TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, rank, created_at);
"""


class JobNotFound(KeyError):
    """No job has this id."""


@dataclass
class Job:
    """One job as stored.

    Attributes:
        id: the job's id (a UUID4 hex string).
        model: the model name it runs on.
        input: the model input (any JSON value).
        priority: one of :data:`PRIORITIES`.
        status: one of :data:`STATUSES`.
        result: the model's output once succeeded (any JSON value), else None.
        error: what went wrong once failed (or why it was cancelled), else None.
        error_type: the exception's class name when failed.
        created_at, started_at, finished_at: Unix times.
        attempts: how many times the job was handed to the scheduler.
    """

    id: str
    model: str
    input: Any
    priority: str
    status: str
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0

    def summary(self) -> dict[str, Any]:
        """Everything but the input and the result (what a status poll returns)."""
        data = asdict(self)
        del data["input"], data["result"]
        return data


class JobStore:
    """The SQLite table of jobs. Thread-safe: one connection, serialised by a lock.

    Args:
        path: the database file (its folder is created); ``":memory:"`` for a throwaway store.

    Raises:
        sqlite3.Error: the file cannot be opened or is not a database.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a 202 means the row is on disk
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def create(self, model: str, input: Any, priority: str = "normal") -> Job:
        """Store a new queued job.

        Args:
            model: the model name.
            input: the model input; must be JSON-serialisable.
            priority: one of :data:`PRIORITIES`.

        Returns:
            The stored job.

        Raises:
            ValueError: an unknown priority, or an input that is not JSON-serialisable.
        """
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}: use one of {', '.join(PRIORITIES)}")
        try:
            text = json.dumps(input, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job input must be plain JSON: {exc}") from None
        job = Job(uuid.uuid4().hex, model, input, priority, "queued", created_at=time.time())
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, model, input, priority, rank, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (job.id, model, text, priority, RANK[priority], job.created_at),
            )
        return job

    def get(self, job_id: str) -> Job:
        """Return the job with this id.

        Raises:
            JobNotFound: no such job.
        """
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    def recover(self) -> int:
        """Put jobs a previous process left ``running`` back to ``queued``.

        Returns:
            How many jobs were re-queued.
        """
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'"
            )
        if cur.rowcount:
            logger.warning("re-queued %d job(s) left running by a previous server", cur.rowcount)
        return cur.rowcount

    def claim(self, limit: int) -> list[Job]:
        """Mark up to ``limit`` queued jobs running (most urgent, then oldest) and return them."""
        if limit < 1:
            return []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT * FROM jobs WHERE status = 'queued' ORDER BY rank, created_at LIMIT ?",
                    (limit,),
                ).fetchall()
                self._db.executemany(
                    "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1"
                    " WHERE id = ?",
                    [(now, row["id"]) for row in rows],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        jobs = [_job(row) for row in rows]
        for job in jobs:
            job.status, job.started_at, job.attempts = "running", now, job.attempts + 1
        return jobs

    def requeue(self, job_id: str, *, count_attempt: bool = False) -> None:
        """Put a running job back to ``queued``.

        Args:
            job_id: the job.
            count_attempt: keep the attempt it used (it ran and failed) rather than give it
                back (the scheduler did not take it).
        """
        undo = 0 if count_attempt else 1
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, attempts = attempts - ?"
                " WHERE id = ? AND status = 'running'",
                (undo, job_id),
            )

    def finish(
        self, job_id: str, *, result: Any = None, error: BaseException | str | None = None
    ) -> bool:
        """Record a running job's outcome (a cancelled job keeps its status).

        Args:
            job_id: the job.
            result: the output when it succeeded (JSON-serialisable).
            error: the exception (or message) when it failed.

        Returns:
            True if the job was running and is now succeeded or failed.
        """
        status, text, message, kind = "succeeded", None, None, None
        if error is None:
            try:
                text = json.dumps(result, allow_nan=False)
            except (TypeError, ValueError) as exc:
                error = TypeError(f"the model's output is not JSON-serialisable: {exc}")
        if error is not None:
            status, message = "failed", str(error) or type(error).__name__
            kind = type(error).__name__ if isinstance(error, BaseException) else "Error"
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, error_type = ?,"
                " finished_at = ? WHERE id = ? AND status = 'running'",
                (status, text, message, kind, time.time(), job_id),
            )
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (a finished job is returned unchanged).

        Raises:
            JobNotFound: no such job.
        """
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'cancelled', error = 'cancelled by request',"
                " finished_at = ? WHERE id = ? AND status IN ('queued', 'running')",
                (time.time(), job_id),
            )
        return self.get(job_id)

    def counts(self) -> dict[str, int]:
        """Number of jobs in each status."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        model=row["model"],
        input=json.loads(row["input"]),
        priority=row["priority"],
        status=row["status"],
        result=json.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        error_type=row["error_type"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
    )


class Submitter(Protocol):
    """What the runner needs of the scheduler."""

    def submit(self, model: str, item: Any, priority: str = "normal") -> Future[Any]: ...


class JobRunner:
    """Feeds queued jobs to the scheduler in a background thread and records their outcomes.

    Args:
        store: the job store.
        scheduler: anything with ``submit(model, item, priority) -> Future``.
        max_in_flight: jobs handed to the scheduler and not finished yet, at most.
        poll_interval: seconds between looks at the table when idle (a submission and a
            finished job wake the runner at once; the look is a safety net).
        max_attempts: a job whose worker was lost (:class:`~modelmora.errors.WorkerLost`:
            crashed, killed at its timeout or memory cap, stopped) is retried until it has
            run this many times; any other failure is final.

    Raises:
        ValueError: ``max_in_flight`` or ``max_attempts`` below 1.
    """

    def __init__(
        self,
        store: JobStore,
        scheduler: Submitter,
        *,
        max_in_flight: int = 8,
        poll_interval: float = 0.5,
        max_attempts: int = 3,
    ) -> None:
        if max_in_flight < 1 or max_attempts < 1:
            raise ValueError("max_in_flight and max_attempts must be at least 1")
        self.store = store
        self.scheduler = scheduler
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self._in_flight: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused_until = 0.0

    def start(self) -> JobRunner:
        """Re-queue jobs a previous run left running, then start the runner thread."""
        self.store.recover()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="modelmora-jobs", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        """Wake the runner now (a job was added)."""
        self._wake.set()

    def cancel(self, job_id: str) -> Job:
        """Cancel a job and, if it is still waiting in the scheduler, its future.

        Raises:
            JobNotFound: no such job.
        """
        job = self.store.cancel(job_id)
        with self._lock:
            future = self._in_flight.get(job_id)
        if future is not None:
            future.cancel()  # only succeeds while queued; a running result is dropped
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming jobs; wait up to ``timeout`` s for those in flight to finish.

        Jobs still in flight afterwards stay ``running`` in the table and are re-queued by
        the next :meth:`start` (the scheduler's close decides whether they finish now).
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        deadline = time.monotonic() + timeout
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)

    def in_flight(self) -> int:
        """Jobs handed to the scheduler and not finished."""
        with self._lock:
            return len(self._in_flight)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                claimed = self._feed()
            except Exception:  # a database error must not kill the runner silently
                logger.exception("job runner: feeding the scheduler failed")
                claimed = 0
            if not claimed:
                paused = self._paused_until - time.monotonic()
                self._wake.wait(
                    min(self.poll_interval, paused) if paused > 0 else self.poll_interval
                )
                self._wake.clear()

    def _feed(self) -> int:
        if time.monotonic() < self._paused_until:
            return 0
        free = self.max_in_flight - self.in_flight()
        jobs = self.store.claim(free)
        for index, job in enumerate(jobs):
            if not self._submit(job):
                for rest in jobs[index + 1 :]:
                    self.store.requeue(rest.id)
                return 0
        return len(jobs)

    def _submit(self, job: Job) -> bool:
        """Hand one claimed job to the scheduler; False when it should be tried later."""
        try:
            future = self.scheduler.submit(job.model, job.input, job.priority)
        except Exception as exc:
            retry_after = getattr(exc, "retry_after_s", None)
            if retry_after is not None:  # queue full or model cooling down: not the job's fault
                self.store.requeue(job.id)
                self._paused_until = time.monotonic() + min(float(retry_after), 5.0)
                logger.info("job runner: %s; retrying in %.1f s", exc, retry_after)
                return False
            self.store.finish(job.id, error=exc)
            return True
        with self._lock:
            self._in_flight[job.id] = future
        future.add_done_callback(functools.partial(self._done, job))
        return True

    def _done(self, job: Job, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.pop(job.id, None)
        try:
            error = None if future.cancelled() else future.exception()
            if future.cancelled() or (error is not None and self._stopping.is_set()):
                # cancelled by the user (the row says so already: no-op), or failed because
                # the scheduler is closing: the job waits for the next start
                self.store.requeue(job.id)
            elif error is None:
                self.store.finish(job.id, result=future.result())
            elif isinstance(error, WorkerLost) and job.attempts < self.max_attempts:
                logger.warning("job %s: %s; retrying (attempt %d)", job.id, error, job.attempts)
                self.store.requeue(job.id, count_attempt=True)
            else:
                self.store.finish(job.id, error=error)
        except Exception:
            logger.exception("job %s: recording its outcome failed", job.id)
        finally:
            self._wake.set()
