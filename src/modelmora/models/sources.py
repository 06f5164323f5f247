"""Model sources: a local folder, or a Hugging Face hub id fetched into the cache before a worker
starts, each pinned by a lock file.

:func:`prepare` turns a model's ``source`` (and ``revision``) into the local folder its worker
loads, and checks it against ``modelmora.lock``::

    # modelmora.lock: one entry per model, written on its first fetch
    models:
      clip:
        source: sentence-transformers/clip-ViT-B-32
        revision: 327ab6726d33c0e22f920c83f2ff9e4bd38ca37f   # the commit fetched
        files: {config.json: 6c1e..., model.safetensors: 9f2a..., ...}   # sha256

A hub id is fetched by ``huggingface_hub.snapshot_download`` into ``cache_dir/hub`` (the hub's
own cache layout). Offline (``HF_HUB_OFFLINE=1``) only the cache is read, and a model that is not
there is a :class:`SourceError` at once, never a wait. On every load the files are hashed and
compared with the lock: a changed, missing or corrupted file is refused with its name.
Runs in the parent (the server, ``modelmora pull``); imports ``huggingface_hub`` only for hub
ids, never an ML framework.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelmora.errors import ModelLoadError
from modelmora.paths import write_atomic

__all__ = ["LOCK_NAME", "LockFile", "Prepared", "SourceError", "is_hub_id", "prepare"]

logger = logging.getLogger(__name__)

LOCK_NAME = "modelmora.lock"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 20


class SourceError(ModelLoadError):
    """A model's source cannot be fetched, or its files differ from the lock file."""


def is_hub_id(source: str) -> bool:
    """True for ``org/name`` that is not an existing path (a hub id, not a folder)."""
    return bool(_HUB_ID.match(source)) and not os.path.exists(source)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (links followed, as the hub cache links blobs)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts):
            files[path.relative_to(folder).as_posix()] = _sha256(path)
    return files


class LockFile:
    """``modelmora.lock``: each model's source, revision and file checksums (thread-safe)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SourceError(f"{self.path}: cannot read the lock file: {exc}") from exc
        models = data.get("models") if isinstance(data, dict) else None
        return models if isinstance(models, dict) else {}

    def get(self, name: str) -> dict[str, Any] | None:
        """The entry of model ``name``, if any."""
        with self._lock:
            entry = self._read().get(name)
        return entry if isinstance(entry, dict) else None

    def put(self, name: str, entry: dict[str, Any]) -> None:
        """Write (or replace) the entry of model ``name``; the others are kept."""
        with self._lock:
            models = self._read()
            models[name] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            header = "# modelmora.lock: the model files each model was first loaded with\n"
            write_atomic(self.path, [header, yaml.safe_dump({"models": models}, sort_keys=True)])


@dataclass(frozen=True)
class Prepared:
    """A source ready to load: the local folder, the revision fetched, whether it was locked."""

    path: str
    revision: str | None
    locked_now: bool


def _fetch(source: str, revision: str | None, cache_dir: Path) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = snapshot_download(
            source, revision=revision, cache_dir=cache_dir, local_files_only=offline,
            etag_timeout=10,
        )  # fmt: skip
    except LocalEntryNotFoundError:
        where = f"revision {revision} of " if revision else ""
        raise SourceError(
            f"{where}{source} is not in the cache ({cache_dir}) and the hub is not reachable"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: run `modelmora pull` where it "
            "is, or give a local folder as the source"
        ) from None
    except Exception as exc:  # the hub's HTTP and repository errors
        raise SourceError(f"cannot fetch {source} from the hub: {exc}") from exc
    path = Path(str(folder))
    return path, path.name  # a snapshot folder is named after the commit


def prepare(
    name: str, source: str, revision: str | None, cache_dir: Path, lock: LockFile
) -> Prepared:
    """The local folder of ``source``, fetched if it is a hub id, checked against the lock.

    Args:
        name: the model (its entry in the lock file).
        source: a local folder or a hub id.
        revision: a hub branch, tag or commit (``None``: the default branch, or what the lock
            file recorded).
        cache_dir: the hub cache (``cache_dir/hub`` of the server).
        lock: the lock file.

    Raises:
        SourceError: not fetchable (offline and not cached, unknown id...), or a file that
            differs from the lock (the message names it).
    """
    entry = lock.get(name)
    same = entry is not None and entry.get("source") == source
    if is_hub_id(source):
        pinned = revision or (entry.get("revision") if same and entry else None)
        folder, fetched = _fetch(source, pinned, cache_dir)
    else:
        folder, fetched = Path(source), None
        if not folder.exists():
            raise SourceError(f"model {name!r}: source {source} does not exist")
    files = hash_folder(folder) if folder.is_dir() else {folder.name: _sha256(folder)}
    if entry is None or not same or (revision and entry.get("revision") != fetched):
        lock.put(name, {"source": source, "revision": fetched, "files": files})
        logger.info("model %s: %d files of %s written to %s", name, len(files), source, lock.path)
        return Prepared(str(folder), fetched, True)
    _check(name, files, entry.get("files") or {}, lock.path)
    return Prepared(str(folder), fetched, False)


def _check(name: str, files: dict[str, str], locked: dict[str, str], lock_path: Path) -> None:
    for rel, digest in sorted(locked.items()):
        if rel not in files:
            raise SourceError(f"model {name!r}: {rel} is missing (it is in {lock_path})")
        if files[rel] != digest:
            raise SourceError(
                f"model {name!r}: {rel} changed or is corrupted: its sha256 is {files[rel][:12]}…,"
                f" {lock_path} says {digest[:12]}… (restore the file, or delete the model's "
                "entry from the lock file to accept it)"
            )
    extra = sorted(set(files) - set(locked))
    if extra:
        raise SourceError(
            f"model {name!r}: {extra[0]} is not in {lock_path} (a file was added to the source; "
            "delete the model's entry from the lock file to accept it)"
        )
