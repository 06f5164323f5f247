"""The scheduler's worker pool: the threads that start, call and stop the workers.

:class:`WorkerPool` runs four tasks in its thread pool; each ends with its bookkeeping in the
:class:`~modelmora.serving.scheduler.residency.Residency`::

    load task   ─▶ Worker.start(spare=a spare of its kind, if one is ready or being prepared)
                                   ─▶ ready: footprint measured, waiters woken, budget enforced,
                                             the next spare prepared if it fits
                                   └▶ failed: model unhealthy for a cooldown, its queue failed
    batch task  ─▶ Worker.call(batch), or Worker.stream for a streamed request
                                   ─▶ done: recycled (max_tasks, RSS growth), or idle others
                                            evicted when the measurement is over budget
                                   └▶ worker lost: backoff, worker stopped, requests retried once
    stop task   ─▶ Worker.stop()   ─▶ release verified and recorded, gauges updated

A worker is started, called and stopped without the scheduler's lock, and so is the footprint
write after a load or a stop (``footprints.json`` is merged under a file lock and fsync'd: a
slow disk must not stall every request). A task takes the lock only to update the books.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelmora.errors import ModelLoadError, WorkerError, WorkerLost, WorkerStopped
from modelmora.models import ModelSpec
from modelmora.models.sources import LOCK_NAME, LockFile, is_hub_id, prepare
from modelmora.runtime.memory import ReleaseReport
from modelmora.runtime.spawn import server_env
from modelmora.runtime.worker import Worker
from modelmora.serving.scheduler.errors import ModelUnhealthy
from modelmora.serving.scheduler.residency import (
    ModelState,
    Replica,
    Request,
    Residency,
    pick_victims,
)

__all__ = ["WorkerPool"]

# The scheduler's log: loads, unloads and crashes are its records, whichever module writes them.
logger = logging.getLogger("modelmora.serving.scheduler.core")

_BACKOFF_CAP_S = 30.0


class WorkerPool:
    """Starts, calls and stops the workers of the models in ``books``.

    Args:
        books: the accounting the tasks update.
        cond: the scheduler's lock; its waiters are woken after every update.

    The public methods are called with ``cond`` held and return at once: the work runs in the
    pool's threads, which take ``cond`` only to record its outcome.
    """

    def __init__(self, books: Residency, cond: threading.Condition) -> None:
        self.books = books
        self.cond = cond
        self.config = books.config
        self.metrics = books.metrics
        slots = sum(m.cfg.max_concurrency for m in books.models.values())
        # threads start only when needed: room for the models registered at run time too
        threads = max(2 * slots + 8, 64)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="modelmora-sched")
        self.lock = LockFile(self.config.lock_file or Path(self.config.cache_dir) / LOCK_NAME)

    def shutdown(self) -> None:
        """Wait for the tasks still running, then end the threads (the lock must be free)."""
        self._executor.shutdown(wait=True)

    # --- called with the lock held ----------------------------------------------------------

    def load(self, m: ModelState, ram: float, vram: float, after: list[Future[Any]]) -> None:
        """Start a new worker of ``m``, reserving ``ram``/``vram`` MB, once ``after`` are done."""
        cfg = m.cfg
        worker = Worker(
            m.spec,
            name=cfg.name,
            load_timeout=cfg.load_timeout_s,
            memory_limit_mb=cfg.memory_limit_mb,
            threads=cfg.threads,
            env=server_env(),
        )
        rep = Replica(worker, mem_mb=ram, vram_mb=vram)
        m.replicas.append(rep)
        # taken now, under the lock: the admission counted its memory as the model's
        spare = self.books.spares.take(worker.spare_key())
        self._executor.submit(self._load_task, m, rep, after, spare)

    def run(self, m: ModelState, rep: Replica, batch: list[Request]) -> None:
        """Run ``batch`` (or one streamed request) on the ready worker ``rep``."""
        rep.state = "busy"
        rep.last_used = m.last_used = time.time()
        self._executor.submit(self._run_batch, m, rep, batch)

    def stop(self, m: ModelState, rep: Replica, reason: str) -> None:
        """Stop ``rep`` now, or once its load or batch is over; ``rep.stopped`` says when."""
        if rep.state == "stopping":
            return
        if rep.state in ("busy", "loading"):
            rep.stop_when_idle = True
            return
        rep.state = "stopping"
        self._executor.submit(self._stop_task, m, rep, reason)

    def evict(self, vm: ModelState, rep: Replica, why: str) -> None:
        """Stop the idle worker ``rep`` of ``vm`` to make room, and count it."""
        logger.info("evicting %s %s", vm.cfg.name, why)
        vm.counts["evictions"] += 1
        if self.metrics:
            self.metrics.inc_eviction(vm.cfg.name)
        self.stop(vm, rep, "evicted")

    def enforce_budget(self, m: ModelState) -> None:
        """After a measurement showed more than was reserved: evict idle others to fit."""
        reps = [r for r in self.books.replicas() if r.state != "stopping"]
        over = sum(r.mem_mb for r in reps) - self.books.budget_mb
        over_vram = 0.0
        if self.books.vram_budget_mb is not None:
            over_vram = sum(r.vram_mb for r in reps) - self.books.vram_budget_mb
        spares = self.books.spares
        if over > 0 and spares.reserved_mb() > 0:  # spares go first: they hold no model
            before = spares.reserved_mb()
            spares.shed(over)
            over -= before - spares.reserved_mb()
        if over <= 0 and over_vram <= 0:
            return
        models = list(self.books.models.values())
        victims = pick_victims(models, m, max(over, 0.0), max(over_vram, 0.0))
        for vm, rep in victims or []:
            why = f"(over budget by {max(over, 0):.0f} MB RAM, {max(over_vram, 0):.0f} MB VRAM)"
            self.evict(vm, rep, why)

    # --- load -------------------------------------------------------------------------------

    def _load_task(
        self, m: ModelState, rep: Replica, after: list[Future[Any]], spare: Worker | None
    ) -> None:
        for fut in after:  # evicted workers are gone before the new one allocates
            fut.exception()
        spares = self.books.spares
        handed = False  # whether the spare now belongs to the worker (it stops it then)
        try:
            self._prepare_source(m, rep)  # before a spare is taken: a failed fetch wastes none
            if spare is None:  # one being prepared is ahead of a cold start: wait for it
                spare = spares.take(rep.worker.spare_key(), wait=m.cfg.load_timeout_s)
            handed = True
            try:
                rep.worker.start(spare=spare)
            finally:
                spares.record(rep.worker, spare)
            self._warm_up(m, rep)
        except Exception as exc:
            if spare is not None and not handed:
                spare.stop()
            report = rep.worker.stop()
            with self.cond:
                self._load_failed(m, rep, exc)
                self.books.record_release(m, "load failed", report)
                rep.stopped.set_result(report)
            return
        with self.cond:
            self._load_done(m, rep)
        self._persist(m, rep)

    def _prepare_source(self, m: ModelState, rep: Replica) -> None:
        """Fetch a hub source into the cache and check the files against the lock file."""
        cfg = m.cfg
        source, caps = cfg.source, cfg.capabilities
        if source is None or not caps.takes_source or source in caps.bundled_sources:
            return
        if not (is_hub_id(source) or os.path.exists(source)):
            return  # a name the adapter resolves itself (a server URL, a faster-whisper size)
        hub = Path(self.config.cache_dir) / "hub"
        prepared = prepare(cfg.name, source, cfg.revision, hub, self.lock)
        if prepared.path != source:
            rep.worker.spec = ModelSpec(m.spec.kind, {**m.spec.params, "model": prepared.path})

    def _warm_up(self, m: ModelState, rep: Replica) -> None:
        """Run the model's (else its adapter's) warm-up input once; if it fails, the load fails."""
        warmup = m.cfg.warmup if m.cfg.warmup is not None else m.cfg.capabilities.warmup
        if warmup is None:
            return
        try:
            rep.worker.call([warmup], timeout=m.cfg.load_timeout_s)
        except Exception as exc:
            raise ModelLoadError(f"the warm-up input failed: {type(exc).__name__}: {exc}") from exc

    def _load_failed(self, m: ModelState, rep: Replica, exc: Exception) -> None:
        m.replicas.remove(rep)
        m.error = f"{type(exc).__name__}: {exc}"
        # exponential backoff between retries of a model that keeps failing, up to a cap
        m.load_failures += 1
        cooldown = min(
            self.config.unhealthy_cooldown_s * 2.0 ** (m.load_failures - 1),
            max(self.config.unhealthy_cooldown_max_s, self.config.unhealthy_cooldown_s),
        )
        m.unhealthy_until = time.monotonic() + cooldown
        logger.error(
            "model %s failed to load (unhealthy for %.0f s): %s", m.cfg.name, cooldown, exc
        )
        error = ModelUnhealthy(f"model {m.cfg.name!r} failed to load: {m.error}", cooldown)
        error.__cause__ = exc
        self.books.fail_queued(m, error)
        for other in m.replicas:
            if other.retiring:
                self.stop(m, other, "recycled")
        self.cond.notify_all()

    def _load_done(self, m: ModelState, rep: Replica) -> None:
        worker = rep.worker
        mem = worker.memory
        measured = max(mem.peak_rss_mb if mem else 0.0, worker.rss_mb())
        rep.state, rep.load_rss_mb = "ready", mem.rss_mb if mem else measured
        rep.mem_mb = max(measured, m.cfg.footprint_mb or 0.0)
        if mem and mem.vram_mb is not None:
            rep.vram_mb = max(mem.vram_mb, m.cfg.vram_footprint_mb or 0.0)
        self.books.observe_memory(m, rep)
        m.counts["loads"] += 1
        m.counts["warm_loads"] += worker.warm
        m.error, m.unhealthy_until, m.load_s = None, 0.0, worker.spawn_s
        m.load_failures = 0
        m.drain_seq = next(self.books.seq)
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
        if worker.spare_key() in self.books.spares_wanted:  # a kind that was unloaded before
            self.books.spares.ensure(worker.spare_key())  # the next one, if the budget allows
        self.books.gauge_resident()
        for fut in m.load_waiters:
            fut.set_result(None)
        m.load_waiters.clear()
        for other in m.replicas:
            if other.retiring and other is not rep:
                self.stop(m, other, "recycled")
        if rep.stop_when_idle:
            self.stop(m, rep, "unload")
        self.enforce_budget(m)
        self.cond.notify_all()

    def _persist(self, m: ModelState, rep: Replica) -> None:
        """Save ``rep``'s measured peak for later runs: file I/O, never under the lock."""
        mem = rep.worker.memory
        if mem is not None:
            self.books.footprints.update(m.spec.label(), mem.peak_rss_mb, mem.vram_mb)

    # --- batches ----------------------------------------------------------------------------

    def _run_batch(self, m: ModelState, rep: Replica, batch: list[Request]) -> None:
        if batch[0].on_chunk is not None:
            self._run_stream(m, rep, batch[0])
            return
        results, crashed, crash = self._call(rep, batch)
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
        self._finish(m, rep, crashed, crash)

    def _call(
        self, rep: Replica, batch: list[Request]
    ) -> tuple[list[tuple[Request, Any, BaseException | None]], list[Request], WorkerLost | None]:
        """Call the worker: (per-request outcomes, requests a lost worker took, the loss)."""
        timeout = self.config.request_timeout_s
        try:
            outputs = rep.worker.call([r.item for r in batch], timeout)
            if len(outputs) != len(batch):
                raise WorkerError(f"the adapter returned {len(outputs)} outputs for {len(batch)}")
            return [(r, out, None) for r, out in zip(batch, outputs, strict=True)], [], None
        except WorkerLost as exc:
            return [], batch, exc
        except Exception as exc:
            if len(batch) == 1:
                return [(batch[0], None, exc)], [], None
        results: list[tuple[Request, Any, BaseException | None]] = []
        for i, req in enumerate(batch):  # one bad item must not fail the others: one by one
            try:
                results.append((req, rep.worker.call([req.item], timeout)[0], None))
            except WorkerLost as exc:
                return results, batch[i:], exc
            except Exception as exc:
                results.append((req, None, exc))
        return results, [], None

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
        except WorkerLost as exc:
            crash = exc
        except Exception as exc:  # the model's error, or the callback's own
            req.future.set_exception(exc)
        else:
            req.future.set_result(count)
        if self.metrics:
            self.metrics.observe_batch(m.cfg.name, 1)
            if crash is None:
                self.metrics.observe_latency(m.cfg.name, time.monotonic() - req.t_submit)
        self._finish(m, rep, [req] if crash is not None else [], crash)

    def _finish(
        self, m: ModelState, rep: Replica, crashed: list[Request], crash: WorkerLost | None
    ) -> None:
        with self.cond:
            rep.last_used = m.last_used = time.time()
            if crash is not None:
                self._batch_crashed(m, rep, crashed, crash)
            else:
                self._batch_done(m, rep)
            self.cond.notify_all()

    def _batch_done(self, m: ModelState, rep: Replica) -> None:
        rep.state = "ready"
        m.crash_streak = 0
        self.books.observe_memory(m, rep)
        replacing = any(r.state == "loading" for r in m.replicas)
        if rep.stop_when_idle or (rep.retiring and not replacing):
            self.stop(m, rep, "recycled" if rep.retiring else "unload")
        elif not rep.retiring and m.recycle_reason(rep):
            self._recycle(m, rep)
        else:
            self.enforce_budget(m)

    def _recycle(self, m: ModelState, rep: Replica) -> None:
        logger.info("recycling %s (pid %s): %s", m.cfg.name, rep.worker.pid, m.recycle_reason(rep))
        m.counts["recycles"] += 1
        rep.retiring = True
        if self.books.can_add(m) and not self.books.closing:
            self.load(m, m.footprint_mb, m.vram_footprint_mb, [])  # the replacement first
        else:
            self.stop(m, rep, "recycled")

    def _batch_crashed(
        self, m: ModelState, rep: Replica, crashed: list[Request], exc: WorkerLost
    ) -> None:
        m.counts["crashes"] += 1
        m.crash_streak += 1
        delay = min(2.0 ** (m.crash_streak - 1), _BACKOFF_CAP_S)
        m.backoff_until = time.monotonic() + delay
        logger.warning("worker of %s crashed (restart in %.0f s): %s", m.cfg.name, delay, exc)
        if self.metrics:
            self.metrics.inc_crash(m.cfg.name)
        rep.state = "ready"  # so that it can be stopped (reaped and its release verified)
        self.stop(m, rep, "crashed")
        closing = self.books.closing
        for req in reversed(crashed):
            if self.config.retry_crashed and not req.retried and not closing:
                req.retried = True
                self.books.enqueue(m, req, first=True)
            elif closing:
                req.future.set_exception(WorkerStopped("the scheduler closed during the call"))
            else:
                req.future.set_exception(exc)

    # --- stop -------------------------------------------------------------------------------

    def _stop_task(self, m: ModelState, rep: Replica, reason: str) -> None:
        try:
            report = rep.worker.stop()
        except Exception as exc:  # never leave a waiter hanging
            logger.exception("stopping %s failed", m.cfg.name)
            with self.cond:
                m.replicas.remove(rep)
                rep.stopped.set_exception(exc)
                self.cond.notify_all()
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
        self._persist(m, rep)  # before the waiters learn of the stop, outside the lock
        with self.cond:
            self._stopped(m, rep, reason, report)

    def _stopped(self, m: ModelState, rep: Replica, reason: str, report: ReleaseReport) -> None:
        m.replicas.remove(rep)
        m.counts["unloads"] += 1
        self.books.record_release(m, reason, report)
        m.last_release = report.to_dict()
        self.books.observe_memory(m, rep)
        self.books.gauge_resident()
        if self.metrics:
            self.metrics.inc_unload(m.cfg.name)
            if not m.live():
                self.metrics.set_memory(m.cfg.name, 0.0, None)
        rep.stopped.set_result(report)
        if reason not in ("close", "crashed", "load failed"):  # its kind may be back
            self.books.spares_wanted.add(rep.worker.spare_key())
        self.books.ensure_spares()  # memory was freed: a spare may fit again
        self.cond.notify_all()
