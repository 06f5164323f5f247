"""The scheduler's two threads: the dispatcher (who runs next, and admission) and the janitor.

:class:`Dispatcher` wakes on every change (a request, a load, a batch done) and, with the
scheduler's lock held, goes through the models most urgent first: it forms batches for their
free workers (dynamic batching: ``max_batch_size``, ``max_wait_ms``) and admits a load when a
model needs a worker, evicting idle ones (idle → lower priority → least recently used) when
the budget is short. :class:`Janitor` unloads models past their keep-alive and refreshes the
memory gauges. Both hand every start, call and stop to the
:class:`~modelmora.serving.scheduler.pool.WorkerPool`; neither touches a worker itself.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from modelmora.errors import MemoryBudgetExceeded
from modelmora.runtime.memory import tree_rss_mb
from modelmora.runtime.spawn import server_env, spare_key
from modelmora.serving.config import PRIORITIES, RANK
from modelmora.serving.scheduler.pool import WorkerPool
from modelmora.serving.scheduler.residency import (
    ModelState,
    Replica,
    Request,
    Residency,
    pick_victims,
)

__all__ = ["Dispatcher", "Janitor"]

# The scheduler's log, whichever module writes it.
logger = logging.getLogger("modelmora.serving.scheduler.core")

#: The longest a request waits before paying for a swap (see :meth:`Dispatcher.admit`).
SWAP_HOLD_CAP_S = 5.0


def runs_alone(req: Request) -> bool:
    """A request retried after a crash (it may have caused it) or a streamed one."""
    return req.retried or req.on_chunk is not None


class Dispatcher:
    """Forms batches and admits loads, most urgent model first.

    Args:
        books: the scheduler's accounting.
        pool: the workers' pool, which runs what the dispatcher decides.
        cond: the scheduler's lock; :meth:`run` holds it except while it waits.
    """

    def __init__(self, books: Residency, pool: WorkerPool, cond: threading.Condition) -> None:
        self.books, self.pool, self.cond = books, pool, cond

    def run(self) -> None:
        """The dispatcher thread: dispatch, then wait for a change or the next due time."""
        with self.cond:
            while not self.books.closed:
                try:
                    wake = self.dispatch(time.monotonic())
                except Exception:  # a bug here must be loud, and must not kill the dispatcher
                    logger.exception("dispatcher error")
                    wake = 1.0
                self.cond.wait(1.0 if wake is None else max(wake, 0.001))

    def dispatch(self, now: float) -> float | None:
        """One pass over the models; returns seconds until something falls due, or None."""
        books = self.books
        wakes: list[float] = []
        blocked = False  # a more urgent model waits for memory: lower ones may not take it
        for m in sorted(books.models.values(), key=self.urgency):
            while m.queued():
                rep = m.free_replica()
                if rep is None or not self.batch_due(m, now, wakes):
                    break
                self.start_batch(m, rep)
            if not m.needs_replica() or books.closed:
                continue
            if m.unhealthy_until > now:  # a pinned model is retried when its backoff ends
                wakes.append(m.unhealthy_until - now)
                continue
            if books.closing and not m.queued():
                continue
            if m.backoff_until > now:
                wakes.append(m.backoff_until - now)
            elif not blocked and not self.admit(m, now, wakes):
                blocked = True
        return min(wakes) if wakes else None

    def urgency(self, m: ModelState) -> tuple[int, int]:
        """Sort key: waited-for loads and unloaded pinned models, then the head request."""
        if m.load_waiters or (m.cfg.pinned and not m.held_off and not m.replicas):
            return (-1, 0)
        head = m.head()
        return (RANK[head.priority], head.seq) if head else (len(PRIORITIES), 0)

    def batch_due(self, m: ModelState, now: float, wakes: list[float]) -> bool:
        """True when ``m``'s batch is full, its oldest request waited ``max_wait_ms``, or no
        company is to be expected.

        Waiting for company pays only while requests come in company: when ``m``'s last batch
        held one request and none of its workers is busy, the next request goes at once (a
        lone client does not pay ``max_wait_ms`` on every call). Once a batch holds two or
        more, batches wait again. Under load this costs at most one small batch: requests
        queue while it runs and go together in the next.
        """
        if m.queued() >= m.cfg.max_batch_size or m.cfg.max_wait_ms <= 0 or self.books.closing:
            return True
        if m.last_batch <= 1 and not any(r.state == "busy" for r in m.replicas):
            return True
        oldest = min(q[0].t_submit for q in m.queues.values() if q)
        due = oldest + m.cfg.max_wait_ms / 1000
        if now >= due:
            return True
        wakes.append(due - now)
        return False

    def start_batch(self, m: ModelState, rep: Replica) -> None:
        """Take the next batch off ``m``'s queues (most urgent first) and run it on ``rep``."""
        batch: list[Request] = []
        while len(batch) < m.cfg.max_batch_size and m.queued():
            head = m.head()
            if batch and (runs_alone(batch[0]) or (head is not None and runs_alone(head))):
                break
            req = m.pop()
            self.books.set_depth(req.priority, -1)
            if req.running or req.future.set_running_or_notify_cancel():
                req.running = True
                batch.append(req)
        if batch:
            m.last_batch = len(batch)
            self.pool.run(m, rep, batch)

    def admit(self, m: ModelState, now: float, wakes: list[float]) -> bool:
        """Start loading ``m`` if it fits, evicting idle workers; False when it must wait.

        A load that needs an eviction waits until its oldest request has waited as long as
        the load takes (unless the batch is full or the request is critical): paying for a
        swap only after waiting its cost bounds the churn between models that take turns.
        """
        books = self.books
        ram = min(m.footprint_mb, books.budget_mb)  # an estimate over budget: try it alone
        vram = m.vram_footprint_mb if books.vram_budget_mb is not None else 0.0
        # workers already stopping count as free: the load waits for their exit
        stopping = [r for r in books.replicas() if r.state == "stopping"]
        key = spare_key(m.spec.kind, m.cfg.threads, server_env())
        short_ram, short_vram = books.shortfall(ram, vram, key)
        shed: list[Future[Any]] = []
        if short_ram > 0 and books.spares.reserved_mb() > books.spares.peek_mb(key):
            shed = list(books.spares.shed(short_ram, keep_key=key))  # spares before models
            short_ram, short_vram = books.shortfall(ram, vram, key)
        victims: list[tuple[ModelState, Replica]] = []
        if short_ram > 0 or short_vram > 0:
            found = pick_victims(list(books.models.values()), m, short_ram, short_vram)
            if found is None:
                return self.blocked_by_pinned(m, ram, vram)
            head = m.head()
            hold = min(m.load_s if m.load_s is not None else 0.5, SWAP_HOLD_CAP_S)
            if head is not None and head.priority != "critical" and not m.load_waiters:
                waited = now - head.t_submit
                if waited < hold and m.queued() < m.cfg.max_batch_size:
                    wakes.append(hold - waited)
                    return True
            victims = found
        for vm, rep in victims:
            self.pool.evict(vm, rep, f"to make room for {m.cfg.name}")
        after = [r.stopped for r in stopping] + [rep.stopped for _, rep in victims] + shed
        self.pool.load(m, ram, vram, after)
        return True

    def blocked_by_pinned(self, m: ModelState, ram: float, vram: float) -> bool:
        """False (wait for in-flight work) unless pinned models leave too little room for
        ``m`` ever: then its requests fail now instead of waiting forever."""
        room, vram_room = self.books.room_beside_pinned(m)
        if ram <= room and (vram_room is None or vram <= vram_room):
            return False
        budget = self.books.budget_mb
        self.books.fail_queued(
            m,
            MemoryBudgetExceeded(
                f"model {m.cfg.name!r} needs {ram:.0f} MB (VRAM {vram:.0f} MB) but the pinned "
                f"models leave {room:.0f} MB of the {budget:.0f} MB budget"
                + (f" ({vram_room:.0f} MB of VRAM)" if vram_room is not None else "")
                + ": unload a pinned model or raise the budget"
            ),
        )
        return True


