"""Exceptions raised by ModelMora's runtime, scheduler and workflows.

Every failure a caller can act on has its own class; the server maps them to HTTP status
codes, the CLI to exit codes and one-line messages. Nothing here imports an ML framework.
"""

from __future__ import annotations

__all__ = [
    "MemoryBudgetExceeded",
    "MemoryLimitExceeded",
    "ModelLoadError",
    "ModelMoraError",
    "RemoteTraceback",
    "ResultNotPicklable",
    "WorkerCrashed",
    "WorkerError",
    "WorkerStopped",
    "WorkerTimeout",
]


class ModelMoraError(Exception):
    """Base class of every error ModelMora raises on purpose."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised inside a worker.

    Attached as ``__cause__`` of the re-raised exception, so the parent's traceback shows
    where the error really happened (the same device as ``concurrent.futures`` and loky).
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class WorkerError(ModelMoraError):
    """A worker process failed; subclasses say how."""


class ModelLoadError(WorkerError):
    """The model could not be loaded in its worker (the child's traceback is the cause)."""


class WorkerCrashed(WorkerError):
    """The worker process died: it exited, was killed by a signal, or segfaulted.

    Attributes:
        exitcode: the process's exit status, negative for a signal (as ``Popen.returncode``).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class WorkerTimeout(WorkerError):
    """A load or a call took longer than its timeout; the worker was killed."""


class WorkerStopped(WorkerError):
    """The worker was stopped (or never started) and cannot take calls."""


class MemoryLimitExceeded(WorkerError):
    """The worker's RSS went past its cap; the worker was killed.

    Attributes:
        limit_mb: the cap.
        measured_mb: the RSS seen when the cap was crossed.
    """

    def __init__(self, message: str, limit_mb: float, measured_mb: float) -> None:
        super().__init__(message)
        self.limit_mb = limit_mb
        self.measured_mb = measured_mb


class ResultNotPicklable(WorkerError):
    """The model returned something that cannot travel back to the parent."""


class MemoryBudgetExceeded(ModelMoraError):
    """A model can never fit in the memory budget (its footprint is larger than the budget)."""
