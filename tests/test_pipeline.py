"""The batch engine: options, bad inputs, crashes, resume, stage-major isolation, no ML imports.

Tests marked slow run the real models (Whisper tiny.en, Resemblyzer, gemma-3 270M) in real
workers on generated conversations.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modelmora.speech.transcript import read_rttm
from modelmora.testing.faults import crash_on
from modelmora.workflow.engine import STATE_DIR, BatchReport, _unique_stems, transcribe_files
from modelmora.workflow.options import TranscribeOptions, load_options

MEMORY_STAGE_KEYS = {
    "name",
    "peak_rss_mb",
    "peak_vram_mb",
    "load_s",
    "wall_s",
    "released",
    "release_s",
}
MEMORY_RUN_KEYS = {
    "peak_rss_mb",
    "max_stage_peak_mb",
    "sum_stage_peaks_mb",
    "orchestrator_rss_before_mb",
    "orchestrator_rss_after_mb",
    "wall_s",
}
ML_MODULES = ("torch", "faster_whisper", "ctranslate2", "llama_cpp", "resemblyzer", "onnxruntime")


def _by_stem(report: BatchReport) -> dict[str, Any]:
    return {f.stem: f for f in report.files}


def _console() -> tuple[Console, StringIO]:
    buffer = StringIO()
    return Console(file=buffer, width=300, force_terminal=False), buffer


# --- options -----------------------------------------------------------------------------------


def test_fault_injection_is_no_user_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segfaulting a worker is for the test fixtures only: no option, no variable, no YAML."""
    monkeypatch.setenv("MODELMORA_CRASH_ON", "*")
    assert "crash_on" not in TranscribeOptions().to_dict()
    with pytest.raises(ValueError, match=r"unknown option\(s\) crash_on"):
        load_options(crash_on="*")
    config = tmp_path / "modelmora.yaml"
    config.write_text("crash_on: '*'\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) crash_on"):
        load_options(config)


def test_config_file_then_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "modelmora.yaml"
    config.write_text(
        "output-dir: transcripts\nformats: [srt, json]\ndiarize: true\nmax_speakers: 4\n"
        "summarize: true\nmemory_budget: 2G\n"
    )
    options = load_options(config, diarize=False, formats=None, language="en")
    assert options.output_dir == "transcripts"
    assert options.formats == ["srt", "json"]
    assert options.diarize is False  # the flag wins
    assert options.max_speakers == 4 and options.summarize is True
    assert options.language == "en"
    assert options.memory_budget_mb() == 2048.0


def test_config_unknown_key_names_the_valid_ones(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("diarise: true\n")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) diarise: valid options are .*diarize"
    ):
        load_options(config)


