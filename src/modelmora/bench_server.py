"""``modelmora bench server``: what the HTTP layer costs, what batching buys, churn under a budget.

Three measurements against a real server (uvicorn in a thread of this process, so the direct
call and the HTTP call reach the very same warm worker, and one sampler sees the whole tree):

1. **Overhead**: p50 of ``POST /v1/embeddings`` (one text) against ``Worker.call`` straight into
   the worker the scheduler holds for that model, interleaved call by call.
2. **Throughput**: embeddings/s from N concurrent clients (async httpx), one text per request,
   with dynamic batching (max_batch_size 32, max_wait_ms 5) against batch size 1.
3. **Churn**: three toy models (real processes holding real memory), a budget that fits two,
   mixed requests from concurrent clients: failures, evictions, and the peak RSS of the
   workers (and of the whole tree, server included) sampled every 20 ms.
"""

from __future__ import annotations

import asyncio
import platform
import random
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from .config import ServerConfig
from .memory import process_rss_mb, tree_rss_mb

__all__ = ["ServerBenchOptions", "format_table", "run_server_bench"]

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


class _ServerThread:
    """uvicorn serving :func:`create_app` in a background thread on a free port."""

    def __init__(self, config: ServerConfig) -> None:
        import uvicorn

        from .server import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.app = create_app(config)
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            # a long keep-alive: under load, idle pooled connections must not be closed
            # by the server while a client is about to reuse them
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                timeout_keep_alive=120,
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="bench-uvicorn", daemon=True)

    def __enter__(self) -> _ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the benchmark server did not become ready in 120 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def scheduler(self) -> Any:
        return self.app.state.modelmora.scheduler

    def worker(self, model: str) -> Any:
        """The warm worker the scheduler holds for ``model`` (for the direct-call baseline)."""
        replicas = self.scheduler._models[model].live()
        if not replicas:
            raise RuntimeError(f"model {model} has no live worker")
        return replicas[0].worker


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _embedding_config(options: ServerBenchOptions, cache: Path) -> ServerConfig:
    common = {"adapter": "embedding", "source": options.embedding_model, "threads": 1}
    models = [
        {"name": "mini-b1", **common},
        {"name": "mini-b32", **common, "max_batch_size": 32, "max_wait_ms": 5},
    ]
    return ServerConfig.model_validate(
        {"cache_dir": str(cache), "models": models, "queue_limit": 4096}
    )


def _overhead(server: _ServerThread, calls: int) -> dict[str, Any]:
    worker = server.worker("mini-b1")
    direct, http = [], []
    body = {"model": "mini-b1", "input": _TEXT}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(10):  # warm both paths
            worker.call([_TEXT])
            client.post("/v1/embeddings", json=body).raise_for_status()
        for _ in range(calls):
            t0 = time.perf_counter()
            worker.call([_TEXT])
            t1 = time.perf_counter()
            client.post("/v1/embeddings", json=body).raise_for_status()
            t2 = time.perf_counter()
            direct.append((t1 - t0) * 1000)
            http.append((t2 - t1) * 1000)
    d50, h50 = statistics.median(direct), statistics.median(http)
    return {
        "calls": calls,
        "direct_p50_ms": round(d50, 2),
        "http_p50_ms": round(h50, 2),
        "overhead_p50_ms": round(h50 - d50, 2),
        "direct_p99_ms": round(_percentile(direct, 0.99), 2),
        "http_p99_ms": round(_percentile(http, 0.99), 2),
        "target_ms": 3.0,
        "pass": h50 - d50 <= 3.0,
    }


