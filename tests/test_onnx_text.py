"""Text embedding models under ONNX Runtime (``EmbeddingAdapter(backend=...)``).

The models are real sentence-transformers models built offline (random weights): every vector
the ONNX path gives is checked against the same model under PyTorch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from modelmora.models.embedding import EmbeddingAdapter
from modelmora.models.onnx_text import onnx_cache_dir

pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")

TEXTS = ["the cat sat on the mat", "hello", "where is the river bank of paris france", ""]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELMORA_CACHE_DIR", str(tmp_path / "cache"))
    return onnx_cache_dir()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelmora.testing.tinymodels import tiny_sentence_bert

    return tiny_sentence_bert(tmp_path_factory.mktemp("tiny") / "model")


def _vectors(model: Path, backend: str) -> tuple[EmbeddingAdapter, np.ndarray]:
    adapter = EmbeddingAdapter(str(model), device="cpu", backend=backend)
    adapter.load()
    return adapter, np.array(adapter.predict(TEXTS))


def test_onnx_gives_pytorchs_vectors_and_keeps_its_export(tiny: Path, cache: Path) -> None:
    onnx, got = _vectors(tiny, "onnx")
    torch_adapter, want = _vectors(tiny, "torch")
    assert (onnx.backend_used, torch_adapter.backend_used) == ("onnx", "torch")
    assert got.shape == want.shape == (len(TEXTS), 32)
    assert np.allclose(got, want, atol=1e-5)
    assert not np.allclose(got[0], got[1])  # the texts give different vectors
    (export,) = list(cache.iterdir())
    graph = export / "model.onnx"
    made = graph.stat().st_mtime_ns
    # The PyTorch copy of the transformer's weights is dropped: ONNX Runtime has its own.
    assert {p.device.type for p in onnx.model[0].auto_model.parameters()} == {"meta"}

    again, vectors = _vectors(tiny, "auto")
    assert again.backend_used == "onnx"
    assert np.allclose(vectors, want, atol=1e-5)
    assert [p.name for p in cache.iterdir()] == [export.name]
    assert graph.stat().st_mtime_ns == made  # loaded, not exported again


def test_a_different_model_gets_an_export_of_its_own(tiny: Path, cache: Path, tmp_path: Path):
    from modelmora.testing.tinymodels import tiny_sentence_bert

    other = tiny_sentence_bert(tmp_path / "other", seed=7)
    _, first = _vectors(tiny, "onnx")
    _, second = _vectors(other, "onnx")
    _, second_torch = _vectors(other, "torch")
    assert len(list(cache.iterdir())) == 2
    assert np.allclose(second, second_torch, atol=1e-5)
    assert not np.allclose(first, second, atol=1e-3)


def test_a_broken_export_falls_back_to_pytorch_then_is_made_again(
    tiny: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, want = _vectors(tiny, "torch")
    _vectors(tiny, "onnx")
    (export,) = list(cache.iterdir())
    (export / "model.onnx").write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="modelmora.models.embedding"):
        adapter, vectors = _vectors(tiny, "auto")
    assert adapter.backend_used == "torch"
    assert "runs under PyTorch" in caplog.text and "cannot load the exported graph" in caplog.text
    assert np.allclose(vectors, want, atol=1e-5)
    assert not export.exists()  # the broken entry is gone...
    adapter, vectors = _vectors(tiny, "auto")
    assert adapter.backend_used == "onnx"  # ...and the next load exports again
    assert np.allclose(vectors, want, atol=1e-5)


def test_onnx_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    from modelmora.testing.tinymodels import tiny_clip

    with pytest.raises(ValueError, match="backend must be one of auto, torch, onnx"):
        EmbeddingAdapter(backend="tensorrt")
    clip = EmbeddingAdapter(str(tiny_clip(tmp_path / "clip")), device="cpu", backend="onnx")
    with pytest.raises(ValueError, match=r"backend='onnx' cannot run this model: .*not a text"):
        clip.load()
