"""``modelmora bench peers``: reading wrk's output, and one short real run against LitServe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from modelmora.bench.peers.run import PeersOptions, parse_wrk

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8000/v1/embeddings
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   201.33ms   60.12ms 512.00ms   70.00%
    Req/Sec    78.10     20.00   120.00     66.00%
  Latency Distribution
     50%  199.50ms
     75%  240.00ms
     90%  300.00ms
     99%    1.20s
  1562 requests in 10.01s, 10.20MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    156.05
Transfer/sec:      1.02MB
"""


def test_wrk_output_is_read_with_its_units() -> None:
    load = parse_wrk(WRK_OUTPUT, connections=32)
    assert (load.requests, load.rps, load.errors) == (1562, 156.05, 3)
    assert load.p50_ms == 199.5
    assert load.p99_ms == 1200.0  # "1.20s"


def test_wrk_failure_is_an_error_not_zeros() -> None:
    with pytest.raises(ValueError, match="cannot read wrk"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n", connections=1)


def test_front_end_counts_add_modelmora_variants() -> None:
    from modelmora.bench.peers.run import _lineup

    both = PeersOptions(servers=("modelmora", "litserve"), http_workers=(1, 4))
    assert _lineup(both) == ("modelmora", "modelmora-http4", "litserve")
    assert _lineup(PeersOptions(servers=("modelmora",), http_workers=(2,))) == ("modelmora-http2",)
    with pytest.raises(ValueError, match="http_workers"):
        PeersOptions(http_workers=(0,))


def test_infinity_without_its_command_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ValueError, match="--infinity-bin ENV/bin/infinity_emb"):
        PeersOptions(servers=("modelmora", "infinity"))
    given = PeersOptions(servers=("infinity",), infinity_bin="/opt/inf/bin/infinity_emb")
    assert given.infinity_bin == "/opt/inf/bin/infinity_emb"


def test_unknown_server_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="modelmora, litserve, ray-serve"):
        PeersOptions(servers=("triton",))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by scripts/setup.sh")
def test_bench_peers_runs_modelmora_and_litserve_side_by_side() -> None:
    pytest.importorskip("litserve")
    out = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "modelmora",
                "bench",
                "peers",
                "--servers",
                "modelmora,litserve",
            ),
            *("--rounds", "1", "--duration", "3", "--connections", "4", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert set(result["servers"]) == {"modelmora", "litserve"}
    for name, figures in result["servers"].items():
        for key in ("rps_c1", "p50_c1_ms", "rps_c32", "p99_c32_ms", "rss_mb"):
            assert figures[key] > 0, (name, key, figures)
        assert figures["errors"] == 0, (name, figures)
    # ModelMora's figure includes its model worker (a session of its own), not only the front.
    assert result["servers"]["modelmora"]["rss_mb"] > 200
