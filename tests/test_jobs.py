"""The durable job store (SQLite) and the runner that feeds it to a real scheduler."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from modelmora.errors import (
    MemoryLimitExceeded,
    ModelLoadError,
    ResultNotPicklable,
    WorkerCrashed,
    WorkerLost,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.serving.config import ServerConfig
from modelmora.serving.jobs import Job, JobNotFound, JobRunner, JobStore
from modelmora.serving.scheduler.core import Scheduler


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    jobs = JobStore(tmp_path / "jobs.sqlite")
    yield jobs
    jobs.close()


def test_a_job_is_on_disk_once_created(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    first = JobStore(path)
    job = first.create("m", {"text": "hello", "n": [1, 2.5, None]}, "high")
    # another connection (another process, after a crash) sees it at once
    other = JobStore(path)
    again = other.get(job.id)
    assert (again.model, again.input, again.priority, again.status) == (
        "m",
        {"text": "hello", "n": [1, 2.5, None]},
        "high",
        "queued",
    )
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    first.close()
    other.close()


def test_claim_takes_the_most_urgent_then_the_oldest(store: JobStore) -> None:
    low = store.create("m", 1, "low")
    normal_1 = store.create("m", 2)
    critical = store.create("m", 3, "critical")
    normal_2 = store.create("m", 4)
    order = [job.id for job in store.claim(3)]
    assert order == [critical.id, normal_1.id, normal_2.id]
    assert store.get(critical.id).status == "running"
    assert store.get(critical.id).attempts == 1
    assert [job.id for job in store.claim(10)] == [low.id]
    assert store.claim(10) == []


def test_recover_requeues_what_was_running(store: JobStore) -> None:
    jobs = [store.create("m", i) for i in range(3)]
    store.claim(2)
    assert store.counts()["running"] == 2
    assert store.recover() == 2
    assert store.counts() == {
        "queued": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert {job.id for job in store.claim(5)} == {job.id for job in jobs}


def test_finish_cancel_and_bad_inputs(store: JobStore) -> None:
    ok, bad, odd, gone = (store.create("m", i) for i in range(4))
    store.claim(4)
    assert store.finish(ok.id, result={"vector": [0.5]})
    assert store.finish(bad.id, error=ValueError("no good"))
    assert store.finish(odd.id, result=object())  # not JSON: the job fails, it is not lost
    assert store.cancel(gone.id).status == "cancelled"
    assert not store.finish(gone.id, result=1)  # a late result does not undo the cancel
    assert store.get(ok.id).result == {"vector": [0.5]}
    failed = store.get(bad.id)
    assert (failed.status, failed.error, failed.error_type) == ("failed", "no good", "ValueError")
    assert store.get(odd.id).error_type == "TypeError"
    assert store.get(gone.id).status == "cancelled"
    assert store.cancel(ok.id).status == "succeeded"  # finished jobs stay as they are
    with pytest.raises(JobNotFound):
        store.get("0" * 32)
    with pytest.raises(ValueError, match="critical, high, normal, low"):
        store.create("m", 1, "urgent")
    with pytest.raises(ValueError, match="JSON"):
        store.create("m", float("nan"))


class _FlakyScheduler:
    """A stand-in that refuses once with a retry hint, then answers at once (no workers)."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, model: str, item: Any, priority: str = "normal") -> Future[Any]:
        self.calls += 1
        if self.calls == 1:
            error = RuntimeError("queue full")
            error.retry_after_s = 0.01  # type: ignore[attr-defined]
            raise error
        future: Future[Any] = Future()
        future.set_result({"echo": item})
        return future


def test_runner_backs_off_when_the_scheduler_is_full(store: JobStore) -> None:
    job = store.create("m", "x")
    runner = JobRunner(store, _FlakyScheduler(), poll_interval=0.01).start()
    try:
        done = _wait(store, [job.id])
    finally:
        runner.stop()
    assert done[0].status == "succeeded" and done[0].result == {"echo": "x"}
    assert done[0].attempts == 1  # the refused hand-over is not counted


