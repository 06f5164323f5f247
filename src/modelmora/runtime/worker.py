"""The worker: one child process, one model, memory measured, release verified.

A :class:`Worker` spawns a fresh interpreter (``python -m modelmora.runtime._child``: exec, never a
bare fork, so CUDA contexts and threads are never inherited), sends it the model spec, and
waits for the ready/error handshake. Calls carry ids; replies carry outputs or the remote
exception, re-raised here with the child's traceback as ``__cause__``. The reply socket is
waited on together with the child's pidfd, so a child that dies is noticed at once.

Stopping is staged (stop message → join → SIGTERM → SIGKILL of the whole process group) and
ends with :func:`~modelmora.runtime.memory.verify_release`: the processes are gone and no GPU lists
them. The data flow is drawn at the top of :mod:`modelmora.runtime._child`.

How the child is spawned (its command, its environment, its thread caps) is
:mod:`modelmora.runtime.spawn`; ``THREAD_ENV_VARS``, ``OMP_WAIT_POLICY``, ``SpareKey`` and
``spare_key`` live there and stay importable from here.

A worker can also start *warm*: :meth:`Worker.prepare` spawns the child and has it import the
framework its adapter declares (its capabilities' ``frameworks``) without loading
anything (a spare), and
``Worker(spec).start(spare=that)`` takes the spare's process over and sends it the model.
Every guarantee above is the spare's too: it is the same kind of child, spawned the same way.
:mod:`modelmora.runtime.spares` keeps spares ready.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Generator
from multiprocessing.connection import Connection, wait
from typing import IO, Any

import psutil

import modelmora.runtime.protocol as proto
from modelmora.errors import (
    MemoryLimitExceeded,
    ModelLoadError,
    RemoteTraceback,
    ResultNotPicklable,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.models import ModelSpec
from modelmora.runtime.exits import crash_phrase
from modelmora.runtime.memory import MemoryInfo, ReleaseReport, tree_rss_mb, verify_release
from modelmora.runtime.spawn import (
    OMP_WAIT_POLICY,
    THREAD_ENV_VARS,
    SpareKey,
    spare_key,
    spawn_child,
)

__all__ = [
    "OMP_WAIT_POLICY",
    "THREAD_ENV_VARS",
    "SpareKey",
    "Worker",
    "spare_key",
]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class Worker:
    """One model in one child process.

    Args:
        spec: the model to load (adapter kind and parameters), or its text form
            (``"toy:alloc_mb=500"``, see :meth:`ModelSpec.parse`).
        name: a label for logs and errors (defaults to the spec's label).
        load_timeout: seconds the child may take to start and load the model.
        memory_limit_mb: RSS cap of the worker (its process tree); ``None`` for no cap.
        threads: cap on the child's numeric thread pools (OMP/MKL/OpenBLAS/torch).
        env: extra environment variables for the child (e.g. ``CUDA_VISIBLE_DEVICES``).
        stderr: where the child's stderr goes (a file object); ``None`` inherits ours.
        stop_timeout: seconds to wait after the stop message before SIGTERM, and again
            after SIGTERM before SIGKILL.
        poll_interval: seconds between memory-cap checks while waiting on the child.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. A worker is used by one
    caller at a time (calls are serialised by a lock).
    """

    def __init__(
        self,
        spec: ModelSpec | str,
        *,
        name: str | None = None,
        load_timeout: float = 300.0,
        memory_limit_mb: float | None = None,
        threads: int | None = None,
        env: dict[str, str] | None = None,
        stderr: IO[Any] | None = None,
        stop_timeout: float = 5.0,
        poll_interval: float = 0.02,
    ) -> None:
        self.spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
        if memory_limit_mb is not None and memory_limit_mb <= 0:
            raise ValueError(f"memory_limit_mb must be positive, got {memory_limit_mb}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.name = name or self.spec.label()
        self.load_timeout = load_timeout
        self.memory_limit_mb = memory_limit_mb
        self.threads = threads
        self.env = dict(env or {})
        self.stderr = stderr
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self.load_s: float | None = None
        self.spawn_s: float | None = None
        self.memory: MemoryInfo | None = None  # as the child last reported it
        self.calls = 0
        self.exitcode: int | None = None
        self.warm = False  # started from a spare (its framework already imported)
        self.prepared: proto.Prepared | None = None  # set while this worker is a spare
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._pidfd: int | None = None
        self._channel = proto.ShmChannel()  # towards the child: large inputs, reused when free
        self._lock = threading.RLock()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the child while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """True while the child runs (not yet reaped: see :meth:`exiting` for a strict check)."""
        return self._proc is not None and self._proc.poll() is None

    def exiting(self) -> bool:
        """True when the child is gone or its main thread has already exited.

        A killed child whose threads are still exiting is not reaped yet (``poll()`` is None)
        and its socket is still open, but its main thread is a zombie: it can take no work.
        One read of ``/proc``: for handing a spare over, not for every call.
        """
        if not self.alive:
            return True
        assert self._proc is not None
        try:
            return bool(psutil.Process(self._proc.pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    def spare_key(self) -> SpareKey:
        """What a spare must share with this worker to serve it: adapter kind, threads, env."""
        return spare_key(self.spec.kind, self.threads, self.env)

    def prepare(self, timeout: float | None = None) -> proto.Prepared:
        """Spawn the child and import the adapter's framework, loading no model: a spare.

        The spec's parameters are not used: a spare becomes a worker of any model of its
        adapter kind through :meth:`start` (``Worker(spec).start(spare=this)``).

        Args:
            timeout: seconds the imports may take (defaults to ``load_timeout``).

        Returns:
            What the child reported: its PID, the modules imported, its memory, and whether
            CUDA is initialised (it never should be).

        Raises:
            ModelLoadError: an import failed (the child exited).
            WorkerTimeout, WorkerCrashed: as for :meth:`start`.
        """
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"worker {self.name} is already started")
            t0 = time.perf_counter()
            self._spawn()
            assert self._conn is not None
            self._conn.send_bytes(proto.encode(proto.Prepare(self.spec.kind)))
            msg = self._receive(self.load_timeout if timeout is None else timeout, "preparing")
            assert isinstance(msg, proto.Prepared)
            if msg.error is not None:
                self._reap()
                raise ModelLoadError(f"spare {self.name}: an import failed: {msg.error}")
            self.prepared, self.memory = msg, msg.memory
            self.spawn_s = time.perf_counter() - t0
            return msg

    def start(self, spare: Worker | None = None) -> Worker:
        """Spawn the child (or take over ``spare``'s) and wait until the model is loaded.

        Args:
            spare: a prepared worker (:meth:`prepare`) with the same :meth:`spare_key`; it is
                emptied (its process becomes this worker's). A spare that died is stopped,
                its release verified, and the start is cold; :attr:`warm` says which it was.

        Raises:
            ValueError: ``spare`` is not a prepared spare with this worker's key.
            ModelLoadError: loading raised in the child (its traceback is the cause).
            WorkerTimeout: loading took longer than ``load_timeout``.
            WorkerCrashed: the child died while loading.
            MemoryLimitExceeded: the child went past ``memory_limit_mb`` while loading.
        """
        with self._lock:
            if self._proc is not None:
                raise RuntimeError(f"worker {self.name} is already started")
            t0 = time.perf_counter()
            self.warm = spare is not None and self._adopt(spare)
            if not self.warm:
                self._spawn()
            assert self._conn is not None
            init = proto.Init(self.spec.kind, self.spec.params, self.threads)
            self._conn.send_bytes(proto.encode(init, self._channel))
            msg = self._receive(self.load_timeout, "loading")
            if isinstance(msg, proto.LoadFailed):
                self._reap()
                raise _with_cause(
                    ModelLoadError(f"worker {self.name}: the model failed to load: {msg.message}"),
                    msg.tb,
                )
            assert isinstance(msg, proto.Ready)
            self.load_s = msg.load_s
            self.memory = msg.memory
            self.spawn_s = time.perf_counter() - t0
            logger.debug(
                "worker %s ready (pid %d, %.3f s, %s)",
                self.name,
                msg.pid,
                self.spawn_s,
                "warm" if self.warm else "cold",
            )
            return self

    def _adopt(self, spare: Worker) -> bool:
        """Take over the process of a prepared spare; False (the spare stopped) if it died."""
        if spare.prepared is None:
            raise ValueError(f"{spare!r} is not a prepared spare: call its prepare() first")
        if spare.spare_key() != self.spare_key():
            raise ValueError(
                f"spare {spare.spare_key()} cannot serve worker {self.spare_key()}: the adapter "
                "kind, threads and env must match"
            )
        with spare._lock:
            if spare.exiting() or spare._conn is None or spare._conn.poll():  # died, or EOF
                report = spare.stop()
                logger.warning("spare %s had died (%s): cold start", spare.name, report.stage)
                return False
            self._proc, self._conn, self._pidfd = spare._proc, spare._conn, spare._pidfd
            spare._proc, spare._conn, spare._pidfd, spare.prepared = None, None, None, None
            spare._channel.close()
        return True

    def _spawn(self) -> None:
        self._proc, self._conn, self._pidfd = spawn_child(self.threads, self.env, self.stderr)

    def call(self, inputs: list[Any], timeout: float | None = None) -> list[Any]:
        """Run the model on a batch of inputs in the child.

        Args:
            inputs: the batch (picklable; large arrays travel through shared memory).
            timeout: seconds to wait for the reply; past it the child is killed.

        Returns:
            One output per input, as the adapter returned them.

        Raises:
            Exception: whatever the model raised, re-raised with the child's traceback as
                ``__cause__``.
            WorkerCrashed: the child died during the call (exit code or signal in the text).
            WorkerTimeout: no reply within ``timeout``; the child was killed.
            MemoryLimitExceeded: the child went past ``memory_limit_mb``; it was killed.
            ResultNotPicklable: the outputs could not be sent back.
            WorkerStopped: the worker is not running.
        """
        if not isinstance(inputs, list):
            raise TypeError(f"inputs must be a list (a batch), got {type(inputs).__name__}")
        with self._lock:
            if self._conn is None or not self.alive:
                raise WorkerStopped(f"worker {self.name} is not running: start it first")
            call_id = next(_ids)
            frame = self._channel.stamp(proto.encode(proto.Call(call_id, inputs), self._channel))
            try:
                self._conn.send_bytes(frame)
            except OSError:
                proto.discard(frame)
                self._fail_dead("receiving a call")
            msg = self._receive(timeout, "a call")
            self._end_call(msg)
            assert isinstance(msg, proto.Result) and msg.id == call_id, "reply out of order"
            return msg.outputs

    def stream(self, item: Any, timeout: float | None = None) -> Generator[Any, None, None]:
        """Run the model on one input and yield its partial outputs as the child sends them.

        The child calls the adapter's ``predict_stream(item)`` (a generator) and sends each
        value as soon as it is yielded; an adapter without ``predict_stream`` sends its whole
        ``predict([item])`` output as one chunk. The worker is held (its lock) until the stream
        ends, so iterate it and close it in one thread (``contextlib.closing``, or a ``for``
        loop that runs to its end or ``break``).

        Stopping early (``break``, ``close()``) cancels the stream: the child is told to stop,
        closes the adapter's generator at its next value, and the worker stays loaded for the
        next call. A child that does not wind down within ``stop_timeout`` seconds is killed
        (logged; closing never raises).

        Args:
            item: one input (picklable).
            timeout: seconds the whole stream may take; past it the child is killed.

        Yields:
            The values the adapter yields, in order.

        Raises:
            Exception: whatever the model raised, with the child's traceback as ``__cause__``
                (after the chunks sent before it).
            WorkerCrashed, WorkerTimeout, MemoryLimitExceeded, WorkerStopped: as for
                :meth:`call`.
            ResultNotPicklable: a chunk could not be sent back.
        """
        return self._stream(item, timeout)

    def _stream(self, item: Any, timeout: float | None) -> Generator[Any, None, None]:
        with self._lock:
            if self._conn is None or not self.alive:
                raise WorkerStopped(f"worker {self.name} is not running: start it first")
            call_id = next(_ids)
            deadline = None if timeout is None else time.monotonic() + timeout
            msg = proto.StreamCall(call_id, item)
            frame = self._channel.stamp(proto.encode(msg, self._channel))
            del msg
            try:
                self._conn.send_bytes(frame)
            except OSError:
                proto.discard(frame)
                self._fail_dead("receiving a streamed call")
            ended = interrupted = False
            try:
                while True:
                    reply = self._receive(timeout, "a streamed call", deadline)
                    assert reply.id == call_id, "reply out of order"
                    if not isinstance(reply, proto.Chunk):
                        ended = True
                        self._end_call(reply)
                        return
                    yield reply.value
            except (KeyboardInterrupt, SystemExit):
                interrupted = True
                raise
            finally:
                if not ended and self.alive:  # the caller stopped early (a crash reaped it)
                    if interrupted:  # Ctrl-C while waiting: do not wait for the child to wind down
                        self.kill()
                    else:
                        self._cancel(call_id, deadline)

    def _cancel(self, call_id: int, deadline: float | None) -> None:
        """Ask the child to stop stream ``call_id`` and drain it; kill it if it does not stop."""
        assert self._conn is not None
        grace = self.stop_timeout
        if deadline is not None:
            grace = min(grace, max(deadline - time.monotonic(), 0.0))
        try:
            self._conn.send_bytes(proto.encode(proto.Cancel(call_id)))
            end = time.monotonic() + grace
            while True:
                reply = self._receive(grace, "the end of a cancelled stream", end)
                if not isinstance(reply, proto.Chunk):
                    self._end_call(reply, raise_failure=False)
                    return
        except (WorkerError, OSError) as exc:  # the worker is reaped: the next call says so
            logger.warning("worker %s: a cancelled stream did not end cleanly: %s", self.name, exc)
            self.kill()

    def _end_call(self, reply: Any, raise_failure: bool = True) -> None:
        """Count a finished call and raise the remote error of a Failure."""
        self.calls += 1
        self.memory = reply.memory
        if not isinstance(reply, proto.Failure) or not raise_failure:
            return
        if reply.unpicklable:
            raise _with_cause(ResultNotPicklable(f"worker {self.name}: {reply.message}"), reply.tb)
        error = reply.error if reply.error is not None else WorkerError(reply.message)
        raise _with_cause(error, reply.tb)

    def rss_mb(self) -> float:
        """RSS of the child and its descendants right now (0.0 when stopped)."""
        return tree_rss_mb(self.pid) if self.alive and self.pid else 0.0

    def stop(self, timeout: float | None = None) -> ReleaseReport:
        """Stop the child (stop message → join → SIGTERM → SIGKILL) and verify the release.

        Args:
            timeout: seconds for each stage (defaults to ``stop_timeout``).

        Returns:
            The verified :class:`ReleaseReport` (``released`` False if anything survived).
        """
        with self._lock:
            started = time.monotonic()
            if self._proc is None:
                return ReleaseReport(released=True, release_s=0.0, stage="dead")
            timeout = self.stop_timeout if timeout is None else timeout
            pids = self._tree_pids()
            stage = "dead"
            if self._proc.poll() is None:
                stage = self._staged_stop(timeout)
            self._reap()
            for pid in pids[1:]:  # descendants that outlived the worker (left its group)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            report = verify_release(pids, timeout=max(timeout, 1.0), started=started)
            report.exitcode, report.stage = self.exitcode, stage
            logger.debug("worker %s stopped (%s): %s", self.name, stage, report)
            return report

    def kill(self) -> None:
        """SIGKILL the child's process group now (no verification; see :meth:`stop`)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._killpg(signal.SIGKILL)
            self._reap()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.alive else "stopped"
        return f"<Worker {self.name} {state}>"

    # --- internals ------------------------------------------------------------------------

    def _staged_stop(self, timeout: float) -> str:
        assert self._proc is not None and self._conn is not None
        with contextlib.suppress(OSError):
            self._conn.send_bytes(proto.encode(proto.Stop()))
            if self._wait_exit(timeout):
                return "graceful"
        logger.warning("worker %s did not stop in %.1f s: SIGTERM", self.name, timeout)
        self._killpg(signal.SIGTERM)
        if self._wait_exit(timeout):
            return "sigterm"
        logger.warning("worker %s ignored SIGTERM: SIGKILL", self.name)
        self._killpg(signal.SIGKILL)
        self._wait_exit(timeout)
        return "sigkill"

    def _wait_exit(self, timeout: float) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _killpg(self, sig: int) -> None:
        assert self._proc is not None
        for pid in self._tree_pids():  # descendants that left the group are signalled too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _tree_pids(self) -> list[int]:
        if self._proc is None:
            return []
        try:
            children = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        return [self._proc.pid, *(c.pid for c in children)]

    def _reap(self) -> None:
        """Collect the exit status, close our ends, and remove the child's stray shm files."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._killpg(signal.SIGKILL)
        self.exitcode = self._proc.wait()
        pid = self._proc.pid
        # Whatever is left of the worker's process group (grandchildren) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if self._conn is not None:
            self._conn.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._proc, self._conn, self._pidfd, self.prepared = None, None, None, None
        self._channel.close()
        for path in glob.glob(os.path.join(proto.SHM_DIR, proto.shm_prefix(pid) + "*")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _fail_dead(self, during: str) -> None:
        assert self._proc is not None
        try:
            code = self._proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        self._reap()
        raise WorkerCrashed(f"worker {self.name} {crash_phrase(code)} while {during}", code)

    def _receive(self, timeout: float | None, during: str, deadline: float | None = None) -> Any:
        """Wait for one message, watching the child's death, its timeout and its memory.

        ``deadline`` (monotonic) replaces ``now + timeout`` when given: a stream's chunks share
        one limit; ``timeout`` is then only what the error message says.
        """
        assert self._conn is not None and self._proc is not None
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        watch: list[Any] = [self._conn] + ([self._pidfd] if self._pidfd is not None else [])
        while True:
            step = self.poll_interval if self.memory_limit_mb else 1.0
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0.0))
            ready = wait(watch, timeout=step)
            if self._conn in ready or (ready and self._conn.poll()):
                try:
                    return proto.decode(self._conn.recv_bytes(), self._channel)
                except (EOFError, OSError):
                    self._fail_dead(during)
            if ready:  # only the pidfd: the child died without replying
                self._fail_dead(during)
            if self.memory_limit_mb:
                rss = tree_rss_mb(self._proc.pid)
                if rss > self.memory_limit_mb:
                    self.kill()
                    raise MemoryLimitExceeded(
                        f"worker {self.name} used {rss:.0f} MB during {during}, over its cap "
                        f"of {self.memory_limit_mb:.0f} MB: it was killed (raise the cap or "
                        "use a smaller model/batch)",
                        limit_mb=self.memory_limit_mb,
                        measured_mb=rss,
                    )
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                raise WorkerTimeout(
                    f"worker {self.name} gave no reply within {timeout or 0.0:.1f} s during "
                    f"{during}: it was killed"
                )


def _with_cause(error: BaseException, tb: str) -> BaseException:
    error.__cause__ = RemoteTraceback(tb)
    return error
