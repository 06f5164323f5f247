"""The worker process: ``python -m modelmora.runtime._child FD PARENT_PID``.

Data flow (one worker = one model)::

    parent (runtime.Worker)                       child (this module)
    ───────────────────────                       ───────────────────
    Popen(new session, env with thread caps) ──▶  prctl(PDEATHSIG=SIGKILL)
    [Prepare(kind)]     ─────────────────────▶    a spare: import the adapter's frameworks
                        ◀──────────────────────── Prepared(pid, modules, memory)   ...waits
    Init(kind, params)  ───── socket ─────────▶   resolve adapter, load()
                        ◀────────────────────── Ready(pid, load_s, memory) | LoadFailed(tb)
    Call(id, inputs)    ───── socket (+shm) ──▶   adapter.predict(inputs)
                        ◀──── socket (+shm) ───── Result(id, outputs, memory) | Failure(id, tb)
    StreamCall(id, item) ──────────────────────▶  adapter.predict_stream(item)
                        ◀──── socket (+shm) ───── Chunk(id, seq, value) ... one per value
    [Cancel(id)]        ─────────────────────▶    (read between chunks: close the generator)
                        ◀──────────────────────── StreamEnd(id, chunks, memory) | Failure(id, tb)
    Stop()              ─────────────────────▶    adapter.close(); exit 0
    (sentinel: pidfd of the child, waited on together with the socket)

The child never decides anything: it loads, answers, and exits when told or when its parent
dies. Everything it returns carries its own memory figures so the parent can see what the
model really took.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from modelmora.runtime.memory import MemoryInfo, peak_rss_mb, process_rss_mb
from modelmora.runtime.protocol import (
    Call,
    Cancel,
    Chunk,
    Failure,
    Init,
    LoadFailed,
    Prepare,
    Prepared,
    Ready,
    Result,
    ShmChannel,
    Stop,
    StreamCall,
    StreamEnd,
    decode,
    encode,
)

logger = logging.getLogger("modelmora.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: fall back to the watchdog alone
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(70)

    # PDEATHSIG fires when the parent *thread* that spawned us ends, or when the parent
    # process does; the watchdog covers platforms without prctl.
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="modelmora-parent-watch", daemon=True).start()


def _memory(nvml: bool) -> MemoryInfo:
    vram = None
    if nvml:
        from modelmora.runtime.memory import vram_by_pid_mb

        vram = vram_by_pid_mb().get(os.getpid(), 0.0)
    return MemoryInfo(rss_mb=process_rss_mb(), peak_rss_mb=peak_rss_mb(), vram_mb=vram)


def _portable(exc: BaseException) -> BaseException | None:
    """The exception itself if it survives pickling, else None (the message still travels)."""
    try:
        decode(encode(exc))
    except Exception:
        return None
    return exc


_channel = ShmChannel()  # towards the parent: large replies, rewritten when the parent lets go


def _send(conn: Connection, msg: Any) -> None:
    conn.send_bytes(_channel.stamp(encode(msg, _channel)))


def _apply_threads(threads: int | None) -> None:
    if not threads:
        return
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _load(init: Init) -> Any:
    from modelmora.models import resolve_adapter

    cls = resolve_adapter(init.kind)
    model = cls(**init.params)
    model.load()
    _apply_threads(init.threads)
    return model


def _prepare(msg: Prepare, nvml: bool) -> Prepared:
    """Import the frameworks adapter ``msg.kind`` declares (``capabilities``); create nothing."""
    import importlib

    from modelmora.models import resolve_adapter

    t0 = time.perf_counter()
    modules: list[str] = []
    error = None
    try:
        cls = resolve_adapter(msg.kind)
        modules.append(cls.__module__)
        with warnings.catch_warnings():  # deprecation noise of the frameworks' own imports
            warnings.simplefilter("ignore")
            for name in getattr(getattr(cls, "capabilities", None), "frameworks", ()):
                importlib.import_module(name)
                modules.append(name)
    except Exception as exc:  # the spare is useless: the parent discards it
        error = f"{type(exc).__name__}: {exc}"
    else:
        modules.extend(_prewarm(cls))
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    return Prepared(os.getpid(), time.perf_counter() - t0, modules, _memory(nvml), cuda, error)


def _prewarm(cls: Any) -> list[str]:
    """The adapter's optional ``prewarm()``: an optimisation, so a failure only costs it."""
    hook = getattr(cls, "prewarm", None)
    if not callable(hook):
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [str(item) for item in hook() or ()]
    except Exception as exc:
        logger.warning("prewarm of %s failed (the load will do it): %s", cls.__name__, exc)
        return []


def _first_init(conn: Connection, nvml: bool) -> Init | None:
    """The Init to load; a spare answers its Prepare first. None: told to exit, or EOF."""
    try:
        msg = decode(conn.recv_bytes(), _channel)
        if isinstance(msg, Prepare):
            prepared = _prepare(msg, nvml)
            _send(conn, prepared)
            if prepared.error is not None:
                return None
            msg = decode(conn.recv_bytes(), _channel)
    except EOFError:  # the parent let the spare go
        return None
    if isinstance(msg, Stop):
        return None
    assert isinstance(msg, Init), f"expected Init, got {type(msg).__name__}"
    return msg


