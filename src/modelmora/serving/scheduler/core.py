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
and stopped in a thread pool, never while the lock is held. A streamed request (``on_chunk``)
runs alone through ``Worker.stream``; the pool thread hands each chunk to its callback.

A model's footprint is its declared ``footprint_mb``, else the largest peak RSS measured on
earlier runs (``cache_dir/footprints.json``), else an estimate corrected after the first load.

This module holds the :class:`Scheduler`'s requests and management calls and its two threads,
the dispatcher (admission, eviction, batching) and the janitor. The tasks its pool runs (load,
batch, stream, stop) are in :mod:`modelmora.serving.scheduler.pool`, its exceptions in
:mod:`modelmora.serving.scheduler.errors`, the per-model state and victim picking in
:mod:`modelmora.serving.scheduler.residency`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelmora.errors import MemoryBudgetExceeded, WorkerStopped
from modelmora.runtime.footprints import FootprintStore
from modelmora.runtime.memory import ReleaseReport, available_mb, tree_rss_mb
from modelmora.runtime.spares import SparePool
from modelmora.runtime.worker import SpareKey, spare_key
from modelmora.serving.config import PRIORITIES, ServerConfig
from modelmora.serving.metrics import Metrics
from modelmora.serving.scheduler.errors import ModelUnhealthy, QueueFull, UnknownModel
from modelmora.serving.scheduler.pool import WorkerTasks
from modelmora.serving.scheduler.residency import (
    RANK,
    ModelState,
    Replica,
    Request,
    initial_footprint,
    pick_victims,
)

__all__ = [
    "MemoryBudgetExceeded",
    "ModelUnhealthy",
    "QueueFull",
    "Scheduler",
    "UnknownModel",
]

logger = logging.getLogger(__name__)

_SWAP_HOLD_CAP_S = 5.0


def _alone(req: Request) -> bool:
    return req.retried or req.on_chunk is not None


