"""How a worker process ended, in words: the signal's name, the usual cause, the exit code.

Used by the worker's crash errors and by the workflow's one-line failure reasons.
"""

from __future__ import annotations

import signal

__all__ = ["crash_phrase", "describe_exit", "exit_signal"]

#: What a signal that killed a worker usually means.
_SIGNAL_HINTS = {
    "SIGKILL": "killed: the kernel's OOM killer or another process",
    "SIGSEGV": "segmentation fault in native code",
    "SIGABRT": "aborted by native code",
}


def exit_signal(code: int | None) -> str | None:
    """The name of the signal that ended a process (``SIGSEGV``), from its exit code.

    Args:
        code: the exit code as :mod:`subprocess` reports it (negative: killed by a signal).

    Returns:
        The signal's name (``"signal 99"`` for a number Python does not name), or None when
        the process exited by itself or its status is unknown.
    """
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(code: int | None) -> str:
    """How a process ended, in a few words: ``signal SIGSEGV``, ``exit code 3`` or
    ``exit status unknown``.

    Args:
        code: the exit code as :mod:`subprocess` reports it, or None when unknown.
    """
    name = exit_signal(code)
    if name is not None:
        return name if name.startswith("signal ") else f"signal {name}"
    return "exit status unknown" if code is None else f"exit code {code}"


def crash_phrase(code: int | None) -> str:
    """The verb phrase of a :class:`WorkerCrashed` message (``was killed by SIGSEGV (...)``)."""
    name = exit_signal(code)
    if name is not None:
        hint = _SIGNAL_HINTS.get(name)
        return f"was killed by {name}" + (f" ({hint})" if hint else "")
    return "is gone (exit status unknown)" if code is None else f"exited with code {code}"
