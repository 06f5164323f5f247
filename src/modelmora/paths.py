"""Where ModelMora keeps its files, and how it writes them (atomically, with the usual mode).

Pure standard library: every layer may import it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["current_umask", "default_cache_dir", "write_atomic"]


def default_cache_dir() -> Path:
    """The cache folder: ``$MODELMORA_CACHE_DIR``, else ``~/.cache/modelmora``."""
    env = os.environ.get("MODELMORA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelmora"


def current_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` (Linux ≥ 4.7).

    ``os.umask`` can only be read by setting it, which races with every thread that creates a
    file meanwhile; the kernel reports it without changing it.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022  # not Linux, or /proc not mounted: the common default


def write_atomic(path: Path, chunks: Iterable[str | bytes]) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically: a temporary file, then a rename.

    Args:
        path: the destination; its folder must exist.
        chunks: the text or bytes, in pieces (written as they come, so long outputs stream).

    Returns:
        ``path``.

    Raises:
        OSError: the folder is not writable or the disk is full (no partial file is left).
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
