"""``modelmora bench server``: what the HTTP layer costs, what batching buys, churn under a budget.

Three measurements against a real server, ``python -m modelmora serve`` in its own process as
users run it, driven by keep-alive ``http.client`` connections from this process:

1. **Overhead**: p50 of ``POST /v1/embeddings`` (one text) against ``Worker.call`` into a
   warm twin of the served model (same adapter, same settings) held by this process,
   interleaved call by call. Beside it, what batching buys inside a worker alone (32 texts in
   one call against 32 calls of one): the ceiling for the throughput figure.
2. **Throughput**: embeddings/s from N concurrent clients (one thread and one connection
   each), one text per request, with dynamic batching (max_batch_size 32, max_wait_ms 5)
   against batch size 1.
3. **Churn**: three toy models (real processes holding real memory), a budget that fits two,
   mixed requests from concurrent clients: failures, evictions, and the peak RSS of the
   server's workers (and of its whole tree) sampled every 20 ms.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from modelmora.runtime.memory import TreeSampler
from modelmora.runtime.spawn import server_env
from modelmora.runtime.worker import Worker
from modelmora.serving.config import ModelConfig

__all__ = [
    "KeepAliveClient",
    "ServerBenchOptions",
    "ServerProcess",
    "format_table",
    "in_threads",
    "run_server_bench",
]

_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


@dataclass
class ServerBenchOptions:
    """Sizes of the three measurements.

    Args:
        overhead_calls: sequential calls timed on each path (interleaved).
        clients: concurrent clients in the throughput test.
        throughput_requests: requests per mode in the throughput test.
        churn_requests: requests in the churn test.
        churn_clients: concurrent clients in the churn test.
        toy_alloc_mb: memory each churn model holds.
        embedding_model: the embedding source (None: the packaged all-MiniLM-L6-v2).

    Raises:
        ValueError: a count below 1.
    """

    overhead_calls: int = 300
    clients: int = 32
    throughput_requests: int = 640
    churn_requests: int = 1000
    churn_clients: int = 8
    toy_alloc_mb: float = 150.0
    embedding_model: str | None = None

    def __post_init__(self) -> None:
        counts = (self.overhead_calls, self.clients, self.throughput_requests)
        if min(*counts, self.churn_requests, self.churn_clients) < 1 or self.toy_alloc_mb <= 0:
            raise ValueError("every count must be at least 1 and toy_alloc_mb positive")


class ServerProcess:
    """``python -m modelmora serve`` on a free port, in its own process, as users run it.

    The server gets its own interpreter (no GIL shared with the clients driving it) and its
    log goes to ``folder/server.log``; the message of a failed start quotes its tail. The
    benchmark and the test suite both start their servers with it.

    Args:
        folder: where the config file and the log go (created).
        config: the server's config (``cache_dir`` defaults to ``folder/cache``); ``None`` for
            no ``--config`` at all (the packaged defaults).
        env: environment variables for the server (an inherited ``MODELMORA_API_KEY`` is
            dropped unless given here).
        args: more ``serve`` options (``--log-level``...).

    Use it as a context manager, or :meth:`start` and :meth:`stop` it; :meth:`start` after a
    stop restarts it on the same port, with the same config (the log goes on).
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any] | None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.args = list(args)
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = folder / "server.yaml"
            config = {"cache_dir": str(folder / "cache"), **config}
            self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.env = dict(os.environ)
        self.env.pop("MODELMORA_API_KEY", None)
        self.env.update(env or {})
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = (config or {}).get("api_key") or self.env.get("MODELMORA_API_KEY")
        self.log = folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        """Start the server and wait until ``/health/ready`` answers 200.

        Raises:
            RuntimeError: it exited, or was not ready within ``timeout`` seconds (it is
                stopped then); the message ends with its log.
        """
        command = [sys.executable, "-m", "modelmora", "serve", "--port", str(self.port)]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        code = self.proc.poll()
        self.stop()
        what = f"exited with code {code}" if code is not None else f"not ready in {timeout:g} s"
        raise RuntimeError(f"the server {what}; its log ends:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` (SIGTERM: a clean stop, every worker ends with it); kill it if it is
        still there after ``timeout`` s. Returns its exit status."""
        assert self.proc is not None, "the server was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def logs(self) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-4000:]

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` on the server (with the API key, if there is one)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.stop()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None, "the server was never started"
        return self.proc.pid

    def get(self, route: str) -> Any:
        """``GET route``, as JSON (an error status raises)."""
        with self.client() as http:
            reply = http.get(route, timeout=60)
        reply.raise_for_status()
        return reply.json()

    def load(self, model: str) -> None:
        """Load ``model`` now (``POST /api/v1/models/{model}/load``)."""
        with self.client() as http:
            http.post(f"/api/v1/models/{model}/load", timeout=300).raise_for_status()


class KeepAliveClient:
    """A keep-alive HTTP/1.1 connection (``http.client``: the lightest client at hand, so the
    figures are the server's, not the client's); one per simulated client thread."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, route: str, body: dict[str, Any]) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        self.conn.request("POST", route, data, {"Content-Type": "application/json"})
        reply = self.conn.getresponse()
        return reply.status, reply.read()

    def close(self) -> None:
        self.conn.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _embedding_config(options: ServerBenchOptions, cache: Path) -> dict[str, Any]:
    source = options.embedding_model
    if source is not None and Path(source).exists():  # the config file lives elsewhere
        source = str(Path(source).resolve())
    common = {"adapter": "embedding", "source": source}
    models = [
        {"name": "mini-b1", **common},
        {"name": "mini-b32", **common, "max_batch_size": 32, "max_wait_ms": 5},
    ]
    return {"cache_dir": str(cache), "models": models, "queue_limit": 4096}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _overhead(server: ServerProcess, twin: Worker, calls: int) -> dict[str, Any]:
    """Interleave a direct call into ``twin`` and the same request over HTTP, call by call."""
    body = {"model": "mini-b1", "input": _TEXT}
    client = KeepAliveClient(server.port)
    direct, http = [], []
    try:
        for i in range(calls + 10):  # the first 10 of each warm both paths
            t0 = time.perf_counter()
            twin.call([_TEXT])
            t1 = time.perf_counter()
            status, data = client.post("/v1/embeddings", body)
            t2 = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"POST /v1/embeddings answered {status}: {data[:200]!r}")
            if i >= 10:
                direct.append(t1 - t0)
                http.append(t2 - t1)
    finally:
        client.close()
    d50, h50 = statistics.median(direct), statistics.median(http)
    return {
        "calls": calls,
        "direct_p50_ms": _ms(d50),
        "http_p50_ms": _ms(h50),
        "overhead_p50_ms": _ms(h50 - d50),
        "direct_p99_ms": _ms(_percentile(direct, 0.99)),
        "http_p99_ms": _ms(_percentile(http, 0.99)),
        "target_ms": 3.0,
        "pass": (h50 - d50) * 1000 <= 3.0,
    }


