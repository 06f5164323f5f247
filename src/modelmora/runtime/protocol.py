"""Messages between a worker and its parent, and how they travel.

Messages are small dataclass records with ids. They are pickled with protocol 5; when the
out-of-band buffers of a message (numpy arrays, bytes-like objects) add up to more than
:data:`SHM_THRESHOLD`, the buffers go through one shared-memory file in ``/dev/shm`` and only
the small pickle goes through the socket. The receiver maps that file and unlinks it at once,
so arrays arrive without a copy and the memory goes away with the last array that uses it.

This module must stay free of numpy and of any ML framework: the worker imports it before
its thread limits are in place.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import pickle
import secrets
from dataclasses import dataclass, field
from typing import Any

from modelmora.runtime.memory import MemoryInfo

__all__ = [
    "REUSE_MAX",
    "SHM_DIR",
    "SHM_THRESHOLD",
    "Call",
    "Cancel",
    "Chunk",
    "Failure",
    "Init",
    "LoadFailed",
    "Prepare",
    "Prepared",
    "Ready",
    "Result",
    "ShmChannel",
    "Stop",
    "StreamCall",
    "StreamEnd",
    "decode",
    "encode",
    "shm_prefix",
]

SHM_DIR = "/dev/shm"
#: Messages whose out-of-band buffers exceed this many bytes use shared memory.
SHM_THRESHOLD = 1 << 20

_counter = itertools.count()
_TAG_INLINE = b"P"
_TAG_SHM = b"S"
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


@dataclass
class Init:
    """Parent → worker, first message: what to load."""

    kind: str
    params: dict[str, Any]
    threads: int | None = None


@dataclass
class Prepare:
    """Parent → spare worker, first message: import what adapter ``kind`` declares, load nothing.

    The spare then waits for an :class:`Init` (one model, as any worker) or a :class:`Stop`.
    """

    kind: str


@dataclass
class Prepared:
    """Spare worker → parent: the framework is imported; no model is loaded.

    ``modules`` are the modules imported for the adapter, then what its ``prewarm`` did;
    ``cuda_initialized`` is torch's
    ``torch.cuda.is_initialized()`` (False when torch is not imported): a spare must hold no
    CUDA context. ``error`` is set when an import failed (the spare is then useless and exits).
    """

    pid: int
    prepare_s: float
    modules: list[str]
    memory: MemoryInfo
    cuda_initialized: bool = False
    error: str | None = None


@dataclass
class Ready:
    """Worker → parent: the model is loaded."""

    pid: int
    load_s: float
    memory: MemoryInfo


@dataclass
class LoadFailed:
    """Worker → parent: loading raised; the worker exits after sending this."""

    error: BaseException | None
    message: str
    tb: str


@dataclass
class Call:
    """Parent → worker: run the model on ``inputs`` (a batch)."""

    id: int
    inputs: list[Any]


@dataclass
class StreamCall:
    """Parent → worker: run the model on one ``item`` and send its outputs as they come."""

    id: int
    item: Any


@dataclass
class Cancel:
    """Parent → worker: stop streamed call ``id`` (its caller went away); it ends with StreamEnd."""

    id: int


@dataclass
class Stop:
    """Parent → worker: close the model and exit."""


@dataclass
class Result:
    """Worker → parent: the outputs of call ``id``."""

    id: int
    outputs: list[Any]
    memory: MemoryInfo
    wall_s: float


@dataclass
class Chunk:
    """Worker → parent: the ``seq``-th partial output of streamed call ``id``."""

    id: int
    seq: int
    value: Any


@dataclass
class StreamEnd:
    """Worker → parent: streamed call ``id`` is over after ``chunks`` chunks.

    ``cancelled`` says it stopped early on a :class:`Cancel`. A stream that raised ends with a
    :class:`Failure` instead.
    """

    id: int
    chunks: int
    memory: MemoryInfo
    wall_s: float
    cancelled: bool = False


@dataclass
class Failure:
    """Worker → parent: call ``id`` raised (``error`` is None if it could not be pickled).

    It also ends a streamed call that raised, or whose chunk could not be pickled.
    """

    id: int
    error: BaseException | None
    message: str
    tb: str
    memory: MemoryInfo
    unpicklable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def shm_prefix(pid: int) -> str:
    """Name prefix of the shared-memory files a process creates (for cleanup after a crash)."""
    return f"modelmora-{pid}-"


class ShmChannel:
    """One side's shared-memory state towards one peer (a worker and its parent).

    Allocating fresh tmpfs pages (the kernel zeroes each one) costs more than copying the data,
    so each side keeps the file it sends large buffers through and rewrites it, but only once
    the peer has let go of it. The receiver maps the peer's file without a copy; when it next
    sends anything, it tells the peer whether that mapping is free (no array uses it any more:
    the file may be rewritten) or still in use (it unlinks the file, the arrays keep their
    pages, and the peer makes a new file next time). Messages strictly alternate, so this
    needs no other synchronisation. Files over :data:`REUSE_MAX` are never kept. The chunks of
    a stream do not alternate with anything: they are encoded without a channel (one-shot
    files that the receiver unlinks), so the channel's file is only ever used by replies.
    """

    def __init__(self) -> None:
        self.name: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._free = False
        self._peer_mm: mmap.mmap | None = None
        self._peer_name: str | None = None
        self._status = _NO_NEWS  # what to tell the peer about its file, until told

    def write(self, raws: list[memoryview], total: int) -> str:
        """Write the buffers back to back into this side's file; return its name."""
        if self._fd is not None and not self._free:
            self._forget()  # the peer still maps it, or was never asked: a new file
        if self._fd is None:
            self.name = _new_name()
            self._fd = os.open(_path(self.name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            self._size = 0
        if total > self._size:
            os.ftruncate(self._fd, total)
            self._size = total
        _pwrite_all(self._fd, raws)
        self._free = False
        assert self.name is not None
        return self.name

    def status_byte(self) -> bytes:
        """Settle the peer's last file (see the class doc) and return what to tell the peer."""
        if self._peer_mm is not None:
            try:
                self._peer_mm.close()
                self._status = _FREE
            except BufferError:  # arrays still use it: they keep the pages, the peer a new file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_path(self._peer_name or ""))
                self._status = _GONE
            self._peer_mm = self._peer_name = None
        return self._status

    def stamp(self, frame: bytes) -> bytes:
        """Put the status of the peer's last file into ``frame``, just before it is sent.

        Call it after dropping every reference to what the peer sent last: an array still
        alive keeps the peer's file from being reused.
        """
        status = self.status_byte()
        self._status = _NO_NEWS
        return frame[:1] + status + frame[2:]

    def received(self, status: bytes, name: str | None, mm: mmap.mmap | None) -> None:
        """Take the peer's word on this side's file, and remember the peer's new mapping."""
        if status == _FREE:
            self._free = True
        elif status == _GONE:
            self._forget(unlink=False)
        if mm is not None:
            self._peer_mm, self._peer_name = mm, name

    def _forget(self, unlink: bool = True) -> None:
        if self._fd is not None:
            os.close(self._fd)
        if unlink and self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_path(self.name))
        self._fd, self.name, self._size, self._free = None, None, 0, False

    def close(self) -> None:
        """Remove this side's file; the peer's mapping is left to the arrays that use it."""
        self._forget()
        if self._peer_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_path(self._peer_name))
        self._peer_mm = self._peer_name = None