class Scheduler(WorkerTasks):
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
        self._footprints = FootprintStore(Path(config.cache_dir) / "footprints.json")
        self._models = {
            m.name: ModelState(m, initial_footprint(m, self._footprints)) for m in config.models
        }
        self._cond = threading.Condition()
        self.spares = SparePool(config.keep_spares, fits=self.spare_fits)
        self.spares_wanted: set[SpareKey] = set()
        self._seq = itertools.count()
        self._depth = dict.fromkeys(PRIORITIES, 0)
        slots = sum(m.max_concurrency for m in config.models)
        self._pool = ThreadPoolExecutor(2 * slots + 8, thread_name_prefix="modelmora-sched")
        self._threads: list[threading.Thread] = []
        self._started = self._closing = self._closed = False
        self._janitor_stop = threading.Event()

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
        self.spares.close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._janitor_stop.set()
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

    def submit(
        self,
        model: str,
        item: Any,
        priority: str = "normal",
        *,
        on_chunk: Callable[[Any], Any] | None = None,
    ) -> Future[Any]:
        """Queue one item for ``model``; the future's result is the adapter's output for it.

        Args:
            model: a configured model name.
            item: one input, as the adapter takes it (a string for embeddings, ...).
            priority: critical, high, normal or low.
            on_chunk: stream the output instead (:meth:`Worker.stream`): called in a scheduler
                thread with each partial output as the model yields it; returning ``False``
                stops the stream (the worker stays loaded). The request is queued, admitted
                and prioritised like any other, but runs alone, never in a batch, and a crash
                after its first chunk is not retried (the caller has seen part of it).

        Returns:
            A ``concurrent.futures.Future``; cancelling it before it runs drops the request.
            For a streamed request its result is the number of chunks delivered.

        Raises:
            ValueError: an unknown priority.
            UnknownModel: no model has that name.
            MemoryBudgetExceeded: the model's known footprint is larger than the budget.
            ModelUnhealthy: the model failed to load less than ``unhealthy_cooldown_s`` ago.
            QueueFull: ``queue_limit`` requests are already waiting.
            WorkerStopped: the scheduler is closing.
        """
        if priority not in RANK:
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
            req = Request(item, Future(), priority, next(self._seq), now, on_chunk=on_chunk)
            m.queues[priority].append(req)
            self._set_depth(priority, +1)
            self._cond.notify_all()
        return req.future

    def _retry_after(self, waiting: int) -> float:
        """A rough wait: how long the queue ahead takes to drain at ~50 ms per batch."""
        batch = max((m.cfg.max_batch_size for m in self._models.values()), default=1)
        return round(min(max(1.0, waiting / batch * 0.05), 60.0), 1)

    def _get(self, name: str) -> ModelState:
        m = self._models.get(name)
        if m is None:
            raise UnknownModel(name, self._models)
        return m

    def _check_fits(self, m: ModelState) -> None:
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

    def _set_depth(self, priority: str, delta: int) -> None:
        self._depth[priority] += delta
        if self.metrics:
            self.metrics.set_queue_depth(priority, self._depth[priority])

    def _fail_queued(self, m: ModelState, error: BaseException) -> None:
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
                return m.info(time.monotonic())
        waiter.result(timeout)
        with self._cond:
            return m.info(time.monotonic())

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
            return [m.info(now) for m in self._models.values()]

    def status(self) -> dict[str, Any]:
        """Budget, memory in use (spares included), resident models, queues and spares."""
        spares = self.spares.info()  # outside the lock: it reads the spares' /proc
        with self._cond:
            reps = [r for m in self._models.values() for r in m.replicas]
            return {
                "budget_mb": round(self.budget_mb, 1),
                "vram_budget_mb": self.vram_budget_mb,
                "used_mb": round(sum(r.mem_mb for r in reps) + self.spares.reserved_mb(), 1),
                "spares": spares,
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
                "warm_loads": sum(m.counts["warm_loads"] for m in self._models.values()),
                "cold_loads": sum(
                    m.counts["loads"] - m.counts["warm_loads"] for m in self._models.values()
                ),
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
            elif not blocked and not self._admit(m, now, wakes):
                blocked = True
        return min(wakes) if wakes else None

    def _urgency(self, m: ModelState) -> tuple[int, int]:
        if m.load_waiters or (m.cfg.pinned and not m.held_off and not m.replicas):
            return (-1, 0)
        head = m.head()
        return (RANK[head.priority], head.seq) if head else (len(PRIORITIES), 0)

    def _batch_due(self, m: ModelState, now: float, wakes: list[float]) -> bool:
        if m.queued() >= m.cfg.max_batch_size or m.cfg.max_wait_ms <= 0 or self._closing:
            return True
        oldest = min(q[0].t_submit for q in m.queues.values() if q)
        due = oldest + m.cfg.max_wait_ms / 1000
        if now >= due:
            return True
        wakes.append(due - now)
        return False

    def _start_batch(self, m: ModelState, rep: Replica) -> None:
        batch: list[Request] = []
        while len(batch) < m.cfg.max_batch_size and m.queued():
            head = m.head()
            # a request retried after a crash runs alone (the crash may have been its fault),
            # and so does a streamed one
            if batch and (_alone(batch[0]) or (head is not None and _alone(head))):
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

    def _admit(self, m: ModelState, now: float, wakes: list[float]) -> bool:
        """Start loading ``m`` if it fits, evicting idle workers; False when it must wait.

        A load that needs an eviction waits until its oldest request has waited as long as
        the load takes (unless the batch is full or the request is critical): paying for a
        swap only after waiting its cost bounds the churn between models that take turns.
        """
        ram = min(m.footprint_mb, self.budget_mb)  # an estimate over budget: try it alone
        vram = m.vram_footprint_mb if self.vram_budget_mb is not None else 0.0
        # workers already stopping count as free: the load waits for their exit
        reps = [r for x in self._models.values() for r in x.replicas]
        stopping = [r for r in reps if r.state == "stopping"]
        held = [r for r in reps if r.state != "stopping"]
        key = spare_key(m.spec.kind, m.cfg.threads)
        # the spare this load takes is part of ``ram``; the others are given up before models
        spare_mb = self.spares.reserved_mb() - self.spares.peek_mb(key)
        short_ram = ram - (self.budget_mb - sum(r.mem_mb for r in held) - spare_mb)
        shed: list[Future[ReleaseReport]] = []
        if short_ram > 0 and spare_mb > 0:
            shed = self.spares.shed(short_ram, keep_key=key)
            short_ram -= spare_mb - (self.spares.reserved_mb() - self.spares.peek_mb(key))
        short_vram = 0.0
        if self.vram_budget_mb is not None:
            short_vram = vram - (self.vram_budget_mb - sum(r.vram_mb for r in held))
        victims: list[tuple[ModelState, Replica]] = []
        if short_ram > 0 or short_vram > 0:
            found = pick_victims(list(self._models.values()), m, short_ram, short_vram)
            if found is None:
                return self._blocked_by_pinned(m, ram, vram)
            head = m.head()
            hold = min(m.load_s if m.load_s is not None else 0.5, _SWAP_HOLD_CAP_S)
            if head is not None and head.priority != "critical" and not m.load_waiters:
                waited = now - head.t_submit
                if waited < hold and m.queued() < m.cfg.max_batch_size:
                    wakes.append(hold - waited)
                    return True
            victims = found
        for vm, rep in victims:
            self._evict(vm, rep, f"to make room for {m.cfg.name}")
        after = [r.stopped for r in stopping] + [rep.stopped for _, rep in victims] + shed
        self._start_load(m, ram, vram, after)
        return True

    def _blocked_by_pinned(self, m: ModelState, ram: float, vram: float) -> bool:
        """False (wait for in-flight work) unless pinned models leave too little room for
        ``m`` ever: then its requests fail now instead of waiting forever."""
        pinned = [
            r for x in self._models.values() if x.cfg.pinned and x is not m for r in x.replicas
        ]
        room = self.budget_mb - sum(r.mem_mb for r in pinned)
        vram_room = (self.vram_budget_mb or 0.0) - sum(r.vram_mb for r in pinned)
        if ram <= room and (self.vram_budget_mb is None or vram <= vram_room):
            return False
        self._fail_queued(
            m,
            MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {ram:.0f} MB (VRAM {vram:.0f} MB) but the pinned "
                f"models leave {room:.0f} MB of the {self.budget_mb:.0f} MB budget"
                + (f" ({vram_room:.0f} MB of VRAM)" if self.vram_budget_mb is not None else "")
                + ": unload a pinned model or raise the budget"
            ),
        )
        return True

    # --- janitor ----------------------------------------------------------------------------

    def _janitor_loop(self) -> None:
        # The janitor sleeps on its own event, not on the dispatcher's condition: woken by
        # every request, it used to hold the lock while psutil scanned /proc (ms per request).
        alive = [m.cfg.keep_alive_s for m in self._models.values() if m.cfg.keep_alive_s]
        tick = max(min([1.0, *(k / 4 for k in alive)]), 0.02)
        while not self._janitor_stop.wait(tick):
            with self._cond:
                if self._closed:
                    return
                if self._closing:
                    continue
                try:
                    live = self._janitor_once()
                except Exception:
                    logger.exception("janitor error")
                    continue
            if self.metrics:  # outside the lock: psutil walks /proc for the process trees
                for name, pids, vram in live:
                    self.metrics.set_memory(name, sum(tree_rss_mb(p) for p in pids), vram)
                spares = self.spares.spares()
                counts = dict.fromkeys(self.spares.keep, 0)
                for spare in spares:
                    counts[spare.spec.kind] = counts.get(spare.spec.kind, 0) + 1
                self.metrics.set_spares(counts, sum(w.rss_mb() for w in spares))

    def _janitor_once(self) -> list[tuple[str, list[int], float | None]]:
        """Unload idle models past their keep-alive; return each live model's worker PIDs."""
        now = time.time()
        live_pids = []
        for m in self._models.values():
            keep = m.cfg.keep_alive_s
            for rep in m.replicas:
                idle = rep.state == "ready" and not m.queued() and not m.cfg.pinned
                if idle and keep is not None and now - rep.last_used > keep:
                    logger.info("%s idle for %.1f s: unloading", m.cfg.name, now - rep.last_used)
                    self._stop_replica(m, rep, "keep-alive")
            live = m.live()
            if live:
                pids = [r.worker.pid for r in live if r.worker.pid]
                live_pids.append((m.cfg.name, pids, m.vram_mb))
        self._gauge_resident()
        self.ensure_spares()  # replaces spares that died, and those that fit again
        return live_pids