def _model_gain(twin: Worker, size: int, rounds: int = 5) -> dict[str, Any]:
    """What batching buys inside the worker alone: ``size`` texts in one call against
    ``size`` calls of one text (the ceiling for the HTTP figure)."""
    texts = [f"{_TEXT} ({i})" for i in range(size)]
    one, batch = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for text in texts:
            twin.call([text])
        t1 = time.perf_counter()
        twin.call(texts)
        batch.append(time.perf_counter() - t1)
        one.append(t1 - t0)
    single, batched = statistics.median(one), statistics.median(batch)
    return {
        "batch": size,
        "batch1_ms_per_text": _ms(single / size),
        "batched_ms_per_text": _ms(batched / size),
        "speedup": round(single / batched, 2),
    }


def in_threads(count: int, target: Callable[[], None]) -> float:
    """Run ``target`` in ``count`` threads at once; return the seconds until all are done."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t0


def _load(port: int, model: str, clients: int, requests: int) -> float:
    """Send ``requests`` one-text requests from ``clients`` threads; return requests/s."""
    errors: list[str] = []

    def send(total: int) -> float:
        counter = itertools.count()

        def one_client() -> None:
            client = KeepAliveClient(port)
            try:
                while (i := next(counter)) < total and not errors:
                    body = {"model": model, "input": f"{_TEXT} ({i})"}
                    status, data = client.post("/v1/embeddings", body)
                    if status != 200:
                        errors.append(f"{status} {data[:200]!r}")
            finally:
                client.close()

        elapsed = in_threads(clients, one_client)
        if errors:
            raise RuntimeError(f"POST /v1/embeddings failed: {errors[0]}")
        return elapsed

    send(2 * clients)  # warm up the worker
    return requests / send(requests)


def _throughput(server: ServerProcess, clients: int, requests: int) -> dict[str, Any]:
    single = _load(server.port, "mini-b1", clients, requests)
    batched = _load(server.port, "mini-b32", clients, requests)
    return {
        "clients": clients,
        "requests": requests,
        "batch1_rps": round(single, 1),
        "batched_rps": round(batched, 1),
        "speedup": round(batched / single, 2),
        "target_speedup": 3.0,
        "pass": batched / single >= 3.0,
    }


def _churn(options: ServerBenchOptions, folder: Path) -> dict[str, Any]:
    footprint = options.toy_alloc_mb + 40  # the allocation plus an interpreter
    budget = 2 * footprint + 20
    models = [
        {"name": f"toy-{n}", "adapter": "toy", "params": {"alloc_mb": options.toy_alloc_mb}}
        | {"footprint_mb": footprint, "max_batch_size": 8, "max_wait_ms": 2}
        for n in "abc"
    ]
    config = {"cache_dir": str(folder / "cache"), "memory_budget_mb": budget, "models": models}
    rng = random.Random(0)
    plan = iter([(rng.choice("abc"), i) for i in range(options.churn_requests)])
    failures: list[str] = []

    def one_client(port: int) -> None:
        client = KeepAliveClient(port)
        try:
            for name, i in plan:  # a shared iterator: next() is atomic under the GIL
                status, data = client.post(f"/api/v1/models/toy-{name}/predict", {"input": i})
                if status != 200 or json.loads(data).get("output") != i:
                    failures.append(f"{status} {data[:200]!r}")
        finally:
            client.close()

    with ServerProcess(folder, config) as server, TreeSampler(server.pid, 0.02) as sampler:
        wall = in_threads(options.churn_clients, lambda: one_client(server.port))
        counts = server.get("/api/v1/models")["models"]
    workers_peak = sampler.peak_descendants_mb  # the server's workers, without the server
    limit = budget * 1.1
    return {
        "requests": options.churn_requests,
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "evictions": sum(m.get("evictions", 0) for m in counts),
        "loads": sum(m.get("loads", 0) for m in counts),
        "budget_mb": round(budget, 1),
        "peak_workers_rss_mb": round(workers_peak, 1),
        "peak_tree_rss_mb": round(sampler.peak_mb, 1),
        "limit_mb": round(limit, 1),
        "wall_s": round(wall, 2),
        "pass": not failures and workers_peak <= limit,
    }


def run_server_bench(options: ServerBenchOptions | None = None) -> dict[str, Any]:
    """Run the three measurements and return them as one dict (see the module docstring).

    Args:
        options: sizes; defaults as in :class:`ServerBenchOptions`.

    Returns:
        ``{"overhead": {...}, "model_batching": {...}, "throughput": {...}, "churn": {...},
        "settings": {...}, "machine": {...}}``.
    """
    options = options or ServerBenchOptions()
    with tempfile.TemporaryDirectory(prefix="modelmora-bench-") as name:
        folder = Path(name)
        config = _embedding_config(options, folder / "embed" / "cache")
        with ServerProcess(folder / "embed", config) as server:
            for model in ("mini-b1", "mini-b32"):
                server.load(model)
            # the direct path: a twin of mini-b1 (same spec, same settings) in this process
            twin_config = ModelConfig.model_validate(config["models"][0])
            # the same environment as the served model's worker (its OpenMP idle policy)
            with Worker(twin_config.to_spec(), name="bench-direct", env=server_env()) as twin:
                overhead = _overhead(server, twin, options.overhead_calls)
                gain = _model_gain(twin, 32)
            throughput = _throughput(server, options.clients, options.throughput_requests)
        churn = _churn(options, folder / "churn")
    return {
        "overhead": overhead,
        "model_batching": gain,
        "throughput": throughput,
        "churn": churn,
        "settings": asdict(options),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def format_table(result: dict[str, Any]) -> Table:
    """The result as a rich table: measurement, figure, target, verdict."""
    table = Table(title="modelmora bench server")
    for column in ("measurement", "figure", "target", "verdict"):
        table.add_column(column)
    o, t, c = result["overhead"], result["throughput"], result["churn"]

    def verdict(ok: bool) -> str:
        return "[green]PASS[/]" if ok else "[red]FAIL[/]"

    table.add_row(
        "HTTP overhead, p50 (embedding, 1 text)",
        f"{o['overhead_p50_ms']:.2f} ms "
        f"(HTTP {o['http_p50_ms']:.2f} − direct {o['direct_p50_ms']:.2f})",
        "≤ 3 ms",
        verdict(o["pass"]),
    )
    g = result["model_batching"]
    table.add_row(
        f"inside the worker: {g['batch']} texts in one call vs one by one",
        f"{g['batched_ms_per_text']:.1f} vs {g['batch1_ms_per_text']:.1f} ms per text: "
        f"×{g['speedup']:.2f}",
        "(ceiling)",
        "",
    )
    table.add_row(
        f"embeddings/s, {t['clients']} clients",
        f"{t['batched_rps']:.0f} batched vs {t['batch1_rps']:.0f} at batch 1: ×{t['speedup']:.2f}",
        "≥ ×3",
        verdict(t["pass"]),
    )
    table.add_row(
        f"churn: {c['requests']} requests, 3 models, budget fits 2",
        f"{c['failed']} failed, {c['evictions']} evictions, {c['loads']} loads",
        "0 failed",
        verdict(c["failed"] == 0),
    )
    table.add_row(
        "churn: peak RSS of the workers (whole tree)",
        f"{c['peak_workers_rss_mb']:.0f} MB ({c['peak_tree_rss_mb']:.0f} MB), "
        f"budget {c['budget_mb']:.0f} MB",
        f"≤ {c['limit_mb']:.0f} MB",
        verdict(c["peak_workers_rss_mb"] <= c["limit_mb"]),
    )
    return table
