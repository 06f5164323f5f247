"""Memory measurement: process RSS, peaks, GPU memory by PID (NVML), and release checks.

Everything here is cheap enough to run between calls. NVML (``nvidia-ml-py``) is optional:
without it, or without a GPU, every VRAM figure is ``None`` and release checks skip VRAM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

__all__ = [
    "MemoryInfo",
    "ReleaseReport",
    "TreeSampler",
    "available_mb",
    "gpu_used_mb",
    "nvml_available",
    "peak_rss_mb",
    "process_rss_mb",
    "tree_rss_mb",
    "verify_release",
    "vram_by_pid_mb",
]

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class MemoryInfo:
    """A process's memory as it reports it about itself.

    Attributes:
        rss_mb: resident set size now.
        peak_rss_mb: highest RSS the process ever had (``getrusage`` ``ru_maxrss``).
        vram_mb: GPU memory NVML attributes to the process, or ``None`` without a GPU.
    """

    rss_mb: float
    peak_rss_mb: float
    vram_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReleaseReport:
    """What a stop gave back, verified rather than assumed.

    Attributes:
        released: True when every process of the worker is gone and NVML lists none of them.
        release_s: seconds from the stop request until the release was verified.
        pids: the worker's process and descendants that were checked.
        remaining_pids: those still present when the check gave up.
        vram_pids: those NVML still listed when the check gave up.
        exitcode: the worker's exit status (negative: killed by that signal).
        stage: how the stop ended: "graceful", "sigterm", "sigkill" or "dead" (already gone).
    """

    released: bool
    release_s: float
    pids: list[int] = field(default_factory=list)
    remaining_pids: list[int] = field(default_factory=list)
    vram_pids: list[int] = field(default_factory=list)
    exitcode: int | None = None
    stage: str = "graceful"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_rss_mb(pid: int | None = None) -> float:
    """Current RSS of one process in MB (this process by default); 0.0 if it is gone."""
    if pid is None or pid == os.getpid():
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE / _MB
        except OSError:  # not Linux
            return float(psutil.Process().memory_info().rss) / _MB
    try:
        return float(psutil.Process(pid).memory_info().rss) / _MB
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def peak_rss_mb() -> float:
    """Peak RSS of this process since it started (its own address space), in MB.

    Read from ``VmHWM`` in ``/proc/self/status``, not from ``getrusage``: Linux carries
    ``ru_maxrss`` across ``execve``, so a worker spawned by a 500 MB parent would report a
    500 MB peak before it allocated anything. ``getrusage`` is the fallback off Linux.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tree_rss_mb(pid: int | None = None) -> float:
    """Sum of the RSS of a process and all its descendants, in MB (0.0 if it is gone).

    Shared pages are counted once per process, so this slightly over-states a tree that
    shares libraries; it never under-states what the tree holds.
    """
    return sum(_split_tree_rss_mb(pid))


def _split_tree_rss_mb(pid: int | None) -> tuple[float, float]:
    """(RSS of the process, RSS of all its descendants) in MB; zeros if it is gone."""
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    sizes = [0, 0]
    for index, proc in [(0, root), *((1, child) for child in children)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            sizes[index] += proc.memory_info().rss
    return sizes[0] / _MB, sizes[1] / _MB


def available_mb() -> float:
    """Memory the machine can still give without swapping (``MemAvailable``), in MB."""
    return float(psutil.virtual_memory().available) / _MB


# --- NVML (optional) -----------------------------------------------------------------------

_nvml_lock = threading.Lock()
_nvml_state: bool | None = None  # None: not tried yet


def nvml_available() -> bool:
    """True when NVML initialised and sees at least one GPU (tried once per process)."""
    global _nvml_state
    with _nvml_lock:
        if _nvml_state is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_state = pynvml.nvmlDeviceGetCount() > 0
            except Exception:  # no package, no driver, no GPU: all mean "no VRAM figures"
                _nvml_state = False
        return _nvml_state


def _nvml_handles() -> list[Any]:
    import pynvml

    return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]


def vram_by_pid_mb() -> dict[int, float]:
    """GPU memory NVML attributes to each process, summed over GPUs, in MB ({} without GPU)."""
    if not nvml_available():
        return {}
    import pynvml

    usage: dict[int, float] = {}
    for handle in _nvml_handles():
        procs = []
        for query in (
            pynvml.nvmlDeviceGetComputeRunningProcesses,
            pynvml.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            with contextlib.suppress(pynvml.NVMLError):
                procs.extend(query(handle))
        for proc in procs:
            used = proc.usedGpuMemory or 0  # None when the driver hides it
            usage[proc.pid] = usage.get(proc.pid, 0.0) + used / _MB
    return usage


def gpu_used_mb() -> float | None:
    """Device memory in use over all GPUs, as NVML sees it (the machine-level view), in MB."""
    if not nvml_available():
        return None
    import pynvml

    return sum(float(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in _nvml_handles()) / _MB


# --- release verification -------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def verify_release(
    pids: Iterable[int], *, timeout: float = 5.0, started: float | None = None
) -> ReleaseReport:
    """Wait until none of ``pids`` runs and NVML lists none of them; report how long it took.

    Args:
        pids: the worker process and the descendants it had.
        timeout: seconds to keep checking before reporting ``released=False``.
        started: ``time.monotonic()`` of the stop request (release time counts from there).

    Returns:
        A :class:`ReleaseReport`; its ``exitcode`` and ``stage`` are filled by the caller.
    """
    pids = sorted(set(pids))
    t0 = time.monotonic() if started is None else started
    deadline = time.monotonic() + timeout
    while True:
        remaining = [p for p in pids if _alive(p)]
        on_gpu = sorted(set(vram_by_pid_mb()) & set(pids)) if nvml_available() else []
        if (not remaining and not on_gpu) or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    released = not remaining and not on_gpu
    if not released:
        logger.warning("release not verified: alive=%s on_gpu=%s", remaining, on_gpu)
    return ReleaseReport(
        released=released,
        release_s=time.monotonic() - t0,
        pids=pids,
        remaining_pids=remaining,
        vram_pids=on_gpu,
    )


# --- sampling ---------------------------------------------------------------------------------


class TreeSampler:
    """Samples the RSS of a process tree in a background thread and keeps the peak.

    Use it around a run to measure everything together (the orchestrator and its workers)::

        with TreeSampler() as sampler:
            run_batch()
        print(sampler.peak_mb)

    Args:
        pid: root of the tree (this process by default).
        interval: seconds between samples.
        keep_timeline: also keep ``(t, rss_mb)`` samples (for plots).

    Attributes:
        peak_mb: the largest RSS of the whole tree seen.
        peak_descendants_mb: the largest RSS of the tree without its root (a server's
            workers, say), seen in the same samples.
    """

    def __init__(
        self, pid: int | None = None, interval: float = 0.05, keep_timeline: bool = False
    ) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.keep_timeline = keep_timeline
        self.peak_mb = self.peak_descendants_mb = 0.0
        self.timeline: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def sample(self) -> float:
        """Take one sample now and return it (the whole tree's RSS in MB)."""
        root, descendants = _split_tree_rss_mb(self.pid)
        rss = root + descendants
        self.peak_mb = max(self.peak_mb, rss)
        self.peak_descendants_mb = max(self.peak_descendants_mb, descendants)
        if self.keep_timeline:
            self.timeline.append((time.monotonic() - self._t0, rss))
        return rss

    def start(self) -> TreeSampler:
        self._t0 = time.monotonic()
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="modelmora-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling; return the peak in MB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        return self.peak_mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
