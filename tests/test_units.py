"""The facts every layer shares (``modelmora.units``) and the one exit description."""

from __future__ import annotations

import signal

import pytest
from pydantic import ValidationError

from modelmora.runtime.exits import describe_exit, exit_signal
from modelmora.serving.config import ModelConfig, ServerConfig
from modelmora.units import DEVICES, MB, check_device, check_model_name, parse_size_mb
from modelmora.workflow.options import TranscribeOptions


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("512M", 512.0),
        ("512MB", 512.0),
        ("4G", 4096.0),
        ("4GB", 4096.0),
        ("1.5GiB", 1536.0),
        ("1.5g", 1536.0),
        ("2 GiB", 2048.0),
        (".5G", 512.0),
        ("2048", 2048.0),
        ("1024k", 1.0),
        ("1T", 1024.0**2),
        (f"{MB}b", 1.0),
        (100, 100.0),
        (0.5, 0.5),
    ],
)
def test_one_size_parser_for_the_server_and_the_workflow(text: str | float, mb: float) -> None:
    assert parse_size_mb(text) == pytest.approx(mb)
    # the batch option and the server config read a size the same way
    assert TranscribeOptions(memory_budget=str(text)).memory_budget_mb() == pytest.approx(mb)
    assert ServerConfig(memory_budget_mb=text).memory_budget_mb == pytest.approx(mb)


@pytest.mark.parametrize("text", ["0", "0G", 0, "-1G", -5, "lots", "4 X", "", "1.2.3G", "nan"])
def test_sizes_that_are_not_positive_sizes_are_refused_everywhere(text: str | float) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_size_mb(text)
    with pytest.raises(ValueError, match="memory size"):
        TranscribeOptions(memory_budget=str(text)).validate()
    with pytest.raises(ValidationError, match="memory size"):
        ServerConfig(memory_budget_mb=text)


def test_a_bool_is_not_a_size() -> None:
    with pytest.raises(ValueError, match="bad memory size"):
        parse_size_mb(True)


def test_devices_are_one_list() -> None:
    assert DEVICES == ("auto", "cpu", "cuda")
    assert all(check_device(d) == d for d in DEVICES)
    with pytest.raises(ValueError, match="use one of auto, cpu, cuda"):
        check_device("tpu")
    with pytest.raises(ValidationError, match="'auto', 'cpu' or 'cuda'"):
        ModelConfig(name="m", adapter="toy", device="tpu")


@pytest.mark.parametrize(
    "name", ["whisper-1", "a", "all-minilm-l6-v2", "org:model_v1.5", "x" * 128]
)
def test_good_model_names(name: str) -> None:
    assert check_model_name(name) == name
    assert ModelConfig(name=name, adapter="toy").name == name


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "_x", "a/b", "a b", "x" * 129, "é"])
def test_bad_model_names_are_refused_by_the_registry_and_the_requests_alike(name: str) -> None:
    from modelmora.serving.http.bodies import check_name

    with pytest.raises(ValueError, match="starting with a letter or digit"):
        check_model_name(name)
    with pytest.raises(ValueError, match="starting with a letter or digit"):
        check_name(name)
    with pytest.raises(ValidationError, match="starting with a letter or digit"):
        ModelConfig(name=name, adapter="toy")


@pytest.mark.parametrize(
    ("code", "words", "name"),
    [
        (-signal.SIGSEGV, "signal SIGSEGV", "SIGSEGV"),
        (-signal.SIGKILL, "signal SIGKILL", "SIGKILL"),
        (-99, "signal 99", "signal 99"),
        (3, "exit code 3", None),
        (0, "exit code 0", None),
        (None, "exit status unknown", None),
    ],
)
def test_exit_descriptions(code: int | None, words: str, name: str | None) -> None:
    assert describe_exit(code) == words
    assert exit_signal(code) == name
