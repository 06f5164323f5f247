"""The scheduler's worker side: the tasks its thread pool runs on the replicas.

:class:`WorkerTasks` is the part of :class:`~modelmora.serving.scheduler.core.Scheduler` that
starts, calls
and stops workers, with the bookkeeping each of those ends with::

    load task  ─▶ Worker.start()  ─▶ ready: footprint measured, waiters woken, budget enforced
                                  └▶ failed: model unhealthy for a cooldown, its queue failed
    batch task ─▶ Worker.call(batch), or Worker.stream for a streamed request
                                  ─▶ done: recycled (max_tasks, RSS growth), or idle others
                                           evicted when the measurement is over budget
                                  └▶ crash: backoff, worker stopped, requests retried once
    stop task  ─▶ Worker.stop()   ─▶ release verified, footprint persisted, gauges updated

A worker is started, called and stopped without the lock; a task takes the scheduler's lock
only to update its state.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from modelmora.errors import (
    MemoryLimitExceeded,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.runtime.footprints import FootprintStore
from modelmora.runtime.memory import ReleaseReport
from modelmora.runtime.spares import SparePool
from modelmora.runtime.worker import SpareKey, Worker
from modelmora.serving.config import ServerConfig
from modelmora.serving.metrics import Metrics
from modelmora.serving.scheduler.errors import ModelUnhealthy
from modelmora.serving.scheduler.residency import ModelState, Replica, Request, pick_victims

__all__ = ["WorkerTasks"]

# The scheduler's log: loads, unloads and crashes are its records, whichever module writes them.
logger = logging.getLogger("modelmora.serving.scheduler.core")

_CRASHES = (WorkerCrashed, MemoryLimitExceeded, WorkerTimeout, WorkerStopped)
_BACKOFF_CAP_S = 30.0


class WorkerTasks:
    """The load, batch and stop tasks of a :class:`~modelmora.serving.scheduler.core.Scheduler`.

    A base of the scheduler, which sets the attributes below; every method but the tasks
    themselves runs with ``_cond`` held.
    """

    config: ServerConfig
    metrics: Metrics | None
    budget_mb: float
    vram_budget_mb: float | None
    _footprints: FootprintStore
    spares: SparePool
    spares_wanted: set[SpareKey]  # keys of the workers that were unloaded: reloads to expect
    _models: dict[str, ModelState]
    _cond: threading.Condition
    _seq: itertools.count[int]
    _pool: ThreadPoolExecutor
    _closing: bool

    if TYPE_CHECKING:  # the queue side, in the scheduler

        def _set_depth(self, priority: str, delta: int) -> None: ...

        def _fail_queued(self, m: ModelState, error: BaseException) -> None: ...

    def _start_load(
        self, m: ModelState, ram: float, vram: float, after: list[Future[ReleaseReport]]
    ) -> None:
        cfg = m.cfg
        worker = Worker(
            m.spec,
            name=cfg.name,
            load_timeout=cfg.load_timeout_s,
            memory_limit_mb=cfg.memory_limit_mb,
            threads=cfg.threads,
        )
        rep = Replica(worker, mem_mb=ram, vram_mb=vram)
        m.replicas.append(rep)
        # taken now, under the lock: the admission counted its memory as the model's
        spare = self.spares.take(worker.spare_key())
        self._pool.submit(self._load_task, m, rep, after, spare)

    def _load_task(
        self,
        m: ModelState,
        rep: Replica,
        after: list[Future[ReleaseReport]],
        spare: Worker | None = None,
    ) -> None:
        for fut in after:  # evicted workers are gone before the new one allocates
            fut.exception()
        if spare is None:  # one being prepared is ahead of a cold start: wait for it
            spare = self.spares.take(rep.worker.spare_key(), wait=m.cfg.load_timeout_s)
        try:
            try:
                rep.worker.start(spare=spare)
            finally:
                self.spares.record(rep.worker, spare)
        except Exception as exc:
            report = rep.worker.stop()
            with self._cond:
                self._load_failed(m, rep, exc)
                rep.stopped.set_result(report)
            return
        with self._cond:
            self._load_done(m, rep)

    def _load_failed(self, m: ModelState, rep: Replica, exc: Exception) -> None:
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

    def _load_done(self, m: ModelState, rep: Replica) -> None:
        worker = rep.worker
        mem = worker.memory
        measured = max(mem.peak_rss_mb if mem else 0.0, worker.rss_mb())
        rep.state, rep.load_rss_mb = "ready", mem.rss_mb if mem else measured
        rep.mem_mb = max(measured, m.cfg.footprint_mb or 0.0)
        if mem and mem.vram_mb is not None:
            rep.vram_mb = max(mem.vram_mb, m.cfg.vram_footprint_mb or 0.0)
        self._observe_memory(m, rep, persist=True)
        m.counts["loads"] += 1
        m.counts["warm_loads"] += worker.warm
        m.error, m.unhealthy_until, m.load_s = None, 0.0, worker.spawn_s
        m.drain_seq = next(self._seq)
        logger.info(
            "loaded %s (pid %s, %s) in %.2f s: %.0f MB",
            m.cfg.name,
            worker.pid,
            "warm" if worker.warm else "cold",
            worker.spawn_s,
            measured,
        )
        if self.metrics:
            self.metrics.inc_load(m.cfg.name, warm=worker.warm)
        self.spares.ensure(worker.spare_key())  # the next one, if the budget allows
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

    def _observe_memory(self, m: ModelState, rep: Replica, persist: bool = False) -> None:
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
        if persist:
            self._footprints.update(m.spec.label(), mem.peak_rss_mb, mem.vram_mb)
        if self.metrics:
            self.metrics.set_memory(m.cfg.name, mem.rss_mb, mem.vram_mb)

    def _enforce_budget(self, m: ModelState) -> None:
        """After a measurement showed more than was reserved: evict idle others to fit."""
        reps = [r for x in self._models.values() for r in x.replicas if r.state != "stopping"]
        over = sum(r.mem_mb for r in reps) - self.budget_mb
        over_vram = 0.0
        if self.vram_budget_mb is not None:
            over_vram = sum(r.vram_mb for r in reps) - self.vram_budget_mb
        if over > 0 and self.spares.reserved_mb() > 0:  # spares go first: they hold no model
            before = self.spares.reserved_mb()
            self.spares.shed(over)
            over -= before - self.spares.reserved_mb()
        if over <= 0 and over_vram <= 0:
            return
        victims = pick_victims(list(self._models.values()), m, max(over, 0.0), max(over_vram, 0.0))
        for vm, rep in victims or []:
            self._evict(
                vm,
                rep,
                f"(over budget by {max(over, 0):.0f} MB RAM, {max(over_vram, 0):.0f} MB VRAM)",
            )

    def _run_batch(self, m: ModelState, rep: Replica, batch: list[Request]) -> None:
        if batch[0].on_chunk is not None:
            self._run_stream(m, rep, batch[0])
            return
        timeout = self.config.request_timeout_s
        results: list[tuple[Request, Any, BaseException | None]] = []
        crashed: list[Request] = []
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

    def _run_stream(self, m: ModelState, rep: Replica, req: Request) -> None:
        assert req.on_chunk is not None
        count, crash = 0, None
        try:
            stream = rep.worker.stream(req.item, self.config.request_timeout_s)
            with contextlib.closing(stream) as chunks:  # closed here: cancelled in this thread
                for value in chunks:
                    count += 1
                    req.retried = True  # seen by the caller: a crash from now on is not retried
                    if req.on_chunk(value) is False:
                        break
        except _CRASHES as exc:
            crash = exc
        except Exception as exc:  # the model's error, or the callback's own
            req.future.set_exception(exc)
        else:
            req.future.set_result(count)
        if self.metrics:
            self.metrics.observe_batch(m.cfg.name, 1)
            if crash is None:
                self.metrics.observe_latency(m.cfg.name, time.monotonic() - req.t_submit)
        with self._cond:
            rep.last_used = m.last_used = time.time()
            if crash is not None:
                self._batch_crashed(m, rep, [req], crash)
            else:
                self._batch_done(m, rep)
            self._cond.notify_all()

    def _batch_done(self, m: ModelState, rep: Replica) -> None:
        rep.state = "ready"
        m.crash_streak = 0
        self._observe_memory(m, rep)
        replacing = any(r.state == "loading" for r in m.replicas)
        if rep.stop_when_idle or (rep.retiring and not replacing):
            self._stop_replica(m, rep, "recycled" if rep.retiring else "unload")
        elif not rep.retiring and m.recycle_reason(rep):
            self._recycle(m, rep)
        else:
            self._enforce_budget(m)

    def _recycle(self, m: ModelState, rep: Replica) -> None:
        logger.info("recycling %s (pid %s): %s", m.cfg.name, rep.worker.pid, m.recycle_reason(rep))
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
        self, m: ModelState, rep: Replica, crashed: list[Request], exc: BaseException
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

    def _evict(self, vm: ModelState, rep: Replica, why: str) -> None:
        logger.info("evicting %s %s", vm.cfg.name, why)
        vm.counts["evictions"] += 1
        if self.metrics:
            self.metrics.inc_eviction(vm.cfg.name)
        self._stop_replica(vm, rep, "evicted")

    def _stop_replica(self, m: ModelState, rep: Replica, reason: str) -> None:
        if rep.state == "stopping":
            return
        if rep.state in ("busy", "loading"):
            rep.stop_when_idle = True
            return
        rep.state = "stopping"
        self._pool.submit(self._stop_task, m, rep, reason)

    def _stop_task(self, m: ModelState, rep: Replica, reason: str) -> None:
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
            if reason not in ("close", "crashed"):  # its kind may be back: a spare is wanted
                self.spares_wanted.add(rep.worker.spare_key())
            self.ensure_spares()  # memory was freed: a spare may fit again
            self._cond.notify_all()

    def ensure_spares(self) -> None:
        """Prepare the missing spares of the kinds that were unloaded, in the background."""
        if not self._closing:
            for key in self.spares_wanted:
                self.spares.ensure(key)  # keep_spares says how many (none for some kinds)

    def spare_fits(self, mb: float) -> bool:
        """May a spare of ``mb`` MB be prepared? The pool's reservation already counts it."""
        with self._cond:
            held = sum(
                r.mem_mb for x in self._models.values() for r in x.replicas if r.state != "stopping"
            )
            waiting = any(x.queued() and not x.live() for x in self._models.values())
            fits = held + self.spares.reserved_mb() <= self.budget_mb
            return fits and not waiting and not self._closing

    def _gauge_resident(self) -> None:
        if self.metrics:
            self.metrics.set_resident(sum(1 for m in self._models.values() if m.live()))