def _serve(conn: Connection, model: Any, nvml: bool) -> None:
    while True:
        try:
            msg = decode(conn.recv_bytes(), _channel)
        except EOFError:  # parent closed the socket: nothing more to do
            return
        if isinstance(msg, Stop):
            close = getattr(model, "close", None)
            if close is not None:
                close()
            return
        if isinstance(msg, Cancel):  # for a stream that ended before the cancel arrived
            continue
        if isinstance(msg, StreamCall):
            _stream(conn, model, msg, nvml)
            continue
        assert isinstance(msg, Call), f"unexpected message {type(msg).__name__}"
        frame = _answer(model, msg, nvml)
        del msg  # its arrays map the parent's file: let go before telling the parent
        conn.send_bytes(_channel.stamp(frame))


def _answer(model: Any, msg: Call, nvml: bool) -> bytes:
    """The encoded Result (or Failure) of one call."""
    t0 = time.perf_counter()
    try:
        outputs = model.predict(msg.inputs)
    except BaseException as exc:
        return encode(_failure(msg.id, exc, nvml), _channel)
    reply = Result(msg.id, outputs, _memory(nvml), time.perf_counter() - t0)
    try:
        return encode(reply, _channel)
    except Exception as exc:
        kinds = sorted({type(o).__name__ for o in outputs}) if isinstance(outputs, list) else []
        failure = Failure(
            id=msg.id,
            error=None,
            message=f"the model returned a result that cannot be pickled ({kinds}): {exc}",
            tb=traceback.format_exc(),
            memory=_memory(nvml),
            unpicklable=True,
        )
        return encode(failure, _channel)


def _failure(call_id: int, exc: BaseException, nvml: bool) -> Failure:
    return Failure(
        id=call_id,
        error=_portable(exc),
        message=f"{type(exc).__name__}: {exc}",
        tb=traceback.format_exc(),
        memory=_memory(nvml),
    )


def _outputs(model: Any, item: Any) -> Iterator[Any]:
    """The adapter's ``predict_stream(item)``; without one, its whole output as one chunk."""
    predict_stream = getattr(model, "predict_stream", None)
    if predict_stream is None:
        return iter(model.predict([item]))
    return iter(predict_stream(item))


def _cancelled(conn: Connection, call_id: int) -> bool:
    """True when the parent asked to stop this stream (or went away)."""
    if not conn.poll(0):
        return False
    try:
        msg = decode(conn.recv_bytes(), _channel)
    except EOFError:
        return True
    assert isinstance(msg, Cancel), f"unexpected message {type(msg).__name__} in a stream"
    return msg.id == call_id


def _stream(conn: Connection, model: Any, msg: StreamCall, nvml: bool) -> None:
    """Send a Chunk per value the adapter yields, then StreamEnd (or a Failure)."""
    t0 = time.perf_counter()
    count, cancelled = 0, False
    reply: Any = None
    try:
        outputs = _outputs(model, msg.item)
        try:
            for value in outputs:
                try:
                    # one-shot files for large chunks: the parent does not answer between chunks
                    frame = encode(Chunk(msg.id, count, value))
                except Exception as exc:
                    reply = _failure(msg.id, exc, nvml)
                    reply.error, reply.unpicklable = None, True
                    reply.message = (
                        f"chunk {count} of the stream ({type(value).__name__}) cannot be "
                        f"pickled: {exc}"
                    )
                    break
                conn.send_bytes(_channel.stamp(frame))
                count += 1
                if _cancelled(conn, msg.id):
                    cancelled = True
                    break
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:  # the generator's cleanup runs now (llama.cpp stops sampling)
                close()
    except BaseException as exc:
        reply = _failure(msg.id, exc, nvml)
    if reply is None:
        reply = StreamEnd(msg.id, count, _memory(nvml), time.perf_counter() - t0, cancelled)
    _send(conn, reply)


def main(argv: list[str]) -> int:
    fd, parent_pid = int(argv[1]), int(argv[2])
    _die_with_parent(parent_pid)
    logging.basicConfig(
        level=os.environ.get("MODELMORA_WORKER_LOG_LEVEL", "WARNING"),
        format="%(asctime)s [worker %(process)d] %(name)s %(levelname)s: %(message)s",
    )
    nvml = os.environ.get("MODELMORA_NVML") == "1"
    conn = Connection(fd)
    init = _first_init(conn, nvml)
    if init is None:
        return 0
    t0 = time.perf_counter()
    try:
        model = _load(init)
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {exc}"
        _send(conn, LoadFailed(_portable(exc), msg, traceback.format_exc()))
        return 1
    _send(conn, Ready(os.getpid(), time.perf_counter() - t0, _memory(nvml)))
    _serve(conn, model, nvml)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    # Skip interpreter finalisation: ML frameworks' atexit hooks and non-daemon threads can
    # take seconds or hang there, and the kernel frees everything the process held anyway.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
