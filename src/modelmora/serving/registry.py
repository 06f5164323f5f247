"""Run-time changes to the model registry, kept beside the config file.

The config file stays what a user edits; models registered, updated or removed through the API
(``POST``/``PATCH``/``DELETE /api/v1/models``) are written to a second file beside it
(``server.yaml`` → ``server.runtime.yaml``; with no config file, ``cache_dir/registry.yaml``) and
applied over the config at every start::

    # written by modelmora: models changed through the API (the config file is not touched)
    models:                 # registered or updated: the whole entry, as in the config file
      - {name: clip, adapter: sentence-transformers, source: /models/clip}
    removed: [old-model]    # in the config file, removed through the API

Each model is reported with its ``origin``: ``config``, ``runtime`` (registered through the API)
or ``config+runtime`` (in the config file, changed through the API).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelmora.paths import write_atomic
from modelmora.serving.config import ConfigError, ModelConfig, ServerConfig

__all__ = ["RuntimeRegistry", "entry_of"]

logger = logging.getLogger(__name__)

_HEADER = (
    "# written by modelmora: models changed through the API (the config file is not touched)\n"
)


def entry_of(cfg: ModelConfig) -> dict[str, Any]:
    """A model's config entry as a user would write it: the fields that were set."""
    data = cfg.model_dump(mode="json", exclude_unset=True)
    return {"name": cfg.name, "adapter": cfg.adapter, **data}


class RuntimeRegistry:
    """The run-time changes file: read at start, rewritten after every change.

    Args:
        path: the file (``ServerConfig.registry_file``).
        config_names: the models of the config file (to tell ``runtime`` from
            ``config+runtime``).
    """

    def __init__(self, path: Path, config_names: set[str]) -> None:
        self.path = Path(path)
        self.config_names = set(config_names)
        self.models: dict[str, dict[str, Any]] = {}
        self.removed: set[str] = set()
        self._lock = threading.Lock()
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{self.path}: cannot read the run-time changes: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: expected a mapping with models and removed")
        for entry in data.get("models") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self.models[entry["name"]] = entry
        self.removed = {str(n) for n in data.get("removed") or []}

    def apply(self, config: ServerConfig) -> ServerConfig:
        """``config`` with the run-time changes applied (a new object; ``config`` is unchanged).

        Raises:
            ConfigError: a kept entry no longer validates (the message names it and the file).
        """
        models = {m.name: m for m in config.models if m.name not in self.removed}
        for name, entry in self.models.items():
            try:
                models[name] = ModelConfig.model_validate(entry)
            except ValidationError as exc:
                raise ConfigError(
                    f"{self.path}: model {name!r} kept from the API no longer validates: "
                    f"{exc.errors()[0]['msg']} (fix or delete that entry)"
                ) from None
        if self.models or self.removed:
            logger.info(
                "run-time registry changes from %s: %d model(s) registered or updated, %d removed",
                self.path,
                len(self.models),
                len(self.removed),
            )
        return config.model_copy(update={"models": list(models.values())})

    def origin(self, name: str) -> str:
        """``config``, ``runtime`` or ``config+runtime``."""
        if name not in self.models:
            return "config"
        return "config+runtime" if name in self.config_names else "runtime"

    def put(self, cfg: ModelConfig) -> None:
        """Record a registered or updated model."""
        with self._lock:
            self.models[cfg.name] = entry_of(cfg)
            self.removed.discard(cfg.name)
            self._write()

    def remove(self, name: str) -> None:
        """Record a removed model."""
        with self._lock:
            self.models.pop(name, None)
            if name in self.config_names:
                self.removed.add(name)
            self._write()

    def changes(self) -> dict[str, Any]:
        """What ``/api/v1/status`` reports: the file and the models it changes."""
        return {
            "file": str(self.path),
            "registered": sorted(n for n in self.models if n not in self.config_names),
            "updated": sorted(n for n in self.models if n in self.config_names),
            "removed": sorted(self.removed),
        }

    def _write(self) -> None:
        data = {"models": list(self.models.values()), "removed": sorted(self.removed)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, [_HEADER, yaml.safe_dump(data, sort_keys=False)])