async def _load(url: str, model: str, clients: int, requests: int) -> float:
    """Send ``requests`` one-text requests from ``clients`` tasks; return requests/s."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(count: int) -> None:
            todo = iter(range(count))

            async def one_client() -> None:
                for i in todo:
                    body = {"model": model, "input": f"{_TEXT} ({i})"}
                    (await client.post("/v1/embeddings", json=body)).raise_for_status()

            await asyncio.gather(*(one_client() for _ in range(clients)))

        await send(2 * clients)  # warm up the connections and the worker
        t0 = time.perf_counter()
        await send(requests)
        return requests / (time.perf_counter() - t0)


def _throughput(server: _ServerThread, clients: int, requests: int) -> dict[str, Any]:
    single = asyncio.run(_load(server.url, "mini-b1", clients, requests))
    batched = asyncio.run(_load(server.url, "mini-b32", clients, requests))
    return {
        "clients": clients,
        "requests": requests,
        "batch1_rps": round(single, 1),
        "batched_rps": round(batched, 1),
        "speedup": round(batched / single, 2),
        "target_speedup": 3.0,
        "pass": batched / single >= 3.0,
    }


class _WorkerSampler:
    """Peak RSS of this process's descendants (the workers) and of the whole tree."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_workers_mb = self.peak_tree_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            tree = tree_rss_mb()
            self.peak_tree_mb = max(self.peak_tree_mb, tree)
            self.peak_workers_mb = max(self.peak_workers_mb, tree - process_rss_mb())

    def __enter__(self) -> _WorkerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _churn(options: ServerBenchOptions, cache: Path) -> dict[str, Any]:
    footprint = options.toy_alloc_mb + 40  # the allocation plus an interpreter
    budget = 2 * footprint + 20
    models = [
        {"name": f"toy-{n}", "adapter": "toy", "params": {"alloc_mb": options.toy_alloc_mb}}
        | {"footprint_mb": footprint, "max_batch_size": 8, "max_wait_ms": 2}
        for n in "abc"
    ]
    config = ServerConfig.model_validate(
        {"cache_dir": str(cache), "memory_budget_mb": budget, "models": models}
    )
    rng = random.Random(0)
    plan = [(rng.choice("abc"), i) for i in range(options.churn_requests)]
    failures: list[str] = []
    with _ServerThread(config) as server, _WorkerSampler() as sampler:
        t0 = time.perf_counter()
        asyncio.run(_churn_clients(server.url, plan, options.churn_clients, failures))
        wall = time.perf_counter() - t0
        counts = {m["name"]: m for m in server.scheduler.models()}
    evictions = sum(m.get("evictions", 0) for m in counts.values())
    limit = budget * 1.1
    return {
        "requests": len(plan),
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "evictions": evictions,
        "loads": sum(m.get("loads", 0) for m in counts.values()),
        "budget_mb": round(budget, 1),
        "peak_workers_rss_mb": round(sampler.peak_workers_mb, 1),
        "peak_tree_rss_mb": round(sampler.peak_tree_mb, 1),
        "limit_mb": round(limit, 1),
        "wall_s": round(wall, 2),
        "pass": not failures and sampler.peak_workers_mb <= limit,
    }


async def _churn_clients(
    url: str, plan: list[tuple[str, int]], clients: int, failures: list[str]
) -> None:
    todo = iter(plan)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one_client() -> None:
            for name, i in todo:
                reply = await client.post(f"/api/v1/models/toy-{name}/predict", json={"input": i})
                if reply.status_code != 200 or reply.json().get("output") != i:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")

        await asyncio.gather(*(one_client() for _ in range(clients)))


def run_server_bench(options: ServerBenchOptions | None = None) -> dict[str, Any]:
    """Run the three measurements and return them as one dict (see the module docstring).

    Args:
        options: sizes; defaults as in :class:`ServerBenchOptions`.

    Returns:
        ``{"overhead": {...}, "throughput": {...}, "churn": {...}, "settings": {...},
        "machine": {...}}``.
    """
    options = options or ServerBenchOptions()
    with tempfile.TemporaryDirectory(prefix="modelmora-bench-") as folder:
        cache = Path(folder)
        with _ServerThread(_embedding_config(options, cache / "embed")) as server:
            for name in ("mini-b1", "mini-b32"):
                httpx.post(f"{server.url}/api/v1/models/{name}/load", timeout=300)
            overhead = _overhead(server, options.overhead_calls)
            throughput = _throughput(server, options.clients, options.throughput_requests)
        churn = _churn(options, cache / "churn")
    return {
        "overhead": overhead,
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
