"""The model server: FastAPI over the scheduler, OpenAI-compatible and native routes.

Routes (OpenAPI at ``/docs``)::

    GET  /v1/models                      POST /v1/embeddings
    GET  /v1/models/{name}               POST /v1/audio/transcriptions   (multipart)
                                         POST /v1/chat/completions       (stream=true: SSE)
    GET  /api/v1/models                  POST /api/v1/models/{name}/load | unload | predict
    POST /api/v1/models (register)       GET|PATCH|DELETE /api/v1/models/{name}
                                         POST /v1/rerank
                                                                         (stream=true: SSE)
    GET  /api/v1/status                  POST /api/v1/jobs   GET|DELETE /api/v1/jobs/{id}
                                         GET  /api/v1/jobs/{id}/result
    GET  /api/v1/speakers[/{name}]       POST /api/v1/speakers   DELETE /api/v1/speakers/{name}
    GET  /metrics   GET /health/live   GET /health/ready

Every request item becomes one ``scheduler.submit`` (so the scheduler batches items of
concurrent requests together); the handler awaits the futures without blocking the event loop.
A streamed request is one submit with a chunk callback: the worker's chunks go out as
server-sent events as they are produced, and a client that disconnects stops the generation.
Every failure is a JSON error in OpenAI's shape, ``{"error": {"message", "type", "code",
"param"}}``: runtime exceptions are mapped to status codes in
:mod:`modelmora.serving.http.errors` and
nowhere else.

This module assembles the app (:func:`create_app`): the lifespan that starts and stops the
scheduler and the job runner, the middleware (auth, size limit, HTTP metrics), and
:func:`serve`. The routes are in :mod:`modelmora.serving.http.routes`, the state they share in
:mod:`modelmora.serving.http.state`, the request bodies in :mod:`modelmora.serving.http.bodies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException

from modelmora.serving.config import ServerConfig
from modelmora.serving.http.errors import ApiError, add_error_handlers
from modelmora.serving.http.frontends import FrontEnds
from modelmora.serving.http.manage import add_registry_routes
from modelmora.serving.http.rerank import add_rerank_routes
from modelmora.serving.http.routes import (
    add_inference_routes,
    add_job_routes,
    add_native_routes,
    add_openai_routes,
)
from modelmora.serving.http.speakers import add_speaker_routes
from modelmora.serving.http.state import AppState
from modelmora.serving.jobs import JobRunner, JobStore
from modelmora.serving.metrics import Metrics
from modelmora.serving.registry import RuntimeRegistry
from modelmora.serving.scheduler.core import Scheduler

__all__ = ["ApiError", "create_app", "serve"]

logger = logging.getLogger(__name__)

_PUBLIC = ("/health/",)


def _start(state: AppState, front: FrontEnds | None = None) -> None:
    try:
        state.scheduler.start()
        state.runner.start()
        state.started.set()
        logger.info("model server ready: %d model(s)", len(state.config.models))
    except BaseException as exc:  # reported by /health/ready and every request
        state.start_error = exc
        logger.exception("the scheduler failed to start")
    if front is not None:
        front.started(state.start_error)


_Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


def _make_lifespan(
    state: AppState, front_ends: Callable[[AppState], FrontEnds] | None
) -> _Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.modelmora = state
        front = front_ends(state) if front_ends is not None else None
        if front is not None:
            front.start()
        # Started in the background so /health/live answers at once and /health/ready says 503.
        starting = asyncio.create_task(asyncio.to_thread(_start, state, front))
        try:
            yield
        finally:
            await starting
            if front is not None:  # they drain their requests while the scheduler still runs
                await asyncio.to_thread(front.stop)
            await asyncio.to_thread(_shutdown, state)

    return lifespan


def _shutdown(state: AppState) -> None:
    state.runner.stop(timeout=5.0)
    state.scheduler.close(drain=True, timeout=30)
    state.runner.stop(timeout=1.0)
    state.store.close()


# --- middleware: auth, size limit, HTTP metrics -------------------------------------------


#: Where the middleware records a request: (method, route, status, seconds).
_Observe = Callable[[str, str, int, float], None]


class Guard:
    """Pure ASGI middleware: bearer-token auth, request size limit, HTTP metrics."""

    def __init__(self, app: Any, *, api_key: str | None, max_bytes: int, observe: _Observe) -> None:
        self.app, self.max_bytes, self.observe = app, max_bytes, observe
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        error = self._refuse(scope)
        if error is not None:
            await error.response()(scope, receive, send_status)
        else:
            await self.app(scope, self._limited(scope, receive), send_status)
        route = getattr(scope.get("route"), "path", "unmatched")
        self.observe(scope["method"], route, status[0], time.perf_counter() - started)

    def _refuse(self, scope: dict[str, Any]) -> ApiError | None:
        headers = dict(scope["headers"])
        if self.expected is not None and not scope["path"].startswith(_PUBLIC):
            given = headers.get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):  # no timing side channel
                return ApiError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        limit = self.max_bytes / 2**20
        return ApiError(413, f"request body larger than {limit:g} MB", code="request_too_large")

    def _limited(self, scope: dict[str, Any], receive: Any) -> Any:
        """``receive`` that refuses a body (chunked included) past the limit."""
        seen = [0]

        async def limited() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_bytes:  # an HTTPException passes through body parsing as is
                raise HTTPException(413, self._too_large().message)
            return message

        return limited


# --- app --------------------------------------------------------------------------------------


def _jobs_db(config: ServerConfig) -> Path:
    return Path(config.jobs_db or Path(config.cache_dir) / "jobs.sqlite")


def uploads_dir(config: ServerConfig) -> Path:
    """Where uploaded files wait for their model (created): beside the jobs database."""
    uploads = _jobs_db(config).parent / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    return uploads


def create_app(
    config: ServerConfig,
    *,
    metrics: Metrics | None = None,
    front_ends: Callable[[AppState], FrontEnds] | None = None,
) -> FastAPI:
    """Build the FastAPI app; its lifespan starts and stops the scheduler and the job runner.

    Args:
        config: the server configuration (models, budget, limits, auth).
        metrics: the metrics registry to use (a new one by default).
        front_ends: builds the front-end processes that serve the public socket
            (``http_workers`` > 1); started with the app, stopped before the scheduler.

    Returns:
        The app, to run with uvicorn (see :func:`serve`).
    """
    metrics = metrics or Metrics()
    jobs_db = _jobs_db(config)
    uploads = uploads_dir(config)
    registry = RuntimeRegistry(
        config.registry_file or Path(config.cache_dir) / "registry.yaml",
        {m.name for m in config.models},
    )
    config = registry.apply(config)  # the models registered, changed, removed through the API
    scheduler = Scheduler(config, metrics=metrics)
    store = JobStore(jobs_db)
    runner = JobRunner(store, scheduler)
    state = AppState(
        config=config,
        submitter=scheduler,
        uploads=uploads,
        metrics=metrics,
        scheduler=scheduler,
        store=store,
        runner=runner,
        registry=registry,
    )
    app = FastAPI(
        title="ModelMora",
        summary="Models in isolated worker processes under a memory budget.",
        lifespan=_make_lifespan(state, front_ends),
    )
    max_bytes = int(config.max_request_mb * 2**20)
    app.add_middleware(
        Guard, api_key=config.api_key, max_bytes=max_bytes, observe=metrics.observe_http
    )
    add_error_handlers(app)
    add_openai_routes(app)
    add_inference_routes(app)
    add_rerank_routes(app)
    add_native_routes(app)
    add_registry_routes(app)
    add_job_routes(app)
    add_speaker_routes(app)
    return app


def serve(config: ServerConfig, *, log_level: str = "info", access_log: bool = True) -> None:
    """Run the server with uvicorn until interrupted (SIGINT/SIGTERM stop it cleanly).

    With ``config.http_workers`` > 1 this process serves its app on a private Unix socket and
    ``http_workers`` front-end processes accept on ``host:port``
    (:mod:`modelmora.serving.http.frontends`).

    Args:
        config: the configuration; ``host`` and ``port`` say where to listen.
        log_level: uvicorn's log level (critical, error, warning, info, debug, trace).
        access_log: one line per request on stdout (uvicorn's access log).
    """
    import uvicorn

    if config.http_workers == 1:
        uvicorn.run(
            create_app(config),
            host=config.host,
            port=config.port,
            log_level=log_level,
            access_log=access_log,
        )
        return
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listen = socket.create_server((config.host, config.port), family=family, backlog=2048)
    listen.set_inheritable(True)
    # private (0700); removed when the front ends stop, in the app's shutdown (uvicorn re-raises
    # the signal that stopped it, so nothing after uvicorn.run would run)
    folder = Path(tempfile.mkdtemp(prefix="modelmora-server-"))

    def front_ends(state: AppState) -> FrontEnds:
        return FrontEnds(
            state, config.http_workers, listen, folder, log_level=log_level, access_log=access_log
        )

    logger.info(
        "listening on %s:%d with %d HTTP front ends",
        config.host,
        listen.getsockname()[1],
        config.http_workers,
    )
    uvicorn.run(
        create_app(config, front_ends=front_ends),
        uds=str(folder / "app.sock"),
        log_level=log_level,
        access_log=False,  # the front ends log every request, forwarded ones too
    )
