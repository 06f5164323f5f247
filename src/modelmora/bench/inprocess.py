"""The same-process side of the isolation benchmark, run in a fresh helper process of its own.

:class:`InProcessProbe` is an adapter that the benchmark loads in a :class:`~modelmora.Worker`
of its own, so the "same process" test never shares an interpreter (or an allocator) with the
benchmark or with the subprocess test. Each call is one step of the classic in-process
lifecycle, and each step reports the probe process's own memory right after it::

    baseline → import (the model's framework) → load → inference → release (del + gc.collect
    [+ torch.cuda.empty_cache()]) → [load → inference → release]...

:func:`sample_input` gives one small, valid input per adapter kind; the subprocess test and
``bench startup`` use the same inputs.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import sys
import time
from typing import Any

from modelmora.models import Adapter, adapter_capabilities, resolve_adapter
from modelmora.runtime.memory import nvml_available, peak_rss_mb, process_rss_mb, vram_by_pid_mb
from modelmora.units import MB

__all__ = ["STEPS", "InProcessProbe", "sample_input"]

#: The steps a probe answers, in the order the benchmark sends them.
STEPS = ("baseline", "import", "load", "inference", "release")

_SAMPLE_RATE = 16_000


def sample_input(kind: str) -> Any:
    """One small valid input for an adapter kind (what both isolation tests run once).

    Args:
        kind: an adapter kind (``toy``, ``toy-cuda``, ``embedding``, ``whisper``, ``diarizer``,
            ``llm``) or a ``module:Class`` path (given the toy's echo input).

    Returns:
        A text for ``embedding``; ``{"audio": 2 s float32 array at 16 kHz}`` for ``whisper``;
        the same with empty segments for ``diarizer``; a short chat for ``llm``; an echo
        command for the toys.
    """
    if kind == "embedding":
        return "ModelMora runs every model in its own worker process."
    if kind in ("whisper", "diarizer"):
        item: dict[str, Any] = {"audio": _voiced_audio(2.0)}
        if kind == "diarizer":
            item["segments"] = []
        return item
    if kind == "llm":
        return {
            "task": "chat",
            "messages": [{"role": "user", "content": "Say hello in three words."}],
            "max_tokens": 8,
            "temperature": 0.0,
        }
    warmup = adapter_capabilities(kind).warmup  # the class's declaration
    return {"op": "echo", "value": "ping"} if warmup is None else warmup


def _voiced_audio(seconds: float) -> Any:
    """A speech-like test signal: a 140 Hz harmonic tone, syllable-rate envelope, light noise."""
    import numpy as np

    t = np.arange(int(seconds * _SAMPLE_RATE), dtype=np.float32) / _SAMPLE_RATE
    tone = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * math.pi * 4 * t))
    noise = np.random.default_rng(0).standard_normal(t.size).astype(np.float32)
    return (0.2 * tone * envelope + 0.01 * noise).astype(np.float32)


class InProcessProbe(Adapter):
    """Loads, runs and deletes a model inside its own process, reporting memory at each step.

    Args:
        kind: the adapter kind to probe (a key of :data:`~modelmora.models.ADAPTERS`).
        params: that adapter's constructor parameters.

    Each input is ``{"step": one of STEPS}``; each output is a dict with ``step``, ``t``
    (monotonic seconds), ``rss_mb``, ``peak_rss_mb``, ``vram_mb`` (NVML, this PID; None without
    a GPU), and ``cuda_reserved_mb`` / ``cuda_allocated_mb`` (torch's allocator; None unless
    torch is imported and CUDA is initialised).
    """

    def __init__(self, kind: str, params: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.model_params = dict(params or {})
        self.model: Any = None

    def predict(self, batch: list[Any]) -> list[Any]:
        return [self._step(item.get("step") if isinstance(item, dict) else item) for item in batch]

    def _step(self, step: Any) -> dict[str, Any]:
        if step == "import":
            # what the adapter's load() imports (its declared frameworks)
            for framework in adapter_capabilities(self.kind, self.model_params).frameworks:
                importlib.import_module(framework)
        elif step == "load":
            self.model = resolve_adapter(self.kind)(**self.model_params)
            self.model.load()
        elif step == "inference":
            if self.model is None:
                raise RuntimeError("the inference step needs the load step first")
            self.model.predict([sample_input(self.kind)])
        elif step == "release":
            self._release()
        elif step != "baseline":
            raise ValueError(f"unknown probe step {step!r}: use one of {', '.join(STEPS)}")
        return self._report(str(step))

    def _release(self) -> None:
        """What a careful in-process user does: drop every reference, collect, empty caches."""
        self.model = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def _report(self, step: str) -> dict[str, Any]:
        reserved = allocated = None
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            reserved = torch.cuda.memory_reserved() / MB
            allocated = torch.cuda.memory_allocated() / MB
        return {
            "step": step,
            "t": time.monotonic(),
            "rss_mb": process_rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
            "vram_mb": vram_by_pid_mb().get(os.getpid(), 0.0) if nvml_available() else None,
            "cuda_reserved_mb": reserved,
            "cuda_allocated_mb": allocated,
        }
