"""An adapter of the tests' own, served by ``adapter: echo_adapter:EchoAdapter`` (with this folder
on ``PYTHONPATH``) and published as the kind ``echo`` through a ``modelmora.adapters`` entry point
the tests write. It is a tiny embedding model: a text's vector is ``[len(text), words, 1.0]``.
"""

from __future__ import annotations

from typing import Any

from modelmora.models import Adapter, Capabilities


class EchoAdapter(Adapter):
    """Embeds a text as ``[characters, words, scale]``; ``{"op": "pid"}`` answers nothing else."""

    capabilities = Capabilities(
        task="echo-embedding",
        routes=("/v1/embeddings",),
        takes_source=True,
        footprint_mb=80.0,
        warmup="warm",
    )

    def __init__(self, scale: float = 1.0, model: str | None = None) -> None:
        self.scale = scale
        self.model = model
        self.loaded = False

    def load(self) -> None:
        if self.model is not None:  # a folder: its scale.txt sets the scale
            with open(f"{self.model}/scale.txt") as handle:
                self.scale = float(handle.read())
        self.loaded = True

    def predict(self, batch: list[Any]) -> list[Any]:
        if not self.loaded:
            raise RuntimeError("predict before load")
        for item in batch:
            if not isinstance(item, str):
                raise ValueError(f"echo embeds texts only, got {type(item).__name__}")
        return [[float(len(t)), float(len(t.split())), self.scale] for t in batch]