class Janitor:
    """Unloads models idle past their keep-alive; keeps the memory gauges current.

    It sleeps on its own event, not on the dispatcher's condition: woken by every request, it
    used to hold the lock while psutil scanned /proc (milliseconds per request).
    """

    def __init__(self, books: Residency, pool: WorkerPool, cond: threading.Condition) -> None:
        self.books, self.pool, self.cond = books, pool, cond
        self.stopped = threading.Event()

    def run(self) -> None:
        """The janitor thread: a pass every ``tick`` until :meth:`stop`."""
        alive = [m.cfg.keep_alive_s for m in self.books.models.values() if m.cfg.keep_alive_s]
        tick = max(min([1.0, *(k / 4 for k in alive)]), 0.02)
        metrics = self.books.metrics
        while not self.stopped.wait(tick):
            with self.cond:
                if self.books.closed:
                    return
                if self.books.closing:
                    continue
                try:
                    live = self.sweep()
                except Exception:
                    logger.exception("janitor error")
                    continue
            if metrics:  # outside the lock: psutil walks /proc for the process trees
                for name, pids, vram in live:
                    metrics.set_memory(name, sum(tree_rss_mb(p) for p in pids), vram)
                spares = self.books.spares.spares()
                counts = dict.fromkeys(self.books.spares.keep, 0)
                for spare in spares:
                    counts[spare.spec.kind] = counts.get(spare.spec.kind, 0) + 1
                metrics.set_spares(counts, sum(w.rss_mb() for w in spares))

    def stop(self) -> None:
        """End :meth:`run` at its next tick."""
        self.stopped.set()

    def sweep(self) -> list[tuple[str, list[int], float | None]]:
        """Unload idle models past their keep-alive; return each live model's worker PIDs."""
        now = time.time()
        live_pids = []
        for m in self.books.models.values():
            keep = m.cfg.keep_alive_s
            for rep in m.replicas:
                idle = rep.state == "ready" and not m.queued() and not m.cfg.pinned
                if idle and keep is not None and now - rep.last_used > keep:
                    logger.info("%s idle for %.1f s: unloading", m.cfg.name, now - rep.last_used)
                    self.pool.stop(m, rep, "keep-alive")
            live = m.live()
            if live:
                pids = [r.worker.pid for r in live if r.worker.pid]
                live_pids.append((m.cfg.name, pids, m.vram_mb))
        self.books.gauge_resident()
        self.books.ensure_spares()  # replaces spares that died, and those that fit again
        return live_pids