_NO_NEWS, _FREE, _GONE = b"-", b"1", b"0"

#: Largest message a :class:`ShmChannel` keeps its file for (bigger ones use one-shot files).
REUSE_MAX = 256 << 20


def _new_name() -> str:
    return f"{shm_prefix(os.getpid())}{next(_counter)}-{secrets.token_hex(4)}"


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _pwrite_all(fd: int, raws: list[memoryview]) -> None:
    # write(2) into tmpfs copies once, with no page faults in this process.
    pos = 0
    for raw in raws:
        view = raw.cast("B") if raw.ndim != 1 or raw.format != "B" else raw
        done = 0
        while done < raw.nbytes:
            done += os.pwrite(fd, view[done:], pos + done)
        pos += raw.nbytes


def encode(obj: Any, channel: ShmChannel | None = None) -> bytes:
    """Pickle ``obj``; large buffers go to a shared-memory file named in the frame.

    Args:
        obj: the message.
        channel: this side's state towards the peer (see :class:`ShmChannel`); ``None`` for
            one-shot files only.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``obj`` cannot be pickled.
    """
    status = _NO_NEWS  # the sender stamps the real status just before sending (stamp)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    total = sum(r.nbytes for r in raws)
    if not buffers or total < SHM_THRESHOLD:
        frame = _TAG_INLINE + status + (pickle.dumps(obj, protocol=5) if buffers else data)
    else:
        spans = []
        pos = 0
        for raw in raws:
            spans.append((pos, raw.nbytes))
            pos += raw.nbytes
        reused = channel is not None and total <= REUSE_MAX
        if reused:
            assert channel is not None
            name = channel.write(raws, total)
        else:
            name = _new_name()
            fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                _pwrite_all(fd, raws)
            except BaseException:
                os.unlink(_path(name))
                raise
            finally:
                os.close(fd)
        frame = _TAG_SHM + status + pickle.dumps((name, total, spans, data, reused), protocol=5)
    return frame


def decode(frame: bytes, channel: ShmChannel | None = None) -> Any:
    """Inverse of :func:`encode`: arrays arrive mapped, without a copy.

    A one-shot file is unlinked at once (its memory goes with the last array that uses it);
    the peer's reusable file is left to ``channel``, which settles it before the next send.
    """
    tag, status, body = frame[:1], frame[1:2], memoryview(frame)[2:]
    if tag == _TAG_INLINE:
        if channel is not None:
            channel.received(status, None, None)
        return pickle.loads(body)
    name, total, spans, data, reused = pickle.loads(body)
    fd = os.open(_path(name), os.O_RDWR)
    try:
        # MAP_POPULATE maps every page now, in one go, instead of one fault per page later.
        mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)
        if not (reused and channel is not None):
            os.unlink(_path(name))
    if channel is not None:
        channel.received(status, name if reused else None, mm if reused else None)
    view = memoryview(mm)
    # The arrays keep `mm` alive through these views; it is unmapped with the last of them.
    return pickle.loads(data, buffers=[view[a : a + n] for a, n in spans])


def discard(frame: bytes) -> None:
    """Remove the shared-memory file of a frame that will never be decoded."""
    if frame[:1] != _TAG_SHM:
        return
    name, *_, reused = pickle.loads(memoryview(frame)[2:])
    if reused:  # the sender's channel file: it stays for the next message
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))
