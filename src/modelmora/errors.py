"""Exceptions raised by ModelMora's runtime, scheduler and workflows.

Every failure a caller can act on has its own class; the server maps them to HTTP status
codes, the CLI to exit codes and one-line messages. Nothing here imports an ML framework.

::

    ModelMoraError
    ├── WorkerError                 a worker process failed
    │   ├── ModelLoadError          the model could not be loaded
    │   ├── ResultNotPicklable      the output cannot travel back
    │   └── WorkerLost              the worker is gone, and the call with it: worth a retry
    │       ├── WorkerCrashed       it exited, was killed by a signal, or segfaulted
    │       ├── WorkerTimeout       it was killed at its timeout
    │       ├── MemoryLimitExceeded it was killed at its RSS cap
    │       └── WorkerStopped       it was stopped (or never started)
    ├── InvalidInput (ValueError)   the model refused an item: the caller's input is wrong
    └── MemoryBudgetExceeded        a model can never fit in the budget

``isinstance(exc, WorkerLost)`` is the one answer to "is this failure retryable?" (as loky's
``TerminatedWorkerError`` is a ``BrokenProcessPool``): the server retries such a request once
and a job until its ``max_attempts``; any other error is the call's own and is not retried.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvalidInput",
    "MemoryBudgetExceeded",
    "MemoryLimitExceeded",
    "ModelLoadError",
    "ModelMoraError",
    "RemoteTraceback",
    "ResultNotPicklable",
    "WorkerCrashed",
    "WorkerError",
    "WorkerLost",
    "WorkerStopped",
    "WorkerTimeout",
]


class ModelMoraError(Exception):
    """Base class of every error ModelMora raises on purpose.

    Pickles with its attributes whatever its constructor takes, so it crosses a process
    boundary as itself (``retry_after_s`` and the like included).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[ModelMoraError], args: tuple[Any, ...], attrs: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(attrs)
    return error


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


class WorkerLost(WorkerError):
    """The worker process is gone, and the call in flight with it; another worker may succeed.

    The base of every way a worker is lost (crashed, killed at its timeout or memory cap,
    stopped): catch it to decide that a failure is worth a retry.
    """


class WorkerCrashed(WorkerLost):
    """The worker process died: it exited, was killed by a signal, or segfaulted.

    Attributes:
        exitcode: the process's exit status, negative for a signal (as ``Popen.returncode``).
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class WorkerTimeout(WorkerLost):
    """A load or a call took longer than its timeout; the worker was killed."""


class WorkerStopped(WorkerLost):
    """The worker was stopped (or never started) and cannot take calls."""


class MemoryLimitExceeded(WorkerLost):
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


class InvalidInput(ModelMoraError, ValueError):
    """The model refused an input item: what the caller sent is wrong, not the model.

    Adapters raise it (or a plain ``ValueError``, which the server treats the same) for an item
    they cannot take; the server answers 400 ``invalid_input``. Any other exception from a
    model is a bug or a failure on the server's side and is answered 500.

    Attributes:
        param: the request field at fault, if known.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str | None]]:
        # raised in a worker, re-raised in the parent: the param must survive the pickle
        return type(self), (str(self), self.param)
