"""The scheduler: which models are resident under the memory budget, and who runs next.

::

    submit(model, item, priority) ──▶ per-model queues (critical│high│normal│low, FIFO each)
                                          │  dispatcher thread: most urgent model first,
                                          │  dynamic batching (max_batch_size, max_wait_ms)
                                          ▼
             admission: footprint ≤ free budget? else evict idle → low priority → LRU
                                          │
                 load task ─▶ Worker.start()      batch task ─▶ Worker.call(batch)
                                          │                     │ crash: retry once, backoff
                 janitor thread: keep-alive unloads, memory gauges; stop task: Worker.stop()
                 (every unload is a worker exit whose release is verified)

Threads only (no asyncio): the HTTP layer awaits the returned futures with
``asyncio.wrap_future``. One condition variable guards all state; workers are started, called
and stopped in a thread pool, never while the lock is held.

A model's footprint is its declared ``footprint_mb``, else the largest peak RSS measured on
earlier runs (``cache_dir/footprints.json``), else an estimate corrected after the first load.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PRIORITIES, ModelConfig, ServerConfig
from .errors import (
    MemoryBudgetExceeded,
    MemoryLimitExceeded,
    ModelMoraError,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
    WorkerTimeout,
)
from .memory import ReleaseReport, available_mb, nvml_available, tree_rss_mb
from .metrics import Metrics
from .runtime import Worker

__all__ = [
    "MemoryBudgetExceeded",
    "ModelUnhealthy",
    "QueueFull",
    "Scheduler",
    "UnknownModel",
]

logger = logging.getLogger(__name__)

_RANK = {p: i for i, p in enumerate(PRIORITIES)}
_CRASHES = (WorkerCrashed, MemoryLimitExceeded, WorkerTimeout, WorkerStopped)
_BACKOFF_CAP_S = 30.0


class UnknownModel(ModelMoraError):
    """No model of that name is configured; the message lists the ones that are."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.model = name
        self.known = sorted(known)
        super().__init__(f"unknown model {name!r}: use one of {', '.join(self.known) or '(none)'}")


class QueueFull(ModelMoraError):
    """Too many requests are waiting; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelUnhealthy(ModelMoraError):
    """The model failed to load recently; it is refused until ``retry_after_s`` has passed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Request:
    item: Any
    future: Future[Any]
    priority: str
    seq: int
    t_submit: float
    running: bool = False
    retried: bool = False


@dataclass(eq=False)
class _Replica:
    """One worker of a model. state: loading → ready ⇄ busy → stopping."""

    worker: Worker
    mem_mb: float  # RAM counted against the budget (reservation, then measured)
    vram_mb: float
    state: str = "loading"
    last_used: float = field(default_factory=time.time)
    load_rss_mb: float = 0.0
    retiring: bool = False  # recycled: serves only until its replacement is ready
    stop_when_idle: bool = False
    stopped: Future[ReleaseReport] = field(default_factory=Future)


class _Model:
    def __init__(self, cfg: ModelConfig, footprint: tuple[float, float, str]) -> None:
        self.cfg = cfg
        self.spec = cfg.to_spec()
        self.footprint_mb, self.vram_footprint_mb, self.footprint_source = footprint
        self.queues: dict[str, deque[_Request]] = {p: deque() for p in PRIORITIES}
        self.replicas: list[_Replica] = []
        self.load_waiters: list[Future[None]] = []
        self.unhealthy_until = 0.0
        self.error: str | None = None
        self.crash_streak = 0
        self.backoff_until = 0.0
        self.drain_seq = -1  # requests up to this seq are served before the model is evicted
        self.held_off = False  # unloaded on request: a pinned model is not reloaded on its own
        self.last_used: float | None = None
        self.rss_mb = self.peak_rss_mb = 0.0
        self.vram_mb: float | None = None
        self.last_release: dict[str, Any] | None = None
        self.counts = {"loads": 0, "unloads": 0, "evictions": 0, "crashes": 0, "recycles": 0}

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def head(self) -> _Request | None:
        for p in PRIORITIES:
            if self.queues[p]:
                return self.queues[p][0]
        return None

    def pop(self) -> _Request:
        for p in PRIORITIES:
            if self.queues[p]:
                return self.queues[p].popleft()
        raise IndexError("no request waiting")

    def live(self) -> list[_Replica]:
        return [r for r in self.replicas if r.state in ("ready", "busy")]

    def free_replica(self) -> _Replica | None:
        ready = [r for r in self.replicas if r.state == "ready" and not r.stop_when_idle]
        ready.sort(key=lambda r: r.retiring)
        return ready[0] if ready else None

    def needs_replica(self) -> bool:
        active = [r for r in self.replicas if not r.retiring and r.state != "stopping"]
        loading = any(r.state == "loading" for r in self.replicas)
        wanted = bool(self.queued() or self.load_waiters) or (self.cfg.pinned and not self.held_off)
        if not wanted or loading or len(active) >= self.cfg.max_concurrency:
            return False
        return self.free_replica() is None or not active

    def state(self, now: float) -> str:
        if self.live():
            return "resident"
        if any(r.state == "loading" for r in self.replicas):
            return "loading"
        return "unhealthy" if self.unhealthy_until > now else "unloaded"


