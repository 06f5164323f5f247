"""The scheduler: which models are resident under the memory budget, and who runs next.

::

    submit(model, item, priority) ──▶ per-model queues (critical│high│normal│low, FIFO each)
                                          │  dispatcher thread: most urgent model first,
                                          │  dynamic batching (max_batch_size, max_wait_ms)
                                          ▼
             admission: footprint ≤ free budget? else evict idle → low priority → LRU
                                          │
                 load task ─▶ Worker.start()      batch task ─▶ Worker.call(batch)
                                          │                     │ worker lost: retry once
                 janitor thread: keep-alive unloads, memory gauges; stop task: Worker.stop()
                 (every unload is a worker exit whose release is verified)

The :class:`Scheduler` is four collaborators around one lock, each in its own module:

* :class:`~modelmora.serving.scheduler.residency.Residency` (``residency``): the books. Every
  model's state (queues, workers, footprint, health, counters), the RAM and VRAM budgets and
  what the workers hold against them, queue depths, recent releases; and the eviction policy,
  :func:`~modelmora.serving.scheduler.residency.pick_victims`. Pure state: no threads, no I/O.
* :class:`~modelmora.serving.scheduler.dispatch.Dispatcher` (``dispatch``): the dispatcher
  thread. Most urgent model first, it forms batches for free workers and admits loads,
  choosing the victims to evict. :class:`~modelmora.serving.scheduler.dispatch.Janitor`
  beside it unloads models past their keep-alive and refreshes the memory gauges.
* :class:`~modelmora.serving.scheduler.pool.WorkerPool` (``pool``): the thread pool that starts,
  calls and stops the workers, and records each outcome in the books (a lost worker's
  requests are retried once; a failed load makes the model unhealthy for a cooldown).
* :class:`Scheduler` (here): the public API (requests and management calls) and the
  lifecycle; it builds the other three and shares its lock with them.

Threads only (no asyncio): the HTTP layer awaits the returned futures with
``asyncio.wrap_future``. One condition variable guards all state; workers are started, called
and stopped in the pool's threads, never while the lock is held, and so is the footprint
file's I/O. A streamed request (``on_chunk``) runs alone through ``Worker.stream``; the pool
thread hands each chunk to its callback. The refusals (:class:`UnknownModel`,
:class:`QueueFull`, :class:`ModelUnhealthy`) are in :mod:`modelmora.serving.scheduler.errors`.

A model's footprint is its declared ``footprint_mb``, else the largest peak RSS measured on
earlier runs (``cache_dir/footprints.json``), else an estimate corrected after the first load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from modelmora.errors import MemoryBudgetExceeded, WorkerStopped
from modelmora.runtime.memory import ReleaseReport
from modelmora.runtime.spares import SparePool
from modelmora.serving.config import PRIORITIES, RANK, ModelConfig, ServerConfig
from modelmora.serving.metrics import Metrics
from modelmora.serving.scheduler.dispatch import Dispatcher, Janitor
from modelmora.serving.scheduler.errors import ModelUnhealthy, QueueFull, UnknownModel
from modelmora.serving.scheduler.pool import WorkerPool
from modelmora.serving.scheduler.residency import ModelState, Request, Residency, initial_footprint

__all__ = [
    "MemoryBudgetExceeded",
    "ModelUnhealthy",
    "QueueFull",
    "Scheduler",
    "UnknownModel",
]

logger = logging.getLogger(__name__)


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
        self._cond = threading.Condition()
        self._spares = SparePool(config.keep_spares, fits=self._spare_fits)
        self._books = Residency(config, metrics, self._spares)
        self._pool = WorkerPool(self._books, self._cond)
        self._dispatcher = Dispatcher(self._books, self._pool, self._cond)
        self._janitor = Janitor(self._books, self._pool, self._cond)
        self._threads: list[threading.Thread] = []

    @property
    def budget_mb(self) -> float:
        """The RAM budget of all workers together, in MB."""
        return self._books.budget_mb

    @property
    def vram_budget_mb(self) -> float | None:
        """The GPU memory budget, in MB; ``None`` when not enforced."""
        return self._books.vram_budget_mb

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Scheduler:
        """Start the dispatcher and janitor threads; pinned models begin loading."""
        with self._cond:
            if self._books.started:
                return self
            self._books.started = True
        for target, name in ((self._dispatcher.run, "dispatcher"), (self._janitor.run, "janitor")):
            thread = threading.Thread(target=target, name=f"modelmora-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "scheduler started: budget %.0f MB, %d models", self.budget_mb, len(self._books.models)
        )
        return self

    def close(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop everything: every worker is stopped and its release verified.

        Args:
            drain: finish the requests already accepted first (up to ``timeout``); the rest
                fail with :class:`WorkerStopped`.
            timeout: seconds to wait for draining and again for the workers to stop.
        """
        books = self._books
        deadline = time.monotonic() + timeout
        with self._cond:
            if books.closed:
                return
            books.closing = True
            self._cond.notify_all()
            while drain and books.started and books.busy() and time.monotonic() < deadline:
                self._cond.wait(0.05)
            stopped = WorkerStopped("the scheduler is closing")
            for m in books.models.values():
                books.fail_queued(m, stopped)
                for rep in m.replicas:
                    if rep.state == "busy" and rep.worker.pid:
                        # not Worker.kill(): the caller's thread holds the worker's lock; the
                        # call sees the death at once and its batch fails with WorkerStopped
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(rep.worker.pid, signal.SIGKILL)
                    self._pool.stop(m, rep, "close")
            waits = [rep.stopped for rep in books.replicas()]
        for fut in waits:
            try:
                fut.result(max(deadline - time.monotonic(), 1.0))
            except Exception as exc:  # a stop that fails must not stop the others
                logger.error("a worker did not stop cleanly: %s", exc)
        self._spares.close()
        with self._cond:
            books.closed = True
            self._cond.notify_all()
        self._janitor.stop()
        for thread in self._threads:
            thread.join(5.0)
        self._pool.shutdown()
        logger.info("scheduler closed")

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        return self._enqueue(model, [item], priority, on_chunk)[0]

    def submit_many(
        self, model: str, items: list[Any], priority: str = "normal"
    ) -> list[Future[Any]]:
        """Queue several items for ``model`` at once; one future per item, in order.

        The items are queued under one hold of the scheduler's lock, so the dispatcher sees
        them together and batches them (an HTTP request with a list of inputs is never split
        into a first batch of one and the rest). Raises what :meth:`submit` raises; ``QueueFull``
        when the items do not all fit in ``queue_limit`` (then none is queued).
        """
        return self._enqueue(model, items, priority, None)

    def _enqueue(
        self,
        model: str,
        items: list[Any],
        priority: str,
        on_chunk: Callable[[Any], Any] | None,
    ) -> list[Future[Any]]:
        if priority not in RANK:
            raise ValueError(f"unknown priority {priority!r}: use one of {', '.join(PRIORITIES)}")
        books = self._books
        with self._cond:
            m = books.get(model)
            if books.closing:
                raise WorkerStopped("the scheduler is closing: no new requests")
            books.check_fits(m)
            now = time.monotonic()
            if m.unhealthy_until > now:
                raise ModelUnhealthy(
                    f"model {model!r} failed to load: {m.error}", m.unhealthy_until - now
                )
            waiting = sum(books.depth.values())
            if waiting + len(items) > self.config.queue_limit:
                raise QueueFull(
                    f"{waiting} requests are waiting (queue_limit {self.config.queue_limit})",
                    books.retry_after(waiting),
                )
            futures = []
            for item in items:
                req = Request(item, Future(), priority, next(books.seq), now, on_chunk=on_chunk)
                books.enqueue(m, req)
                futures.append(req.future)
            self._cond.notify_all()
        return futures

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
            m = self._books.get(name)
            self._books.check_fits(m)
            if self._books.closing:
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
            m = self._books.get(name)
            m.held_off = True
            replicas = list(m.replicas)
            for rep in replicas:
                self._pool.stop(m, rep, "unload")
        return _merged_release([rep.stopped.result(timeout) for rep in replicas])

    def models(self) -> list[dict[str, Any]]:
        """Every configured model: state, footprint (and its source), measured memory, use."""
        with self._cond:
            now = time.monotonic()
            return [m.info(now) for m in self._books.models.values() if not m.removed]

    # --- the registry at run time -----------------------------------------------------------

    def add_model(self, cfg: ModelConfig) -> dict[str, Any]:
        """Register a model while running (loaded when first needed, or now if pinned).

        Raises:
            ValueError: a model of that name exists (or is still being removed).
        """
        footprint = initial_footprint(cfg, self._books.footprints)  # file I/O: not under the lock
        with self._cond:
            if cfg.name in self._books.models:
                raise ValueError(f"model {cfg.name!r} already exists: PATCH it to change it")
            m = self._books.models[cfg.name] = ModelState(cfg, footprint)
            self._cond.notify_all()
            logger.info("model %s registered (adapter %s)", cfg.name, cfg.adapter)
            return m.info(time.monotonic())

    def update_model(self, cfg: ModelConfig) -> dict[str, Any]:
        """Replace model ``cfg.name``'s config; a resident worker is replaced, dropping nothing.

        The old workers keep serving (marked retiring) until a worker of the new config is
        loaded, when that fits beside them in the budget; otherwise they stop after their
        batch in flight and the queued requests wait for the new worker. A new config that
        fails to load leaves the model unhealthy, with the load error reported.

        Raises:
            UnknownModel: no model has that name.
        """
        footprint = initial_footprint(cfg, self._books.footprints)
        with self._cond:
            m = self._books.get(cfg.name)
            m.cfg, m.spec = cfg, cfg.to_spec()
            m.footprint_mb, m.vram_footprint_mb, m.footprint_source = footprint
            m.unhealthy_until = m.backoff_until = 0.0
            m.error = None
            old = [r for r in m.replicas if r.state != "stopping"]
            for rep in old:
                rep.retiring = True
            live = any(r.state in ("ready", "busy") for r in old)
            if live and self._books.can_add(m) and not self._books.closing:
                self._pool.load(m, m.footprint_mb, m.vram_footprint_mb, [])  # then old ones stop
            else:
                for rep in old:
                    self._pool.stop(m, rep, "replaced")
            self._cond.notify_all()
            logger.info("model %s updated: %d worker(s) to replace", cfg.name, len(old))
            return m.info(time.monotonic())

    def remove_model(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Unregister ``name``: queued requests fail, workers stop after their batch in flight.

        Returns:
            The release report of its workers (as :meth:`unload`).

        Raises:
            UnknownModel: no model has that name.
        """
        with self._cond:
            m = self._books.get(name)
            m.removed = True
            gone = WorkerStopped(f"model {name!r} was removed")
            self._books.fail_queued(m, gone)
            for fut in m.load_waiters:
                fut.set_exception(gone)
            m.load_waiters.clear()
            replicas = list(m.replicas)
            for rep in replicas:
                self._pool.stop(m, rep, "removed")
        try:
            return _merged_release([rep.stopped.result(timeout) for rep in replicas])
        finally:
            with self._cond:
                if not m.replicas:
                    del self._books.models[name]
                self._cond.notify_all()
            logger.info("model %s removed", name)

    def status(self) -> dict[str, Any]:
        """Budget, memory in use (spares included), resident models, queues and spares."""
        spares = self._spares.info()  # outside the lock: it reads the spares' /proc
        with self._cond:
            return {**self._books.status(), "spares": spares}

    @property
    def spares(self) -> SparePool:
        """The spare workers (framework imported, no model) kept for warm reloads."""
        return self._spares

    def _spare_fits(self, mb: float) -> bool:
        with self._cond:
            return self._books.spare_fits()

    def is_ready(self) -> bool:
        """True when the scheduler runs and every pinned model is resident."""
        with self._cond:
            return self._books.ready()

    def releases(self) -> list[dict[str, Any]]:
        """The most recent worker exits (up to 100), oldest first: what each one released.

        Each is a :class:`ReleaseReport` as a dict (``released``, ``release_s``, ``pids``,
        ``remaining_pids``, ``stage``...) with the ``model`` and the ``reason`` it stopped
        (``unload``, ``evicted``, ``keep-alive``, ``recycled``, ``crashed``, ``close``,
        ``load failed``).
        """
        with self._cond:
            return list(self._books.releases)


def _merged_release(reports: list[ReleaseReport]) -> dict[str, Any]:
    """One release report for all the workers of a model (``not loaded`` for none)."""
    if not reports:
        return ReleaseReport(released=True, release_s=0.0, stage="not loaded").to_dict()
    merged = reports[0].to_dict()
    merged["released"] = all(r.released for r in reports)
    merged["release_s"] = max(r.release_s for r in reports)
    merged["pids"] = sorted({p for r in reports for p in r.pids})
    merged["remaining_pids"] = sorted({p for r in reports for p in r.remaining_pids})
    return merged
