"""The registry routes: models registered, changed and removed while the server runs.

* ``POST /api/v1/models``: register; the body is a model entry of the config file (201);
* ``GET /api/v1/models/{name}``: one model's entry (state, footprint, origin, config);
* ``PATCH /api/v1/models/{name}``: change fields of its entry; a resident worker is replaced by
  one of the new config, the old one serving until then (no request is dropped);
* ``DELETE /api/v1/models/{name}``: unload (the release verified) and remove.

Every change is kept in the run-time changes file (:mod:`modelmora.serving.registry`) and
applied at the next start. Changes are serialised; a change's effect on the scheduler and on
the routes' view of the config happens before its response.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Body, FastAPI, Request
from pydantic import ValidationError

from modelmora.serving.config import ModelConfig
from modelmora.serving.http.errors import ApiError, map_exception, starting_error
from modelmora.serving.http.state import AppState
from modelmora.serving.registry import RuntimeRegistry, entry_of

__all__ = ["add_registry_routes"]

_EXAMPLE = {"name": "clip", "adapter": "sentence-transformers", "source": "/models/clip"}


def _validate(entry: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.model_validate(entry)
    except ValidationError as exc:
        errors = exc.errors()
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'model'}: {e['msg']}" for e in errors
        )
        param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
        raise ApiError(400, message, code="invalid_model_config", param=param or None) from None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.modelmora
    if not state.started.is_set():
        raise starting_error()
    return state


async def _blocking(fn: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        raise map_exception(exc) from exc


async def _keep(registry: RuntimeRegistry | None, method: str, arg: Any) -> None:
    """Record a change in the run-time changes file (file I/O: off the event loop)."""
    if registry is not None:
        await asyncio.to_thread(getattr(registry, method), arg)


def _entry(state: AppState, name: str) -> dict[str, Any]:
    info = next((m for m in state.scheduler.models() if m["name"] == name), {"name": name})
    cfg = state.config.model(name)
    return {**info, "origin": state.origin(name), "config": entry_of(cfg)}


def add_registry_routes(app: FastAPI) -> None:
    """Register the routes that change the registry at run time."""

    @app.post("/api/v1/models", tags=["registry"], status_code=201)
    async def register(
        request: Request, body: dict[str, Any] = Body(examples=[_EXAMPLE])
    ) -> dict[str, Any]:
        state = _state(request)
        cfg = _validate(body)
        async with state.changing:
            if any(m.name == cfg.name for m in state.config.models):
                raise ApiError(
                    409, f"model {cfg.name!r} already exists: PATCH it", code="model_exists"
                )
            await _blocking(state.scheduler.add_model, cfg)
            state.config.models.append(cfg)
            await _keep(state.registry, "put", cfg)
            state.changed()
            return _entry(state, cfg.name)

    @app.get("/api/v1/models/{name}", tags=["registry"])
    async def info(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        return await asyncio.to_thread(_entry, state, name)

    @app.patch("/api/v1/models/{name}", tags=["registry"])
    async def update(
        request: Request, name: str, body: dict[str, Any] = Body(examples=[{"max_batch_size": 8}])
    ) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        if body.get("name", name) != name:
            raise ApiError(400, "a model cannot be renamed: register a new one", param="name")
        async with state.changing:
            current = state.config.model(name)
            cfg = _validate({**entry_of(current), **body, "name": name})
            await _blocking(state.scheduler.update_model, cfg)
            models = state.config.models
            models[models.index(current)] = cfg
            await _keep(state.registry, "put", cfg)
            state.changed()
            return _entry(state, name)

    @app.delete("/api/v1/models/{name}", tags=["registry"])
    async def remove(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        async with state.changing:
            current = state.config.model(name)
            state.config.models.remove(current)  # no new request reaches it from now on
            state.changed()
            try:
                report = await _blocking(state.scheduler.remove_model, name)
            finally:
                await _keep(state.registry, "remove", name)
            return {"name": name, "removed": True, "release": report}