class _FootprintStore:
    """Largest measured peak RSS/VRAM per model spec, kept in a JSON file across runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, float]] = {}
        try:
            self.data = json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable footprints file %s: %s", path, exc)

    def get(self, key: str) -> dict[str, float] | None:
        return self.data.get(key)

    def update(self, key: str, peak_rss_mb: float, vram_mb: float | None) -> None:
        old = self.data.get(key, {})
        new = {
            "peak_rss_mb": round(max(old.get("peak_rss_mb", 0.0), peak_rss_mb), 1),
            "vram_mb": round(max(old.get("vram_mb", 0.0), vram_mb or 0.0), 1),
        }
        if new == old:
            return
        self.data[key] = new
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.warning("cannot save footprints to %s: %s", self.path, exc)


def _estimate(cfg: ModelConfig) -> tuple[float, float]:
    """First-run guess of (RAM, VRAM) in MB, before anything was measured."""
    params = cfg.params
    if cfg.adapter == "toy":
        return float(params.get("alloc_mb", 0)) + 60.0, 0.0
    if cfg.adapter == "toy-cuda":
        return 600.0, float(params.get("alloc_mb", 2048)) + 500.0
    ram = 500.0
    if cfg.source and os.path.exists(cfg.source):
        paths = (
            [cfg.source]
            if os.path.isfile(cfg.source)
            else [os.path.join(d, f) for d, _, fs in os.walk(cfg.source) for f in fs]
        )
        ram = sum(os.path.getsize(p) for p in paths) / 2**20 * 1.5 + 300.0
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and nvml_available())
    return ram, (ram if on_gpu and cfg.adapter != "diarizer" else 0.0)


class Scheduler:
    """Keeps models resident under a memory budget and runs requests on them in batches.

    Args:
        config: the server configuration (budget, limits, and the model registry).
        metrics: where to count loads, latencies, batch sizes...; ``None`` for no metrics.

    Call :meth:`start` first and :meth:`close` at the end (or use it as a context manager).
    """

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.budget_mb = config.memory_budget_mb or 0.8 * available_mb()
        self.vram_budget_mb = config.vram_budget_mb
        self._footprints = _FootprintStore(Path(config.cache_dir) / "footprints.json")
        self._models = {m.name: _Model(m, self._footprint_of(m)) for m in config.models}
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._depth = dict.fromkeys(PRIORITIES, 0)
        slots = sum(m.max_concurrency for m in config.models)
        self._pool = ThreadPoolExecutor(2 * slots + 8, thread_name_prefix="modelmora-sched")
        self._threads: list[threading.Thread] = []
        self._started = self._closing = self._closed = False

    def _footprint_of(self, cfg: ModelConfig) -> tuple[float, float, str]:
        ram, vram = _estimate(cfg)
        source = "estimated"
        known = self._footprints.get(cfg.to_spec().label())
        if known:
            ram, source = known["peak_rss_mb"], "measured"
            vram = known.get("vram_mb") or vram
        if cfg.vram_footprint_mb is not None:
            vram = cfg.vram_footprint_mb
        if cfg.footprint_mb is not None:
            ram, source = cfg.footprint_mb, "declared"
        return ram, vram, source

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Start the dispatcher and janitor threads; pinned models begin loading."""
        with self._cond:
            if self._started:
                return self
            self._started = True
        for target, name in ((self._dispatch_loop, "dispatcher"), (self._janitor_loop, "janitor")):
            thread = threading.Thread(target=target, name=f"modelmora-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "scheduler started: budget %.0f MB, %d models", self.budget_mb, len(self._models)
        )
        return self

    def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop everything: every worker is stopped and its release verified.

        Args:
            drain: finish the requests already accepted first (up to ``timeout``); the rest
                fail with :class:`WorkerStopped`.
            timeout: seconds to wait for draining and again for the workers to stop.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
            while drain and self._started and self._busy() and time.monotonic() < deadline:
                self._cond.wait(0.05)
            stopped = WorkerStopped("the scheduler is closing")
            for m in self._models.values():
                self._fail_queued(m, stopped)
                for rep in m.replicas:
                    if rep.state == "busy" and rep.worker.pid:
                        # not Worker.kill(): the caller's thread holds the worker's lock; the
                        # call sees the death at once and its batch fails with WorkerStopped
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(rep.worker.pid, signal.SIGKILL)
                    self._stop_replica(m, rep, "close")
            waits = [rep.stopped for m in self._models.values() for rep in m.replicas]
        for fut in waits:
            try:
                fut.result(max(deadline - time.monotonic(), 1.0))
            except Exception as exc:  # a stop that fails must not stop the others
                logger.error("a worker did not stop cleanly: %s", exc)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5.0)
        self._pool.shutdown(wait=True)
        logger.info("scheduler closed")

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _busy(self) -> bool:
        return any(
            m.queued() or any(r.state in ("busy", "loading") for r in m.replicas)
            for m in self._models.values()
        )

    # --- requests ---------------------------------------------------------------------------

    def submit(self, model: str, item: Any, priority: str = "normal") -> Future[Any]:
        """Queue one item for ``model``; the future's result is the adapter's output for it.

        Args:
            model: a configured model name.
            item: one input, as the adapter takes it (a string for embeddings, ...).
            priority: critical, high, normal or low.

        Returns:
            A ``concurrent.futures.Future``; cancelling it before it runs drops the request.

        Raises:
            ValueError: an unknown priority.
            UnknownModel: no model has that name.
            MemoryBudgetExceeded: the model's known footprint is larger than the budget.
            ModelUnhealthy: the model failed to load less than ``unhealthy_cooldown_s`` ago.
            QueueFull: ``queue_limit`` requests are already waiting.
            WorkerStopped: the scheduler is closing.
        """
        if priority not in _RANK:
            raise ValueError(f"unknown priority {priority!r}: use one of {', '.join(PRIORITIES)}")
        with self._cond:
            m = self._get(model)
            if self._closing:
                raise WorkerStopped("the scheduler is closing: no new requests")
            self._check_fits(m)
            now = time.monotonic()
            if m.unhealthy_until > now:
                raise ModelUnhealthy(
                    f"model {model!r} failed to load: {m.error}", m.unhealthy_until - now
                )
            waiting = sum(self._depth.values())
            if waiting >= self.config.queue_limit:
                raise QueueFull(
                    f"{waiting} requests are waiting (queue_limit {self.config.queue_limit})",
                    self._retry_after(waiting),
                )
            req = _Request(item, Future(), priority, next(self._seq), now)
            m.queues[priority].append(req)
            self._set_depth(priority, +1)
            self._cond.notify_all()
        return req.future

    def _retry_after(self, waiting: int) -> float:
        """A rough wait: how long the queue ahead takes to drain at ~50 ms per batch."""
        batch = max((m.cfg.max_batch_size for m in self._models.values()), default=1)
        return round(min(max(1.0, waiting / batch * 0.05), 60.0), 1)

    def _get(self, name: str) -> _Model:
        m = self._models.get(name)
        if m is None:
            raise UnknownModel(name, self._models)
        return m

    def _check_fits(self, m: _Model) -> None:
        if m.footprint_source == "estimated":
            return  # a guess may be wrong: try it alone, then the measured size decides
        if m.footprint_mb > self.budget_mb:
            raise MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {m.footprint_mb:.0f} MB ({m.footprint_source}) "
                f"but the memory budget is {self.budget_mb:.0f} MB: it can never be loaded"
            )
        vb = self.vram_budget_mb
        if vb is not None and m.vram_footprint_mb > vb:
            raise MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {m.vram_footprint_mb:.0f} MB of GPU memory "
                f"but the VRAM budget is {vb:.0f} MB: it can never be loaded"
            )

    def _set_depth(self, priority: str, delta: int) -> None:
        self._depth[priority] += delta
        if self.metrics:
            self.metrics.set_queue_depth(priority, self._depth[priority])

    def _fail_queued(self, m: _Model, error: BaseException) -> None:
        for p, queue in m.queues.items():
            while queue:
                req = queue.popleft()
                self._set_depth(p, -1)
                if req.running or req.future.set_running_or_notify_cancel():
                    req.future.set_exception(error)
        for fut in m.load_waiters:
            fut.set_exception(error)
        m.load_waiters.clear()

    # --- management -------------------------------------------------------------------------

    def load(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Make ``name`` resident now, evicting others if needed; wait until it is loaded.

        An explicit load retries a model that is in its unhealthy cooldown.

        Returns:
            The model's entry, as in :meth:`models`.

        Raises:
            UnknownModel, MemoryBudgetExceeded: as for :meth:`submit`.
            ModelUnhealthy: the load failed (the load error is the cause).
            TimeoutError: not loaded within ``timeout`` seconds.
        """
        with self._cond:
            m = self._get(name)
            self._check_fits(m)
            if self._closing:
                raise WorkerStopped("the scheduler is closing")
            m.held_off = False
            if not any(r.state in ("ready", "busy") and not r.retiring for r in m.replicas):
                m.unhealthy_until = m.backoff_until = 0.0
                waiter: Future[None] = Future()
                m.load_waiters.append(waiter)
                self._cond.notify_all()
            else:
                return self._info(m, time.monotonic())
        waiter.result(timeout)
        with self._cond:
            return self._info(m, time.monotonic())

    def unload(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Stop the model's workers (after their in-flight batch) and verify the release.

        Returns:
            The :class:`ReleaseReport` as a dict (``released``, ``release_s``, ``pids``...);
            ``stage`` is ``"not loaded"`` when nothing was resident.
        """
        with self._cond:
            m = self._get(name)
            m.held_off = True
            replicas = list(m.replicas)
            for rep in replicas:
                self._stop_replica(m, rep, "unload")
        if not replicas:
            return ReleaseReport(released=True, release_s=0.0, stage="not loaded").to_dict()
        reports = [rep.stopped.result(timeout) for rep in replicas]
        merged = reports[0].to_dict()
        merged["released"] = all(r.released for r in reports)
        merged["release_s"] = max(r.release_s for r in reports)
        merged["pids"] = sorted({p for r in reports for p in r.pids})
        merged["remaining_pids"] = sorted({p for r in reports for p in r.remaining_pids})
        return merged

    def models(self) -> list[dict[str, Any]]:
        """Every configured model: state, footprint (and its source), measured memory, use."""
        with self._cond:
            now = time.monotonic()
            return [self._info(m, now) for m in self._models.values()]

    def _info(self, m: _Model, now: float) -> dict[str, Any]:
        live = m.live()
        return {
            "name": m.cfg.name,
            "adapter": m.cfg.adapter,
            "state": m.state(now),
            "footprint_mb": round(m.footprint_mb, 1),
            "footprint_source": m.footprint_source,
            "vram_footprint_mb": round(m.vram_footprint_mb, 1),
            "rss_mb": round(m.rss_mb, 1) if live else 0.0,
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "vram_mb": m.vram_mb if live else None,
            "last_used": m.last_used,
            "pid": live[0].worker.pid if live else None,
            "pids": [r.worker.pid for r in live],
            "priority": m.cfg.priority,
            "pinned": m.cfg.pinned,
            "queue_depth": m.queued(),
            "max_batch_size": m.cfg.max_batch_size,
            "keep_alive_s": m.cfg.keep_alive_s,
            "error": m.error,
            "last_release": m.last_release,
            "retry_after_s": round(max(m.unhealthy_until - now, 0.0), 1) or None,
            **m.counts,
        }

    def status(self) -> dict[str, Any]:
        """Budget, memory in use, resident models and queue depths."""
        with self._cond:
            reps = [r for m in self._models.values() for r in m.replicas]
            return {
                "budget_mb": round(self.budget_mb, 1),
                "vram_budget_mb": self.vram_budget_mb,
                "used_mb": round(sum(r.mem_mb for r in reps), 1),
                "vram_used_mb": round(sum(r.vram_mb for r in reps), 1),
                "resident": [m.cfg.name for m in self._models.values() if m.live()],
                "loading": [
                    m.cfg.name
                    for m in self._models.values()
                    if any(r.state == "loading" for r in m.replicas)
                ],
                "queue_depths": dict(self._depth),
                "queued": sum(self._depth.values()),
                "model_queue_depths": {n: m.queued() for n, m in self._models.items()},
                "ready": self._ready(),
            }

    def is_ready(self) -> bool:
        """True when the scheduler runs and every pinned model is resident."""
        with self._cond:
            return self._ready()

    def _ready(self) -> bool:
        if not self._started or self._closing:
            return False
        return all(m.live() or m.held_off for m in self._models.values() if m.cfg.pinned)

    # --- dispatcher (runs with the lock held) ------------------------------------------------

    def _dispatch_loop(self) -> None:
        with self._cond:
            while not self._closed:
                try:
                    wake = self._dispatch_once(time.monotonic())
                except Exception:  # a bug here must be loud, and must not kill the dispatcher
                    logger.exception("dispatcher error")
                    wake = 1.0
                self._cond.wait(1.0 if wake is None else max(wake, 0.001))

    def _dispatch_once(self, now: float) -> float | None:
        wakes: list[float] = []
        blocked = False  # a more urgent model waits for memory: lower ones may not take it
        for m in sorted(self._models.values(), key=self._urgency):
            while m.queued():
                rep = m.free_replica()
                if rep is None or not self._batch_due(m, now, wakes):
                    break
                self._start_batch(m, rep)
            if not m.needs_replica() or m.unhealthy_until > now or self._closed:
                continue
            if self._closing and not m.queued():
                continue
            if m.backoff_until > now:
                wakes.append(m.backoff_until - now)
            elif not blocked and not self._admit(m):
                blocked = True
        return min(wakes) if wakes else None

    def _urgency(self, m: _Model) -> tuple[int, int]:
        if m.load_waiters or (m.cfg.pinned and not m.held_off and not m.replicas):
            return (-1, 0)
        head = m.head()
        return (_RANK[head.priority], head.seq) if head else (len(PRIORITIES), 0)

    def _batch_due(self, m: _Model, now: float, wakes: list[float]) -> bool:
        if m.queued() >= m.cfg.max_batch_size or m.cfg.max_wait_ms <= 0 or self._closing:
            return True
        oldest = min(q[0].t_submit for q in m.queues.values() if q)
        due = oldest + m.cfg.max_wait_ms / 1000
        if now >= due:
            return True
        wakes.append(due - now)
        return False

    def _start_batch(self, m: _Model, rep: _Replica) -> None:
        batch: list[_Request] = []
        while len(batch) < m.cfg.max_batch_size and m.queued():
            head = m.head()
            # a request retried after a crash runs alone: the crash may have been its fault
            if batch and (batch[0].retried or (head is not None and head.retried)):
                break
            req = m.pop()
            self._set_depth(req.priority, -1)
            if req.running or req.future.set_running_or_notify_cancel():
                req.running = True
                batch.append(req)
        if batch:
            rep.state = "busy"
            rep.last_used = m.last_used = time.time()
            self._pool.submit(self._run_batch, m, rep, batch)

    def _admit(self, m: _Model) -> bool:
        """Start loading ``m`` if it fits, evicting idle workers; False when it must wait."""
        ram = min(m.footprint_mb, self.budget_mb)  # an estimate over budget: try it alone
        vram = m.vram_footprint_mb if self.vram_budget_mb is not None else 0.0
        # workers already stopping count as free: the load waits for their exit
        reps = [r for x in self._models.values() for r in x.replicas]
        stopping = [r for r in reps if r.state == "stopping"]
        held = [r for r in reps if r.state != "stopping"]
        short_ram = ram - (self.budget_mb - sum(r.mem_mb for r in held))
        short_vram = 0.0
        if self.vram_budget_mb is not None:
            short_vram = vram - (self.vram_budget_mb - sum(r.vram_mb for r in held))
        victims: list[tuple[_Model, _Replica]] = []
        if short_ram > 0 or short_vram > 0:
            found = self._pick_victims(m, short_ram, short_vram)
            if found is None:
                return False
            victims = found
        for vm, rep in victims:
            logger.info("evicting %s to make room for %s", vm.cfg.name, m.cfg.name)
            vm.counts["evictions"] += 1
            if self.metrics:
                self.metrics.inc_eviction(vm.cfg.name)
            self._stop_replica(vm, rep, "evicted")
        after = [r.stopped for r in stopping] + [rep.stopped for _, rep in victims]
        self._start_load(m, ram, vram, after)
        return True

    def _pick_victims(
        self, m: _Model | None, short_ram: float, short_vram: float
    ) -> list[tuple[_Model, _Replica]] | None:
        """Idle workers to stop: models without waiting work first, then low priority, LRU."""
        candidates = [
            (vm, rep)
            for vm in self._models.values()
            if not vm.cfg.pinned and vm is not m and not self._protected(vm, m)
            for rep in vm.replicas
            if rep.state == "ready"
        ]
        candidates.sort(
            key=lambda c: (c[0].queued() > 0, -_RANK[c[0].cfg.priority], c[1].last_used)
        )
        chosen: list[tuple[_Model, _Replica]] = []
        for vm, rep in candidates:
            if short_ram <= 0 and short_vram <= 0:
                break
            chosen.append((vm, rep))
            short_ram -= rep.mem_mb
            short_vram -= rep.vram_mb
        return chosen if short_ram <= 0 and short_vram <= 0 else None

    def _protected(self, victim: _Model, wanting: _Model | None) -> bool:
        """A model serving the backlog it was loaded for keeps it, unless a more urgent asks."""
        head = victim.head()
        if head is None or head.seq > victim.drain_seq:
            return False
        want = wanting.head() if wanting is not None else None
        return want is None or _RANK[want.priority] >= _RANK[head.priority]

    # --- worker tasks (run in the pool, lock taken only to update state) ----------------------

    def _start_load(
        self, m: _Model, ram: float, vram: float, after: list[Future[ReleaseReport]]
    ) -> None:
        cfg = m.cfg
        worker = Worker(
            m.spec,
            name=cfg.name,
            load_timeout=cfg.load_timeout_s,
            memory_limit_mb=cfg.memory_limit_mb,
            threads=cfg.threads,
        )
        rep = _Replica(worker, mem_mb=ram, vram_mb=vram)
        m.replicas.append(rep)
        self._pool.submit(self._load_task, m, rep, after)

    def _load_task(self, m: _Model, rep: _Replica, after: list[Future[ReleaseReport]]) -> None:
        for fut in after:  # evicted workers are gone before the new one allocates
            fut.exception()
        try:
            rep.worker.start()
        except Exception as exc:
            report = rep.worker.stop()
            with self._cond:
                self._load_failed(m, rep, exc)
                rep.stopped.set_result(report)
            return
        with self._cond:
            self._load_done(m, rep)

    def _load_failed(self, m: _Model, rep: _Replica, exc: Exception) -> None:
        m.replicas.remove(rep)
        m.error = f"{type(exc).__name__}: {exc}"
        cooldown = self.config.unhealthy_cooldown_s
        m.unhealthy_until = time.monotonic() + cooldown
        logger.error(
            "model %s failed to load (unhealthy for %.0f s): %s", m.cfg.name, cooldown, exc
        )
        error = ModelUnhealthy(f"model {m.cfg.name!r} failed to load: {m.error}", cooldown)
        error.__cause__ = exc
        self._fail_queued(m, error)
        for other in m.replicas:
            if other.retiring:
                self._stop_replica(m, other, "recycled")
        self._cond.notify_all()

    def _load_done(self, m: _Model, rep: _Replica) -> None:
        worker = rep.worker
        mem = worker.memory
        measured = max(mem.peak_rss_mb if mem else 0.0, worker.rss_mb())
        rep.state, rep.load_rss_mb = "ready", mem.rss_mb if mem else measured
        rep.mem_mb = max(measured, m.cfg.footprint_mb or 0.0)
        if mem and mem.vram_mb is not None:
            rep.vram_mb = max(mem.vram_mb, m.cfg.vram_footprint_mb or 0.0)
        self._observe_memory(m, rep, persist=True)
        m.counts["loads"] += 1
        m.error, m.unhealthy_until = None, 0.0
        m.drain_seq = next(self._seq)
        logger.info(
            "loaded %s (pid %s) in %.2f s: %.0f MB",
            m.cfg.name,
            worker.pid,
            worker.spawn_s,
            measured,
        )
        if self.metrics:
            self.metrics.inc_load(m.cfg.name)
        self._gauge_resident()
        for fut in m.load_waiters:
            fut.set_result(None)
        m.load_waiters.clear()
        for other in m.replicas:
            if other.retiring and other is not rep:
                self._stop_replica(m, other, "recycled")
        if rep.stop_when_idle:
            self._stop_replica(m, rep, "unload")
        self._enforce_budget(m)
        self._cond.notify_all()

    def _observe_memory(self, m: _Model, rep: _Replica, persist: bool = False) -> None:
        mem = rep.worker.memory
        if mem is None:
            return
        m.rss_mb, m.peak_rss_mb, m.vram_mb = (
            mem.rss_mb,
            max(m.peak_rss_mb, mem.peak_rss_mb),
            mem.vram_mb,
        )
        rep.mem_mb = max(rep.mem_mb, mem.rss_mb)
        if m.footprint_source != "declared":
            m.footprint_mb, m.footprint_source = max(mem.peak_rss_mb, rep.mem_mb), "measured"
            if mem.vram_mb and m.cfg.vram_footprint_mb is None:
                m.vram_footprint_mb = mem.vram_mb
        if persist:
            self._footprints.update(m.spec.label(), mem.peak_rss_mb, mem.vram_mb)
        if self.metrics:
            self.metrics.set_memory(m.cfg.name, mem.rss_mb, mem.vram_mb)

    def _enforce_budget(self, m: _Model) -> None:
        """After a measurement showed more than was reserved: evict idle others to fit."""
        reps = [r for x in self._models.values() for r in x.replicas]
        over = sum(r.mem_mb for r in reps) - self.budget_mb
        if over <= 0:
            return
        victims = self._pick_victims(m, over, 0.0) or []
        for vm, rep in victims:
            logger.info("over budget by %.0f MB: evicting %s", over, vm.cfg.name)
            vm.counts["evictions"] += 1
            if self.metrics:
                self.metrics.inc_eviction(vm.cfg.name)
            self._stop_replica(vm, rep, "evicted")

    def _run_batch(self, m: _Model, rep: _Replica, batch: list[_Request]) -> None:
        timeout = self.config.request_timeout_s
        results: list[tuple[_Request, Any, BaseException | None]] = []
        crashed: list[_Request] = []
        crash: BaseException | None = None
        try:
            outputs = rep.worker.call([r.item for r in batch], timeout)
            if len(outputs) != len(batch):
                raise WorkerError(f"the adapter returned {len(outputs)} outputs for {len(batch)}")
            results = [(r, out, None) for r, out in zip(batch, outputs, strict=True)]
        except _CRASHES as exc:
            crash, crashed = exc, batch
        except Exception as exc:
            if len(batch) == 1:
                results = [(batch[0], None, exc)]
            else:  # one bad item must not fail the others: run them one by one
                for i, req in enumerate(batch):
                    try:
                        results.append((req, rep.worker.call([req.item], timeout)[0], None))
                    except _CRASHES as exc2:
                        crash, crashed = exc2, batch[i:]
                        break
                    except Exception as exc2:
                        results.append((req, None, exc2))
        now = time.monotonic()
        if self.metrics:
            self.metrics.observe_batch(m.cfg.name, len(batch))
            for req, _, _ in results:
                self.metrics.observe_latency(m.cfg.name, now - req.t_submit)
        for req, out, err in results:  # before taking the lock: callers wait on these
            if err is None:
                req.future.set_result(out)
            else:
                req.future.set_exception(err)
        with self._cond:
            rep.last_used = m.last_used = time.time()
            if crash is not None:
                self._batch_crashed(m, rep, crashed, crash)
            else:
                self._batch_done(m, rep)
            self._cond.notify_all()

    def _batch_done(self, m: _Model, rep: _Replica) -> None:
        rep.state = "ready"
        m.crash_streak = 0
        self._observe_memory(m, rep)
        replacing = any(r.state == "loading" for r in m.replicas)
        if rep.stop_when_idle or (rep.retiring and not replacing):
            self._stop_replica(m, rep, "recycled" if rep.retiring else "unload")
        elif not rep.retiring and self._recycle_reason(m, rep):
            self._recycle(m, rep)
        else:
            self._enforce_budget(m)

    def _recycle_reason(self, m: _Model, rep: _Replica) -> str | None:
        cfg, worker = m.cfg, rep.worker
        if cfg.max_tasks is not None and worker.calls >= cfg.max_tasks:
            return f"{worker.calls} calls (max_tasks {cfg.max_tasks})"
        if cfg.max_rss_growth_mb is not None and worker.memory is not None:
            growth = worker.memory.rss_mb - rep.load_rss_mb
            if growth > cfg.max_rss_growth_mb:
                return f"RSS grew {growth:.0f} MB (max_rss_growth_mb {cfg.max_rss_growth_mb:.0f})"
        return None

    def _recycle(self, m: _Model, rep: _Replica) -> None:
        logger.info(
            "recycling %s (pid %s): %s", m.cfg.name, rep.worker.pid, self._recycle_reason(m, rep)
        )
        m.counts["recycles"] += 1
        rep.retiring = True
        reps = [r for x in self._models.values() for r in x.replicas]
        free = self.budget_mb - sum(r.mem_mb for r in reps)
        vram_ok = self.vram_budget_mb is None or (
            self.vram_budget_mb - sum(r.vram_mb for r in reps) >= m.vram_footprint_mb
        )
        if free >= m.footprint_mb and vram_ok and not self._closing:
            self._start_load(m, m.footprint_mb, m.vram_footprint_mb, [])  # replacement first
        else:
            self._stop_replica(m, rep, "recycled")

    def _batch_crashed(
        self, m: _Model, rep: _Replica, crashed: list[_Request], exc: BaseException
    ) -> None:
        m.counts["crashes"] += 1
        m.crash_streak += 1
        delay = min(2.0 ** (m.crash_streak - 1), _BACKOFF_CAP_S)
        m.backoff_until = time.monotonic() + delay
        logger.warning("worker of %s crashed (restart in %.0f s): %s", m.cfg.name, delay, exc)
        if self.metrics:
            self.metrics.inc_crash(m.cfg.name)
        rep.state = "ready"  # so that it can be stopped (reaped and its release verified)
        self._stop_replica(m, rep, "crashed")
        for req in reversed(crashed):
            if self.config.retry_crashed and not req.retried and not self._closing:
                req.retried = True
                m.queues[req.priority].appendleft(req)
                self._set_depth(req.priority, +1)
            elif self._closing:
                req.future.set_exception(WorkerStopped("the scheduler closed during the call"))
            else:
                req.future.set_exception(exc)

    def _stop_replica(self, m: _Model, rep: _Replica, reason: str) -> None:
        if rep.state == "stopping":
            return
        if rep.state in ("busy", "loading"):
            rep.stop_when_idle = True
            return
        rep.state = "stopping"
        self._pool.submit(self._stop_task, m, rep, reason)

    def _stop_task(self, m: _Model, rep: _Replica, reason: str) -> None:
        try:
            report = rep.worker.stop()
        except Exception as exc:  # never leave a waiter hanging
            logger.exception("stopping %s failed", m.cfg.name)
            with self._cond:
                m.replicas.remove(rep)
                rep.stopped.set_exception(exc)
                self._cond.notify_all()
            return
        log = logger.info if report.released else logger.error
        log(
            "unloaded %s (%s): released=%s in %.3f s (%s)",
            m.cfg.name,
            reason,
            report.released,
            report.release_s,
            report.stage,
        )
        with self._cond:
            m.replicas.remove(rep)
            m.counts["unloads"] += 1
            m.last_release = report.to_dict()
            self._observe_memory(m, rep, persist=True)
            self._gauge_resident()
            if self.metrics:
                self.metrics.inc_unload(m.cfg.name)
                if not m.live():
                    self.metrics.set_memory(m.cfg.name, 0.0, None)
            rep.stopped.set_result(report)
            self._cond.notify_all()

    # --- janitor ----------------------------------------------------------------------------

    def _janitor_loop(self) -> None:
        alive = [m.cfg.keep_alive_s for m in self._models.values() if m.cfg.keep_alive_s]
        tick = min([1.0, *(k / 4 for k in alive)])
        with self._cond:
            while not self._closed:
                self._cond.wait(max(tick, 0.02))
                if self._closing:
                    continue
                try:
                    self._janitor_once()
                except Exception:
                    logger.exception("janitor error")

    def _janitor_once(self) -> None:
        now = time.time()
        for m in self._models.values():
            keep = m.cfg.keep_alive_s
            for rep in m.replicas:
                idle = rep.state == "ready" and not m.queued() and not m.cfg.pinned
                if idle and keep is not None and now - rep.last_used > keep:
                    logger.info("%s idle for %.1f s: unloading", m.cfg.name, now - rep.last_used)
                    self._stop_replica(m, rep, "keep-alive")
            live = m.live()
            if live and self.metrics:
                rss = sum(tree_rss_mb(r.worker.pid) for r in live if r.worker.pid)
                self.metrics.set_memory(m.cfg.name, rss, m.vram_mb)
        self._gauge_resident()

    def _gauge_resident(self) -> None:
        if self.metrics:
            self.metrics.set_resident(sum(1 for m in self._models.values() if m.live()))
