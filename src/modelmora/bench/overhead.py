"""``modelmora bench overhead``: what running a model in a worker process costs.

Measured on a bare toy worker, so the figures are the runtime's own: spawn→ready (a fresh
interpreter, handshake), the round trip of a small call, and the round trip of a 38 MB
float32 array (10 minutes of 16 kHz audio) through shared memory.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

from rich.table import Table

from modelmora.bench.harness import cpu_count, percentile
from modelmora.runtime.worker import Worker

__all__ = ["format_table", "run_overhead"]

_AUDIO_10_MIN = 10 * 60 * 16_000  # float32 samples: 38.4 MB


def run_overhead(spawn_runs: int = 10, calls: int = 1000, array_runs: int = 10) -> dict[str, Any]:
    """Run the three measurements and return them (milliseconds).

    Args:
        spawn_runs: worker starts to time; the median is reported.
        calls: small calls to time; p50 and p99 are reported.
        array_runs: 38 MB array round trips to time; the median is reported.

    Returns:
        A dict with ``spawn_ready_ms``, ``roundtrip_p50_ms``, ``roundtrip_p99_ms``,
        ``array_38mb_roundtrip_ms`` and the raw settings.
    """
    import numpy as np

    if min(spawn_runs, calls, array_runs) < 1:
        raise ValueError("spawn_runs, calls and array_runs must all be at least 1")
    spawn = []
    for _ in range(spawn_runs):
        t0 = time.perf_counter()
        worker = Worker("toy").start()
        spawn.append(time.perf_counter() - t0)
        worker.stop()
    with Worker("toy") as worker:
        worker.call([0])  # warm up the path once
        small = []
        for i in range(calls):
            t0 = time.perf_counter()
            worker.call([i])
            small.append(time.perf_counter() - t0)
        audio = np.random.default_rng(0).standard_normal(_AUDIO_10_MIN, dtype=np.float32)
        big = []
        for _ in range(array_runs):
            t0 = time.perf_counter()
            (echo,) = worker.call([audio])
            big.append(time.perf_counter() - t0)
            if echo.shape != audio.shape:
                raise RuntimeError("array round trip returned a different shape")
            del echo
    return {
        "spawn_ready_ms": statistics.median(spawn) * 1e3,
        "roundtrip_p50_ms": percentile(small, 0.50) * 1e3,
        "roundtrip_p99_ms": percentile(small, 0.99) * 1e3,
        "array_38mb_roundtrip_ms": statistics.median(big) * 1e3,
        "array_mb": audio.nbytes / 1e6,
        "spawn_runs": spawn_runs,
        "calls": calls,
        "array_runs": array_runs,
        "python": platform.python_version(),
        "cpu_count": cpu_count(),
    }


def format_table(result: dict[str, Any]) -> Table:
    """The result as a rich table with the targets beside the figures."""
    table = Table(title=f"Worker overhead ({result['cpu_count']} CPUs, Python {result['python']})")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        (f"spawn → ready (median of {result['spawn_runs']})", "spawn_ready_ms", "≤ 300 ms"),
        (f"small call round trip p50 ({result['calls']} calls)", "roundtrip_p50_ms", "≤ 1 ms"),
        ("small call round trip p99", "roundtrip_p99_ms", ""),
        (
            f"{result['array_mb']:.1f} MB array round trip (median of {result['array_runs']})",
            "array_38mb_roundtrip_ms",
            "≤ 50 ms",
        ),
    ]
    for label, key, target in rows:
        table.add_row(label, f"{result[key]:.2f} ms", target)
    return table
