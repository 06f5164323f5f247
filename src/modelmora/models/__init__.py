"""Model adapters: how to load one model and run a batch of inputs through it.

Adapters are imported and instantiated **only inside a worker process**; the parent names them
by a :class:`ModelSpec` (an adapter kind plus parameters) and never imports an ML framework.

An adapter is a class with three methods::

    class MyAdapter(Adapter):
        def __init__(self, **params): ...          # cheap: store parameters
        def load(self) -> None: ...                 # load weights (may be slow)
        def predict(self, batch: list) -> list: ... # one output per input, same order

Optionally ``predict_stream(item) -> Iterator``: the partial outputs of one input as they are
produced (``Worker.stream``); without it a streamed call sends ``predict([item])[0]`` whole.

Kinds are registered by dotted path, so adding one costs no import in the parent.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ADAPTERS",
    "DEVICES",
    "Adapter",
    "ModelSpec",
    "check_device",
    "resolve_adapter",
    "resolve_device",
]

#: Adapter kinds and the ``module:Class`` that implements each (imported in the worker only).
ADAPTERS: dict[str, str] = {
    "toy": "modelmora.models.toy:ToyModel",
    "toy-cuda": "modelmora.models.toy:ToyCudaModel",
    "whisper": "modelmora.models.whisper:WhisperAdapter",
    "diarizer": "modelmora.models.diarization:DiarizerAdapter",
    "llm": "modelmora.models.llm:LlmAdapter",
    "embedding": "modelmora.models.embedding:EmbeddingAdapter",
    "voiceprint": "modelmora.models.voiceprint:VoiceprintAdapter",
}


#: Device names every adapter that takes a device accepts.
DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """Return ``device`` if it is one of :data:`DEVICES`; else a ValueError naming them."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    return device


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu`` (imports torch: workers only)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Adapter:
    """Base class of model adapters (optional: any class with the same methods works)."""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def load(self) -> None:
        """Load the model's weights. Called once, in the worker, before any call."""

    def predict(self, batch: list[Any]) -> list[Any]:
        """Run the model on a batch of inputs; return one output per input, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``load`` took. Optional: the worker's exit releases it anyway."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load in a worker: an adapter kind and the parameters its constructor takes.

    Args:
        kind: a key of :data:`ADAPTERS`, or a ``module:Class`` path for an adapter of your own.
        params: keyword arguments for the adapter's constructor (must be picklable).
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ADAPTERS and ":" not in self.kind:
            choices = ", ".join(sorted(ADAPTERS))
            raise ValueError(
                f"unknown adapter kind {self.kind!r}: use one of {choices}, "
                "or 'package.module:Class' for an adapter of your own"
            )

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse ``kind`` or ``kind:key=value,key=value`` (values parsed as int/float/bool).

        Example: ``toy:alloc_mb=500,leak_mb=10``.
        """
        kind, _, rest = text.partition(":")
        if rest and "=" not in rest:  # a module:Class path
            return cls(kind=text)
        params: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"bad model spec {text!r}: expected kind:key=value,key=value")
            params[key.strip()] = _parse_value(value.strip())
        return cls(kind=kind.strip(), params=params)

    def label(self) -> str:
        """A short human-readable name (``toy:alloc_mb=500``)."""
        if not self.params:
            return self.kind
        args = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}:{args}"


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def resolve_adapter(kind: str) -> type:
    """Import and return the adapter class for ``kind`` (call this in the worker only)."""
    path = ADAPTERS.get(kind, kind)
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"adapter {path!r}: module {module_name} has no class {class_name}")
    return cls