class _FailingScheduler:
    """A stand-in whose every request fails with ``error`` (no workers)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def submit(self, model: str, item: Any, priority: str = "normal") -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(self.error)
        return future


class _EvictedMidCall(WorkerLost):
    """A way of losing a worker that the runner has never heard of."""


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (WorkerCrashed("worker exited with code 7", 7), True),
        (WorkerTimeout("call took longer than 1 s"), True),
        (MemoryLimitExceeded("over 100 MB", 100.0, 120.0), True),
        (WorkerStopped("the scheduler is closing"), True),
        (_EvictedMidCall("gone"), True),
        (ValueError("bad input"), False),
        (ModelLoadError("no weights"), False),
        (ResultNotPicklable("a lock"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_a_lost_worker_is_retried(
    store: JobStore, error: BaseException, retried: bool
) -> None:
    job = store.create("m", "x")
    runner = JobRunner(store, _FailingScheduler(error), poll_interval=0.01, max_attempts=3)
    runner.start()
    try:
        (done,) = _wait(store, [job.id])
    finally:
        runner.stop()
    assert done.status == "failed" and done.error_type == type(error).__name__
    assert done.attempts == (3 if retried else 1)


def _wait(store: JobStore, ids: list[str], timeout: float = 60.0) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get(i) for i in ids]
        if all(job.status in ("succeeded", "failed", "cancelled") for job in jobs):
            return jobs
        time.sleep(0.02)
    raise AssertionError(f"jobs not finished: {[(j.id, j.status) for j in jobs]}")


def _toy_config(tmp_path: Path) -> ServerConfig:
    models = [
        {"name": "echo", "adapter": "toy", "max_batch_size": 4, "max_wait_ms": 2},
        {"name": "slow", "adapter": "toy"},
    ]
    return ServerConfig.model_validate({"cache_dir": str(tmp_path / "cache"), "models": models})


def test_runner_with_a_real_scheduler(tmp_path: Path, store: JobStore) -> None:
    ok = [store.create("echo", {"op": "echo", "value": i}) for i in range(10)]
    failing = store.create("echo", {"op": "raise", "message": "bad input"})
    crashing = store.create("slow", {"op": "exit", "code": 7})
    unknown = store.create("nope", 1)
    with Scheduler(_toy_config(tmp_path)) as scheduler:
        runner = JobRunner(store, scheduler, max_in_flight=4, max_attempts=2).start()
        try:
            jobs = _wait(store, [j.id for j in [*ok, failing, crashing, unknown]])
        finally:
            runner.stop()
    assert [job.result for job in jobs[:10]] == list(range(10))
    assert jobs[10].status == "failed" and jobs[10].error == "bad input"
    crashed = jobs[11]
    assert crashed.status == "failed" and crashed.error_type == "WorkerCrashed"
    assert crashed.attempts == 2  # a crash is retried up to max_attempts
    assert jobs[12].status == "failed" and jobs[12].error_type == "UnknownModel"


def test_jobs_left_behind_by_a_stopped_runner_finish_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    item = {"op": "sleep", "seconds": 0.2}
    ids = [store.create("slow", item).id for _ in range(8)]
    scheduler = Scheduler(_toy_config(tmp_path)).start()
    runner = JobRunner(store, scheduler, max_in_flight=2).start()
    time.sleep(0.5)
    runner.stop(timeout=0.1)  # stop as a server would: jobs in flight, most still queued
    scheduler.close(drain=False, timeout=10)
    store.close()
    left = JobStore(path)
    assert left.counts()["queued"] + left.counts()["running"] > 0
    with Scheduler(_toy_config(tmp_path)) as scheduler:
        runner = JobRunner(left, scheduler).start()
        try:
            jobs = _wait(left, ids)
        finally:
            runner.stop()
    assert [job.status for job in jobs] == ["succeeded"] * len(ids)
    left.close()


def test_store_is_safe_across_threads(store: JobStore) -> None:
    def add(n: int) -> None:
        for i in range(25):
            store.create("m", [n, i])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    claimed: list[Job] = []
    while len(claimed) < 100:
        claimed += store.claim(7)
        if any(t.is_alive() for t in threads) or len(claimed) < 100:
            time.sleep(0.001)
        if not any(t.is_alive() for t in threads) and store.counts()["queued"] == 0:
            break
    assert len({job.id for job in claimed}) == 100 == store.counts()["running"]
