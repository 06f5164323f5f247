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

from .memory import MemoryInfo

__all__ = [
    "SHM_DIR",
    "SHM_THRESHOLD",
    "Call",
    "Failure",
    "Init",
    "LoadFailed",
    "Ready",
    "Result",
    "Stop",
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
class Failure:
    """Worker → parent: call ``id`` raised (``error`` is None if it could not be pickled)."""

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


def encode(obj: Any) -> bytes:
    """Pickle ``obj``; large buffers go to a shared-memory file named in the frame.

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``obj`` cannot be pickled.
    """
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return _TAG_INLINE + data
    raws = [b.raw() for b in buffers]
    total = sum(r.nbytes for r in raws)
    if total < SHM_THRESHOLD:
        return _TAG_INLINE + pickle.dumps(obj, protocol=5)
    name = f"{shm_prefix(os.getpid())}{next(_counter)}-{secrets.token_hex(4)}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        # write(2) into tmpfs copies once, with no page faults in this process.
        spans = []
        pos = 0
        for raw in raws:
            spans.append((pos, raw.nbytes))
            view = raw.cast("B") if raw.ndim != 1 or raw.format != "B" else raw
            done = 0
            while done < raw.nbytes:
                done += os.pwrite(fd, view[done:], pos + done)
            pos += raw.nbytes
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return _TAG_SHM + pickle.dumps((name, total, spans, data), protocol=5)


def decode(frame: bytes) -> Any:
    """Inverse of :func:`encode`; unlinks the shared-memory file it maps."""
    tag, body = frame[:1], memoryview(frame)[1:]
    if tag == _TAG_INLINE:
        return pickle.loads(body)
    name, total, spans, data = pickle.loads(body)
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        # MAP_POPULATE maps every page now, in one go, instead of one fault per page later.
        mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)
        os.unlink(path)
    view = memoryview(mm)
    # The arrays keep `mm` alive through these views; it is unmapped with the last of them.
    return pickle.loads(data, buffers=[view[a : a + n] for a, n in spans])


def discard(frame: bytes) -> None:
    """Remove the shared-memory file of a frame that will never be decoded."""
    if frame[:1] != _TAG_SHM:
        return
    name = pickle.loads(memoryview(frame)[1:])[0]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, name))
