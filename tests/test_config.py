"""The server's YAML config: validation with errors that name the line and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from modelmora.models import ModelSpec
from modelmora.serving.config import (
    KEEP_SPARES,
    ConfigError,
    ModelConfig,
    ServerConfig,
    default_config,
    load_config,
    parse_size_mb,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_valid_config_with_sizes_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    path = write(
        tmp_path,
        """
        port: 9000
        memory_budget_mb: 2GB
        cache_dir: cache
        models:
          - name: whisper-1
            adapter: whisper
            source: ./weights
            device: cpu
            keep_alive_s: null
          - name: toy
            adapter: toy
            params: {alloc_mb: 10}
            footprint_mb: 512MB
            priority: low
            pinned: true
        """,
    )
    config = load_config(path)
    assert config.port == 9000
    assert config.memory_budget_mb == 2048
    assert config.cache_dir == tmp_path / "cache"
    assert config.jobs_db == tmp_path / "cache" / "jobs.sqlite"
    whisper, toy = config.models
    assert whisper.keep_alive_s is None
    assert whisper.to_spec() == ModelSpec(
        "whisper", {"model": str((tmp_path / "weights").resolve()), "device": "cpu"}
    )
    assert toy.footprint_mb == 512 and toy.pinned and toy.priority == "low"
    assert toy.to_spec() == ModelSpec("toy", {"alloc_mb": 10})


def test_wrong_adapter_names_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        models:
          - name: a
            adapter: toy
          - name: b
            adapter: wisper
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith("config.yaml:5: models[1].adapter: Value error, unknown adapter")
    assert "'wisper'" in message and "whisper" in message and "package.module:Class" in message


def test_unknown_field_and_bad_value_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        port: 8000
        models:
          - name: a
            adapter: toy
            max_batch_size: 0
            colour: blue
        queue_limt: 5
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert (
        "config.yaml:5: models[0].max_batch_size: Input should be greater than or equal to 1"
        in (lines)
    )
    assert "config.yaml:6: models[0].colour: Extra inputs are not permitted" in lines
    assert "config.yaml:7: queue_limt: Extra inputs are not permitted" in lines


def test_missing_field_points_at_its_model(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        models:
          - name: a
            adapter: toy
          - adapter: toy
            priority: normal
        """,
    )
    with pytest.raises(ConfigError, match=r"config.yaml:4: models\[1\].name: Field required"):
        load_config(path)


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        models:
          - {name: a, adapter: toy}
          - {name: a, adapter: embedding}
        """,
    )
    with pytest.raises(ConfigError, match="'a' is used twice"):
        load_config(path)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - name: a\n    adapter: [toy\n")
    with pytest.raises(ConfigError, match=r"config.yaml:\d+: not valid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_source_only_for_adapters_that_take_a_model() -> None:
    with pytest.raises(ValueError, match="takes no source"):
        ModelConfig(name="d", adapter="diarizer", source="/x")
    with pytest.raises(ValueError, match="not params"):
        ModelConfig(name="e", adapter="embedding", params={"model": "x"})
    with pytest.raises(ValueError, match="model name"):
        ModelConfig(name="bad name/", adapter="toy")


def test_default_config_serves_packaged_models() -> None:
    config = default_config()
    names = [m.name for m in config.models]
    assert names == ["whisper-1", "all-minilm-l6-v2", "gemma-3-270m"]
    embedding = config.model("all-minilm-l6-v2")
    assert (embedding.max_batch_size, embedding.max_wait_ms) == (32, 5)
    assert [m.to_spec().kind for m in config.models] == ["whisper", "embedding", "llm"]
    # packaged copies, named: the server keeps tiny.en and Gemma as its light defaults
    params = [m.to_spec().params for m in config.models]
    assert params == [{"model": "tiny.en"}, {}, {"model": "gemma3-270m"}]
    assert config.host == "127.0.0.1" and config.port == 8000
    # the defaults survive a round trip through their own serialisation
    assert ServerConfig.model_validate(config.model_dump()) == config


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMORA_API_KEY", "s3cret")
    assert ServerConfig().api_key == "s3cret"
    assert ServerConfig(api_key="mine").api_key == "mine"


@pytest.mark.parametrize(
    ("text", "mb"),
    [(100, 100.0), ("512MB", 512.0), ("4GB", 4096.0), ("1.5g", 1536.0), ("2 GiB", 2048.0)],
)
def test_parse_size(text: object, mb: float) -> None:
    assert parse_size_mb(text) == mb


def test_parse_size_rejects_text() -> None:
    with pytest.raises(ValueError, match="bad memory size"):
        parse_size_mb("lots")


def test_keep_spares_default_and_validation() -> None:
    assert ServerConfig().keep_spares == KEEP_SPARES
    assert ServerConfig(keep_spares={}).keep_spares == {}
    with pytest.raises(ValueError, match="keep_spares: unknown adapter kind 'nope'"):
        ServerConfig(keep_spares={"nope": 1})
    with pytest.raises(ValueError, match="0 or more"):
        ServerConfig(keep_spares={"embedding": -1})


@given(st.text(alphabet="ab9._:-/ %é", min_size=0, max_size=12))
def test_one_rule_for_model_names_in_the_config_and_the_routes(name: str) -> None:
    from modelmora.serving.http.bodies import check_name

    try:
        ModelConfig(name=name, adapter="toy")
        in_config = True
    except ValidationError:
        in_config = False
    try:
        check_name(name)
        in_routes = True
    except ValueError:
        in_routes = False
    assert in_config == in_routes, name  # a name the config takes is one a client can send
