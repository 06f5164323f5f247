"""Model adapters: how to load one model and run a batch of inputs through it.

Adapters are instantiated and loaded **only inside a worker process**; the parent names them by a
:class:`ModelSpec` (an adapter kind plus parameters) and never imports an ML framework.

An adapter is a class with three methods::

    class MyAdapter(Adapter):
        capabilities = Capabilities(task="echo", routes=("/v1/embeddings",))
        def __init__(self, **params): ...          # cheap: store parameters
        def load(self) -> None: ...                 # load weights (may be slow)
        def predict(self, batch: list) -> list: ... # one output per input, same order

Optionally ``predict_stream(item) -> Iterator``: the partial outputs of one input as they are
produced (``Worker.stream``); without it a streamed call sends ``predict([item])[0]`` whole.

What an adapter takes and serves is declared on its class (:class:`Capabilities`), so the
parent reads it by importing the adapter's module: keep the framework's imports inside
``load()`` and the parent never imports torch.

Kinds are looked up in one table (:func:`adapter_table`): the built-ins, then the adapters other
packages publish in the ``modelmora.adapters`` entry-point group (``name = "pkg.mod:Class"``);
any ``package.module:Class`` path works without being registered.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from modelmora.units import DEVICES, check_device

__all__ = [
    "ADAPTERS",
    "DEVICES",
    "ENTRY_POINT_GROUP",
    "Adapter",
    "Capabilities",
    "ModelSpec",
    "adapter_capabilities",
    "adapter_path",
    "adapter_table",
    "check_device",
    "resolve_adapter",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: The built-in adapter kinds and the ``module:Class`` that implements each.
ADAPTERS: dict[str, str] = {
    "toy": "modelmora.models.toy:ToyModel",
    "toy-cuda": "modelmora.models.toy:ToyCudaModel",
    "whisper": "modelmora.models.whisper:WhisperAdapter",
    "diarizer": "modelmora.models.diarization:DiarizerAdapter",
    "llm": "modelmora.models.llm:LlmAdapter",
    "embedding": "modelmora.models.embedding:EmbeddingAdapter",
    "sentence-transformers": "modelmora.models.hf:SentenceTransformerAdapter",
    "cross-encoder": "modelmora.models.hf:CrossEncoderAdapter",
    "transformers": "modelmora.models.hf:PipelineAdapter",
    "voiceprint": "modelmora.models.voiceprint:VoiceprintAdapter",
    "speakers": "modelmora.models.voiceprint:SpeakersAdapter",
}

#: The entry-point group where other packages publish adapters (``kind = "pkg.mod:Class"``).
ENTRY_POINT_GROUP = "modelmora.adapters"


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu`` (imports torch: workers only)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Capabilities:
    """What an adapter takes and serves: read by the server, the scheduler and the benchmarks.

    Attributes:
        task: what the model does (``embedding``, ``transcription``, ``chat``, ``rerank``, a
            ``transformers`` pipeline task...): named in the errors of routes that refuse it.
        routes: the HTTP routes beyond ``/api/v1/models/{name}/predict`` that can answer with
            this model (``/v1/embeddings``, ``/v1/audio/transcriptions``,
            ``/v1/chat/completions``, ``/v1/rerank``).
        takes_device: the constructor takes ``device`` (``auto``, ``cpu``, ``cuda``).
        takes_source: the constructor takes ``model`` (what a config's ``source`` maps to).
        frameworks: the modules ``load()`` imports, the heaviest first: what the isolation
            benchmark checks are installed, and what a spare worker imports before it knows
            which model it will load (so importing them must start no thread that matters and
            initialise no GPU: a spare holds no model and no CUDA context).
        footprint_mb: RAM the loaded model takes, a first guess before anything is measured
            (``None``: guessed from the size of the source).
        vram_footprint_mb: GPU memory it takes on a GPU (``None``: the RAM guess).
        bundled_sources: source names the adapter resolves itself (a packaged copy): never
            fetched from the hub.
        warmup: one small valid input (``None``: none declared). The server runs it once
            after every load (a model that fails it is unhealthy, gets no traffic); the
            isolation and startup benchmarks use it as their sample input.
    """

    task: str = "custom"
    routes: tuple[str, ...] = ()
    takes_device: bool = False
    takes_source: bool = False
    frameworks: tuple[str, ...] = ()
    footprint_mb: float | None = None
    vram_footprint_mb: float | None = None
    bundled_sources: tuple[str, ...] = ()
    warmup: Any = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (routes and frameworks as lists)."""
        data = asdict(self)
        data["routes"], data["frameworks"] = list(self.routes), list(self.frameworks)
        data["bundled_sources"] = list(self.bundled_sources)
        return data


class Adapter:
    """Base class of model adapters (optional: any class with the same methods works)."""

    #: What the adapter takes and serves (see :class:`Capabilities`).
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, **params: Any) -> None:
        self.params = params

    @classmethod
    def describe(cls, params: Mapping[str, Any]) -> Capabilities:
        """The capabilities of this adapter built with ``params`` (default: the class's).

        Override where they depend on the parameters (a pipeline's task, a toy's size). Runs in
        the parent: it must not import the framework.
        """
        return cls.capabilities

    @classmethod
    def prewarm(cls) -> list[str]:
        """Framework set-up a spare worker does after importing ``capabilities.frameworks``.

        Runs in a spare, before it knows which model it will load: it may warm the
        framework's process-wide caches but must create no model and initialise no GPU.
        A failure is logged and ignored (the load then does the work itself).

        Returns:
            What was done, named for the spare's report (default: nothing).
        """
        return []

    def load(self) -> None:
        """Load the model's weights. Called once, in the worker, before any call."""

    def predict(self, batch: list[Any]) -> list[Any]:
        """Run the model on a batch of inputs; return one output per input, in order.

        Raises:
            modelmora.errors.InvalidInput: an item the model cannot take (a plain
                ``ValueError`` is treated the same): the server answers it 400, and any
                other exception 500.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``load`` took. Optional: the worker's exit releases it anyway."""


