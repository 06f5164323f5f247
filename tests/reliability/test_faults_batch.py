"""Faults during a transcription batch: kill -9 of a worker or of the orchestrator, SIGINT and
SIGTERM, a full disk. The batch is the real one (tiny.en in a real worker) over one-second
espeak-ng clips; every outcome is compared byte for byte with an uninterrupted run.

Already covered in tests/test_pipeline.py: a native crash on one file (testing.faults) is
contained and a fresh worker continues; a worker over its memory budget fails its file; a
rerun resumes from the saved per-file state.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelmora.speech.formats import FORMATS
from modelmora.workflow.engine import BatchReport, transcribe_files
from modelmora.workflow.options import TranscribeOptions

from .conftest import Tally, outputs_of, tree_of, wait_all_gone, wait_for_worker, workers_of

pytestmark = pytest.mark.slow

#: kill -9 trials of a stage worker: 4 in the test suite; ``scripts/reliability_report.py``
#: runs the 10 its table counts.
KILL_TRIALS = int(os.environ.get("MODELMORA_KILL_TRIALS", "4"))


def _options(**kw: Any) -> TranscribeOptions:
    return TranscribeOptions(formats="all", **kw)


@pytest.fixture(scope="module")
def reference(clips: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: its outputs, and how long it took."""
    # At the same depth as the tests' ``tmp_path / "out"``: the HTML page refers to its
    # recording by a path relative to its folder, which must then be the same.
    out = tmp_path_factory.mktemp("reference") / "out"
    t0 = time.monotonic()
    report = transcribe_files(clips, _options(), out)
    assert report.exit_code == 0, [f.error for f in report.files]
    outputs = outputs_of(out)
    assert len(outputs) == len(FORMATS) * len(clips)
    return {"outputs": outputs, "wall_s": time.monotonic() - t0}


def _kill_a_worker_at_random(rng: random.Random, window_s: float) -> str:
    """Wait for this process's worker, then SIGKILL it at a random moment; say when."""
    worker = wait_for_worker(os.getpid())
    delay = rng.uniform(0.0, window_s)
    time.sleep(delay)
    for _ in range(200):  # between two workers: wait for the next one
        current = workers_of(os.getpid())
        if current:
            status = "loading" if current[0].pid == worker.pid and delay < 1 else "running"
            current[0].send_signal(signal.SIGKILL)
            return f"{status} +{delay:.2f} s"
        time.sleep(0.02)
    return "no worker"


def _run_into(box: dict[str, BatchReport], clips: list[Path], out: Path) -> None:
    box["r"] = transcribe_files(clips, _options(), out)


def test_kill9_of_a_stage_worker_at_random_points(
    clips: list[Path], reference: dict[str, Any], tmp_path: Path, tally: Tally
) -> None:
    """Each trial: kill the worker once; every other file completes; the rerun does the rest."""
    window = max(1.0, reference["wall_s"] * 0.8)
    failures = []
    for trial in range(KILL_TRIALS):
        out = tmp_path / f"trial{trial}"
        box: dict[str, BatchReport] = {}
        runner = threading.Thread(target=_run_into, args=(box, clips, out))
        runner.start()
        when = _kill_a_worker_at_random(random.Random(trial), window)
        runner.join(600)
        report = box["r"]
        failed = [f for f in report.files if not f.ok]
        ok_after_kill = len(failed) <= 1 and all("SIGKILL" in (f.error or "") for f in failed)
        rerun = transcribe_files(clips, _options(), out)
        identical = rerun.exit_code == 0 and outputs_of(out) == reference["outputs"]
        survived = ok_after_kill and identical
        if not survived:
            failures.append((trial, when, [f.error for f in failed], rerun.exit_code))
        tally.record(
            "faults (batch)",
            "kill -9 of the stage worker at a random point",
            tried=1,
            survived=int(survived),
            lost=0 if identical else len(clips),
        )
    assert not failures, failures


