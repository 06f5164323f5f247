"""The model-bringing half of ``modelmora bench server``: the generic adapters and the registry.

Against a real server (``python -m modelmora serve``, its own process):

1. **Image embeddings**: a tiny CLIP (built offline, random weights) through
   ``sentence-transformers``: images/s from concurrent clients with dynamic batching against
   batch size 1, and the p50 of one request over HTTP against ``Worker.call`` into a warm
   twin.
2. **Rerank**: a tiny cross-encoder through ``POST /v1/rerank`` (a query and 8 documents per
   request): requests/s, and the same HTTP-over-direct p50.
3. **Swap under load**: a model ``PATCH``ed while clients keep calling it (failed requests
   counted), then ``DELETE``d: the server tree's RSS before it was registered, while it ran,
   and after the delete.
4. **Fleet**: twenty toy models registered through the API, a budget that fits five: every
   model called in turn, every load and eviction counted, every release report checked, and
   the peak RSS of the server's tree against the budget + 10 %.

The tiny models measure the server's work around a model (batching, HTTP, process handling),
not a model's speed: their figures are the overhead side of the ledger.
"""

from __future__ import annotations

import base64
import io
import itertools
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelmora.bench.server import KeepAliveClient, ServerProcess, in_threads
from modelmora.runtime.memory import TreeSampler, process_rss_mb, tree_rss_mb
from modelmora.runtime.spawn import server_env
from modelmora.runtime.worker import Worker
from modelmora.serving.config import ModelConfig

__all__ = ["ModelsBenchOptions", "format_rows", "run_models_bench"]

_DOCUMENTS = [f"document {i} about the river bank and the stock market" for i in range(8)]


@dataclass
class ModelsBenchOptions:
    """Sizes of the four measurements.

    Args:
        clients: concurrent clients in the throughput tests.
        requests: requests per mode in the throughput tests.
        overhead_calls: sequential calls timed on each path.
        swap_seconds: how long clients call the model around its PATCH.
        fleet_models: models registered in the fleet test.
        fleet_resident: how many of them the budget fits.
        fleet_alloc_mb: what each fleet toy allocates.
        fleet_rounds: times each fleet model is called.
    """

    clients: int = 8
    requests: int = 200
    overhead_calls: int = 60
    swap_seconds: float = 3.0
    fleet_models: int = 20
    fleet_resident: int = 5
    fleet_alloc_mb: int = 60
    fleet_rounds: int = 2


def _image(seed: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _rate(port: int, route: str, bodies: list[dict[str, Any]], clients: int) -> float:
    """Send ``bodies`` from ``clients`` keep-alive connections; return requests/s."""
    counter = itertools.count()
    errors: list[str] = []

    def one_client() -> None:
        client = KeepAliveClient(port)
        try:
            while (i := next(counter)) < len(bodies) and not errors:
                status, data = client.post(route, bodies[i])
                if status != 200:
                    errors.append(f"{status} {data[:200]!r}")
        finally:
            client.close()

    elapsed = in_threads(clients, one_client)
    if errors:
        raise RuntimeError(f"POST {route} failed: {errors[0]}")
    return len(bodies) / elapsed


def _overhead(
    port: int, route: str, body: dict[str, Any], twin: Worker, item: Any, calls: int
) -> dict[str, float]:
    client = KeepAliveClient(port)
    http_s, direct_s = [], []
    try:
        for _ in range(calls):  # interleaved, so load on the machine hits both alike
            t0 = time.perf_counter()
            status, data = client.post(route, body)
            http_s.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"POST {route} failed: {status} {data[:200]!r}")
            t0 = time.perf_counter()
            twin.call([item])
            direct_s.append(time.perf_counter() - t0)
    finally:
        client.close()
    h, d = statistics.median(http_s) * 1e3, statistics.median(direct_s) * 1e3
    return {
        "http_p50_ms": round(h, 2),
        "direct_p50_ms": round(d, 2),
        "overhead_ms": round(h - d, 2),
    }


