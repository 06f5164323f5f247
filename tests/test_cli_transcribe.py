"""``modelmora transcribe``: usage errors, the main job, config files, kill -9 and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelmora.cli import app
from modelmora.speech.transcript import read_rttm

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("txt", "srt", "vtt", "json", "tsv", "rttm")


def _modelmora(
    *args: str, cwd: Path | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "modelmora.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=cwd, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "tpu"], "use one of auto, cpu, cuda"),
        (["-f", "doc"], "unknown output format 'doc'"),
        (["--memory-budget", "lots"], "bad memory size"),
        (["--num-speakers", "2", "--min-speakers", "1"], "not both"),
        (["--beam-size", "0"], "beam_size must be at least 1"),
    ],
)
def test_bad_option_values_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["transcribe", "a.wav", "-o", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.iterdir())  # nothing was started


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("languages: en\n")
    result = CliRunner().invoke(app, ["transcribe", "a.wav", "--config", str(config)])
    assert result.exit_code == 2 and "valid options are" in result.output


def test_no_audio_is_a_usage_error() -> None:
    assert CliRunner().invoke(app, ["transcribe"]).exit_code == 2


@pytest.mark.slow
def test_main_job_example_conversation(tmp_path: Path) -> None:
    """The README's command: every output, speakers, a summary, the report and memory report."""
    import pysrt
    import webvtt

    example = REPO / "examples" / "conversation.wav"
    memory = tmp_path / "memory.json"
    done = _modelmora(
        "transcribe",
        str(example),
        "-o",
        str(tmp_path / "out"),
        "--diarize",
        "--summarize",
        "--memory-report",
        str(memory),
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    for ext in FORMATS:
        assert (out / f"conversation.{ext}").stat().st_size > 0
    assert len(pysrt.open(str(out / "conversation.srt"))) == len(
        webvtt.read(str(out / "conversation.vtt"))
    )
    assert {t.speaker for t in read_rttm(out / "conversation.rttm")} == {"SPEAKER_00", "SPEAKER_01"}
    data = json.loads((out / "conversation.json").read_text())
    assert all("speaker" in w for s in data["segments"] for w in s["words"])
    assert (out / "conversation.summary.md").read_text().startswith("# Summary of conversation.wav")
    report = json.loads((out / "modelmora-report.json").read_text())
    (entry,) = report["files"]
    assert entry["status"] == "ok" and entry["summary"]["status"] == "ok"
    assert set(entry["stages"]) == {"transcribe", "diarize", "summarize"}
    stages = json.loads(memory.read_text())["stages"]
    assert [s["name"] for s in stages] == ["transcribe", "diarize", "summarize"]
    assert all(s["released"] for s in stages)
    assert "1 of 1 file(s) done, 0 failed" in done.stderr


@pytest.mark.slow
def test_config_flags_override_and_exit_1(tmp_path: Path, short_dialogue: Any) -> None:
    config = tmp_path / "modelmora.yaml"
    out = tmp_path / "from-config"
    config.write_text(f"output_dir: {out}\nformats: [srt, txt]\nlanguage: en\n")
    missing = tmp_path / "missing.wav"
    done = _modelmora(
        "transcribe", str(short_dialogue.wav), str(missing), "--config", str(config), "-f", "json"
    )
    assert done.returncode == 1
    assert sorted(p.name for p in out.glob("short_dialogue.*")) == ["short_dialogue.json"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {missing}: no such file"]
    report = json.loads((out / "modelmora-report.json").read_text())
    assert [f["status"] for f in report["files"]] == ["ok", "failed"]


@pytest.mark.slow
def test_kill_9_mid_batch_then_resume(tmp_path: Path, short_dialogue: Any) -> None:
    """Kill the CLI mid-batch; the rerun redoes only what was lost and ends with the same files."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [f"f{i}.wav" for i in range(4)]
    for name in names:
        shutil.copy(short_dialogue.wav, inputs / name)
    paths = [str(inputs / n) for n in names]
    out, state = tmp_path / "out", tmp_path / "out" / ".modelmora"
    # Whisper tiny.en and no summary: the resume is the same for every model, and 3 runs of
    # 4 files with the default models would take a minute
    fast = ("--model", "tiny.en", "--no-summarize")
    argv = [sys.executable, "-m", "modelmora.cli", "transcribe", *paths, "-o", str(out), *fast]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(state.glob("*.transcribe.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the batch ended before it could be interrupted"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name.split(".")[0] for p in state.glob("*.transcribe.json")}
    assert 1 <= len(finished) < len(names)
    time.sleep(0.5)  # the worker dies with its parent (PR_SET_PDEATHSIG)

    done = _modelmora("transcribe", *paths, "-o", str(out), *fast)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "modelmora-report.json").read_text())
    statuses = {f["stem"]: f["stages"]["transcribe"]["status"] for f in report["files"]}
    assert statuses == {n[:-4]: "cached" if n[:-4] in finished else "done" for n in names}
    assert sorted(p.name for p in state.iterdir()) == [f"{n[:-4]}.transcribe.json" for n in names]
    assert not list(out.glob(".*.tmp"))  # no half-written output survived

    fresh = _modelmora("transcribe", *paths, "-o", str(tmp_path / "fresh"), *fast)
    assert fresh.returncode == 0, fresh.stderr
    for name in names:
        for ext in FORMATS:
            stem = name[:-4]
            ours = (out / f"{stem}.{ext}").read_text()
            assert ours == (tmp_path / "fresh" / f"{stem}.{ext}").read_text(), (stem, ext)
