"""The registry changed while the server runs: register, patch (the resident worker replaced
with no request dropped), delete, while another model keeps serving; the changes kept across a
restart; the ``modelmora models`` CLI against the running server. Real server, real workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelmora.bench.server import ServerProcess

PLUGINS = Path(__file__).resolve().parent / "plugins"
ECHO = {"name": "echo", "adapter": "echo_adapter:EchoAdapter", "max_batch_size": 4}
STEADY = {"name": "steady", "adapter": "toy", "keep_alive_s": 300}


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}


def _cli(server: ServerProcess, *args: str) -> Any:
    argv = [sys.executable, "-m", "modelmora", "models", *args, "--url", server.url]
    env = {**os.environ, **_env(), "MODELMORA_API_KEY": "k3y"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _embed(http: httpx.Client, text: str = "a b c") -> list[float]:
    reply = http.post("/v1/embeddings", json={"model": "echo", "input": text})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"][0]["embedding"]  # type: ignore[no-any-return]


def _pid(http: httpx.Client, model: str) -> int:
    reply = http.post(f"/api/v1/models/{model}/predict", json={"input": {"op": "pid"}})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["output"])


def test_register_patch_delete_while_another_model_serves(tmp_path: Path) -> None:
    config = {"models": [STEADY], "api_key": "k3y"}
    server = ServerProcess(tmp_path, config, env=_env()).start()
    try:
        with server.client() as http:
            steady_pid = _pid(http, "steady")
            created = http.post("/api/v1/models", json={**ECHO, "params": {"scale": 1.0}})
            assert created.status_code == 201, created.text
            assert created.json()["origin"] == "runtime"
            assert _embed(http) == [5.0, 3.0, 1.0]
            again = http.post("/api/v1/models", json=ECHO)
            assert again.status_code == 409 and "already exists" in again.text
            bad = http.post("/api/v1/models", json={"name": "x", "adapter": "nope"})
            assert bad.status_code == 400 and "unknown adapter kind" in bad.text
            old_pid = http.get("/api/v1/models/echo").json()["pid"]

            # PATCH under load: every request during the swap is answered
            results: list[int] = []
            stop = threading.Event()

            def hammer() -> None:
                with server.client() as own:
                    while not stop.is_set():
                        reply = own.post("/v1/embeddings", json={"model": "echo", "input": "x"})
                        results.append(reply.status_code)

            threads = [threading.Thread(target=hammer) for _ in range(3)]
            for t in threads:
                t.start()
            patched = http.patch("/api/v1/models/echo", json={"params": {"scale": 3.0}})
            while _embed(http)[2] != 3.0:  # the new worker takes over once it is loaded
                pass
            stop.set()
            for t in threads:
                t.join()
            assert patched.status_code == 200, patched.text
            assert results and set(results) == {200}, results
            entry = http.get("/api/v1/models/echo").json()
            assert entry["pid"] != old_pid and entry["config"]["params"] == {"scale": 3.0}

            listed = {m["name"]: m for m in _cli(server, "list", "--json")}
            assert listed["echo"]["origin"] == "runtime" and listed["steady"]["origin"] == "config"
            removed = _cli(server, "rm", "echo")
            assert removed["removed"] and removed["release"]["released"] is True
            gone = http.post("/v1/embeddings", json={"model": "echo", "input": "x"})
            assert gone.status_code == 404
            _cli(server, "add", "late", "--adapter", "toy", "--set", "max_batch_size=2")
            assert _pid(http, "steady") == steady_pid  # served all along, never reloaded
    finally:
        server.stop()

    kept = yaml.safe_load((tmp_path / "server.runtime.yaml").read_text())
    assert [m["name"] for m in kept["models"]] == ["late"]
    restarted = ServerProcess(tmp_path, config, env=_env()).start()
    try:
        with restarted.client() as http:
            names = {m["name"]: m["origin"] for m in http.get("/api/v1/models").json()["models"]}
            assert names == {"steady": "config", "late": "runtime"}
            assert http.get("/api/v1/models/late").json()["config"]["max_batch_size"] == 2
            changes = http.get("/api/v1/status").json()["runtime_changes"]
            assert changes["registered"] == ["late"] and changes["removed"] == []
    finally:
        restarted.stop()


def test_a_failed_warm_up_makes_the_model_unhealthy_with_backoff(tmp_path: Path) -> None:
    bad = {"name": "bad", "adapter": "toy", "warmup": {"op": "raise", "message": "bad warm-up"}}
    config = {"models": [bad, ECHO], "unhealthy_cooldown_s": 2}
    server = ServerProcess(tmp_path, config, env=_env()).start()
    try:
        with server.client() as http:
            first = http.post("/api/v1/models/bad/load")
            assert first.status_code == 503 and "warm-up input failed" in first.text
            health = {m["name"]: m for m in http.get("/health/models").json()["models"]}
            assert health["bad"]["state"] == "unhealthy" and not health["bad"]["healthy"]
            assert "bad warm-up" in health["bad"]["error"] and health["bad"]["load_failures"] == 1
            refused = http.post("/api/v1/models/bad/predict", json={"input": "x"})
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert http.post("/api/v1/models/bad/load").status_code == 503  # retried: failed again
            again = {m["name"]: m for m in http.get("/health/models").json()["models"]}["bad"]
            assert again["load_failures"] == 2 and again["retry_after_s"] > 2.5  # backoff doubled
            assert _embed(http) == [5.0, 3.0, 1.0]  # its warm-up passed: it serves
            echo = {m["name"]: m for m in http.get("/health/models").json()["models"]}["echo"]
            assert echo["healthy"] and echo["state"] == "resident"
    finally:
        server.stop()
