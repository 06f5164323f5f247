"""The scheduler's books: requests, each model's workers and footprint, the budget, victims.

:class:`Residency` is the accounting every other piece of the scheduler reads and writes: one
:class:`ModelState` per configured model (its queues, its :class:`Replica` workers, footprint,
health and counters), the RAM and VRAM budgets and what the workers hold against them, the
queue depths, the scheduler's lifecycle flags and its recent releases.
:func:`pick_victims` is the eviction policy. Nothing here locks, starts a thread or touches a
worker: the :class:`~modelmora.serving.scheduler.core.Scheduler` guards all of it with its one
lock, which every method here expects its caller to hold.

A model's footprint is its declared ``footprint_mb``, else the largest peak RSS measured on
earlier runs (kept by :class:`FootprintStore` in ``cache_dir/footprints.json``), else
:func:`estimate_footprint`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmora.errors import MemoryBudgetExceeded
from modelmora.runtime.footprints import FootprintStore
from modelmora.runtime.memory import ReleaseReport, available_mb, nvml_available
from modelmora.runtime.spares import SparePool
from modelmora.runtime.spawn import SpareKey
from modelmora.runtime.worker import Worker
from modelmora.serving.config import PRIORITIES, RANK, ModelConfig, ServerConfig
from modelmora.serving.metrics import Metrics
from modelmora.serving.scheduler.errors import UnknownModel

__all__ = [
    "ModelState",
    "Replica",
    "Request",
    "Residency",
    "estimate_footprint",
    "initial_footprint",
    "pick_victims",
]

logger = logging.getLogger(__name__)

#: Releases kept for :meth:`Residency.releases` (the most recent ones).
RELEASES_KEPT = 100


@dataclass(eq=False)
class Request:
    """One submitted item waiting for (or in) a batch."""

    item: Any
    future: Future[Any]
    priority: str
    seq: int
    t_submit: float
    running: bool = False
    retried: bool = False
    # a streamed request: called with each chunk; runs alone, never batched
    on_chunk: Callable[[Any], Any] | None = None


@dataclass(eq=False)
class Replica:
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


class ModelState:
    """One configured model: its queues, workers, footprint, health and counters."""

    def __init__(self, cfg: ModelConfig, footprint: tuple[float, float, str]) -> None:
        self.cfg = cfg
        self.spec = cfg.to_spec()
        self.footprint_mb, self.vram_footprint_mb, self.footprint_source = footprint
        self.queues: dict[str, deque[Request]] = {p: deque() for p in PRIORITIES}
        self.replicas: list[Replica] = []
        self.load_waiters: list[Future[None]] = []
        self.unhealthy_until = 0.0
        self.error: str | None = None
        self.crash_streak = 0
        self.backoff_until = 0.0
        self.drain_seq = -1  # requests up to this seq are served before the model is evicted
        self.held_off = False  # unloaded on request: a pinned model is not reloaded on its own
        self.removed = False  # deleted from the registry: its workers are stopping
        self.load_failures = 0  # failed loads in a row: the backoff's exponent
        self.last_used: float | None = None
        self.rss_mb = self.peak_rss_mb = 0.0
        self.vram_mb: float | None = None
        self.last_release: dict[str, Any] | None = None
        self.load_s: float | None = None  # the last load's duration: what a swap costs
        self.last_batch = 0  # requests in the last batch started: do they come in company?
        self.counts = {
            "loads": 0,
            "warm_loads": 0,  # of the loads, those started from a spare
            "unloads": 0,
            "evictions": 0,
            "crashes": 0,
            "recycles": 0,
        }

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def head(self) -> Request | None:
        for p in PRIORITIES:
            if self.queues[p]:
                return self.queues[p][0]
        return None

    def pop(self) -> Request:
        for p in PRIORITIES:
            if self.queues[p]:
                return self.queues[p].popleft()
        raise IndexError("no request waiting")

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.state in ("ready", "busy")]

    def free_replica(self) -> Replica | None:
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

    def recycle_reason(self, rep: Replica) -> str | None:
        """Why ``rep`` should be replaced (task count or RSS growth), or ``None``."""
        cfg, worker = self.cfg, rep.worker
        if cfg.max_tasks is not None and worker.calls >= cfg.max_tasks:
            return f"{worker.calls} calls (max_tasks {cfg.max_tasks})"
        if cfg.max_rss_growth_mb is not None and worker.memory is not None:
            growth = worker.memory.rss_mb - rep.load_rss_mb
            if growth > cfg.max_rss_growth_mb:
                return f"RSS grew {growth:.0f} MB (max_rss_growth_mb {cfg.max_rss_growth_mb:.0f})"
        return None

    def info(self, now: float) -> dict[str, Any]:
        """The model's entry of ``Scheduler.models()``."""
        live = self.live()
        return {
            "name": self.cfg.name,
            "adapter": self.cfg.adapter,
            "task": self.cfg.capabilities.task,
            "state": self.state(now),
            "footprint_mb": round(self.footprint_mb, 1),
            "footprint_source": self.footprint_source,
            "vram_footprint_mb": round(self.vram_footprint_mb, 1),
            "rss_mb": round(self.rss_mb, 1) if live else 0.0,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "vram_mb": self.vram_mb if live else None,
            "last_used": self.last_used,
            "pid": live[0].worker.pid if live else None,
            "pids": [r.worker.pid for r in live],
            "priority": self.cfg.priority,
            "pinned": self.cfg.pinned,
            "queue_depth": self.queued(),
            "max_batch_size": self.cfg.max_batch_size,
            "keep_alive_s": self.cfg.keep_alive_s,
            "error": self.error,
            "last_release": self.last_release,
            "retry_after_s": round(max(self.unhealthy_until - now, 0.0), 1) or None,
            "load_failures": self.load_failures,
            **self.counts,
        }


