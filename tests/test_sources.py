"""Model sources and ``modelmora.lock``: a local folder, a hub id read from a cache the test
writes in ``huggingface_hub``'s layout, offline misses, and changed files refused by name, at
the function level, through ``modelmora pull`` and through a real server's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from modelmora.bench.server import ServerProcess
from modelmora.models.sources import LockFile, SourceError, is_hub_id, prepare

PLUGINS = Path(__file__).resolve().parent / "plugins"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _folder(path: Path, scale: str = "2") -> Path:
    path.mkdir(parents=True)
    (path / "scale.txt").write_text(scale)
    (path / "config.json").write_text('{"hidden": 8}')
    return path


def _hub_cache(cache: Path, repo: str = "tiny-org/echo") -> Path:
    """A model in huggingface_hub's cache layout: blobs, a snapshot of links, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, text in (("scale.txt", "4"), ("config.json", '{"hidden": 8}')):
        blob = root / "blobs" / f"blob-{name}"
        blob.write_text(text)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_a_local_folder_is_locked_then_checked(tmp_path: Path) -> None:
    source = _folder(tmp_path / "weights")
    lock = LockFile(tmp_path / "modelmora.lock")
    first = prepare("m", str(source), None, tmp_path / "hub", lock)
    assert first.locked_now and first.path == str(source)
    entry = yaml.safe_load(lock.path.read_text())["models"]["m"]
    assert entry["source"] == str(source) and set(entry["files"]) == {"scale.txt", "config.json"}
    assert not prepare("m", str(source), None, tmp_path / "hub", lock).locked_now
    (source / "scale.txt").write_text("3")
    with pytest.raises(SourceError, match=r"scale\.txt changed or is corrupted"):
        prepare("m", str(source), None, tmp_path / "hub", lock)
    (source / "scale.txt").write_text("2")
    (source / "config.json").unlink()
    with pytest.raises(SourceError, match=r"config\.json is missing"):
        prepare("m", str(source), None, tmp_path / "hub", lock)


def test_a_hub_id_is_read_from_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    snapshot = _hub_cache(hub)
    lock = LockFile(tmp_path / "modelmora.lock")
    assert is_hub_id("tiny-org/echo") and not is_hub_id(str(snapshot))
    ready = prepare("m", "tiny-org/echo", None, hub, lock)
    assert Path(ready.path) == snapshot and ready.revision == COMMIT
    assert lock.get("m")["revision"] == COMMIT  # type: ignore[index]
    blob = hub / "models--tiny-org--echo" / "blobs" / "blob-scale.txt"
    blob.write_text("5")  # corrupted in the cache
    with pytest.raises(SourceError, match=r"scale\.txt changed"):
        prepare("m", "tiny-org/echo", None, hub, lock)
    started = time.monotonic()
    with pytest.raises(SourceError, match="not in the cache"):
        prepare("other", "tiny-org/not-cached", None, hub, lock)
    assert time.monotonic() - started < 10  # a clear error, not a wait


def test_pull_and_a_server_refuse_a_changed_file(tmp_path: Path) -> None:
    source = _folder(tmp_path / "weights", scale="2")
    echo = {"name": "echo", "adapter": "echo_adapter:EchoAdapter", "source": str(source)}
    env = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    server = ServerProcess(tmp_path, {"models": [echo]}, env=env)
    argv = [sys.executable, "-m", "modelmora", "pull", "echo", "--config", str(server.config_path)]
    pulled = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["lock"] == "locked in"
    assert (tmp_path / "modelmora.lock").is_file()  # beside the config file
    server.start()
    try:
        with server.client() as http:
            reply = http.post("/v1/embeddings", json={"model": "echo", "input": "a b"})
            assert reply.json()["data"][0]["embedding"] == [3, 2, 2]
            http.post("/api/v1/models/echo/unload")
            (source / "scale.txt").write_text("9")
            refused = http.post("/api/v1/models/echo/load")
            assert refused.status_code == 503, refused.text
            assert "scale.txt changed or is corrupted" in refused.json()["error"]["message"]
    finally:
        server.stop()
