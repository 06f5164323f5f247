"""The scheduler's refusals: an unknown model, a full queue, a model in its unhealthy cooldown.

Raised by :class:`~modelmora.serving.scheduler.core.Scheduler` (and exported from
:mod:`modelmora.serving.scheduler.core`);
the server maps them to 404 and 503.
"""

from __future__ import annotations

from collections.abc import Iterable

from modelmora.errors import ModelMoraError

__all__ = ["ModelUnhealthy", "QueueFull", "UnknownModel"]


class UnknownModel(ModelMoraError):
    """No model of that name is configured; the message lists the ones that are."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.model = name
        self.known = sorted(known)
        super().__init__(f"unknown model {name!r}: use one of {', '.join(self.known) or '(none)'}")


class QueueFull(ModelMoraError):
    """Too many requests are waiting; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelUnhealthy(ModelMoraError):
    """The model failed to load recently; it is refused until ``retry_after_s`` has passed."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
