"""The benchmarks' shared helpers: percentiles, CPU count, timed commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelmora.bench.harness import cpu_count, percentile, run_timed


@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    q=st.floats(0.0, 1.0),
    r=st.floats(0.0, 1.0),
)
def test_percentile_is_a_value_and_grows_with_q(values: list[float], q: float, r: float) -> None:
    assert percentile(values, q) in values
    low, high = sorted((q, r))
    assert percentile(values, low) <= percentile(values, high)
    assert percentile(values, 0.0) == min(values) and percentile(values, 1.0) == max(values)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0  # rank round(0.5 * 99) = 50 (0-based)
    assert percentile(values, 0.99) == 99.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="within 0 and 1"):
        percentile([1.0], 1.5)


def test_cpu_count_is_what_this_process_may_use() -> None:
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)


def test_run_timed_reports_the_command(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    code = "import sys; x = bytearray(50 * 2**20); print('hi'); sys.exit(3)"
    timed = run_timed([sys.executable, "-c", code], log)
    assert timed.code == 3 and timed.wall_s > 0 and timed.cpu_s > 0
    assert log.read_text() == "hi\n"