def _adapters(options: ModelsBenchOptions, folder: Path) -> dict[str, Any]:
    from modelmora.testing.tinymodels import tiny_clip, tiny_cross_encoder

    clip, reranker = tiny_clip(folder / "clip"), tiny_cross_encoder(folder / "reranker")
    cpu = {"device": "cpu", "threads": 1}
    models = [
        {"name": "clip-b1", "adapter": "sentence-transformers", "source": str(clip), **cpu},
        {"name": "clip-b32", "adapter": "sentence-transformers", "source": str(clip), **cpu,
         "max_batch_size": 32, "max_wait_ms": 5},
        {"name": "rerank", "adapter": "cross-encoder", "source": str(reranker), **cpu,
         "max_batch_size": 8, "max_wait_ms": 2},
    ]  # fmt: skip
    config = {"cache_dir": str(folder / "cache"), "models": models}
    images = [{"image": _image(i)} for i in range(16)]
    with ServerProcess(folder / "server", config) as server:
        for name in ("clip-b1", "clip-b32", "rerank"):
            server.load(name)
        bodies = [{"model": "", "input": [images[i % 16]]} for i in range(options.requests)]
        rates = {}
        for name in ("clip-b1", "clip-b32"):
            for body in bodies:
                body["model"] = name
            _rate(server.port, "/v1/embeddings", bodies[: 2 * options.clients], options.clients)
            rates[name] = _rate(server.port, "/v1/embeddings", bodies, options.clients)
        query = {"model": "rerank", "query": "river bank", "documents": _DOCUMENTS}
        rerank_rps = _rate(server.port, "/v1/rerank", [query] * options.requests, options.clients)
        spec = ModelConfig.model_validate(models[0]).to_spec()
        with Worker(spec, name="bench-direct-clip", threads=1, env=server_env()) as twin:
            body = {"model": "clip-b1", "input": [images[0]]}
            img = _overhead(
                server.port, "/v1/embeddings", body, twin, images[0], options.overhead_calls
            )
        spec = ModelConfig.model_validate(models[2]).to_spec()
        with Worker(spec, name="bench-direct-rerank", threads=1, env=server_env()) as twin:
            item = {"query": query["query"], "documents": _DOCUMENTS}
            rr = _overhead(server.port, "/v1/rerank", query, twin, item, options.overhead_calls)
    return {
        "image_embedding": {
            "batch1_rps": round(rates["clip-b1"], 1),
            "batched_rps": round(rates["clip-b32"], 1),
            "speedup": round(rates["clip-b32"] / rates["clip-b1"], 2),
            **img,
        },
        "rerank": {"documents": len(_DOCUMENTS), "rps": round(rerank_rps, 1), **rr},
    }


def _swap(options: ModelsBenchOptions, folder: Path) -> dict[str, Any]:
    config = {"cache_dir": str(folder / "cache"), "models": []}
    with ServerProcess(folder / "server", config) as server:
        api = httpx.Client(base_url=server.url, timeout=300)
        before = tree_rss_mb(server.pid)
        entry = {"name": "swapped", "adapter": "toy", "params": {"alloc_mb": 200}}
        api.post("/api/v1/models", json={**entry, "max_batch_size": 4}).raise_for_status()
        api.post("/api/v1/models/swapped/load").raise_for_status()
        loaded = tree_rss_mb(server.pid)
        statuses: list[int] = []
        stop = threading.Event()

        def one_client() -> None:
            client = KeepAliveClient(server.port)
            try:
                while not stop.is_set():
                    status, _ = client.post("/api/v1/models/swapped/predict", {"input": 1})
                    statuses.append(status)
            finally:
                client.close()

        threads = [threading.Thread(target=one_client) for _ in range(options.clients)]
        for thread in threads:
            thread.start()
        time.sleep(options.swap_seconds / 2)
        t0 = time.perf_counter()
        patch = api.patch("/api/v1/models/swapped", json={"params": {"alloc_mb": 250}})
        patch_s = time.perf_counter() - t0
        time.sleep(options.swap_seconds / 2)
        stop.set()
        for thread in threads:
            thread.join()
        removed = api.delete("/api/v1/models/swapped").json()
        time.sleep(0.5)
        after = tree_rss_mb(server.pid)
    failed = sum(1 for s in statuses if s != 200)
    return {
        "requests": len(statuses),
        "failed": failed,
        "patch_status": patch.status_code,
        "patch_s": round(patch_s, 2),
        "tree_rss_before_mb": round(before, 1),
        "tree_rss_loaded_mb": round(loaded, 1),
        "tree_rss_after_delete_mb": round(after, 1),
        "released": bool(removed.get("release", {}).get("released")),
        "pass": failed == 0 and patch.status_code == 200 and after <= before + 20,
    }