def estimate_footprint(cfg: ModelConfig) -> tuple[float, float]:
    """First-run guess of (RAM, VRAM) in MB, before anything was measured.

    The adapter's footprint hints first (:class:`~modelmora.models.Capabilities`), else 1.5×
    the size of a local source plus an interpreter, else 500 MB; on a GPU the VRAM guess is
    the RAM guess unless the adapter declares its own.
    """
    caps = cfg.capabilities
    ram = 500.0
    if caps.footprint_mb is not None:
        ram = caps.footprint_mb
    elif cfg.source and os.path.exists(cfg.source):
        paths = (
            [cfg.source]
            if os.path.isfile(cfg.source)
            else [os.path.join(d, f) for d, _, fs in os.walk(cfg.source) for f in fs]
        )
        ram = sum(os.path.getsize(p) for p in paths) / 2**20 * 1.5 + 300.0
    on_gpu = cfg.device == "cuda" or (cfg.device == "auto" and nvml_available())
    if caps.vram_footprint_mb is not None:
        return ram, caps.vram_footprint_mb
    return ram, (ram if on_gpu else 0.0)


def initial_footprint(cfg: ModelConfig, store: FootprintStore) -> tuple[float, float, str]:
    """(RAM MB, VRAM MB, source) before this run measured anything: declared, else measured
    on an earlier run, else estimated."""
    ram, vram = estimate_footprint(cfg)
    source = "estimated"
    known = store.get(cfg.to_spec().label())
    if known:
        ram, source = known["peak_rss_mb"], "measured"
        vram = known.get("vram_mb") or vram
    if cfg.vram_footprint_mb is not None:
        vram = cfg.vram_footprint_mb
    if cfg.footprint_mb is not None:
        ram, source = cfg.footprint_mb, "declared"
    return ram, vram, source


def pick_victims(
    models: list[ModelState], wanting: ModelState | None, short_ram: float, short_vram: float
) -> list[tuple[ModelState, Replica]] | None:
    """Idle workers whose stop frees ``short_ram``/``short_vram`` MB, or ``None`` if none can.

    Order: models without waiting work first, then the lower priority class, then the least
    recently used. Pinned models, busy workers and models still serving the backlog they were
    loaded for (unless ``wanting`` is more urgent) are never chosen.
    """
    candidates = [
        (vm, rep)
        for vm in models
        if not vm.cfg.pinned and vm is not wanting and not _protected(vm, wanting)
        for rep in vm.replicas
        if rep.state == "ready"
    ]
    candidates.sort(key=lambda c: (c[0].queued() > 0, -RANK[c[0].cfg.priority], c[1].last_used))
    chosen: list[tuple[ModelState, Replica]] = []
    for vm, rep in candidates:
        if short_ram <= 0 and short_vram <= 0:
            break
        chosen.append((vm, rep))
        short_ram -= rep.mem_mb
        short_vram -= rep.vram_mb
    return chosen if short_ram <= 0 and short_vram <= 0 else None


def _protected(victim: ModelState, wanting: ModelState | None) -> bool:
    """A model serving the backlog it was loaded for keeps it, unless a more urgent asks."""
    head = victim.head()
    if head is None or head.seq > victim.drain_seq:
        return False
    want = wanting.head() if wanting is not None else None
    return want is None or RANK[want.priority] >= RANK[head.priority]


