"""The server benchmark, at small sizes: a real server process, a real twin worker, real toys."""

from __future__ import annotations

import psutil
import pytest
from typer.testing import CliRunner

from modelmora.bench.server import ServerBenchOptions, format_table, run_server_bench
from modelmora.cli import app


def test_options_refuse_zero_counts() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ServerBenchOptions(clients=0)
    with pytest.raises(ValueError, match="toy_alloc_mb"):
        ServerBenchOptions(toy_alloc_mb=0)


@pytest.mark.slow
def test_small_run_measures_every_figure_and_leaves_no_process() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    options = ServerBenchOptions(
        overhead_calls=20,
        clients=4,
        throughput_requests=40,
        churn_requests=60,
        churn_clients=4,
        toy_alloc_mb=30,
    )
    result = run_server_bench(options)

    overhead = result["overhead"]
    assert overhead["calls"] == 20
    assert 0 < overhead["direct_p50_ms"] <= overhead["direct_p99_ms"]
    assert overhead["http_p50_ms"] > 0
    assert overhead["overhead_p50_ms"] == pytest.approx(
        overhead["http_p50_ms"] - overhead["direct_p50_ms"], abs=0.02
    )
    gain = result["model_batching"]
    assert gain["batch"] == 32 and gain["speedup"] > 0
    throughput = result["throughput"]
    assert throughput["batch1_rps"] > 0 and throughput["batched_rps"] > 0
    churn = result["churn"]
    # three 30 MB toys under a budget that fits two: every request answered, models swapped
    assert churn["failed"] == 0, churn["first_failure"]
    assert churn["evictions"] > 0 and churn["loads"] >= 3
    assert 0 < churn["peak_workers_rss_mb"] <= churn["peak_tree_rss_mb"]
    # the server processes (and their workers) are gone
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before
    table = format_table(result)
    assert table.row_count == 5


def test_cli_refuses_bad_sizes() -> None:
    outcome = CliRunner().invoke(app, ["bench", "server", "--clients", "0"])
    assert outcome.exit_code == 2
    assert "at least 1" in outcome.output
