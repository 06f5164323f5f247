"""The Ray backend: options, the install hint, and real multi-node clusters on this machine.

The slow tests start a real Ray cluster (``ray.cluster_utils.Cluster``: a head and worker
nodes, each its own raylet, all on this machine) and run the real models on generated conversations:
the Ray backend's outputs, report and resume state must be the local backend's, resume must
work across backends, and a node removed mid-batch must not lose or duplicate a file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelmora.models import ModelSpec
from modelmora.testing.faults import stage_model
from modelmora.workflow.engine import STATE_DIR, transcribe_files
from modelmora.workflow.options import TranscribeOptions, load_options
from modelmora.workflow.stages import Run

ML_MODULES = ("torch", "faster_whisper", "ctranslate2", "llama_cpp", "resemblyzer", "onnxruntime")
TIMING_KEYS = {"wall_s", "load_s", "release_s", "identify_s", "log"}
# Nodes bind this machine's own address: Ray's driver turns a loopback cluster address into
# that address when it connects, so a cluster bound to 127.0.0.1 alone cannot be joined.
NODE_ARGS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


# --- options and the install hint (no cluster) ------------------------------------------------


def test_backend_must_be_known() -> None:
    with pytest.raises(ValueError, match="local, ray"):
        TranscribeOptions(backend="spark").validate()


def test_address_needs_the_ray_backend() -> None:
    with pytest.raises(ValueError, match="backend ray"):
        load_options(None, address="127.0.0.1:6379")


def test_without_ray_the_cli_says_how_to_install_it(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['ray'] = None\n"  # as if the extra were not installed
        "from modelmora.cli import main; main()\n"
    )
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    argv = [sys.executable, "-c", script, "transcribe", str(wav), "--backend", "ray"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'modelmora[ray]'" in proc.stderr


# --- a real cluster ---------------------------------------------------------------------------


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _gone(pids: set[int], timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if psutil.pid_exists(pid) and _not_zombie(pid)}
        time.sleep(0.2)
    return alive


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and two worker nodes on this machine; everything it started is gone afterwards."""
    pytest.importorskip("ray")
    import ray
    from ray.cluster_utils import Cluster

    before = _descendants()
    made = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
    try:
        for _ in range(2):
            made.add_node(**NODE_ARGS)
        made.wait_for_nodes()
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        started = _descendants() - before
        made.shutdown()
        left = _gone(started)
        assert not left, f"processes left behind: {[psutil.Process(p).cmdline() for p in left]}"


@pytest.fixture(scope="module")
def conversations(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three short generated two-speaker exchanges (two turns each)."""
    from modelmora.testing.conversation import MEETING_SCRIPT, espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("ray-audio")
    return [
        make_conversation(folder / f"talk{i}.wav", MEETING_SCRIPT[i : i + 2]).wav for i in range(3)
    ]


@pytest.fixture
def footprints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Learned footprints go to a temporary cache folder, not the user's."""
    monkeypatch.setenv("MODELMORA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "footprints.json"


def _strip(data: Any, folder: Path) -> Any:
    """The data without its timing and memory measurements, the output folder named OUT."""
    if isinstance(data, dict):
        return {
            k: _strip(v, folder) for k, v in data.items() if k not in TIMING_KEYS and "_mb" not in k
        }
    if isinstance(data, list):
        return [_strip(v, folder) for v in data]
    if isinstance(data, str):
        return data.replace(str(folder), "OUT")
    return data


def _tree(folder: Path) -> dict[str, Any]:
    """Every output and resume file: bytes, or for JSON the data without timings."""
    files: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or path.suffix == ".log":
            continue
        name = str(path.relative_to(folder))
        if path.suffix == ".json":
            files[name] = _strip(json.loads(path.read_text()), folder)
        else:
            files[name] = path.read_bytes()
    return files


def _cli_on_ray(files: list[Path], out: Path, address: str) -> dict[str, Any]:
    """``modelmora transcribe --backend ray`` in a fresh interpreter; its ML imports."""
    script = (
        "import json, sys\n"
        "from modelmora.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"ml = [m for m in {ML_MODULES!r} if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'ml': ml}))\n"
    )
    args = ["transcribe", *map(str, files), "-o", str(out), "--diarize", "--backend", "ray"]
    argv = [sys.executable, "-c", script, *args, "--address", address]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.slow