class Residency:
    """The scheduler's books: models, budgets, what is held, queue depths, lifecycle.

    Args:
        config: the server configuration (budget, limits, and the model registry).
        metrics: where gauges and counters go; ``None`` for no metrics.

    Every method expects the scheduler's lock to be held by its caller.
    """

    def __init__(
        self, config: ServerConfig, metrics: Metrics | None, spares: SparePool | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        # spares hold memory too: counted in the budget, given up before any model
        self.spares = spares if spares is not None else SparePool()
        self.spares_wanted: set[SpareKey] = set()  # kinds that were unloaded: reloads ahead
        self.budget_mb = config.memory_budget_mb or 0.8 * available_mb()
        self.vram_budget_mb = config.vram_budget_mb
        self.footprints = FootprintStore(Path(config.cache_dir) / "footprints.json")
        self.models = {
            m.name: ModelState(m, initial_footprint(m, self.footprints)) for m in config.models
        }
        self.depth = dict.fromkeys(PRIORITIES, 0)
        self.seq = itertools.count()  # request order; also marks the backlog a load serves
        self.started = self.closing = self.closed = False
        self.releases: deque[dict[str, Any]] = deque(maxlen=RELEASES_KEPT)

    # --- models and requests ----------------------------------------------------------------

    def get(self, name: str) -> ModelState:
        """The model called ``name``; :class:`UnknownModel` names the known ones."""
        m = self.models.get(name)
        if m is None or m.removed:
            raise UnknownModel(name, [n for n, x in self.models.items() if not x.removed])
        return m

    def replicas(self) -> list[Replica]:
        """Every worker of every model."""
        return [r for m in self.models.values() for r in m.replicas]

    def busy(self) -> bool:
        """True while a request waits or a worker is busy or loading."""
        return any(
            m.queued() or any(r.state in ("busy", "loading") for r in m.replicas)
            for m in self.models.values()
        )

    def enqueue(self, m: ModelState, req: Request, *, first: bool = False) -> None:
        """Queue ``req`` for ``m`` (at the head of its class when ``first``: a retry)."""
        if first:
            m.queues[req.priority].appendleft(req)
        else:
            m.queues[req.priority].append(req)
        self.set_depth(req.priority, +1)

    def set_depth(self, priority: str, delta: int) -> None:
        """Count requests in and out of the queues (and gauge them)."""
        self.depth[priority] += delta
        if self.metrics:
            self.metrics.set_queue_depth(priority, self.depth[priority])

    def fail_queued(self, m: ModelState, error: BaseException) -> None:
        """Fail every request waiting for ``m`` and every caller waiting for its load."""
        for p, queue in m.queues.items():
            while queue:
                req = queue.popleft()
                self.set_depth(p, -1)
                if req.running or req.future.set_running_or_notify_cancel():
                    req.future.set_exception(error)
        for fut in m.load_waiters:
            fut.set_exception(error)
        m.load_waiters.clear()

    def retry_after(self, waiting: int) -> float:
        """A rough wait: how long the queue ahead takes to drain at ~50 ms per batch."""
        batch = max((m.cfg.max_batch_size for m in self.models.values()), default=1)
        return round(min(max(1.0, waiting / batch * 0.05), 60.0), 1)

    # --- the budget -------------------------------------------------------------------------

    def check_fits(self, m: ModelState) -> None:
        """Raise :class:`MemoryBudgetExceeded` when ``m`` is known never to fit."""
        # a guess may be wrong: a model is tried alone, then the measured size decides
        known = m.footprint_source != "estimated"
        if known and m.footprint_mb > self.budget_mb:
            raise MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {m.footprint_mb:.0f} MB ({m.footprint_source}) "
                f"but the memory budget is {self.budget_mb:.0f} MB: it can never be loaded"
            )
        vb = self.vram_budget_mb
        vram_known = known or m.cfg.vram_footprint_mb is not None
        if vb is not None and vram_known and m.vram_footprint_mb > vb:
            raise MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {m.vram_footprint_mb:.0f} MB of GPU memory "
                f"but the VRAM budget is {vb:.0f} MB: it can never be loaded"
            )

    def shortfall(
        self, ram: float, vram: float, key: SpareKey | None = None
    ) -> tuple[float, float]:
        """(RAM, VRAM) MB missing to load ``ram``/``vram`` now; workers stopping count as free.

        Spares count as held, but for the one of ``key`` the load will take (``ram`` has it).
        """
        held = [r for r in self.replicas() if r.state != "stopping"]
        spare_mb = self.spares.reserved_mb() - (self.spares.peek_mb(key) if key else 0.0)
        short_ram = ram - (self.budget_mb - sum(r.mem_mb for r in held) - spare_mb)
        short_vram = 0.0
        if self.vram_budget_mb is not None:
            short_vram = vram - (self.vram_budget_mb - sum(r.vram_mb for r in held))
        return short_ram, short_vram

    def room_beside_pinned(self, m: ModelState) -> tuple[float, float | None]:
        """(RAM, VRAM) MB the pinned models other than ``m`` leave (VRAM None: no budget)."""
        pinned = [
            r for x in self.models.values() if x.cfg.pinned and x is not m for r in x.replicas
        ]
        room = self.budget_mb - sum(r.mem_mb for r in pinned)
        if self.vram_budget_mb is None:
            return room, None
        return room, self.vram_budget_mb - sum(r.vram_mb for r in pinned)

    def can_add(self, m: ModelState) -> bool:
        """True when a second worker of ``m`` fits beside all the workers there are now."""
        reps = self.replicas()
        free = self.budget_mb - sum(r.mem_mb for r in reps)
        vram_ok = self.vram_budget_mb is None or (
            self.vram_budget_mb - sum(r.vram_mb for r in reps) >= m.vram_footprint_mb
        )
        return free >= m.footprint_mb and vram_ok

    def spare_fits(self) -> bool:
        """May the spare being reserved be prepared? (The pool's reservation counts it.)"""
        held = sum(r.mem_mb for r in self.replicas() if r.state != "stopping")
        waiting = any(x.queued() and not x.live() for x in self.models.values())
        fits = held + self.spares.reserved_mb() <= self.budget_mb
        return fits and not waiting and not self.closing

    def ensure_spares(self) -> None:
        """Prepare the missing spares of the kinds that were unloaded, in the background."""
        if not self.closing:
            for key in self.spares_wanted:
                self.spares.ensure(key)  # keep_spares says how many (none for some kinds)

    def observe_memory(self, m: ModelState, rep: Replica) -> None:
        """Take ``rep``'s latest measurement: what it holds, and ``m``'s measured footprint.

        The footprint is persisted by the caller, outside the lock (it is file I/O).
        """
        mem = rep.worker.memory
        if mem is None:
            return
        m.rss_mb, m.peak_rss_mb, m.vram_mb = (
            mem.rss_mb,
            max(m.peak_rss_mb, mem.peak_rss_mb),
            mem.vram_mb,
        )
        rep.mem_mb = max(rep.mem_mb, mem.rss_mb)
        if mem.vram_mb is not None:  # the CUDA allocator grows on first use, not at load
            rep.vram_mb = max(rep.vram_mb, mem.vram_mb)
        if m.footprint_source != "declared":
            m.footprint_mb, m.footprint_source = max(mem.peak_rss_mb, rep.mem_mb), "measured"
            if mem.vram_mb and m.cfg.vram_footprint_mb is None:
                m.vram_footprint_mb = mem.vram_mb
        if self.metrics:
            self.metrics.set_memory(m.cfg.name, mem.rss_mb, mem.vram_mb)

    def record_release(self, m: ModelState, reason: str, report: ReleaseReport) -> None:
        """Keep the report of a worker's exit among the recent releases."""
        self.releases.append({"model": m.cfg.name, "reason": reason, **report.to_dict()})

    def gauge_resident(self) -> None:
        """Set the resident-models gauge."""
        if self.metrics:
            self.metrics.set_resident(sum(1 for m in self.models.values() if m.live()))

    # --- what the management calls report ---------------------------------------------------

    def ready(self) -> bool:
        """True when the scheduler runs and every pinned model is resident."""
        if not self.started or self.closing:
            return False
        return all(m.live() or m.held_off for m in self.models.values() if m.cfg.pinned)

    def status(self) -> dict[str, Any]:
        """Budget, memory in use, resident models and queue depths."""
        reps = self.replicas()
        models = self.models.values()
        return {
            "budget_mb": round(self.budget_mb, 1),
            "vram_budget_mb": self.vram_budget_mb,
            "used_mb": round(sum(r.mem_mb for r in reps) + self.spares.reserved_mb(), 1),
            "vram_used_mb": round(sum(r.vram_mb for r in reps), 1),
            "resident": [m.cfg.name for m in self.models.values() if m.live()],
            "loading": [
                m.cfg.name
                for m in self.models.values()
                if any(r.state == "loading" for r in m.replicas)
            ],
            "queue_depths": dict(self.depth),
            "queued": sum(self.depth.values()),
            "model_queue_depths": {n: m.queued() for n, m in self.models.items()},
            "ready": self.ready(),
            "warm_loads": sum(m.counts["warm_loads"] for m in models),
            "cold_loads": sum(m.counts["loads"] - m.counts["warm_loads"] for m in models),
        }