def _cli(clips: list[Path], out: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "modelmora.cli", "transcribe", *map(str, clips), "-o", str(out)]
    return subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _nothing_half_written(out: Path, reference: dict[str, Any]) -> bool:
    """Every output in place is complete (equal to the uninterrupted run's)."""
    return all(reference["outputs"].get(name) == data for name, data in outputs_of(out).items())


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_kill9_of_the_orchestrator(
    clips: list[Path], reference: dict[str, Any], tmp_path: Path, tally: Tally, delay: float
) -> None:
    """kill -9 of the CLI mid-batch: within 2 s no process of ours remains; no partial file."""
    out = tmp_path / "out"
    cli = _cli(clips, out)
    worker = wait_for_worker(cli.pid)
    time.sleep(delay)
    tree = [*tree_of(cli.pid), worker.pid]
    cli.kill()
    cli.wait()
    left = wait_all_gone(tree, cli.pid, timeout=2.0)
    intact = _nothing_half_written(out, reference)
    rerun = transcribe_files(clips, _options(), out)
    resumed = rerun.exit_code == 0 and outputs_of(out) == reference["outputs"]
    leftovers = [p.name for p in out.glob(".*.tmp")]
    survived = not left and intact and resumed and not leftovers
    tally.record(
        "faults (batch)",
        "kill -9 of the orchestrator (CLI)",
        tried=1,
        survived=int(survived),
        lost=0 if resumed else len(clips),
    )
    assert not left, f"still running 2 s after kill -9 of the CLI: {left}"
    assert intact and resumed and not leftovers, (intact, resumed, leftovers)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_stops_the_batch_cleanly_and_it_resumes(
    clips: list[Path], reference: dict[str, Any], tmp_path: Path, tally: Tally, sig: int
) -> None:
    """SIGINT / SIGTERM mid-batch: stopped within 5 s, workers gone, a rerun finishes the rest."""
    out = tmp_path / "out"
    cli = _cli(clips, out)
    worker = wait_for_worker(cli.pid)
    time.sleep(1.0)
    tree = [*tree_of(cli.pid), worker.pid]
    t0 = time.monotonic()
    cli.send_signal(sig)
    try:
        cli.wait(5.0)
        stopped = True
    except subprocess.TimeoutExpired:
        stopped = False
        cli.kill()
        cli.wait()
    stop_s = time.monotonic() - t0
    left = wait_all_gone(tree, cli.pid, timeout=1.0)
    stderr = cli.stderr.read().decode(errors="replace") if cli.stderr else ""
    intact = _nothing_half_written(out, reference)
    rerun = transcribe_files(clips, _options(), out)
    resumed = rerun.exit_code == 0 and outputs_of(out) == reference["outputs"]
    survived = stopped and not left and intact and resumed and "Traceback" not in stderr
    name = f"{signal.Signals(sig).name} during a batch"
    tally.record(
        "faults (batch)", name, tried=1, survived=int(survived), lost=0 if resumed else len(clips)
    )
    assert stopped, f"still running {stop_s:.1f} s after {name}"
    assert not left, left
    assert "Traceback" not in stderr, stderr[-2000:]
    assert intact and resumed


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 2 MB tmpfs mounted for the test (needs root; skipped with the reason otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small disk to fill")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> None:
    """Fill the disk to the last byte (unbuffered writes, big chunks then single bytes)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)


def test_disk_full_while_writing_outputs(
    clips: list[Path], reference: dict[str, Any], tiny_disk: Path, tally: Tally
) -> None:
    """A full disk: a clear error naming it, the outputs of the earlier run left intact."""
    out = tiny_disk / "out"
    first = transcribe_files(clips[:1], _options(), out)
    assert first.exit_code == 0
    before = outputs_of(out)
    _fill(tiny_disk)
    cli = _cli(clips[:1], out, "--overwrite")
    _, stderr = cli.communicate(timeout=600)
    text = stderr.decode(errors="replace")
    clear = cli.returncode == 1 and "No space left on device" in text and "Traceback" not in text
    intact = outputs_of(out) == before
    tally.record(
        "faults (batch)",
        "disk full while writing outputs",
        tried=1,
        survived=int(clear and intact),
        lost=0 if intact else 1,
    )
    assert intact, "an earlier output was damaged"
    assert clear, (cli.returncode, text[-3000:])
    assert not [p for p in out.glob(".*.tmp")], "temporary files left on the full disk"
    psutil.Process().children()  # nothing of the failed run is left running either
    assert not workers_of(cli.pid)