@pytest.mark.timeout(1800)  # real models on a shared 2-CPU machine
def test_ray_outputs_equal_local_and_resume_crosses_backends(
    tmp_path: Path, cluster: Any, conversations: list[Path], footprints: Path
) -> None:
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = transcribe_files(conversations, TranscribeOptions(diarize=True), local_out)
    assert local.exit_code == 0, [f.error for f in local.files]

    result = _cli_on_ray(conversations, ray_out, cluster.address)
    assert result == {"code": 0, "ml": []}  # the driver never imported an ML framework
    assert _tree(ray_out) == _tree(local_out)
    assert footprints.is_file()  # the stages' measured peaks, for the next run's requests

    # resume across backends: the local run's state satisfies a Ray run, and the other way
    again = transcribe_files(
        conversations,
        TranscribeOptions(diarize=True, backend="ray", address=cluster.address),
        local_out,
    )
    back = transcribe_files(conversations, TranscribeOptions(diarize=True), ray_out)
    for report in (again, back):
        assert report.exit_code == 0
        assert all(s.cached == 3 and s.processed == 0 for s in report.stages)
    assert _tree(ray_out) == _tree(local_out)


@pytest.mark.slow
def test_a_model_that_cannot_load_fails_each_file_once_as_locally(
    tmp_path: Path, cluster: Any, footprints: Path
) -> None:
    """The Ray runner accounts for a load failure as the local one does: same errors, same
    figures, every file on the progress bar."""
    from io import StringIO

    from rich.console import Console

    files = [tmp_path / "in" / f"{name}.wav" for name in ("a", "b", "c")]
    files[0].parent.mkdir()
    for path in files:
        path.write_bytes(b"RIFF not really audio")  # the toy model never decodes it
    reports, bars = [], []
    for backend, address in (("local", None), ("ray", cluster.address)):
        buffer = StringIO()
        console = Console(file=buffer, width=200, force_terminal=False)
        options = TranscribeOptions(backend=backend, address=address)
        toy = ModelSpec("toy", {"load_error": "no weights"})
        with stage_model("transcribe", lambda spec, toy=toy: toy):
            reports.append(transcribe_files(files, options, tmp_path / backend, console=console))
        bars.append(re.findall(r"transcribe\s.*?(\d+)/(\d+)", buffer.getvalue())[-1])
    local, on_ray = reports
    assert [f.error for f in on_ray.files] == [f.error for f in local.files]
    assert "the transcribe model did not load" in (local.files[0].error or "")
    for report in reports:
        (stage,) = report.stages
        assert (stage.processed, stage.failed, stage.cached) == (0, 3, 0)
    assert bars == [("3", "3"), ("3", "3")]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # real models on a shared 2-CPU machine
def test_a_node_lost_mid_batch(
    tmp_path: Path,
    cluster: Any,
    conversations: list[Path],
    footprints: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spare = cluster.add_node(**NODE_ARGS)  # the one to lose; the module's nodes stay
    cluster.wait_for_nodes()
    saves: Counter[tuple[str, str]] = Counter()
    save = Run.save

    def counting(self: Run, job: Any, stage: str, output: Any, wall_s: float) -> None:
        saves[(job.result.stem, stage)] += 1
        save(self, job, stage, output, wall_s)

    monkeypatch.setattr(Run, "save", counting)
    files = [*conversations, conversations[0].with_name("talk0-copy.wav")]
    files[-1].write_bytes(conversations[0].read_bytes())
    options = TranscribeOptions(backend="ray", address=cluster.address, formats="json")
    reports: list[Any] = []
    runner = threading.Thread(
        target=lambda: reports.append(transcribe_files(files, options, tmp_path / "out"))
    )
    runner.start()
    raylet = spare.all_processes["raylet"][0].process.pid
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and runner.is_alive():
        actors = [p for p in psutil.Process(raylet).children() if "_StageActor" in p.name()]
        if any(a.children() for a in actors):  # its model is loading or working: lose it now
            break
        time.sleep(0.1)
    else:
        pytest.fail("no stage actor reached the spare node")
    cluster.remove_node(spare, allow_graceful=False)
    runner.join(timeout=900)
    assert not runner.is_alive()

    (report,) = reports
    assert report.exit_code == 0, [f.error for f in report.files]
    assert all(f.stages["transcribe"]["status"] == "done" for f in report.files)
    assert saves == Counter({(f.stem, "transcribe"): 1 for f in report.files})  # once each
    log = report.log_path.read_text()
    assert "lost" in log
    for f in report.files:
        assert (tmp_path / "out" / f"{f.stem}.json").is_file()
        assert (tmp_path / "out" / STATE_DIR / f"{f.stem}.transcribe.json").is_file()
