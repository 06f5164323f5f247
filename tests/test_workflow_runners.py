"""The stage runners and the engine's bookkeeping, with toy models in real workers (fast).

The transcribe stage's model is swapped for a toy one through :mod:`modelmora.testing.faults`
(this process only), so these tests need no weights and take a few seconds.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from io import StringIO
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from modelmora.models import ModelSpec
from modelmora.testing.faults import crash_on, stage_model
from modelmora.workflow.engine import RUNNERS, transcribe_files
from modelmora.workflow.options import BACKENDS, TranscribeOptions


def _files(folder: Path, *names: str) -> list[Path]:
    """Non-empty input files (the toy model never decodes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"RIFF not really audio")
    return paths


def _workers() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "modelmora.runtime._child" in " ".join(p.cmdline())
    ]


def test_every_backend_has_a_runner_by_its_name() -> None:
    assert set(RUNNERS) == set(BACKENDS)
    assert all(runner.name == name for name, runner in RUNNERS.items())


def test_a_model_that_cannot_load_fills_the_progress_bar(tmp_path: Path) -> None:
    """Each file the stage could not run counts on its bar, as the Ray runner counts it."""
    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    paths = _files(tmp_path / "in", "a.wav", "b.wav", "c.wav")
    with stage_model("transcribe", lambda spec: ModelSpec("toy", {"load_error": "no weights"})):
        report = transcribe_files(paths, TranscribeOptions(), tmp_path / "out", console=console)
    assert [f.error for f in report.files] == [
        "transcribe: the transcribe model did not load: worker transcribe: the model failed "
        "to load: RuntimeError: no weights"
    ] * 3
    (stage,) = report.stages
    assert (stage.processed, stage.failed, stage.restarts) == (0, 3, 0)
    bars = re.findall(r"transcribe\s.*?(\d+)/(\d+)", buffer.getvalue())
    assert bars and bars[-1] == ("3", "3"), buffer.getvalue()


def test_the_sampler_stops_when_the_batch_raises(tmp_path: Path) -> None:
    """An exception out of the batch leaves no thread sampling memory behind."""

    class Broken(Console):
        def print(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("console gone")

    before = {t.ident for t in threading.enumerate() if t.name == "modelmora-sampler"}
    with pytest.raises(RuntimeError, match="console gone"):
        # a missing file: its error line goes to the console, which raises
        transcribe_files([tmp_path / "nope.wav"], TranscribeOptions(), tmp_path, console=Broken())
    left = [
        t for t in threading.enumerate() if t.name == "modelmora-sampler" and t.ident not in before
    ]
    assert not left


def test_ctrl_c_mid_file_stops_the_batch_at_once(tmp_path: Path) -> None:
    """SIGINT while a worker is busy on a file: the worker is killed, not waited for.

    A graceful stop would wait for the file in flight (here it never ends) until the stop
    timeout; the batch must instead be out within a second or two whatever the machine's load.
    """
    paths = _files(tmp_path / "in", "a_hang.wav", "b.wav")
    interrupted: dict[str, float] = {}

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _workers():
            time.sleep(0.05)
        time.sleep(1.0)  # the toy model loads in a fraction of that: the file is in flight
        interrupted["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    with stage_model("transcribe", lambda spec: ModelSpec("toy")), crash_on("*hang*", "hang"):
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            transcribe_files(paths, TranscribeOptions(), tmp_path / "out")
    stop_s = time.monotonic() - interrupted["at"]
    assert stop_s < 3.0, f"the batch took {stop_s:.1f} s to stop after SIGINT"
    assert not _workers()
