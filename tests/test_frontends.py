"""``modelmora serve --http-workers N``: front-end processes over the one scheduler.

One real server with two front ends and toy models (real worker processes): every guarantee
of the one-process server holds through them (batching across front ends, streaming and a
client that hangs up, errors and their statuses, auth and the body limit, durable jobs, the
registry changed at run time, metrics counted once), a front end that dies is replaced, and a
SIGTERM stops every process.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelmora.bench.server import ServerProcess
from modelmora.errors import WorkerCrashed
from modelmora.serving.http.frontends import portable
from modelmora.serving.scheduler.errors import QueueFull

TOY = {"adapter": "toy", "keep_alive_s": 120}
KEY = "front-end-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [
        {"name": "echo", **TOY, "max_batch_size": 64, "max_wait_ms": 50},
        {"name": "slow", **TOY},
    ]
    config = {
        "models": models,
        "http_workers": 2,
        "max_request_mb": 1,
        "request_timeout_s": 3,
        "api_key": KEY,
    }
    folder = tmp_path_factory.mktemp("front-ends")
    with ServerProcess(folder, config, args=["--log-level", "warning"]) as running:
        yield running


def _front_ends(server: ServerProcess) -> list[psutil.Process]:
    assert server.proc is not None
    found = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "modelmora.serving.http.front" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped
            continue
    return found


def test_two_front_ends_serve_and_forward(server: ServerProcess) -> None:
    assert len(_front_ends(server)) == 2
    with server.client() as http:
        reply = http.post("/api/v1/models/echo/predict", json={"input": {"a": [1, 2]}})
        assert reply.json() == {"model": "echo", "output": {"a": [1, 2]}}
        # forwarded to the main process: the registry, status, releases, docs
        assert [m["name"] for m in http.get("/api/v1/models").json()["models"]] == ["echo", "slow"]
        assert http.get("/api/v1/status").json()["resident"] == ["echo"]
        assert http.get("/openapi.json").json()["info"]["title"] == "ModelMora"
        assert http.get("/v1/models/echo").json()["id"] == "echo"
        assert http.get("/v1/models/nope").status_code == 404
        assert http.get("/health/ready").json() == {"status": "ready"}


def test_requests_through_both_front_ends_share_batches(server: ServerProcess) -> None:
    def one(i: int) -> Any:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            return c.post("/api/v1/models/echo/predict", json={"input": i}).json()["output"]

    with server.client() as http:
        before = _batch_count(http)
        with ThreadPoolExecutor(32) as pool:
            assert list(pool.map(one, range(128))) == list(range(128))
        batches = _batch_count(http) - before
    assert batches < 128 / 2, batches  # many requests per batch: one queue for both front ends


def _batch_count(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('modelmora_batch_size_count{model="echo"}'):
            return float(line.split()[-1])
    return 0.0


def test_errors_keep_their_status_through_a_front_end(server: ServerProcess) -> None:
    with server.client() as http:
        raised = http.post("/api/v1/models/echo/predict", json={"input": {"op": "raise"}})
        assert raised.status_code == 400 and raised.json()["error"]["code"] == "invalid_input"
        unknown = http.post("/api/v1/models/nope/predict", json={"input": 1})
        assert unknown.status_code == 404
        t0 = time.monotonic()
        stuck = http.post("/api/v1/models/slow/predict", json={"input": {"op": "hang"}})
        assert stuck.status_code == 504 and time.monotonic() - t0 < 15
        big = http.post("/api/v1/models/echo/predict", content=b"x" * (2 << 20))
        assert big.status_code == 413
        assert http.post("/api/v1/models/echo/predict", json={"input": "after"}).status_code == 200
    bare = httpx.post(f"{server.url}/api/v1/models/echo/predict", json={"input": 1})
    assert bare.status_code == 401  # answered by the front end
    assert httpx.get(f"{server.url}/api/v1/status").status_code == 401  # forwarded, refused there
    assert httpx.get(f"{server.url}/health/live").status_code == 200


def test_streams_and_a_client_that_hangs_up(server: ServerProcess) -> None:
    item = {"op": "stream", "value": ["a", "b"], "then": None, "delay": 0.0}
    with server.client() as http:
        body = {"input": item, "stream": True}
        with http.stream("POST", "/api/v1/models/echo/predict", json=body) as response:
            assert response.status_code == 200
            data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert [json.loads(d) for d in data[:-1]] == [{"output": "a"}, {"output": "b"}]
        assert data[-1] == "[DONE]"
        long = {"op": "stream", "value": list(range(300)), "then": None, "delay": 0.02}
        with http.stream(
            "POST", "/api/v1/models/slow/predict", json={"input": long, "stream": True}
        ):
            pass  # the first chunk came; the client hangs up (6 s if nobody stops it)
        t0 = time.monotonic()
        reply = http.post("/api/v1/models/slow/predict", json={"input": "next"})
        assert reply.json()["output"] == "next" and time.monotonic() - t0 < 3.0


def test_jobs_and_registry_changes_reach_every_front_end(server: ServerProcess) -> None:
    with server.client() as http:
        job = http.post("/api/v1/jobs", json={"model": "echo", "input": [1, "two"]}).json()
        deadline = time.monotonic() + 30
        while http.get(f"/api/v1/jobs/{job['id']}").json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert http.get(f"/api/v1/jobs/{job['id']}/result").json()["result"] == [1, "two"]
        added = http.post("/api/v1/models", json={"name": "late", **TOY})
        assert added.status_code == 201, added.text
    headers = {"Authorization": f"Bearer {KEY}"}
    for _ in range(10):  # fresh connections: both front ends know the new model
        with httpx.Client(base_url=server.url, headers=headers) as fresh:
            reply = fresh.post("/api/v1/models/late/predict", json={"input": "hi"})
            assert reply.status_code == 200, reply.text
    with server.client() as http:
        assert http.delete("/api/v1/models/late").json()["release"]["released"]
    for _ in range(10):
        with httpx.Client(base_url=server.url, headers=headers) as fresh:
            assert fresh.post("/api/v1/models/late/predict", json={"input": 1}).status_code == 404


def test_metrics_count_the_front_ends_requests(server: ServerProcess) -> None:
    with server.client() as http:
        for _ in range(5):
            http.post("/v1/rerank", json={"model": "echo", "query": "q", "documents": ["d"]})
        time.sleep(1.5)  # the front ends send their counts every half second
        metrics = http.get("/metrics").text
    line = 'modelmora_http_requests_total{method="POST",route="/v1/rerank",status="400"}'
    assert f"{line} 5.0" in metrics  # echo is no reranker: 400, counted once each


def test_a_front_end_that_dies_is_replaced(server: ServerProcess) -> None:
    victim = _front_ends(server)[0]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        alive = [p for p in _front_ends(server) if p.pid != victim.pid and p.is_running()]
        if len(alive) == 2:
            break
        assert time.monotonic() < deadline, "no new front end"
        time.sleep(0.2)
    with server.client() as http:
        for i in range(20):
            reply = http.post("/api/v1/models/echo/predict", json={"input": i})
            assert reply.status_code == 200


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    config = {"models": [{"name": "echo", **TOY}], "http_workers": 3}
    folders = Path(tempfile.gettempdir()).glob
    before = set(folders("modelmora-server-*"))
    server = ServerProcess(tmp_path, config).start()
    assert server.proc is not None
    ours = set(folders("modelmora-server-*")) - before
    assert len(ours) == 1  # the private folder of its sockets
    with server.client() as http:
        assert http.post("/api/v1/models/echo/predict", json={"input": 1}).status_code == 200
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    assert len(tree) == 4  # three front ends and the model's worker
    assert server.stop() in (0, -signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive
    assert not any(folder.exists() for folder in ours)  # removed


def test_errors_cross_the_channel_as_themselves() -> None:
    import pickle

    full = pickle.loads(pickle.dumps(portable(QueueFull("42 waiting", 2.5))))
    assert isinstance(full, QueueFull) and full.retry_after_s == 2.5 and str(full) == "42 waiting"
    crashed = pickle.loads(pickle.dumps(portable(WorkerCrashed("gone", 7))))
    assert crashed.exitcode == 7

    class Local(Exception):  # defined here: not picklable
        pass

    assert isinstance(portable(Local("x")), RuntimeError)
