"""What the benchmarks share: percentiles, the CPUs this process may use, timed commands.

The pipeline and Ray benchmarks run ``modelmora transcribe`` as users run it, in a subprocess,
and time it with :func:`run_transcribe` (wall time, CPU time of the whole process tree, peak
RSS of the tree).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from modelmora.runtime.memory import TreeSampler

__all__ = ["CONFIG_NAME", "Timed", "cpu_count", "percentile", "run_timed", "run_transcribe"]

#: The options file (beside the log) that :func:`run_transcribe` passes to every batch.
CONFIG_NAME = "bench.yaml"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest rank (no interpolation).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0..1.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0 and 1, got {q}")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count without one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Timed(NamedTuple):
    """A timed command: wall and CPU seconds, peak RSS of its process tree, exit code."""

    wall_s: float
    cpu_s: float
    peak_mb: float
    code: int


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(argv: list[str], log: Path) -> Timed:
    """Run a command, its output appended to ``log``; time it and sample its memory.

    CPU seconds count the command and every process under it (workers are reaped by their
    parent, so ``RUSAGE_CHILDREN`` includes them): on a shared machine they compare designs
    more fairly than wall time.
    """
    with log.open("ab") as sink:
        cpu0 = _children_cpu_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=sink)
        sampler = TreeSampler(proc.pid, interval=0.05).start()
        code = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
    return Timed(wall, _children_cpu_s() - cpu0, sampler.peak_mb, code)


def run_transcribe(files: Sequence[Path], out: Path, log: Path, *flags: str) -> Timed:
    """Time ``modelmora transcribe FILES -o OUT --overwrite --config LOG_DIR/bench.yaml FLAGS``.

    The config file (:data:`CONFIG_NAME`, beside ``log``) must exist: the benchmark writes the
    options every design shares there.
    """
    argv = [sys.executable, "-m", "modelmora.cli", "transcribe", *map(str, files), "-o", str(out)]
    config = log.parent / CONFIG_NAME
    return run_timed([*argv, "--overwrite", "--config", str(config), *flags], log)
