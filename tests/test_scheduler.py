"""The scheduler against real worker processes running toy models.

Toy models allocate real memory (``alloc_mb``), leak it (``leak_mb``), crash and fail to load
on request, so admission, eviction, recycling and fault handling are tested for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmora.errors import MemoryBudgetExceeded, ModelLoadError, WorkerCrashed, WorkerStopped
from modelmora.runtime.footprints import FootprintStore
from modelmora.runtime.worker import Worker
from modelmora.serving.config import PRIORITIES, RANK, ModelConfig, ServerConfig
from modelmora.serving.metrics import Metrics
from modelmora.serving.scheduler.core import ModelUnhealthy, QueueFull, Scheduler, UnknownModel
from modelmora.serving.scheduler.residency import ModelState, Replica, Request, pick_victims

MakeScheduler = Callable[..., Scheduler]


def toy(
    name: str, alloc_mb: float = 0, params: dict[str, Any] | None = None, **kw: Any
) -> ModelConfig:
    kw.setdefault("keep_alive_s", None)
    return ModelConfig(
        name=name, adapter="toy", params={"alloc_mb": alloc_mb, **(params or {})}, **kw
    )


@pytest.fixture
def make_scheduler(tmp_path: Path) -> Iterator[MakeScheduler]:
    """Builds started schedulers; at the end closes them and checks every release."""
    created: list[Scheduler] = []

    def make(models: list[ModelConfig], **kw: Any) -> Scheduler:
        kw.setdefault("cache_dir", tmp_path)
        kw.setdefault("memory_budget_mb", 4000)
        scheduler = Scheduler(ServerConfig(models=models, **kw), Metrics()).start()
        created.append(scheduler)
        return scheduler

    yield make
    for scheduler in created:
        scheduler.close(drain=False, timeout=10)
        models = scheduler.models()
        for model in models:
            assert model["state"] != "resident", model
            if model["last_release"] is not None:
                assert model["last_release"]["released"], model
        releases = scheduler.releases()
        # every worker that was started has exited, and released everything it held
        assert len(releases) == sum(m["unloads"] for m in models) + _failed_loads(releases)
        for release in releases:
            assert release["released"] and not release["remaining_pids"], release
    assert not psutil.Process().children(recursive=True), "a worker outlived its scheduler"


def _failed_loads(releases: list[dict[str, Any]]) -> int:
    return sum(1 for r in releases if r["reason"] == "load failed")


def info(scheduler: Scheduler, name: str) -> dict[str, Any]:
    return next(m for m in scheduler.models() if m["name"] == name)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def batches(scheduler: Scheduler, name: str) -> float:
    assert scheduler.metrics is not None
    value = scheduler.metrics.registry.get_sample_value(
        "modelmora_batch_size_count", {"model": name}
    )
    return value or 0.0


# --- admission ------------------------------------------------------------------------------


def test_echo_and_measured_footprint_persisted(
    make_scheduler: MakeScheduler, tmp_path: Path
) -> None:
    scheduler = make_scheduler([toy("a", alloc_mb=60)])
    assert info(scheduler, "a")["footprint_source"] == "estimated"
    assert scheduler.submit("a", {"x": 1}).result(30) == {"x": 1}
    a = info(scheduler, "a")
    assert a["state"] == "resident" and a["loads"] == 1 and a["pid"]
    assert a["footprint_source"] == "measured" and a["footprint_mb"] >= 60
    assert a["rss_mb"] >= 60 and a["last_used"] <= time.time()
    status = scheduler.status()
    assert status["resident"] == ["a"] and status["used_mb"] >= 60 and status["ready"]
    report = scheduler.unload("a")
    assert report["released"] and report["pids"]
    assert info(scheduler, "a")["state"] == "unloaded"
    assert (tmp_path / "footprints.json").exists()

    again = make_scheduler([toy("a", alloc_mb=60)])  # a later run knows the footprint
    known = info(again, "a")
    assert known["footprint_source"] == "measured"
    assert known["footprint_mb"] == pytest.approx(a["footprint_mb"], abs=5)


def test_model_that_can_never_fit_is_refused(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("big", footprint_mb=5000)], memory_budget_mb=1000)
    with pytest.raises(
        MemoryBudgetExceeded, match=r"needs 5000 MB \(declared\).*budget is 1000 MB"
    ):
        scheduler.submit("big", "x")
    with pytest.raises(MemoryBudgetExceeded):
        scheduler.load("big")


def test_unknown_model_names_the_known_ones(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a"), toy("b")])
    with pytest.raises(UnknownModel, match="use one of a, b"):
        scheduler.submit("c", "x")
    with pytest.raises(ValueError, match="critical, high, normal, low"):
        scheduler.submit("a", "x", priority="urgent")


def test_queue_limit(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("slow", params={"load_s": 1.0})], queue_limit=2)
    futures = [scheduler.submit("slow", i) for i in range(2)]
    with pytest.raises(QueueFull) as info_:
        scheduler.submit("slow", 2)
    assert info_.value.retry_after_s > 0
    assert [f.result(30) for f in futures] == [0, 1]


# --- eviction -------------------------------------------------------------------------------


def three(priorities: tuple[str, str, str], **kw: Any) -> list[ModelConfig]:
    """Three toy models of 200 MB each (declared), under a budget that fits two."""
    return [
        toy(name, alloc_mb=80, footprint_mb=200, priority=p, **kw)
        for name, p in zip("abc", priorities, strict=True)
    ]


def test_eviction_lower_priority_before_lru(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler(three(("normal", "low", "normal")), memory_budget_mb=450)
    scheduler.submit("a", 1).result(30)
    scheduler.submit("b", 1).result(30)  # b is the most recently used, but low priority
    scheduler.submit("c", 1).result(30)
    assert sorted(scheduler.status()["resident"]) == ["a", "c"]
    assert info(scheduler, "b")["evictions"] == 1

    scheduler.submit("c", 2).result(30)
    scheduler.submit("a", 2).result(30)  # same priority: the least recently used (c) goes
    scheduler.submit("b", 2).result(30)
    assert sorted(scheduler.status()["resident"]) == ["a", "b"]
    assert info(scheduler, "c")["evictions"] == 1
    assert scheduler.status()["used_mb"] <= 450


def test_pinned_model_is_never_evicted(make_scheduler: MakeScheduler) -> None:
    models = three(("low", "normal", "normal"))
    models[0] = toy("a", alloc_mb=80, footprint_mb=200, priority="low", pinned=True)
    scheduler = make_scheduler(models, memory_budget_mb=450)
    wait_for(scheduler.is_ready)  # the pinned model loads at start
    assert scheduler.status()["resident"] == ["a"]
    for name in "bcbc":
        assert scheduler.submit(name, name).result(30) == name
    assert info(scheduler, "a")["state"] == "resident" and info(scheduler, "a")["evictions"] == 0
    assert info(scheduler, "b")["evictions"] == 2


def test_model_that_pinned_models_crowd_out_fails_fast(make_scheduler: MakeScheduler) -> None:
    models = [toy("p", footprint_mb=200, pinned=True), toy("x", footprint_mb=200)]
    scheduler = make_scheduler(models, memory_budget_mb=300)
    wait_for(scheduler.is_ready)
    with pytest.raises(MemoryBudgetExceeded, match="pinned models leave 100 MB"):
        scheduler.submit("x", 1).result(30)
    scheduler.unload("p")  # an explicit unload makes room; a pinned model stays unloaded then
    assert scheduler.submit("x", 2).result(30) == 2


def test_vram_budget_admits_one_gpu_model_at_a_time(make_scheduler: MakeScheduler) -> None:
    # declared VRAM footprints: the accounting is the same with or without a GPU
    models = [toy(n, footprint_mb=100, vram_footprint_mb=600) for n in "gh"]
    scheduler = make_scheduler(models, memory_budget_mb=1000, vram_budget_mb=1000)
    for name in "ghg":
        assert scheduler.submit(name, name).result(30) == name
        assert scheduler.status()["vram_used_mb"] <= 1000
    assert info(scheduler, "g")["evictions"] == 1 and info(scheduler, "h")["evictions"] == 1
    big = make_scheduler([toy("big", alloc_mb=1, vram_footprint_mb=2000)], vram_budget_mb=1000)
    assert info(big, "big")["footprint_source"] == "estimated"
    with pytest.raises(MemoryBudgetExceeded, match="GPU memory"):
        big.submit("big", 1)


def test_busy_worker_is_not_evicted(make_scheduler: MakeScheduler) -> None:
    # a (low priority) is busy, b (critical) is idle: b goes, although priority says a
    scheduler = make_scheduler(three(("low", "critical", "normal")), memory_budget_mb=450)
    scheduler.load("a")
    scheduler.load("b")
    busy = scheduler.submit("a", {"op": "sleep", "seconds": 3.0})
    wait_for(lambda: info(scheduler, "a")["queue_depth"] == 0)
    assert scheduler.submit("c", "c").result(30) == "c"
    assert not busy.done()
    assert info(scheduler, "b")["state"] == "unloaded" and info(scheduler, "a")["evictions"] == 0
    busy.result(30)


def test_waits_for_in_flight_work_when_nothing_is_idle(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler(three(("normal",) * 3), memory_budget_mb=250)
    scheduler.load("a")
    busy = scheduler.submit("a", {"op": "sleep", "seconds": 1.0})
    wait_for(lambda: info(scheduler, "a")["queue_depth"] == 0)
    waiting = scheduler.submit("b", "b")
    assert waiting.result(30) == "b"
    assert busy.done() and busy.exception() is None  # a finished its call before eviction
    assert info(scheduler, "a")["evictions"] == 1


def test_keep_alive_unloads_idle_model(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", alloc_mb=20, keep_alive_s=0.4)])
    scheduler.submit("a", 1).result(30)
    pid = info(scheduler, "a")["pid"]
    wait_for(lambda: info(scheduler, "a")["unloads"] == 1)
    a = info(scheduler, "a")
    assert a["state"] == "unloaded" and a["last_release"]["released"]
    assert pid in a["last_release"]["pids"] and not psutil.pid_exists(pid)


# --- requests -------------------------------------------------------------------------------


def test_priority_order(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.load("a")
    blocker = scheduler.submit("a", {"op": "sleep", "seconds": 0.5})
    wait_for(lambda: info(scheduler, "a")["queue_depth"] == 0)
    done: list[str] = []
    lock = threading.Lock()

    def record(value: str) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            with lock:
                done.append(value)

        return callback

    futures = []
    for priority in ("low", "normal", "low", "critical", "high", "normal"):
        future = scheduler.submit("a", priority, priority=priority)
        future.add_done_callback(record(priority))
        futures.append(future)
    assert scheduler.status()["queue_depths"]["low"] == 2
    for future in [blocker, *futures]:
        future.result(30)
    assert done == ["critical", "high", "normal", "normal", "low", "low"]


def test_dynamic_batching(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=8, max_wait_ms=50)])
    scheduler.load("a")
    futures = [scheduler.submit("a", i) for i in range(32)]
    assert [f.result(30) for f in futures] == list(range(32))
    assert 4 <= batches(scheduler, "a") <= 6  # 4 unless the machine stalls submits
    one = scheduler.submit("a", "alone")  # a lone request waits max_wait_ms, not forever
    assert one.result(5) == "alone"


def test_a_lone_request_does_not_wait_for_company(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=8, max_wait_ms=3000)])
    scheduler.load("a")
    started = time.monotonic()
    assert scheduler.submit("a", "alone").result(30) == "alone"
    assert time.monotonic() - started < 2.0  # not the 3 s max_wait_ms
    # items queued together go in one batch, at once
    assert [f.result(30) for f in scheduler.submit_many("a", [0, 1, 2])] == [0, 1, 2]
    assert batches(scheduler, "a") == 2
    # after a batch in company, a request waits for company again: the next one joins it
    first = scheduler.submit("a", "x")
    second = scheduler.submit("a", "y")
    assert (first.result(30), second.result(30)) == ("x", "y")
    assert batches(scheduler, "a") == 3


def test_submit_many_is_all_or_nothing_against_the_queue_limit(
    make_scheduler: MakeScheduler,
) -> None:
    scheduler = make_scheduler([toy("a")], queue_limit=4)
    with pytest.raises(QueueFull):
        scheduler.submit_many("a", list(range(5)))
    assert sum(scheduler.status()["queue_depths"].values()) == 0
    assert [f.result(30) for f in scheduler.submit_many("a", list(range(4)))] == [0, 1, 2, 3]


def test_cancelled_request_is_skipped(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.load("a")
    blocker = scheduler.submit("a", {"op": "sleep", "seconds": 0.3})
    dropped = scheduler.submit("a", "dropped")
    kept = scheduler.submit("a", "kept")
    assert dropped.cancel()
    assert kept.result(30) == "kept" and blocker.result(30) is None


def test_model_error_fails_only_its_item(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=4, max_wait_ms=100)])
    scheduler.load("a")
    futures = [scheduler.submit("a", x) for x in (1, {"op": "raise", "message": "bad"}, 3)]
    assert futures[0].result(30) == 1 and futures[2].result(30) == 3
    with pytest.raises(ValueError, match="bad"):
        futures[1].result(30)
    assert info(scheduler, "a")["crashes"] == 0


# --- faults ---------------------------------------------------------------------------------


def test_crash_fails_only_that_request_and_recovers(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")], retry_crashed=False)
    scheduler.load("a")
    pid = info(scheduler, "a")["pid"]
    crash = scheduler.submit("a", {"op": "exit", "code": 7})
    after = [scheduler.submit("a", i) for i in range(3)]
    with pytest.raises(WorkerCrashed, match="exited with code 7"):
        crash.result(30)
    assert [f.result(30) for f in after] == [0, 1, 2]  # restarted after its backoff
    a = info(scheduler, "a")
    assert a["crashes"] == 1 and a["loads"] == 2 and a["pid"] != pid


def test_crashed_batch_is_retried_item_by_item(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=4, max_wait_ms=200)])
    scheduler.load("a")
    futures = [scheduler.submit("a", x) for x in ("x", {"op": "segfault"}, "y")]
    assert futures[0].result(30) == "x" and futures[2].result(30) == "y"
    with pytest.raises(WorkerCrashed, match="SIGSEGV"):
        futures[1].result(30)
    assert info(scheduler, "a")["crashes"] == 2  # the batch, then the culprit alone


def test_load_failure_marks_model_unhealthy(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler(
        [toy("bad", params={"load_error": "no weights"}), toy("good")], unhealthy_cooldown_s=1.0
    )
    future = scheduler.submit("bad", 1)
    with pytest.raises(ModelUnhealthy, match="no weights") as failed:
        future.result(30)
    assert isinstance(failed.value.__cause__, ModelLoadError)
    with pytest.raises(ModelUnhealthy) as refused:
        scheduler.submit("bad", 2)
    assert 0 < refused.value.retry_after_s <= 1.0
    bad = info(scheduler, "bad")
    assert bad["state"] == "unhealthy" and "no weights" in bad["error"]
    assert scheduler.submit("good", "ok").result(30) == "ok"  # the others are unaffected
    wait_for(lambda: info(scheduler, "bad")["state"] == "unloaded", timeout=5)
    with pytest.raises(ModelUnhealthy):  # accepted again after the cooldown; fails again
        scheduler.submit("bad", 3).result(30)


def test_recycle_after_max_tasks(make_scheduler: MakeScheduler) -> None:
    # the budget has room for two: the replacement starts first and the old worker serves
    # until it is ready, so no request waits for a load
    scheduler = make_scheduler([toy("a", max_tasks=2)])
    first = [scheduler.submit("a", {"op": "pid"}).result(30) for _ in range(2)]
    assert first[0] == first[1]
    wait_for(lambda: info(scheduler, "a")["loads"] == 2)
    wait_for(lambda: not psutil.pid_exists(first[0]))
    a = info(scheduler, "a")
    assert a["recycles"] == 1 and a["unloads"] == 1 and a["last_release"]["released"]
    assert scheduler.submit("a", {"op": "pid"}).result(30) not in first


def test_recycle_on_rss_growth_stop_first_when_budget_is_tight(
    make_scheduler: MakeScheduler,
) -> None:
    # 40 MB leaked per call, 60 MB growth allowed: the worker is replaced after two calls;
    # the budget has no room for a second worker, so the old one stops first
    model = toy("a", params={"leak_mb": 40}, max_rss_growth_mb=60, footprint_mb=150)
    scheduler = make_scheduler([model], memory_budget_mb=200)
    pids = [scheduler.submit("a", {"op": "pid"}).result(30) for _ in range(3)]
    assert pids[0] == pids[1] != pids[2]
    assert info(scheduler, "a")["recycles"] == 1


def test_close_without_drain_fails_in_flight(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.load("a")
    hung = scheduler.submit("a", {"op": "hang"})
    queued = scheduler.submit("a", "never")
    wait_for(lambda: info(scheduler, "a")["queue_depth"] == 1)
    scheduler.close(drain=False, timeout=10)
    with pytest.raises(WorkerStopped):
        hung.result(5)
    with pytest.raises(WorkerStopped):
        queued.result(5)
    with pytest.raises(WorkerStopped):
        scheduler.submit("a", 1)


def test_close_drains_accepted_requests(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=4)])
    futures = [scheduler.submit("a", i) for i in range(6)]
    scheduler.close(drain=True, timeout=30)
    assert [f.result(1) for f in futures] == list(range(6))


def test_metrics_render(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.submit("a", 1).result(30)
    scheduler.unload("a")
    assert scheduler.metrics is not None
    text = scheduler.metrics.render().decode()
    for name in (
        'modelmora_loads_total{model="a"} 1.0',
        'modelmora_unloads_total{model="a"} 1.0',
        'modelmora_request_latency_seconds_count{model="a"} 1.0',
        'modelmora_batch_size_count{model="a"} 1.0',
        "modelmora_resident_models 0.0",
        'modelmora_queue_depth{priority="normal"} 0.0',
    ):
        assert name in text
    assert scheduler.metrics.content_type.startswith("text/plain")


# --- streamed requests ------------------------------------------------------------------------


def stream_op(value: Any, then: dict[str, Any] | None = None, delay: float = 0.0) -> Any:
    return {"op": "stream", "value": value, "then": then, "delay": delay}


def test_streamed_request_loads_the_model_and_chunks_come_first(
    make_scheduler: MakeScheduler,
) -> None:
    scheduler = make_scheduler([toy("a")])
    chunks: list[tuple[Any, float]] = []
    t0 = time.monotonic()
    future = scheduler.submit(
        "a",
        stream_op([1, 2, 3], {"op": "sleep", "seconds": 1.0}),
        on_chunk=lambda value: chunks.append((value, time.monotonic() - t0)),
    )
    assert future.result(30) == 3
    total = time.monotonic() - t0
    assert [c for c, _ in chunks] == [1, 2, 3]
    assert chunks[-1][1] < total - 0.7, (chunks, total)  # delivered while the model worked
    a = info(scheduler, "a")
    assert a["state"] == "resident" and a["loads"] == 1
    assert scheduler.submit("a", "plain").result(30) == "plain"


def test_streamed_requests_run_alone_in_priority_order(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a", max_batch_size=8, max_wait_ms=0)])
    scheduler.load("a")
    blocker = scheduler.submit("a", {"op": "sleep", "seconds": 0.5})
    wait_for(lambda: info(scheduler, "a")["queue_depth"] == 0)
    done: list[str] = []
    futures = [
        scheduler.submit("a", stream_op(["s"]), "low", on_chunk=lambda _: None),
        scheduler.submit("a", "n1"),
        scheduler.submit("a", "n2"),
        scheduler.submit("a", stream_op(["c"]), "critical", on_chunk=lambda _: None),
    ]
    for name, future in zip(("low stream", "n1", "n2", "critical stream"), futures, strict=True):
        future.add_done_callback(lambda _, name=name: done.append(name))
    for future in [blocker, *futures]:
        future.result(30)
    assert done[0] == "critical stream" and done[-1] == "low stream"
    assert sorted(done[1:3]) == ["n1", "n2"]
    assert batches(scheduler, "a") == 4  # blocker, critical stream, [n1, n2], low stream


def test_stopping_a_stream_keeps_the_worker(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.load("a")
    pid = info(scheduler, "a")["pid"]
    seen: list[int] = []

    def on_chunk(value: int) -> bool:
        seen.append(value)
        return value < 2  # False: stop

    t0 = time.monotonic()
    future = scheduler.submit("a", stream_op(list(range(500)), delay=0.02), on_chunk=on_chunk)
    assert future.result(30) == 3 and seen == [0, 1, 2]
    assert time.monotonic() - t0 < 3.0  # not the 10 s the whole stream takes
    a = info(scheduler, "a")
    assert a["pid"] == pid and a["crashes"] == 0
    assert scheduler.submit("a", "next").result(30) == "next"


def test_stream_error_fails_its_request_only(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])
    scheduler.load("a")
    pid = info(scheduler, "a")["pid"]
    seen: list[Any] = []
    future = scheduler.submit(
        "a", stream_op([1], {"op": "raise", "message": "bad piece"}), on_chunk=seen.append
    )
    with pytest.raises(ValueError, match="bad piece"):
        future.result(30)
    assert seen == [1]
    assert info(scheduler, "a")["pid"] == pid
    assert scheduler.submit("a", "next").result(30) == "next"


def test_stream_crash_after_a_chunk_is_not_retried(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy("a")])  # retry_crashed: but the caller saw chunks
    scheduler.load("a")
    seen: list[Any] = []
    future = scheduler.submit(
        "a", stream_op([1, 2], {"op": "exit", "code": 3}), on_chunk=seen.append
    )
    with pytest.raises(WorkerCrashed, match="exited with code 3"):
        future.result(30)
    assert seen == [1, 2]
    assert info(scheduler, "a")["crashes"] == 1
    assert scheduler.submit("a", "after").result(30) == "after"


# --- the lock -----------------------------------------------------------------------------------


def test_a_slow_footprint_write_does_not_hold_the_scheduler(
    make_scheduler: MakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # footprints.json is merged under a file lock and fsync'd: a slow disk, or a batch run
    # holding the lock, must not stall every request of the server meanwhile
    writing, release = threading.Event(), threading.Event()
    real = FootprintStore.update

    def slow_update(self: FootprintStore, *args: Any, **kwargs: Any) -> None:
        writing.set()
        release.wait(10)
        real(self, *args, **kwargs)

    monkeypatch.setattr(FootprintStore, "update", slow_update)
    scheduler = make_scheduler([toy("a"), toy("b")])
    loading = scheduler.submit("a", 1)  # its load ends with a footprint write
    try:
        assert writing.wait(30)
        t0 = time.monotonic()
        scheduler.status()
        scheduler.models()
        assert time.monotonic() - t0 < 3.0  # not the 10 s the write takes
    finally:
        release.set()
    assert loading.result(30) == 1
    assert scheduler.submit("b", 2).result(30) == 2


# --- the eviction policy, directly ---------------------------------------------------------------


@st.composite
def _residents(draw: st.DrawFn) -> tuple[list[ModelState], ModelState | None]:
    """A few models with workers in any state, some with waiting requests; maybe one wanting."""
    models, seq = [], 0
    for i in range(draw(st.integers(1, 5))):
        cfg = ModelConfig(
            name=f"m{i}",
            adapter="toy",
            priority=draw(st.sampled_from(PRIORITIES)),
            pinned=draw(st.booleans()),
        )
        m = ModelState(cfg, (100.0, 0.0, "declared"))
        for _ in range(draw(st.integers(0, 2))):
            rep = Replica(
                Worker("toy"),
                mem_mb=draw(st.floats(10, 500)),
                vram_mb=draw(st.sampled_from([0.0, 200.0])),
                state=draw(st.sampled_from(["ready", "ready", "busy", "loading", "stopping"])),
                last_used=draw(st.floats(0, 1000)),
            )
            m.replicas.append(rep)
        for priority in draw(st.lists(st.sampled_from(PRIORITIES), max_size=3)):
            m.queues[priority].append(Request(None, Future(), priority, seq, 0.0))
            seq += 1
        m.drain_seq = draw(st.integers(-1, seq))
        models.append(m)
    wanting = draw(st.none() | st.sampled_from(models))
    return models, wanting


def _prefers(a: tuple[ModelState, Replica], b: tuple[ModelState, Replica]) -> bool:
    """Whether the policy evicts ``a`` before ``b``: idle first, lower class, then LRU."""

    def key(c: tuple[ModelState, Replica]) -> tuple[bool, int, float]:
        return (c[0].queued() > 0, -RANK[c[0].cfg.priority], c[1].last_used)

    return key(a) < key(b)


def _serving_its_backlog(m: ModelState, wanting: ModelState | None) -> bool:
    head = m.head()
    if head is None or head.seq > m.drain_seq:
        return False
    want = wanting.head() if wanting is not None else None
    return want is None or RANK[want.priority] >= RANK[head.priority]


@settings(max_examples=300, deadline=None)
@given(
    residents=_residents(),
    short_ram=st.floats(-100, 2000),
    short_vram=st.sampled_from([0.0, -50.0, 150.0, 450.0]),
)
def test_pick_victims_frees_enough_taking_only_idle_unprotected_workers_in_order(
    residents: tuple[list[ModelState], ModelState | None], short_ram: float, short_vram: float
) -> None:
    models, wanting = residents
    eligible = [
        (m, r)
        for m in models
        if not m.cfg.pinned and m is not wanting and not _serving_its_backlog(m, wanting)
        for r in m.replicas
        if r.state == "ready"
    ]
    chosen = pick_victims(models, wanting, short_ram, short_vram)
    if chosen is None:  # refused only when even every eligible worker would not be enough
        assert (
            sum(r.mem_mb for _, r in eligible) < short_ram
            or sum(r.vram_mb for _, r in eligible) < short_vram
        )
        return
    assert all(any(c[0] is m and c[1] is r for m, r in eligible) for c in chosen)
    assert len({id(r) for _, r in chosen}) == len(chosen)
    assert sum(r.mem_mb for _, r in chosen) >= short_ram
    assert sum(r.vram_mb for _, r in chosen) >= short_vram
    if chosen:  # no more than needed: without the last one, something would be short
        rest = chosen[:-1]
        assert (
            sum(r.mem_mb for _, r in rest) < short_ram
            or sum(r.vram_mb for _, r in rest) < short_vram
        )
    else:
        assert short_ram <= 0 and short_vram <= 0
    left = [c for c in eligible if all(c[1] is not r for _, r in chosen)]
    for victim in chosen:  # nothing left behind was to go first
        assert not any(_prefers(c, victim) for c in left), (victim, left)


# --- spares (framework-warm starts) ---------------------------------------------------------


def test_reloads_after_an_eviction_start_warm_from_a_spare(make_scheduler: MakeScheduler) -> None:
    models = [toy(n, 100) for n in "abc"]
    scheduler = make_scheduler(models, memory_budget_mb=330, keep_spares={"toy": 1})
    for name in "ab":
        scheduler.submit(name, 1).result(30)
    time.sleep(1.0)  # a spare would be preparing by now
    status = scheduler.status()["spares"]
    assert status["ready"] == [] and status["preparing"] == 0  # nothing unloaded: no reload ahead
    warm_pids = []
    for name in "cabca":  # each load evicts the least recently used model
        scheduler.submit(name, 1).result(30)
        wait_for(lambda: len(scheduler.spares.spares()) == 1)  # prepared in the background
        status = scheduler.status()
        assert status["used_mb"] <= 330 and len(status["resident"]) == 2
        warm_pids.append(info(scheduler, name)["pid"])
    status = scheduler.status()
    # a and b cold; c may take the spare prepared when a was evicted; then all warm
    assert status["warm_loads"] >= 4 and status["warm_loads"] + status["cold_loads"] == 7
    spare = status["spares"]["ready"][0]
    assert spare["kind"] == "toy" and spare["pid"] not in warm_pids and spare["rss_mb"] > 0
    assert status["spares"]["lost"] == 0
    assert sum(info(scheduler, n)["warm_loads"] for n in "abc") == status["warm_loads"]
    assert all(info(scheduler, n)["last_release"]["released"] for n in "abc")
    assert scheduler.metrics is not None
    sample = scheduler.metrics.registry.get_sample_value
    assert sample("modelmora_worker_starts_total", {"model": "a", "start": "warm"}) == 2
    assert sample("modelmora_worker_starts_total", {"model": "a", "start": "cold"}) == 1
    wait_for(lambda: sample("modelmora_spares", {"kind": "toy"}) == 1, 5.0)  # janitor's gauge


def test_no_spares_when_keep_spares_is_empty(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler([toy(n, 100) for n in "abc"], memory_budget_mb=330, keep_spares={})
    for name in "abca":
        scheduler.submit(name, 1).result(30)
    time.sleep(0.3)
    assert scheduler.spares.spares() == [] and scheduler.status()["warm_loads"] == 0