def _fleet(options: ModelsBenchOptions, folder: Path) -> dict[str, Any]:
    footprint = options.fleet_alloc_mb + 40  # the allocation plus an interpreter
    budget = options.fleet_resident * footprint + 20
    config = {"cache_dir": str(folder / "cache"), "memory_budget_mb": budget, "models": []}
    names = [f"toy-{i:02d}" for i in range(options.fleet_models)]
    with ServerProcess(folder / "server", config) as server:
        api = httpx.Client(base_url=server.url, timeout=300)
        for name in names:
            entry = {"name": name, "adapter": "toy", "footprint_mb": footprint}
            api.post(
                "/api/v1/models", json={**entry, "params": {"alloc_mb": options.fleet_alloc_mb}}
            )
        server_rss = process_rss_mb(server.pid)
        failed = 0
        with TreeSampler(server.pid, interval=0.02) as sampler:
            t0 = time.perf_counter()
            for _ in range(options.fleet_rounds):
                for name in names:
                    reply = api.post(f"/api/v1/models/{name}/predict", json={"input": name})
                    failed += reply.status_code != 200 or reply.json().get("output") != name
            wall = time.perf_counter() - t0
        models = api.get("/api/v1/models").json()["models"]
        resident_max = sum(1 for m in models if m["state"] == "resident")
        releases = api.get("/api/v1/releases").json()["releases"]
    workers_peak = sampler.peak_mb - server_rss
    limit = budget * 1.1
    return {
        "models": options.fleet_models,
        "calls": options.fleet_models * options.fleet_rounds,
        "failed": failed,
        "loads": sum(m["loads"] for m in models),
        "evictions": sum(m["evictions"] for m in models),
        "resident_at_end": resident_max,
        "releases_checked": len(releases),
        "all_released": all(r.get("released") for r in releases),
        "budget_mb": round(budget, 1),
        "peak_tree_rss_mb": round(sampler.peak_mb, 1),
        "server_rss_mb": round(server_rss, 1),
        "peak_workers_rss_mb": round(workers_peak, 1),
        "limit_mb": round(limit, 1),
        "wall_s": round(wall, 2),
        "pass": failed == 0 and workers_peak <= limit and all(r.get("released") for r in releases),
    }


def run_models_bench(options: ModelsBenchOptions | None = None, *, folder: Path) -> dict[str, Any]:
    """Run the four measurements in ``folder``; return ``{"adapters", "swap", "fleet"}``."""
    options = options or ModelsBenchOptions()
    return {
        "adapters": _adapters(options, folder / "adapters"),
        "swap": _swap(options, folder / "swap"),
        "fleet": _fleet(options, folder / "fleet"),
    }


def _over(o: dict[str, Any]) -> str:
    return f"{o['overhead_ms']:.2f} ms ({o['http_p50_ms']:.2f} − {o['direct_p50_ms']:.2f})"


def format_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for the bench table: measurement, figure, target, verdict."""
    a, s, f = result["adapters"], result["swap"], result["fleet"]
    im, rr = a["image_embedding"], a["rerank"]

    def verdict(ok: bool) -> str:
        return "[green]PASS[/]" if ok else "[red]FAIL[/]"

    return [
        ("image embeddings/s (tiny CLIP), batched vs batch 1",
         f"{im['batched_rps']:.0f} vs {im['batch1_rps']:.0f}: ×{im['speedup']:.2f}", "", ""),
        ("image embedding: HTTP over direct, p50",
         _over(im), "", ""),
        (f"rerank/s (tiny cross-encoder, {rr['documents']} documents)", f"{rr['rps']:.0f}", "", ""),
        ("rerank: HTTP over direct, p50",
         _over(rr), "", ""),
        (f"PATCH under load: {s['requests']} requests",
         f"{s['failed']} failed; RSS {s['tree_rss_before_mb']:.0f} → {s['tree_rss_loaded_mb']:.0f}"
         f" → {s['tree_rss_after_delete_mb']:.0f} MB after DELETE", "0 failed, RSS back",
         verdict(s["pass"])),
        (f"fleet: {f['models']} models, budget fits {f['budget_mb']:.0f} MB",
         f"{f['failed']} failed, {f['loads']} loads, {f['evictions']} evictions, "
         f"{f['releases_checked']} releases all verified: {f['all_released']}",
         "0 failed", verdict(f["failed"] == 0 and f["all_released"])),
        ("fleet: peak RSS of the workers",
         f"{f['peak_workers_rss_mb']:.0f} MB (tree {f['peak_tree_rss_mb']:.0f} MB)",
         f"≤ {f['limit_mb']:.0f} MB", verdict(f["peak_workers_rss_mb"] <= f["limit_mb"])),
    ]  # fmt: skip
