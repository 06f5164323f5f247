"""``modelmora serve``, ``adapters``, ``pull`` and ``models ...``: the server and its registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from modelmora.cli.common import app, console, fail, print_json


@app.command("serve")
def serve(
    config: Path | None = typer.Option(None, help="YAML model registry (default: packaged)."),
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to listen on (default 8000)."),
    log_level: str = typer.Option(
        "info", help="critical, error, warning, info, debug or trace (the server's own log)."
    ),
    access_log: bool = typer.Option(True, help="One line per request on stdout."),
    http_workers: int | None = typer.Option(
        None,
        min=1,
        max=64,
        help="HTTP front-end processes over the one scheduler (default 1, or the config's "
        "http_workers): for machines with cores to spare.",
    ),
) -> None:
    """Serve models over HTTP (OpenAI-compatible and native routes) under a memory budget."""
    from modelmora.serving.config import ConfigError, default_config, load_config
    from modelmora.serving.http.app import serve as run_server

    try:
        settings = load_config(config) if config is not None else default_config()
        given = (("host", host), ("port", port), ("http_workers", http_workers))
        overrides = {k: v for k, v in given if v is not None}
        settings = settings.model_copy(update=overrides)
    except ConfigError as exc:
        raise fail(exc, 2) from None
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        console.print(f"error: --log-level must be one of {', '.join(levels)}", style="red")
        raise typer.Exit(2)
    try:
        run_server(settings, log_level=log_level.lower(), access_log=access_log)
    except ConfigError as exc:  # the run-time changes file no longer validates
        raise fail(exc, 2) from None


@app.command("adapters")
def adapters(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the adapter kinds (built-in and published by installed packages) and what each serves.

    Reading them imports each adapter's module, never its ML framework.
    """
    from rich.table import Table

    from modelmora.models import adapter_capabilities, adapter_table

    rows = []
    for kind, path in sorted(adapter_table().items()):
        row: dict[str, object] = {"kind": kind, "class": path}
        try:
            row.update(adapter_capabilities(kind).to_dict())
        except ValueError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    table = Table("kind", "task", "routes", "device", "source", "frameworks", "class")
    for row in rows:
        if "error" in row:
            table.add_row(
                str(row["kind"]), "[red]unavailable[/]", str(row["error"]), "", "", "", ""
            )
            continue
        flags = ["yes" if row[k] else "" for k in ("takes_device", "takes_source")]
        routes = ", ".join(row["routes"]) or "predict"  # type: ignore[arg-type]
        frameworks = ", ".join(row["frameworks"])  # type: ignore[arg-type]
        table.add_row(
            str(row["kind"]), str(row["task"]), routes, *flags, frameworks, str(row["class"])
        )
    Console().print(table)


@app.command("pull")
def pull(
    name: str = typer.Argument(..., help="A model of the config (its source is fetched)."),
    config: Path | None = typer.Option(None, help="YAML model registry (default: packaged)."),
) -> None:
    """Fetch a model's source into the cache and write or check its modelmora.lock entry."""
    from modelmora.errors import ModelMoraError
    from modelmora.models.sources import LOCK_NAME, LockFile, is_hub_id, prepare
    from modelmora.serving.config import ConfigError, default_config, load_config
    from modelmora.serving.registry import RuntimeRegistry

    try:
        settings = load_config(config) if config is not None else default_config()
        registry_file = settings.registry_file or settings.cache_dir / "registry.yaml"
        names = {m.name for m in settings.models}
        settings = RuntimeRegistry(registry_file, names).apply(settings)
        model = settings.model(name)
    except ConfigError as exc:
        raise fail(exc, 2) from None
    except KeyError:
        known = ", ".join(m.name for m in settings.models)
        console.print(f"error: no model {name!r} in the config (it has {known})", style="red")
        raise typer.Exit(2) from None
    source = model.source
    if source is None or not (is_hub_id(source) or Path(source).exists()):
        console.print(f"{name}: nothing to fetch (source {source or 'packaged'})")
        return
    lock = LockFile(settings.lock_file or settings.cache_dir / LOCK_NAME)
    try:
        ready = prepare(name, source, model.revision, settings.cache_dir / "hub", lock)
    except ModelMoraError as exc:
        raise fail(exc, 1) from None
    verb = "locked in" if ready.locked_now else "matches"
    print_json({"model": name, "path": ready.path, "revision": ready.revision,
                 "lock_file": str(lock.path), "lock": verb})  # fmt: skip


