"""The log file of a batch run: this package's records and its workers' stderr, in one file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["run_log"]


class _Forward(logging.Handler):
    """Passes records on to the root logger's handlers at the level they had before the run.

    The run's log file wants INFO from this package; the console should not get more than it
    was configured for, so the package stops propagating and this handler filters instead.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.threshold:
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


class _RunLogHandler(logging.FileHandler):
    """The run's log file; a write that fails (a full disk) drops the line, not the batch."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def run_log(out_dir: Path) -> Iterator[tuple[Path, IO[Any]]]:
    """A log file for one run in ``out_dir``: this package's INFO records, and a raw stream for
    the workers' stderr.

    Yields:
        ``(path, stream)``: the log file, and a binary stream appending to it (pass it as a
        :class:`~modelmora.runtime.worker.Worker`'s ``stderr``). Records still reach the console's
        handlers at the level they had before.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"modelmora-{stamp}.log"
    package = logging.getLogger("modelmora")
    handler = _RunLogHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    level, propagate = package.level, package.propagate
    forward = _Forward(package.getEffectiveLevel()) if propagate else None
    package.setLevel(min(package.getEffectiveLevel(), logging.INFO))
    package.propagate = False
    for extra in (handler, forward):
        if extra is not None:
            package.addHandler(extra)
    stream = open(path, "ab", buffering=0)  # noqa: SIM115 - closed below, shared with workers
    try:
        yield path, stream
    finally:
        for extra in (handler, forward):
            if extra is not None:
                package.removeHandler(extra)
        package.setLevel(level)
        package.propagate = propagate
        with contextlib.suppress(OSError):  # a full disk: the log loses its tail
            handler.close()
        with contextlib.suppress(OSError):
            stream.close()
