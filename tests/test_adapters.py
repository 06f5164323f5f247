"""Adapters from anywhere: capabilities declared by each adapter, the ``modelmora.adapters``
entry points, ``package.module:Class`` in the server config, and routes that refuse a model of
the wrong task. The server tests run a real ``modelmora serve`` with real worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelmora.bench.server import ServerProcess
from modelmora.models import (
    ENTRY_POINT_GROUP,
    Capabilities,
    ModelSpec,
    adapter_capabilities,
    adapter_table,
)
from modelmora.serving.config import ModelConfig
from modelmora.serving.scheduler.residency import estimate_footprint

PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))  # echo_adapter, for the config tests in this process
HEAVY = ("torch", "transformers", "sentence_transformers", "faster_whisper", "llama_cpp")


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an installed distribution that publishes ``echo`` as an entry point."""
    folder = tmp_path_factory.mktemp("site")
    dist = folder / "echo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\necho = echo_adapter:EchoAdapter\n"
    )
    return folder


def test_reading_every_adapters_capabilities_imports_no_framework() -> None:
    code = (
        "import sys, json; from modelmora.models import adapter_table, adapter_capabilities;"
        "caps = {k: adapter_capabilities(k).to_dict() for k in adapter_table()};"
        f"print(json.dumps([caps, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    caps, imported = json.loads(out.stdout)
    assert imported == []
    assert caps["whisper"]["routes"] == ["/v1/audio/transcriptions"]
    assert caps["cross-encoder"]["task"] == "rerank" and caps["llm"]["takes_source"]
    assert not caps["diarizer"]["takes_source"] and caps["diarizer"]["takes_device"]


def test_capabilities_drive_the_config() -> None:
    mine = ModelConfig(name="e", adapter="echo_adapter:EchoAdapter", device="cpu")
    assert mine.capabilities.task == "echo-embedding"
    assert mine.to_spec() == ModelSpec("echo_adapter:EchoAdapter")  # takes no device
    with pytest.raises(ValueError, match="takes no source"):
        ModelConfig(name="e", adapter="toy", source="/x")
    with pytest.raises(ValueError, match="cannot import no_such_module"):
        ModelConfig(name="e", adapter="no_such_module:Thing")
    with pytest.raises(ValueError, match=r"needs params\.task"):
        ModelConfig(name="t", adapter="transformers")
    clf = ModelConfig(name="t", adapter="transformers", params={"task": "text-classification"})
    assert clf.capabilities.task == "text-classification" and clf.capabilities.takes_device
    # footprint hints: the adapter's own, the toy's from its parameters
    assert estimate_footprint(mine) == (80.0, 0.0)
    toy = ModelConfig(name="toy", adapter="toy", params={"alloc_mb": 100})
    assert estimate_footprint(toy) == (160.0, 0.0)


def test_a_class_declaring_nothing_serves_predict_only() -> None:
    assert adapter_capabilities("modelmora.models:Adapter") == Capabilities()
    with pytest.raises(ValueError, match="has no class Nope"):
        adapter_capabilities("modelmora.models:Nope")


def test_entry_points_are_listed_and_accepted(site: Path) -> None:
    argv = [sys.executable, "-m", "modelmora", "adapters", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, env=_env(site, PLUGINS), check=True)
    rows = {row["kind"]: row for row in json.loads(out.stdout)}
    assert rows["echo"]["class"] == "echo_adapter:EchoAdapter"
    assert rows["echo"]["task"] == "echo-embedding"
    assert rows["cross-encoder"]["routes"] == ["/v1/rerank"]
    assert set(rows) >= set(adapter_table())


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]  # type: ignore[no-any-return]


def test_own_adapters_served_from_config(tmp_path: Path, site: Path) -> None:
    models = [
        {"name": "mine", "adapter": "echo_adapter:EchoAdapter", "params": {"scale": 2.0}},
        {"name": "published", "adapter": "echo", "max_batch_size": 4},
        {"name": "toy", "adapter": "toy"},
    ]
    server = ServerProcess(tmp_path, {"models": models}, env=_env(site, PLUGINS)).start()
    try:
        with server.client() as http:
            reply = http.post("/v1/embeddings", json={"model": "mine", "input": ["a b", "abc"]})
            assert reply.status_code == 200, reply.text
            assert [d["embedding"] for d in reply.json()["data"]] == [[3, 2, 2], [3, 1, 2]]
            one = http.post("/v1/embeddings", json={"model": "published", "input": "x y z"})
            assert one.json()["data"][0]["embedding"] == [5, 3, 1]
            listed = {m["name"]: m for m in http.get("/api/v1/models").json()["models"]}
            assert listed["mine"]["task"] == "echo-embedding"
            # a route refuses a model of the wrong task, naming the task the model has
            wrong = http.post("/v1/embeddings", json={"model": "toy", "input": "x"})
            error = _error(wrong, 400)
            assert "'toy' is a toy model" in error["message"] and error["param"] == "model"
            rerank = http.post(
                "/v1/rerank", json={"model": "mine", "query": "q", "documents": ["d"]}
            )
            assert "echo-embedding model" in _error(rerank, 400)["message"]
            # the model's own input error is the client's 400
            image = http.post(
                "/v1/embeddings", json={"model": "mine", "input": [{"image": "eA=="}]}
            )
            assert "texts only" in _error(image, 400)["message"]
    finally:
        server.stop()