# --- the registry of a running server ------------------------------------------------------

models_app = typer.Typer(
    help="List and change the models of a running server (token from MODELMORA_API_KEY).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

_URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="MODELMORA_URL", help="The server.")
_PARAM = typer.Option([], "--param", "-p", help="An adapter parameter, KEY=VALUE (repeatable).")
_SET = typer.Option([], "--set", help="A model field, KEY=VALUE: max_batch_size=8 (repeatable).")


def _api(url: str, method: str, path: str, body: object = None) -> Any:
    """One call to the server's native API; an error answer exits 1 with its message."""
    import os

    import httpx

    key = os.environ.get("MODELMORA_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        reply = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=900
        )
    except httpx.TransportError as exc:
        console.print(f"error: cannot reach {url}: {exc}", style="red", markup=False)
        raise typer.Exit(1) from None
    try:
        data = reply.json()
    except ValueError:
        data = {"error": {"message": reply.text}}
    if reply.status_code >= 400:
        message = (data.get("error") or {}).get("message") or reply.text
        console.print(f"error ({reply.status_code}): {message}", style="red", markup=False)
        raise typer.Exit(1)
    return data


def _pairs(items: list[str], what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            console.print(f"error: {what} {item!r}: expected KEY=VALUE", style="red", markup=False)
            raise typer.Exit(2)
        out[key.strip()] = yaml.safe_load(value)  # 8 → int, true → bool, [a, b] → list
    return out


def _entry(source: str | None, params: list[str], fields: list[str]) -> dict[str, Any]:
    entry = _pairs(fields, "--set")
    if source is not None:
        entry["source"] = source
    if params:
        entry["params"] = {**entry.get("params", {}), **_pairs(params, "--param")}
    return entry


@models_app.command("list")
def models_list(
    url: str = _URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """The server's models: adapter, task, state, where each comes from, memory."""
    from rich.table import Table

    models = _api(url, "GET", "/api/v1/models")["models"]
    if as_json:
        print_json(models)
        return
    table = Table("name", "adapter", "task", "state", "origin", "rss MB", "error")
    for m in models:
        cells = [m["name"], m["adapter"], m.get("task", ""), m["state"], m.get("origin", "")]
        table.add_row(*map(str, cells), f"{m['rss_mb']:.0f}", m.get("error") or "")
    Console().print(table)


@models_app.command("info")
def models_info(name: str, url: str = _URL) -> None:
    """One model: its state, footprint, counters and config entry (JSON)."""
    print_json(_api(url, "GET", f"/api/v1/models/{name}"))


@models_app.command("add")
def models_add(
    name: str,
    adapter: str = typer.Option(..., help="An adapter kind or package.module:Class."),
    source: str | None = typer.Option(None, help="A model folder or hub id."),
    param: list[str] = _PARAM,
    field: list[str] = _SET,
    url: str = _URL,
) -> None:
    """Register a model (the same fields as a model entry of the config file)."""
    body = {"name": name, "adapter": adapter, **_entry(source, param, field)}
    print_json(_api(url, "POST", "/api/v1/models", body))


@models_app.command("update")
def models_update(
    name: str,
    source: str | None = typer.Option(None, help="A model folder or hub id."),
    param: list[str] = _PARAM,
    field: list[str] = _SET,
    url: str = _URL,
) -> None:
    """Change fields of a model; a resident worker is replaced without dropping requests."""
    print_json(_api(url, "PATCH", f"/api/v1/models/{name}", _entry(source, param, field)))


@models_app.command("rm")
def models_rm(name: str, url: str = _URL) -> None:
    """Unload a model (its release verified) and remove it from the registry."""
    print_json(_api(url, "DELETE", f"/api/v1/models/{name}"))


@models_app.command("load")
def models_load(name: str, url: str = _URL) -> None:
    """Make a model resident now."""
    print_json(_api(url, "POST", f"/api/v1/models/{name}/load"))


@models_app.command("unload")
def models_unload(name: str, url: str = _URL) -> None:
    """Stop a model's workers and report what was released."""
    print_json(_api(url, "POST", f"/api/v1/models/{name}/unload"))
