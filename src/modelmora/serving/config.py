"""The model server's configuration: a registry of models and the server's limits, from YAML.

A config file looks like this (every field but ``models[].name`` and ``models[].adapter`` is
optional)::

    memory_budget_mb: 4096        # or "4GB"; default: 80% of the RAM available at start
    models:
      - name: whisper-1
        adapter: whisper          # a kind `modelmora adapters` lists, or package.module:Class
        source: /models/tiny.en   # package default when left out; a path or a model name
        keep_alive_s: 600         # null: never unloaded for idleness
      - name: minilm
        adapter: embedding
        max_batch_size: 32
        max_wait_ms: 5
        priority: high            # eviction class: critical, high, normal, low
        pinned: true              # loaded at start, never evicted

:func:`load_config` validates it with pydantic and reports every error with the file, the line
and the field (``config.yaml:12: models[1].adapter: Value error, unknown adapter kind ...``).

What an adapter takes (a ``source``, a ``device``) is what its class declares
(:class:`~modelmora.models.Capabilities`); reading it imports the adapter's module only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from modelmora.errors import ModelMoraError
from modelmora.models import Capabilities, ModelSpec, adapter_capabilities, adapter_path
from modelmora.paths import default_cache_dir
from modelmora.units import Device, check_model_name, parse_size_mb

__all__ = [
    "KEEP_SPARES",
    "PRIORITIES",
    "RANK",
    "ConfigError",
    "ModelConfig",
    "Priority",
    "ServerConfig",
    "default_config",
    "load_config",
    "parse_size_mb",
]

#: A priority class: of a request (who runs first) and of a model (who is evicted last).
Priority = Literal["critical", "high", "normal", "low"]
#: The priority classes, most important first: the one definition the scheduler, the job
#: store and the HTTP bodies use.
PRIORITIES: tuple[str, ...] = get_args(Priority)
#: Priority class → rank (0 is the most urgent).
RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
#: Default ``keep_spares``: one spare per adapter kind. A kind's spare is prepared only once a
#: model of that kind has been unloaded (a reload is then likely), and only when it fits the
#: budget; measured costs and savings are in docs/warm-starts.md.
KEEP_SPARES: dict[str, int] = {"embedding": 1, "diarizer": 1, "whisper": 1, "llm": 1}


def _known_kind(kind: str) -> str:
    adapter_path(kind)  # a ValueError naming the registered kinds
    return kind


#: An adapter kind: a built-in, one published in the ``modelmora.adapters`` entry points, or
#: ``package.module:Class``.
AdapterKind = Annotated[str, AfterValidator(_known_kind)]


class ConfigError(ModelMoraError):
    """The configuration is invalid; the message names the file, the line and the field."""


def _size_or_none(value: Any) -> float | None:
    """A size field: None stays None (not set); anything else is a size (``"4GB"``, 512)."""
    return None if value is None else parse_size_mb(value)


class ModelConfig(BaseModel):
    """One model the server can serve.

    Attributes:
        name: what clients ask for (``model`` in OpenAI requests).
        adapter: the adapter kind.
        source: model name or local path; ``None`` for the adapter's packaged default. A hub
            id (``org/name``) is fetched into ``cache_dir/hub`` before the worker starts.
        revision: the hub branch, tag or commit of such a source (default: the one in the
            lock file, else the default branch).
        params: extra keyword arguments for the adapter's constructor.
        device: ``auto``, ``cpu`` or ``cuda``.
        footprint_mb: RAM the model takes once loaded (skips learning it).
        vram_footprint_mb: GPU memory the model takes once loaded.
        max_batch_size: most items per call into the worker.
        max_wait_ms: how long the first item of a batch waits for more (not waited when the
            model's last batch held one item and its worker is idle: a lone client).
        keep_alive_s: idle seconds before the model is unloaded; ``None``: never.
        priority: eviction class (lower classes are evicted first).
        pinned: loaded at start and never evicted.
        max_concurrency: workers (each with one batch in flight) the model may have.
        memory_limit_mb: RSS cap of the worker; past it the worker is killed.
        max_tasks: recycle the worker after this many calls.
        max_rss_growth_mb: recycle the worker when its RSS grew this much over its RSS
            right after loading.
        threads: numeric thread pools' size in the worker.
        load_timeout_s: seconds a load may take.
        diarizer: the model (of this registry, a diarization adapter) that labels speakers
            for ``response_format=diarized_json`` of this transcription model.
        warmup: an input run once after every load (default: the adapter's declared one);
            a model that fails it is unhealthy and gets no traffic.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    adapter: AdapterKind
    source: str | None = None
    revision: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    device: Device = "auto"
    footprint_mb: float | None = Field(default=None, gt=0)
    vram_footprint_mb: float | None = Field(default=None, ge=0)
    max_batch_size: int = Field(default=1, ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0)
    keep_alive_s: float | None = Field(default=300.0, gt=0)
    priority: Priority = "normal"
    pinned: bool = False
    max_concurrency: int = Field(default=1, ge=1)
    memory_limit_mb: float | None = Field(default=None, gt=0)
    max_tasks: int | None = Field(default=None, ge=1)
    max_rss_growth_mb: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=1)
    load_timeout_s: float = Field(default=300.0, gt=0)
    diarizer: str | None = None
    warmup: Any = None
    _capabilities: Capabilities = PrivateAttr(default_factory=Capabilities)

    @field_validator("footprint_mb", "vram_footprint_mb", "memory_limit_mb", mode="before")
    @classmethod
    def _size(cls, value: Any) -> float | None:
        return _size_or_none(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_model_name(value)

    @model_validator(mode="after")
    def _source_fits(self) -> ModelConfig:
        self._capabilities = adapter_capabilities(self.adapter, self.params)
        if self.source is not None and not self._capabilities.takes_source:
            raise ValueError(
                f"adapter {self.adapter!r} takes no source (its class does not declare "
                "takes_source): use params for its settings"
            )
        clash = {"model", "device"} & set(self.params)
        if clash:
            raise ValueError(f"set {' and '.join(sorted(clash))} with source/device, not params")
        return self

    @property
    def capabilities(self) -> Capabilities:
        """What the model's adapter takes and serves, built with these params."""
        return self._capabilities

    def to_spec(self) -> ModelSpec:
        """The :class:`ModelSpec` a worker loads: ``source`` becomes the adapter's ``model``."""
        params = dict(self.params)
        if self.source is not None:
            params["model"] = self.source
        if self._capabilities.takes_device and self.device != "auto":
            params["device"] = self.device
        return ModelSpec(kind=self.adapter, params=params)


class ServerConfig(BaseModel):
    """The server: where it listens, its limits, and the models it serves.

    Attributes:
        host, port: where the HTTP server listens.
        memory_budget_mb: RAM all workers together may take; ``None``: 80% of the RAM
            available when the scheduler starts. Accepts sizes such as ``"4GB"``.
        vram_budget_mb: GPU memory all workers together may take; ``None``: not enforced.
        cache_dir: learned footprints and the jobs database live here
            (default ``$MODELMORA_CACHE_DIR`` or ``~/.cache/modelmora``).
        jobs_db: the SQLite file of async jobs (default ``cache_dir/jobs.sqlite``).
        api_key: bearer token required on every route but health (also ``MODELMORA_API_KEY``).
        max_request_mb: largest request body accepted.
        queue_limit: most requests waiting at once; past it requests are refused (503).
        request_timeout_s: longest a call into a worker may take before it is killed.
        retry_crashed: run a batch once more when its worker was lost during it (crashed,
            killed at its timeout or memory cap).
        unhealthy_cooldown_s: how long a model whose load failed is refused; doubled after
            each failure in a row (a pinned model is retried when it ends).
        unhealthy_cooldown_max_s: the cap of that backoff.
        lock_file: the source, revision and sha256 of every file of each model, written on
            its first load and checked on every load (default: ``modelmora.lock`` beside the
            config file, or in ``cache_dir`` without one).
        registry_file: where models registered, changed or removed through the API are kept
            (default: ``NAME.runtime.yaml`` beside the config file ``NAME.yaml``, or
            ``cache_dir/registry.yaml`` without one); applied over ``models`` at start.
        keep_spares: spare workers to keep ready per adapter kind (``{"embedding": 1}``): a
            process that has imported the adapter's framework and holds no model, so that
            the next load of that kind skips the import. A kind gets its spares once one of
            its models was unloaded; they count against the budget and are the first to go
            when a model needs the room. Default: :data:`KEEP_SPARES`; ``{}`` for none.
        speakers_dir: the speaker library (``/api/v1/speakers``) the ``diarizer`` models name
            speakers from (default ``cache_dir/speakers``).
        http_workers: HTTP front-end processes. 1: the server is one process (and its
            workers). N > 1: N processes parse, validate and answer the routes that run models,
            over the one scheduler of the main process (batching, memory budget, eviction and
            priorities stay global); the other routes are forwarded to the main process. For
            machines with cores to spare: on a fast GPU one event loop is the limit.
        models: the registry.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    http_workers: int = Field(default=1, ge=1, le=64)
    memory_budget_mb: float | None = Field(default=None, gt=0)
    vram_budget_mb: float | None = Field(default=None, gt=0)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    jobs_db: Path | None = None
    api_key: str | None = None
    max_request_mb: float = Field(default=100.0, gt=0)
    queue_limit: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=600.0, gt=0)
    retry_crashed: bool = True
    unhealthy_cooldown_s: float = Field(default=30.0, ge=0)
    keep_spares: dict[str, int] = Field(default_factory=lambda: dict(KEEP_SPARES))
    unhealthy_cooldown_max_s: float = Field(default=600.0, ge=0)
    registry_file: Path | None = None
    lock_file: Path | None = None
    speakers_dir: Path | None = None
    models: list[ModelConfig] = Field(default_factory=list)

    @field_validator("memory_budget_mb", "vram_budget_mb", "max_request_mb", mode="before")
    @classmethod
    def _size(cls, value: Any) -> float | None:
        return _size_or_none(value)

    @model_validator(mode="after")
    def _resolve(self) -> ServerConfig:
        self.cache_dir = self.cache_dir.expanduser()
        if self.jobs_db is None:
            self.jobs_db = self.cache_dir / "jobs.sqlite"
        if self.registry_file is None:
            self.registry_file = self.cache_dir / "registry.yaml"
        if self.lock_file is None:
            self.lock_file = self.cache_dir / "modelmora.lock"
        if self.speakers_dir is None:
            self.speakers_dir = self.cache_dir / "speakers"
        for model in self.models:  # diarizers name speakers from the server's library
            if model.adapter == "diarizer":
                model.params.setdefault("speakers", str(self.speakers_dir))
        if self.api_key is None:
            self.api_key = os.environ.get("MODELMORA_API_KEY") or None
        for kind, count in self.keep_spares.items():
            try:
                adapter_path(kind)
            except ValueError as exc:
                raise ValueError(f"keep_spares: {exc}") from None
            if count < 0:
                raise ValueError(f"keep_spares[{kind!r}] must be 0 or more, got {count}")
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} is used twice: names must be unique")
            seen.add(model.name)
        for model in self.models:
            if model.diarizer is not None:
                _check_diarizer(self, model)
        return self

    def model(self, name: str) -> ModelConfig:
        """The model called ``name``.

        Raises:
            KeyError: no model has that name.
        """
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


def _check_diarizer(config: ServerConfig, model: ModelConfig) -> None:
    try:
        other = config.model(str(model.diarizer))
    except KeyError:
        raise ValueError(
            f"model {model.name!r}: its diarizer {model.diarizer!r} is not a model of this config"
        ) from None
    if other.capabilities.task != "diarization":
        raise ValueError(
            f"model {model.name!r}: its diarizer {other.name!r} is a {other.capabilities.task} "
            "model, not a diarization one (adapter: diarizer)"
        )


def default_config(**overrides: Any) -> ServerConfig:
    """The packaged offline defaults: tiny.en as ``whisper-1``, MiniLM embeddings, Gemma 3 270M.

    Args:
        overrides: ServerConfig fields to set (host, port, memory_budget_mb, ...).

    Returns:
        A validated :class:`ServerConfig`.
    """
    models = [
        ModelConfig(name="whisper-1", adapter="whisper", source="tiny.en"),
        ModelConfig(name="all-minilm-l6-v2", adapter="embedding", max_batch_size=32, max_wait_ms=5),
        ModelConfig(name="gemma-3-270m", adapter="llm", source="gemma3-270m"),
    ]
    return ServerConfig.model_validate({"models": models, **overrides})


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read and validate a YAML config file.

    Relative ``source`` paths and ``cache_dir``/``jobs_db`` are taken relative to the file.

    Args:
        path: the YAML file.

    Returns:
        The validated :class:`ServerConfig`.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate; the message names
            the file, the line and the field of every error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path.name}{line}: not valid YAML: {exc.problem or exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}:1: the config must be a mapping (host, port, models, ...)")
    data.setdefault("registry_file", str(path.with_name(f"{path.stem}.runtime.yaml")))
    data.setdefault("lock_file", str(path.with_name("modelmora.lock")))
    _resolve_paths(data, path.parent)
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(path.name, root, err) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    for key in ("cache_dir", "jobs_db", "registry_file", "lock_file", "speakers_dir"):
        if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(base / data[key])
    models = data.get("models")
    for model in models if isinstance(models, list) else []:
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and source.startswith(("./", "../")):
            model["source"] = str((base / source).resolve())


def _describe(filename: str, root: yaml.Node | None, err: Any) -> str:
    loc = tuple(err["loc"])
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    line = _line_of(root, loc)
    where = f"{filename}:{line}" if line else filename
    return f"{where}: {field or '(top level)'}: {err['msg']}"


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing ancestor)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    # an extra or scalar field: point at its key, where the reader looks
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
        if not isinstance(node, yaml.ScalarNode):
            line = node.start_mark.line + 1
    return line