@functools.cache
def adapter_table() -> dict[str, str]:
    """Every named adapter kind → its ``module:Class``: the built-ins, then the entry points.

    A published kind that clashes with a built-in is ignored (with a warning): the built-ins
    keep their meaning whatever is installed. Cached: call ``adapter_table.cache_clear()``
    after installing a package in the running process.
    """
    table = dict(ADAPTERS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in ADAPTERS:
            logger.warning(
                "adapter %r from %s ignored: a built-in has that name", ep.name, ep.value
            )
            continue
        table.setdefault(ep.name, ep.value)
    return table


def adapter_path(kind: str) -> str:
    """The ``module:Class`` of adapter ``kind`` (a registered name or a ``module:Class``).

    Raises:
        ValueError: ``kind`` is neither; the message lists the registered kinds.
    """
    table = adapter_table()
    if kind in table:
        return table[kind]
    module, sep, name = kind.partition(":")
    if sep and module and name:
        return kind
    raise ValueError(
        f"unknown adapter kind {kind!r}: use one of {', '.join(sorted(table))}, "
        "or 'package.module:Class' for an adapter of your own"
    )


def resolve_adapter(kind: str) -> type:
    """Import and return the adapter class for ``kind`` (imports its module, not the framework).

    Raises:
        ValueError: the kind is unknown, or its module lacks the class.
        ImportError: its module cannot be imported.
    """
    path = adapter_path(kind)
    module_name, _, class_name = path.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"adapter {path!r}: module {module_name} has no class {class_name}")
    return cls


def adapter_capabilities(kind: str, params: Mapping[str, Any] | None = None) -> Capabilities:
    """What adapter ``kind`` built with ``params`` takes and serves.

    ``params=None`` reads the class's own declaration (what ``modelmora adapters`` lists);
    with params, its :meth:`Adapter.describe`. A class that is not an :class:`Adapter` and
    declares nothing serves the predict route only.

    Raises:
        ValueError: the kind is unknown, its module cannot be imported or lacks the class, or
            it declares something that is not a :class:`Capabilities`.
    """
    try:
        cls = resolve_adapter(kind)
    except ImportError as exc:
        raise ValueError(
            f"adapter {kind!r}: cannot import {adapter_path(kind).partition(':')[0]} ({exc}); "
            "install its package or put it on PYTHONPATH"
        ) from exc
    describe = getattr(cls, "describe", None)
    caps = describe(dict(params)) if callable(describe) and params is not None else None
    caps = caps if caps is not None else getattr(cls, "capabilities", Capabilities())
    if not isinstance(caps, Capabilities):
        raise ValueError(f"adapter {kind!r} declares {caps!r}, not a modelmora Capabilities")
    return caps


@dataclass(frozen=True)
class ModelSpec:
    """What to load in a worker: an adapter kind and the parameters its constructor takes.

    Args:
        kind: a key of :func:`adapter_table`, or a ``module:Class`` path for an adapter of your
            own.
        params: keyword arguments for the adapter's constructor (must be picklable).
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        adapter_path(self.kind)

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

    def capabilities(self) -> Capabilities:
        """What this model takes and serves (see :func:`adapter_capabilities`)."""
        return adapter_capabilities(self.kind, self.params or {})


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
