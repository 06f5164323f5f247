"""A bounded soak: 2,000 requests over 3 toy models through the real HTTP server, with a budget
that fits two of them (so models are evicted and reloaded all along), plus durable jobs.

Pass: 0 lost requests (every one answered 200 with its own input echoed), every job
succeeded, the server's own RSS drifts by at most 10 MB from after the warm-up to the end,
evictions happened, and once the server is stopped no process of ours remains.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from modelmora.bench.server import ServerProcess
from test_server import _wait_job

from .conftest import Tally, tree_of, wait_all_gone

pytestmark = pytest.mark.slow

REQUESTS = int(os.environ.get("MODELMORA_SOAK_REQUESTS", "2000"))
WARMUP = 300
JOBS = 100
CLIENTS = 8
ALLOC_MB = 30


async def _drive(url: str, plan: list[tuple[str, int]], lost: list[str]) -> None:
    todo = iter(plan)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one_client() -> None:
            for name, i in todo:
                try:
                    reply = await client.post(f"/api/v1/models/{name}/predict", json={"input": i})
                    if reply.status_code != 200 or reply.json().get("output") != i:
                        lost.append(f"{name} {i}: {reply.status_code} {reply.text[:200]}")
                except httpx.HTTPError as exc:
                    lost.append(f"{name} {i}: {exc!r}")

        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))


def test_soak_2000_requests_3_models_evicting(tmp_path: Path, tally: Tally) -> None:
    footprint = ALLOC_MB + 40
    models = [
        {
            "name": name,
            "adapter": "toy",
            "params": {"alloc_mb": ALLOC_MB},
            "footprint_mb": footprint,
            "max_batch_size": 8,
            "max_wait_ms": 2,
        }
        for name in ("a", "b", "c")
    ]
    config = {"memory_budget_mb": 2 * footprint + 20, "models": models, "queue_limit": 10000}
    server = ServerProcess(tmp_path, config).start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        rng = random.Random(0)
        plan = [(rng.choice("abc"), i) for i in range(REQUESTS)]
        lost: list[str] = []
        with server.client() as http:
            jobs = [
                http.post(
                    "/api/v1/jobs", json={"model": rng.choice("abc"), "input": {"job": i}}
                ).json()["id"]
                for i in range(JOBS)
            ]
        asyncio.run(_drive(server.url, plan[:WARMUP], lost))
        rss_before = psutil.Process(pid).memory_info().rss / 2**20
        t0 = time.monotonic()
        asyncio.run(_drive(server.url, plan[WARMUP:], lost))
        soak_s = time.monotonic() - t0
        rss_after = psutil.Process(pid).memory_info().rss / 2**20
        with server.client() as http:
            finished = [_wait_job(http, job_id, timeout=120) for job_id in jobs]
            models_now = http.get("/api/v1/models").json()["models"]
        tree = tree_of(pid)
    finally:
        server.stop(signal.SIGTERM)
    left = wait_all_gone(tree, pid, timeout=5.0)
    jobs_ok = sum(job["status"] == "succeeded" for job in finished)
    evictions = sum(m.get("evictions", 0) for m in models_now)
    drift = rss_after - rss_before
    tally.record(
        "load",
        "soak: HTTP requests, 3 models, evicting budget",
        tried=len(plan),
        survived=len(plan) - len(lost),
        lost=len(lost),
    )
    tally.record(
        "load",
        "soak: durable jobs during the soak",
        tried=JOBS,
        survived=jobs_ok,
        lost=JOBS - jobs_ok,
    )
    tally.record(
        "load", "soak: orphaned processes after stop (0 expected)", tried=1, survived=int(not left)
    )
    tally.record(
        "load",
        f"soak: server RSS drift <= 10 MB (was {drift:+.1f} MB)",
        tried=1,
        survived=int(drift <= 10),
    )
    assert not lost, lost[:5]
    assert jobs_ok == JOBS
    assert not left, left
    assert drift <= 10, f"server RSS grew {drift:.1f} MB over {len(plan) - WARMUP} requests"
    assert evictions > 0, models_now
    print(f"soak: {len(plan)} requests in {soak_s:.0f} s, {evictions} evictions, {drift:+.1f} MB")
