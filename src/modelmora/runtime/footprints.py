"""Measured footprints: the largest peak RSS/VRAM seen per model spec, kept on disk across runs.

The server's scheduler and the batch workflow read it to admit a model before it loads, and both
write to it after a load. Several processes may share one cache folder, so every update re-reads
the file and merges under an exclusive lock (``flock`` on a sibling ``.lock`` file) before an
atomic, fsync'd replace: no writer drops another's entries.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelmora.paths import write_atomic

__all__ = ["FootprintStore"]

logger = logging.getLogger(__name__)


class FootprintStore:
    """Largest measured peak RSS/VRAM per model spec, in a JSON file shared across processes.

    Args:
        path: the JSON file (created on the first update; its folder too).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, float]] = self._read()

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable footprints file %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, float] | None:
        """The footprint recorded for ``key`` (``peak_rss_mb``, ``vram_mb``), or ``None``."""
        return self.data.get(key)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, key: str, peak_rss_mb: float, vram_mb: float | None) -> None:
        """Record a measurement: the stored figures become the larger of old and new.

        Does file I/O (read, fsync, rename): call it outside any lock that requests wait on.
        A cache folder that cannot be written is logged, never raised.
        """
        try:
            with self._locked():
                current = self._read()
                old = current.get(key, {})
                new = {
                    "peak_rss_mb": round(max(old.get("peak_rss_mb", 0.0), peak_rss_mb), 1),
                    "vram_mb": round(max(old.get("vram_mb", 0.0), vram_mb or 0.0), 1),
                }
                current[key] = new
                if new != old:
                    write_atomic(self.path, [json.dumps(current, indent=1, sort_keys=True)])
                self.data = current
        except OSError as exc:
            logger.warning("cannot save footprints to %s: %s", self.path, exc)
