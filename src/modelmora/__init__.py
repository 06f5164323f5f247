"""ModelMora: every model in its own worker process, memory measured, release verified.

The public API is imported lazily, so ``import modelmora`` (and every worker's start) stays
cheap and never pulls in an ML framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Worker": "modelmora.runtime.worker",
    "ModelSpec": "modelmora.models",
    "Adapter": "modelmora.models",
    "MemoryInfo": "modelmora.runtime.memory",
    "ReleaseReport": "modelmora.runtime.memory",
    "TreeSampler": "modelmora.runtime.memory",
    "ModelMoraError": "modelmora.errors",
    "WorkerError": "modelmora.errors",
    "WorkerCrashed": "modelmora.errors",
    "WorkerTimeout": "modelmora.errors",
    "WorkerStopped": "modelmora.errors",
    "WorkerLost": "modelmora.errors",
    "InvalidInput": "modelmora.errors",
    "ModelLoadError": "modelmora.errors",
    "MemoryLimitExceeded": "modelmora.errors",
    "MemoryBudgetExceeded": "modelmora.errors",
    "ResultNotPicklable": "modelmora.errors",
    "RemoteTraceback": "modelmora.errors",
    "transcribe_files": "modelmora.workflow.engine",
    "BatchReport": "modelmora.workflow.report",
    "FileResult": "modelmora.workflow.report",
    "StageStats": "modelmora.workflow.report",
    "TranscribeOptions": "modelmora.workflow.options",
    "load_options": "modelmora.workflow.options",
    "transcribe": "modelmora.workflow.inprocess",
    "align": "modelmora.workflow.inprocess",
    "diarize": "modelmora.workflow.inprocess",
    "summarize": "modelmora.workflow.inprocess",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelmora' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
