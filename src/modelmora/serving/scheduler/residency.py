"""Residency state of the scheduler: requests, a model's workers, footprints, eviction order.

The :class:`~modelmora.serving.scheduler.core.Scheduler` owns one :class:`ModelState` per
configured model
and guards all of them with its lock; nothing here locks or starts threads. A model's footprint
is its declared ``footprint_mb``, else the largest peak RSS measured on earlier runs (kept by
:class:`FootprintStore` in ``cache_dir/footprints.json``), else :func:`estimate_footprint`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from modelmora.runtime.footprints import FootprintStore
from modelmora.runtime.memory import ReleaseReport, nvml_available
from modelmora.runtime.worker import Worker
from modelmora.serving.config import PRIORITIES, ModelConfig

__all__ = [
    "RANK",
    "ModelState",
    "Replica",
    "Request",
    "estimate_footprint",
    "initial_footprint",
    "pick_victims",
]

logger = logging.getLogger(__name__)

#: Priority class → rank (0 is the most urgent).
RANK = {p: i for i, p in enumerate(PRIORITIES)}


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
        self.last_used: float | None = None
        self.rss_mb = self.peak_rss_mb = 0.0
        self.vram_mb: float | None = None
        self.last_release: dict[str, Any] | None = None
        self.load_s: float | None = None  # the last load's duration: what a swap costs
        self.counts = {"loads": 0, "unloads": 0, "evictions": 0, "crashes": 0, "recycles": 0}

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
