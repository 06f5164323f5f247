"""Spare workers: processes that have imported a framework, hold no model, and wait for one.

Most of a cold start is the framework's import (torch and sentence-transformers take seconds),
not the model's weights. A :class:`SparePool` keeps ``keep[kind]`` spares per
:data:`~modelmora.runtime.spawn.SpareKey` (adapter kind, threads, env): each a worker child,
spawned exactly like any other (exec of a fresh interpreter, own session, PDEATHSIG and the
watchdog), that answered ``Prepare`` by importing its adapter's frameworks::

    pool.start(worker) ─▶ a ready spare of worker.spare_key()?
                            yes ─▶ worker.start(spare=it)   (warm: the Init goes to the spare)
                            no  ─▶ worker.start()           (cold)
                         ─▶ background: prepare the next spare, if fits(its RSS) says so

A spare is one process that becomes one model's worker; it is never forked from and never
serves two models, so a crash costs only that spare (the next start is cold and a new spare
is prepared). Spares count against the caller's memory budget through ``fits`` and
:meth:`SparePool.reserved_mb`; :meth:`SparePool.shed` gives their memory back first when a
model needs it. Why spawned spares and not a fork server: ``import torch`` starts threads
(two on CPU), which a fork would not carry over; a spawned spare has none of that hazard.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

from modelmora.errors import WorkerError
from modelmora.models import ModelSpec
from modelmora.runtime.memory import ReleaseReport
from modelmora.runtime.spawn import SpareKey
from modelmora.runtime.worker import Worker

__all__ = ["DEFAULT_SPARE_MB", "SpareInfo", "SparePool"]

logger = logging.getLogger(__name__)

#: What a spare is assumed to take before one of its kind was measured (torch + a library).
DEFAULT_SPARE_MB = 500.0
_RETRY_S = 60.0  # after a failed preparation, the key is left alone this long


@dataclass
class SpareInfo:
    """One ready spare, as :meth:`SparePool.info` lists it."""

    kind: str
    pid: int | None
    rss_mb: float
    pss_mb: float | None
    prepare_s: float
    modules: list[str] = field(default_factory=list)


@dataclass
class _Counts:
    prepared: int = 0
    failed: int = 0
    lost: int = 0  # died while waiting: the start that found it was cold
    warm: int = 0
    cold: int = 0


class SparePool:
    """Keeps spare workers ready per adapter kind; starts workers warm from them.

    Args:
        keep: spares to keep per adapter kind (``{"embedding": 1}``); kinds not named keep none.
        fits: asked ``fits(mb)`` before a spare of ``mb`` MB is prepared; False: not kept.
            ``None``: always.
        prepare_timeout: seconds a spare may take to import its framework.
        stderr: where the spares' stderr goes (``None`` inherits ours).

    Thread-safe. :meth:`close` stops every spare and verifies each release.
    """

    def __init__(
        self,
        keep: Mapping[str, int] | None = None,
        *,
        fits: Callable[[float], bool] | None = None,
        prepare_timeout: float = 300.0,
        stderr: IO[Any] | None = None,
    ) -> None:
        self.keep = {k: int(n) for k, n in (keep or {}).items()}
        for kind, n in self.keep.items():
            if n < 0:
                raise ValueError(f"keep[{kind!r}] must be 0 or more, got {n}")
        self.fits = fits
        self.prepare_timeout = prepare_timeout
        self.stderr = stderr
        self.counts = _Counts()
        self._ready: dict[SpareKey, list[Worker]] = {}
        self._preparing: dict[SpareKey, int] = {}
        self._rss_mb: dict[str, float] = {}  # per kind: the last spare measured
        self._prepare_s: dict[str, float] = {}
        self._retry_at: dict[SpareKey, float] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a spare got ready or failed
        self._closed = False
        self._current: Worker | None = None  # the spare being prepared (close kills it)
        self._current_key: SpareKey | None = None
        # one preparation at a time: a spare's import competes with the models for the CPU
        self._preparer = ThreadPoolExecutor(1, thread_name_prefix="modelmora-spare")
        self._stopper = ThreadPoolExecutor(2, thread_name_prefix="modelmora-spare-stop")

    # --- use ---------------------------------------------------------------------------------

    def start(self, worker: Worker) -> Worker:
        """Start ``worker`` from a spare of its key when one is ready (else cold); refill.

        Raises:
            Whatever :meth:`Worker.start` raises.
        """
        spare = self.take(worker.spare_key())
        try:
            worker.start(spare=spare)
        finally:
            self.record(worker, spare)
            self.ensure(worker.spare_key())
        return worker

    def take(self, key: SpareKey, wait: float = 0.0) -> Worker | None:
        """Remove and return a ready spare of ``key`` (the caller starts a worker with it).

        Args:
            key: the worker's :meth:`~modelmora.runtime.worker.Worker.spare_key`.
            wait: when none is ready but one is being prepared right now, wait up to this many
                seconds for it (it is ahead of a cold start, which would redo its imports).
        """
        deadline = time.monotonic() + wait
        with self._lock:
            while not self._ready.get(key) and self._being_prepared(key):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._changed.wait(left)
            ready = self._ready.get(key)
            return ready.pop(0) if ready else None

    def _being_prepared(self, key: SpareKey) -> bool:
        """A spare of ``key`` is being prepared, or is next (the lock is held)."""
        if self._current_key is not None:
            return self._current_key == key
        return self._preparing.get(key, 0) > 0

    def record(self, worker: Worker, spare: Worker | None) -> None:
        """Count a start made with ``spare`` (``None``: there was none) as warm or cold."""
        with self._lock:
            if worker.warm:
                self.counts.warm += 1
            else:
                self.counts.cold += 1
                self.counts.lost += spare is not None

    def peek_mb(self, key: SpareKey) -> float:
        """RSS of the spare :meth:`take` would return for ``key`` (0.0 when there is none)."""
        with self._lock:
            ready = self._ready.get(key)
            return self._rss_mb.get(key[0], DEFAULT_SPARE_MB) if ready else 0.0

    def reserved_mb(self) -> float:
        """Memory the spares hold or are about to: measured RSS, or the estimate while preparing."""
        with self._lock:
            held = sum(self._estimate(k) * len(ws) for k, ws in self._ready.items())
            return held + sum(self._estimate(k) * n for k, n in self._preparing.items())

    def shed(self, mb: float, keep_key: SpareKey | None = None) -> list[Future[ReleaseReport]]:
        """Stop spares (not of ``keep_key``) until ``mb`` MB are freed; futures of their stops."""
        stopping: list[Worker] = []
        with self._lock:
            for key, ready in self._ready.items():
                while ready and key != keep_key and mb > 0:
                    stopping.append(ready.pop())
                    mb -= self._estimate(key)
        if stopping:
            logger.info("stopping %d spare(s) to make room", len(stopping))
        return [self._stopper.submit(w.stop) for w in stopping]

    # --- preparation -------------------------------------------------------------------------

    def ensure(self, key: SpareKey) -> None:
        """Prepare spares of ``key`` in the background up to ``keep`` (as far as they fit)."""
        with self._lock:
            if self._closed or self.keep.get(key[0], 0) <= 0:
                return
            self._drop_dead(key)
            if time.monotonic() < self._retry_at.get(key, 0.0):
                return
            missing = (
                self.keep[key[0]] - len(self._ready.get(key, [])) - self._preparing.get(key, 0)
            )
            if missing <= 0:
                return
            self._preparing[key] = self._preparing.get(key, 0) + 1
        try:
            self._preparer.submit(self._prepare_task, key)
        except RuntimeError:  # closed meanwhile
            self._unreserve(key)

    def prepare(self, key: SpareKey) -> Worker:
        """Prepare one spare of ``key`` now, add it to the pool and return it (no ``fits``).

        Raises:
            ModelLoadError, WorkerError: the spare could not be prepared.
        """
        spare = self._new_spare(key)
        self._add(key, spare)
        return spare

    def _new_spare(self, key: SpareKey) -> Worker:
        kind, threads, env = key
        spare = Worker(
            ModelSpec(kind),
            name=f"spare:{kind}",
            load_timeout=self.prepare_timeout,
            threads=threads,
            env=dict(env),
            stderr=self.stderr,
        )
        with self._lock:
            if self._closed:
                raise WorkerError("the spare pool is closed")
            self._current, self._current_key = spare, key
        try:
            prepared = spare.prepare()
        except BaseException:
            with self._lock:
                self._current, self._current_key = None, None
                self._changed.notify_all()
            spare.stop()  # reaped already when it crashed; this verifies the release
            raise
        with self._lock:  # _current_key stays until _add: a take() waiting for it gets it
            self._current = None
        rss = spare.rss_mb()
        with self._lock:
            self._rss_mb[kind], self._prepare_s[kind] = rss, prepared.prepare_s
            self.counts.prepared += 1
        logger.info(
            "spare %s ready (pid %s) in %.2f s: %.0f MB", kind, spare.pid, spare.spawn_s, rss
        )
        return spare

    def _add(self, key: SpareKey, spare: Worker, reserved: bool = False) -> None:
        """Put a prepared spare in the pool (ending its reservation while it was prepared)."""
        with self._lock:
            if reserved:
                self._preparing[key] = max(self._preparing.get(key, 0) - 1, 0)
            closed = self._closed
            if not closed:
                self._ready.setdefault(key, []).append(spare)
            if self._current_key == key:
                self._current_key = None
            self._changed.notify_all()
        if closed:
            spare.stop()
            raise WorkerError("the spare pool is closed")

    def _prepare_task(self, key: SpareKey) -> None:
        # a kind never measured is measured first: a spare that then does not fit is stopped
        measured = key[0] in self._rss_mb
        reserved = True
        try:
            if measured and self.fits is not None and not self.fits(self._estimate(key)):
                logger.debug("no room for a spare %s (%.0f MB)", key[0], self._estimate(key))
                return
            spare = self._new_spare(key)
            self._add(key, spare, reserved=True)
            reserved = False
            if not measured and self.fits is not None and not self.fits(self._estimate(key)):
                logger.info("a spare %s (%.0f MB) does not fit: not kept", key[0], spare.rss_mb())
                with self._lock:
                    ready = self._ready.get(key, [])
                    if spare in ready:
                        ready.remove(spare)
                spare.stop()
        except Exception as exc:
            if self._closed:  # killed by close()
                return
            with self._lock:
                self.counts.failed += 1
                self._retry_at[key] = time.monotonic() + _RETRY_S
            logger.warning(
                "could not prepare a spare %s (next try in %.0f s): %s", key[0], _RETRY_S, exc
            )
        finally:
            if reserved:
                self._unreserve(key)

    def _unreserve(self, key: SpareKey) -> None:
        with self._lock:
            self._preparing[key] = max(self._preparing.get(key, 0) - 1, 0)
            self._changed.notify_all()

    def _estimate(self, key: SpareKey) -> float:
        return self._rss_mb.get(key[0], DEFAULT_SPARE_MB)

    def _drop_dead(self, key: SpareKey) -> None:
        """Stop (and verify) spares of ``key`` that died while waiting; the lock is held."""
        ready = self._ready.get(key, [])
        for spare in [w for w in ready if w.exiting()]:
            ready.remove(spare)
            self.counts.lost += 1
            logger.warning("spare %s (pid %s) died while waiting: replaced", key[0], spare.pid)
            self._stopper.submit(spare.stop)

    # --- state and shutdown ------------------------------------------------------------------

    def spares(self) -> list[Worker]:
        """The ready spares (for inspection: use :meth:`take` to use one)."""
        with self._lock:
            return [w for ready in self._ready.values() for w in ready]

    def info(self) -> dict[str, Any]:
        """Counts, the ready spares (RSS, PSS) and what each kind costs to prepare."""
        ready = []
        for spare in self.spares():
            pss = None
            with contextlib.suppress(psutil.Error, AttributeError, TypeError):
                pss = psutil.Process(spare.pid).memory_full_info().pss / 2**20
            prepared = spare.prepared
            ready.append(
                SpareInfo(
                    kind=spare.spec.kind,
                    pid=spare.pid,
                    rss_mb=round(spare.rss_mb(), 1),
                    pss_mb=round(pss, 1) if pss is not None else None,
                    prepare_s=round(prepared.prepare_s if prepared else 0.0, 3),
                    modules=list(prepared.modules) if prepared else [],
                ).__dict__
            )
        with self._lock:
            c = self.counts
            return {
                "keep": dict(self.keep),
                "ready": ready,
                "preparing": sum(self._preparing.values()),
                "reserved_mb": round(
                    sum(self._estimate(k) * len(ws) for k, ws in self._ready.items()), 1
                ),
                "rss_mb": {k: round(v, 1) for k, v in self._rss_mb.items()},
                "prepare_s": {k: round(v, 3) for k, v in self._prepare_s.items()},
                "warm_starts": c.warm,
                "cold_starts": c.cold,
                "prepared": c.prepared,
                "failed": c.failed,
                "lost": c.lost,
            }

    def close(self) -> list[ReleaseReport]:
        """Stop every spare (a preparation under way ends first) and verify each release."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            current = self._current
        if current is not None:
            current.kill()
        self._preparer.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            spares = [w for ready in self._ready.values() for w in ready]
            self._ready.clear()
        reports = [w.stop() for w in spares]
        self._stopper.shutdown(wait=True)
        for report in reports:
            if not report.released:
                logger.error("a spare was not released: %s", report)
        return reports

    def __enter__(self) -> SparePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
