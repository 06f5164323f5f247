"""Toy models: real processes with real memory, for tests and benchmarks without weights.

``ToyModel`` takes its behaviour from its parameters (what happens at load) and from each
input (what happens on a call). An input that is a dict with an ``"op"`` key is a command;
anything else is echoed back.

Load parameters:
    alloc_mb: megabytes to allocate and touch at load (held until the process exits).
    leak_mb: megabytes leaked on every call (kept in a module-level list, never freed).
    load_s: seconds to sleep while loading.
    load_error: raise ``RuntimeError(load_error)`` while loading.
    load_exit: ``os._exit(load_exit)`` while loading.
    close_s: seconds ``close()`` takes (a worker slow to stop).
    ignore_sigterm: ignore SIGTERM (a worker that only SIGKILL stops).

Call ops (``{"op": ...}``):
    echo (value), raise (message), exit (code), segfault, hang, sleep (seconds),
    alloc (mb: allocate and keep), unpicklable (return a lock), pid (return the worker's PID),
    spawn (start a grandchild ``sleep`` process and return its PID), env (name: return that
    environment variable), rss (return the worker's RSS in MB).

Streamed calls (``Worker.stream``): ``{"op": "stream", "value": ..., "delay": s, "then": op}``
yields ``value`` piece by piece (the items of a list, the characters of a string), sleeping
``delay`` seconds before each piece, then runs the ``then`` op (raise, exit, hang, sleep...)
and yields its result unless it is None. Any other input is yielded once, as ``predict``
would return it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from modelmora.models import Adapter, Capabilities
from modelmora.units import MB

__all__ = ["ToyBadPreloadModel", "ToyCudaModel", "ToyModel", "ToyPreloadModel", "allocate_mb"]

_leaks: list[bytearray] = []  # what the "leak" behaviour keeps alive, on purpose


def allocate_mb(mb: float) -> bytearray:
    """Allocate ``mb`` megabytes and touch every page so the RSS really grows."""
    block = bytearray(int(mb * MB))  # calloc'd: zero pages are not resident yet
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


class ToyModel(Adapter):
    """A model whose memory, load and failures are set by its parameters (see module doc)."""

    capabilities = Capabilities(task="toy", footprint_mb=60.0, vram_footprint_mb=0.0)

    @classmethod
    def describe(cls, params: Mapping[str, Any]) -> Capabilities:
        """The toy's footprint is what it allocates, plus an interpreter."""
        return replace(cls.capabilities, footprint_mb=float(params.get("alloc_mb", 0)) + 60.0)

    def __init__(
        self,
        alloc_mb: float = 0,
        leak_mb: float = 0,
        load_s: float = 0,
        load_error: str = "",
        load_exit: int | None = None,
        close_s: float = 0,
        ignore_sigterm: bool = False,
    ) -> None:
        self.alloc_mb = alloc_mb
        self.leak_mb = leak_mb
        self.load_s = load_s
        self.load_error = load_error
        self.load_exit = load_exit
        self.close_s = close_s
        self.ignore_sigterm = ignore_sigterm
        self.weights: bytearray | None = None
        self.kept: list[bytearray] = []

    def load(self) -> None:
        if self.load_s:
            time.sleep(self.load_s)
        if self.load_error:
            raise RuntimeError(self.load_error)
        if self.load_exit is not None:
            os._exit(self.load_exit)
        if self.alloc_mb:
            self.weights = allocate_mb(self.alloc_mb)
        if self.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def close(self) -> None:
        if self.close_s:
            time.sleep(self.close_s)

    def predict(self, batch: list[Any]) -> list[Any]:
        if self.leak_mb:
            _leaks.append(allocate_mb(self.leak_mb))
        return [self._one(item) for item in batch]

    def predict_stream(self, item: Any) -> Iterator[Any]:
        """Yield ``item`` piece by piece (see the module doc)."""
        if self.leak_mb:
            _leaks.append(allocate_mb(self.leak_mb))
        if not (isinstance(item, dict) and item.get("op") == "stream"):
            yield self._one(item)
            return
        delay = float(item.get("delay", 0))
        for piece in item.get("value", []):
            if delay:
                time.sleep(delay)
            yield piece
        if item.get("then") is not None:
            last = self._one(item["then"])
            if last is not None:
                yield last

    def _one(self, item: Any) -> Any:
        if not (isinstance(item, dict) and "op" in item):
            return item
        op = item["op"]
        if op == "echo":
            return item.get("value")
        if op == "raise":
            raise ValueError(item.get("message", "toy model failure"))
        if op == "exit":
            os._exit(int(item.get("code", 3)))
        if op == "segfault":
            ctypes.string_at(0)
        if op == "hang":
            threading.Event().wait()
        if op == "sleep":
            time.sleep(float(item.get("seconds", 1.0)))
            return None
        if op == "alloc":
            self.kept.append(allocate_mb(float(item["mb"])))
            return len(self.kept)
        if op == "unpicklable":
            return threading.Lock()
        if op == "pid":
            return os.getpid()
        if op == "spawn":
            return subprocess.Popen(["sleep", "300"]).pid
        if op == "env":
            return os.environ.get(str(item["name"]))
        if op == "rss":
            import psutil

            return float(psutil.Process().memory_info().rss) / MB
        raise ValueError(f"unknown toy op {op!r}")


class ToyPreloadModel(ToyModel):
    """A :class:`ToyModel` whose spare workers import numpy first (tests of spares)."""

    capabilities = replace(ToyModel.capabilities, frameworks=("numpy",))

    @classmethod
    def prewarm(cls) -> list[str]:
        """Imports ``numpy.linalg`` after the frameworks (a framework's one-off set-up)."""
        import numpy.linalg  # noqa: F401

        return ["numpy.linalg"]


class ToyBadPrewarmModel(ToyPreloadModel):
    """A :class:`ToyPreloadModel` whose ``prewarm`` fails (the spare must still serve)."""

    @classmethod
    def prewarm(cls) -> list[str]:
        """Fails, as a framework version without the hook it expects would."""
        raise AttributeError("this framework version has no such cache")


class ToyBadPreloadModel(ToyModel):
    """A :class:`ToyModel` whose spare workers cannot prepare (a framework that is missing)."""

    capabilities = replace(ToyModel.capabilities, frameworks=("modelmora_no_such_framework",))


class ToyCudaModel(Adapter):
    """Allocates ``alloc_mb`` of GPU memory with torch at load (for GPU release checks)."""

    capabilities = Capabilities(
        task="toy", takes_device=True, frameworks=("torch",), footprint_mb=600.0
    )

    @classmethod
    def describe(cls, params: Mapping[str, Any]) -> Capabilities:
        """Its VRAM is what it allocates plus the CUDA context."""
        vram = float(params.get("alloc_mb", 2048)) + 500.0
        return replace(cls.capabilities, vram_footprint_mb=vram)

    def __init__(self, alloc_mb: float = 2048, device: str = "cuda") -> None:
        self.alloc_mb = alloc_mb
        self.device = device
        self.tensor: Any = None

    def load(self) -> None:
        import torch

        n = int(self.alloc_mb * MB)
        self.tensor = torch.ones(n, dtype=torch.uint8, device=self.device)
        torch.cuda.synchronize()

    def predict(self, batch: list[Any]) -> list[Any]:
        return [int(self.tensor.sum().item()) for _ in batch]