def test_config_wrong_type_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("beam_size: many\n")
    with pytest.raises(ValueError, match="beam_size"):
        load_options(config)
    with pytest.raises(ValueError, match="does not exist"):
        load_options(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "tpu"}, "use one of auto, cpu, cuda"),
        ({"formats": "doc"}, "use txt, srt, vtt, json, tsv, rttm, html, docx or all"),
        ({"num_speakers": 2, "min_speakers": 1}, "not both"),
        ({"min_speakers": 5, "max_speakers": 2}, "larger than max_speakers"),
        ({"beam_size": 0}, "beam_size"),
        ({"memory_budget": "huge"}, "memory size"),
    ],
)
def test_bad_option_values_fail_up_front(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TranscribeOptions(**values).validate()


def test_unique_stems_keep_outputs_apart() -> None:
    stems = _unique_stems([Path("a/x.wav"), Path("b/x.mp3"), Path("y.wav"), Path("c/x.flac")])
    assert stems == ["x", "x-2", "y", "x-3"]


# --- bad inputs without any model ------------------------------------------------------------


def test_inputs_that_fail_before_any_worker(tmp_path: Path, bad_audio: dict[str, Path]) -> None:
    console, buffer = _console()
    paths = [bad_audio["missing"], bad_audio["directory"], bad_audio["empty"]]
    report = transcribe_files(paths, TranscribeOptions(), tmp_path / "out", console=console)
    assert report.exit_code == 1
    assert [f.status for f in report.files] == ["failed"] * 3
    errors = [f.error for f in report.files]
    assert errors[0] == "input: no such file"
    assert "directory" in errors[1] and "empty file" in errors[2]
    (stage,) = report.stages
    assert stage.processed == 0 and stage.peak_rss_mb == 0.0  # no worker was started
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and str(bad_audio["missing"]) in lines[0]
    saved = json.loads((tmp_path / "out" / "modelmora-report.json").read_text())
    assert saved["files_failed"] == 3 and saved["files"][0]["error"] == "input: no such file"
    assert report.log_path.is_file() and "no such file" in report.log_path.read_text()


# --- real models -------------------------------------------------------------------------------


@pytest.mark.slow
def test_bad_files_never_stop_the_batch(
    tmp_path: Path, dialogue: Any, bad_audio: dict[str, Path]
) -> None:
    import pysrt
    import webvtt

    bad = [bad_audio[k] for k in ("text", "random", "truncated", "header_only", "cut_header")]
    paths = [bad_audio["missing"], *bad, dialogue.wav, bad_audio["silence"]]
    console, buffer = _console()
    report = transcribe_files(paths, TranscribeOptions(), tmp_path, console=console)
    files = _by_stem(report)
    assert report.exit_code == 1
    assert files["dialogue"].ok and files["silence"].ok
    assert files["silence"].note == "no speech detected"
    assert (tmp_path / "silence.srt").read_text() == ""
    for path in bad:
        result = files[path.stem]
        assert result.status == "failed" and result.error.startswith("transcribe: ")
        assert "\n" not in result.error
    assert "truncated" in files["truncated"].error
    errors = [line for line in buffer.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad) + 1  # one line per failed file, the missing one included
    (stage,) = report.stages
    assert stage.released and stage.restarts == 0  # audio errors do not kill the worker
    assert stage.processed == 2 and stage.failed == len(bad)
    for ext in ("txt", "srt", "vtt", "json", "tsv", "rttm"):
        assert (tmp_path / f"dialogue.{ext}").is_file()
    subs = pysrt.open(str(tmp_path / "dialogue.srt"))
    cues = webvtt.read(str(tmp_path / "dialogue.vtt"))
    assert len(subs) == len(cues) > 0
    assert "wednesday" in (tmp_path / "dialogue.txt").read_text().lower()
    data = json.loads((tmp_path / "dialogue.json").read_text())
    words = [w for s in data["segments"] for w in s["words"]]
    assert words and all(w["start"] <= w["end"] for w in words)
    assert all(s["start"] == s["words"][0]["start"] for s in data["segments"] if s["words"])


@pytest.mark.slow
def test_a_crash_on_one_file_is_contained(tmp_path: Path, short_dialogue: Any) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.wav", "b_crash.wav", "c.wav"):
        shutil.copy(short_dialogue.wav, inputs / name)
    paths = sorted(inputs.iterdir())
    with crash_on("*crash*"):
        report = transcribe_files(paths, TranscribeOptions(formats="txt"), tmp_path / "out")
    files = _by_stem(report)
    assert files["a"].ok and files["c"].ok
    assert files["b_crash"].error == (
        "transcribe: worker crashed (signal SIGSEGV); a fresh worker continued with the rest"
    )
    (stage,) = report.stages
    assert stage.restarts == 1 and stage.released
    assert (tmp_path / "out" / "c.txt").read_text() == (tmp_path / "out" / "a.txt").read_text()
    assert not (tmp_path / "out" / "b_crash.txt").exists()


@pytest.mark.slow
def test_rerun_resumes_and_overwrite_redoes(tmp_path: Path, short_dialogue: Any) -> None:
    first = transcribe_files([short_dialogue.wav], TranscribeOptions(), tmp_path)
    assert first.stages[0].processed == 1
    outputs = {p.name: p.read_bytes() for p in tmp_path.glob("short_dialogue.*")}
    (tmp_path / "short_dialogue.srt").unlink()  # a lost output is rewritten from the saved state

    again = transcribe_files([short_dialogue.wav], TranscribeOptions(), tmp_path)
    assert again.files[0].stages["transcribe"]["status"] == "cached"
    assert again.stages[0].processed == 0 and again.stages[0].load_s == 0.0  # no worker
    assert {p.name: p.read_bytes() for p in tmp_path.glob("short_dialogue.*")} == outputs

    changed = transcribe_files([short_dialogue.wav], TranscribeOptions(beam_size=2), tmp_path)
    assert changed.files[0].stages["transcribe"]["status"] == "done"  # the key changed

    redo = transcribe_files([short_dialogue.wav], TranscribeOptions(overwrite=True), tmp_path)
    assert redo.files[0].stages["transcribe"]["status"] == "done"
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == [
        "short_dialogue.transcribe.json"
    ]


@pytest.mark.slow
def test_a_summary_failure_is_not_fatal(tmp_path: Path, short_dialogue: Any) -> None:
    options = TranscribeOptions(summarize=True, llm=str(tmp_path / "missing.gguf"))
    console, buffer = _console()
    report = transcribe_files([short_dialogue.wav], options, tmp_path, console=console)
    result = report.files[0]
    assert result.ok and report.exit_code == 0
    assert result.summary["status"] == "failed"
    assert "the summarize model did not load" in result.summary["reason"]
    assert "missing.gguf" in result.summary["reason"]
    assert (tmp_path / "short_dialogue.srt").is_file() and not (
        tmp_path / "short_dialogue.summary.md"
    ).exists()
    assert "warning:" in buffer.getvalue() and "no summary" in buffer.getvalue()


@pytest.mark.slow
def test_memory_budget_caps_each_worker(tmp_path: Path, short_dialogue: Any) -> None:
    report = transcribe_files(
        [short_dialogue.wav], TranscribeOptions(memory_budget="40M"), tmp_path
    )
    result = report.files[0]
    assert result.status == "failed"
    assert "over the memory budget" in result.error and "> 40 MB" in result.error
    assert report.stages[0].released


_ISOLATED_RUN = """
import json, sys
from modelmora.workflow.engine import transcribe_files
from modelmora.workflow.options import TranscribeOptions

options = TranscribeOptions(
    diarize=True, summarize=True, memory_report=sys.argv[2], llm_max_tokens=48
)
report = transcribe_files(sys.argv[3:], options, sys.argv[1])
banned = sorted(m for m in sys.modules if m.split(".")[0] in {modules!r})
print(json.dumps({{"exit": report.exit_code, "ml_modules": banned}}))
"""


@pytest.mark.slow
def test_stage_major_isolated_batch(tmp_path: Path, dialogue: Any, standup: Any) -> None:
    """Diarized and summarized batch, run in a clean process: nothing of ML in the orchestrator."""
    out, memory = tmp_path / "out", tmp_path / "memory.json"
    script = _ISOLATED_RUN.format(modules=set(ML_MODULES))
    argv = [sys.executable, "-c", textwrap.dedent(script), str(out), str(memory)]
    done = subprocess.run(
        [*argv, str(dialogue.wav), str(standup.wav)], capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"exit": 0, "ml_modules": []}

    assert len({t.speaker for t in read_rttm(out / "dialogue.rttm")}) == 2
    assert len({t.speaker for t in read_rttm(out / "standup.rttm")}) == 3
    assert "SPEAKER_00" in (out / "dialogue.srt").read_text()
    assert (out / "standup.summary.md").read_text().startswith("# Summary of standup.wav")

    report = json.loads(memory.read_text())
    assert [s["name"] for s in report["stages"]] == ["transcribe", "diarize", "summarize"]
    for stage in report["stages"]:
        assert set(stage) >= MEMORY_STAGE_KEYS and stage["released"] is True
        assert stage["peak_rss_mb"] > 50 and stage["peak_vram_mb"] is None
    run = report["run"]
    assert set(run) == MEMORY_RUN_KEYS
    peaks = [s["peak_rss_mb"] for s in report["stages"]]
    assert run["max_stage_peak_mb"] == pytest.approx(max(peaks), abs=0.1)
    assert run["sum_stage_peaks_mb"] == pytest.approx(sum(peaks), abs=0.2)
    # Stage-major: peak of everything stays far below the sum of the stages.
    assert run["peak_rss_mb"] < run["sum_stage_peaks_mb"]
    assert run["orchestrator_rss_after_mb"] < 150

    (log,) = out.glob("modelmora-*.log")
    events = [
        line.split("INFO: ", 1)[1]
        for line in log.read_text().splitlines()
        if re.search(r"modelmora\.workflow\.(engine|local) INFO: stage ", line)
    ]
    order = [(e.split()[1].rstrip(":"), "start" if "starting" in e else "end") for e in events]
    assert order == [
        ("transcribe", "start"),
        ("transcribe", "end"),
        ("diarize", "start"),
        ("diarize", "end"),
        ("summarize", "start"),
        ("summarize", "end"),
    ]
    assert all("released=True" in e for e in events if "starting" not in e)


def test_report_paths_are_inside_the_output_folder(tmp_path: Path) -> None:
    report = transcribe_files([tmp_path / "nope.wav"], TranscribeOptions(), tmp_path / "o")
    assert report.report_path == tmp_path / "o" / "modelmora-report.json"
    assert report.log_path.parent == tmp_path / "o"
    assert os.path.isdir(tmp_path / "o" / STATE_DIR)
