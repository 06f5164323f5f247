"""The model server: FastAPI over the scheduler, OpenAI-compatible and native routes.

Routes (OpenAPI at ``/docs``)::

    GET  /v1/models                      POST /v1/embeddings
    GET  /v1/models/{name}               POST /v1/audio/transcriptions   (multipart)
                                         POST /v1/chat/completions       (stream=true: SSE)
    GET  /api/v1/models                  POST /api/v1/models/{name}/load | unload | predict
                                                                         (stream=true: SSE)
    GET  /api/v1/status                  POST /api/v1/jobs   GET|DELETE /api/v1/jobs/{id}
                                         GET  /api/v1/jobs/{id}/result
    GET  /metrics   GET /health/live   GET /health/ready

Every request item becomes one ``scheduler.submit`` (so the scheduler batches items of
concurrent requests together); the handler awaits the futures without blocking the event loop.
A streamed request is one submit with a chunk callback: the worker's chunks go out as
server-sent events as they are produced, and a client that disconnects stops the generation.
Every failure is a JSON error in OpenAI's shape, ``{"error": {"message", "type", "code",
"param"}}``: runtime exceptions are mapped to status codes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic_core
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from . import openai_format as fmt
from .audio import AudioError
from .config import ServerConfig
from .errors import (
    MemoryBudgetExceeded,
    MemoryLimitExceeded,
    ModelLoadError,
    ResultNotPicklable,
    WorkerCrashed,
    WorkerStopped,
    WorkerTimeout,
)
from .jobs import Job, JobNotFound, JobRunner, JobStore
from .metrics import Metrics
from .scheduler import ModelUnhealthy, QueueFull, Scheduler, UnknownModel

__all__ = ["ApiError", "create_app", "serve"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PUBLIC = ("/health/",)


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status.

    Args:
        status: the HTTP status code.
        message: what is wrong, for the client.
        type: OpenAI's error type (``invalid_request_error``, ``server_error``...).
        code: a short machine-readable code.
        param: the request field at fault, if any.
        headers: extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.headers = code, param, headers

    def body(self) -> dict[str, Any]:
        """The ``error`` object: message, type, code, param."""
        return {"message": self.message, "type": self.type, "code": self.code, "param": self.param}

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=self.headers)


def _check_name(name: str, what: str = "model") -> str:
    if not _NAME.match(name) or set(name) <= {"."}:
        raise ValueError(f"bad {what} name {name!r}: use letters, digits, '.', '_', ':' or '-'")
    return name


ModelName = Annotated[str, AfterValidator(_check_name)]


def _retry_after(exc: Exception) -> dict[str, str]:
    seconds = getattr(exc, "retry_after_s", None) or 1.0
    return {"Retry-After": str(max(1, round(float(seconds))))}


def map_exception(exc: BaseException) -> ApiError:
    """The HTTP error for an exception raised by the scheduler, a worker or the model.

    Args:
        exc: what ``submit`` raised or a future failed with.

    Returns:
        The :class:`ApiError` to answer (500 only for what nobody expected).
    """
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownModel):
        return ApiError(404, msg, code="model_not_found", param="model")
    if isinstance(exc, QueueFull):
        return ApiError(503, msg, "server_error", "queue_full", headers=_retry_after(exc))
    if isinstance(exc, ModelUnhealthy):
        return ApiError(503, msg, "server_error", "model_unhealthy", headers=_retry_after(exc))
    if isinstance(exc, MemoryBudgetExceeded):
        return ApiError(507, msg, "server_error", "memory_budget_exceeded")
    if isinstance(exc, ModelLoadError):
        return ApiError(503, msg, "server_error", "model_load_failed", headers=_retry_after(exc))
    if isinstance(exc, WorkerTimeout | TimeoutError):
        return ApiError(504, msg or "the request timed out", "server_error", "timeout")
    if isinstance(exc, MemoryLimitExceeded):
        return ApiError(502, msg, "server_error", "worker_memory_limit")
    if isinstance(exc, WorkerCrashed):
        return ApiError(502, msg, "server_error", "worker_crashed")
    if isinstance(exc, ResultNotPicklable):
        return ApiError(502, msg, "server_error", "result_not_picklable")
    if isinstance(exc, WorkerStopped):
        return ApiError(503, msg, "server_error", "worker_stopped", headers=_retry_after(exc))
    if isinstance(exc, ValueError | TypeError | AudioError | KeyError):
        return ApiError(400, msg, code="invalid_input", param=getattr(exc, "param", None))
    logger.error("unexpected error: %r", exc, exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {msg}", "server_error")


# --- state --------------------------------------------------------------------------------


@dataclass
class _State:
    """What the routes share: the config, the scheduler, the job store and its runner."""

    config: ServerConfig
    metrics: Metrics
    scheduler: Scheduler
    store: JobStore
    runner: JobRunner
    uploads: Path
    started: threading.Event = field(default_factory=threading.Event)
    start_error: BaseException | None = None

    def adapter(self, name: str, allowed: tuple[str, ...] = ()) -> str:
        """The adapter kind of model ``name``, checked against the kinds a route serves."""
        _check_name(name)
        try:
            kind = str(self.config.model(name).adapter)
        except KeyError:
            names = ", ".join(m.name for m in self.config.models) or "none"
            raise ApiError(
                404, f"model {name!r} does not exist (served: {names})", code="model_not_found"
            ) from None
        if allowed and kind not in allowed:
            raise ApiError(
                400,
                f"model {name!r} is a {kind} model; this route serves "
                f"{' or '.join(allowed)} models",
                code="wrong_model_kind",
                param="model",
            )
        return kind

    async def run(self, model: str, items: list[Any], priority: str = "normal") -> list[Any]:
        """Submit each item, await them all (within ``request_timeout_s``); outputs in order."""
        if not self.started.is_set():
            raise _starting()
        futures = []
        try:
            for item in items:
                futures.append(self.scheduler.submit(model, item, priority))
            waits = [asyncio.wrap_future(f) for f in futures]
            # The scheduler kills a call past request_timeout_s; this bound also covers the
            # wait in the queue and a (re)load, so it only fires when something is stuck.
            limit = self.config.request_timeout_s + self.config.model(model).load_timeout_s
            try:
                return await asyncio.wait_for(asyncio.gather(*waits), timeout=limit)
            except TimeoutError:
                raise TimeoutError(f"no result from model {model!r} within {limit:.0f} s") from None
        except BaseException as exc:
            for future in futures:
                future.cancel()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise map_exception(exc) from exc

    async def stream(
        self, model: str, item: Any, priority: str = "normal"
    ) -> AsyncGenerator[Any, None]:
        """Submit one streamed item; yield its chunks as the worker produces them.

        The scheduler's pool thread hands each chunk to the event loop. Closing this generator
        early (the client went away) stops the stream in the worker at its next chunk.

        Raises:
            ApiError: the request was refused, failed or timed out (after the chunks before).
        """
        if not self.started.is_set():
            raise _starting()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
        stopped = threading.Event()

        def on_chunk(value: Any) -> bool:  # in a scheduler thread
            if stopped.is_set():
                return False
            loop.call_soon_threadsafe(queue.put_nowait, (True, value))
            return True

        def on_done(future: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(queue.put_nowait, (False, future))

        try:
            future = self.scheduler.submit(model, item, priority, on_chunk=on_chunk)
        except Exception as exc:
            raise map_exception(exc) from exc
        future.add_done_callback(on_done)
        limit = self.config.request_timeout_s + self.config.model(model).load_timeout_s
        deadline = loop.time() + limit
        try:
            while True:
                try:
                    is_chunk, value = await asyncio.wait_for(queue.get(), deadline - loop.time())
                except TimeoutError:
                    error = TimeoutError(f"model {model!r} did not finish within {limit:.0f} s")
                    raise map_exception(error) from None
                if is_chunk:
                    yield value
                    continue
                if value.exception() is not None:
                    raise map_exception(value.exception()) from value.exception()
                return
        finally:
            stopped.set()
            future.cancel()  # still queued: dropped


async def _event_stream(chunks: AsyncGenerator[Any, None], events: fmt.EventFormat) -> Response:
    """A server-sent events response of ``chunks``, formatted by ``events``.

    The first chunk is awaited before answering, so a request that fails before producing
    anything (unknown model, load failure, the model's error) gets its JSON error and status.
    After that an error ends the stream with ``events.error`` instead of a hang.
    """
    try:
        first = [await anext(chunks)]
    except StopAsyncIteration:
        first = []

    async def values() -> AsyncIterator[Any]:
        for value in first:
            yield value
        async for value in chunks:
            yield value

    async def body() -> AsyncIterator[str]:
        try:
            async for value in values():
                if event := events.chunk(value):
                    yield event
            yield events.end()
        except Exception as exc:
            yield events.error(map_exception(exc).body())
        finally:  # the client went away: stops the stream in the worker
            await chunks.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


#: OpenAPI: a route that answers JSON, or server-sent events when asked to stream.
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}
}


def _state(request: Request) -> _State:
    state: _State = request.app.state.modelmora
    return state


def _start(state: _State) -> None:
    try:
        state.scheduler.start()
        state.runner.start()
        state.started.set()
        logger.info("model server ready: %d model(s)", len(state.config.models))
    except BaseException as exc:  # reported by /health/ready and every request
        state.start_error = exc
        logger.exception("the scheduler failed to start")


def _starting() -> ApiError:
    return ApiError(
        503, "the server is starting", "server_error", "starting", headers={"Retry-After": "1"}
    )


_Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


def _make_lifespan(state: _State) -> _Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.modelmora = state
        # Started in the background so /health/live answers at once and /health/ready says 503.
        starting = asyncio.create_task(asyncio.to_thread(_start, state))
        try:
            yield
        finally:
            await starting
            await asyncio.to_thread(_shutdown, state)

    return lifespan


def _shutdown(state: _State) -> None:
    state.runner.stop(timeout=5.0)
    state.scheduler.close(drain=True, timeout=30)
    state.runner.stop(timeout=1.0)
    state.store.close()


# --- middleware: auth, size limit, HTTP metrics -------------------------------------------


class _Guard:
    """Pure ASGI middleware: bearer-token auth, request size limit, HTTP metrics."""

    def __init__(self, app: Any, *, api_key: str | None, max_bytes: int, metrics: Metrics) -> None:
        from prometheus_client import Counter, Histogram

        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes
        self.requests = Counter(
            "modelmora_http_requests",
            "HTTP requests, per route and status.",
            ["method", "route", "status"],
            registry=metrics.registry,
        )
        self.latency = Histogram(
            "modelmora_http_request_seconds",
            "HTTP request time, per route.",
            ["route"],
            registry=metrics.registry,
        )

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
        self.requests.labels(scope["method"], route, str(status[0])).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def _refuse(self, scope: dict[str, Any]) -> ApiError | None:
        headers = dict(scope["headers"])
        if self.api_key and not scope["path"].startswith(_PUBLIC):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if given != f"Bearer {self.api_key}":
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


# --- request bodies -------------------------------------------------------------------------

Priority = Literal["critical", "high", "normal", "low"]


class FastJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core's serializer, with no validation pass over the content.

    For bodies that are large lists of numbers (embeddings): FastAPI's default path walks the
    returned value once to validate it and again to encode it, in Python.
    """

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: ModelName
    input: str | list[str] = Field(description="a text or a list of texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ChatMessage(_Body):
    """One chat message; ``content`` is text or a list of ``{"type": "text"}`` parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: ModelName
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)


class PredictRequest(_Body):
    """``POST /api/v1/models/{name}/predict``: one input, answered synchronously."""

    input: Any
    priority: Priority = "normal"
    stream: bool = Field(
        default=False,
        description="answer server-sent events, one {'output': chunk} per chunk, then [DONE]",
    )


class JobRequest(_Body):
    """``POST /api/v1/jobs``."""

    model: ModelName
    input: Any
    priority: Priority = "normal"


# --- app --------------------------------------------------------------------------------------


def create_app(config: ServerConfig, *, metrics: Metrics | None = None) -> FastAPI:
    """Build the FastAPI app; its lifespan starts and stops the scheduler and the job runner.

    Args:
        config: the server configuration (models, budget, limits, auth).
        metrics: the metrics registry to use (a new one by default).

    Returns:
        The app, to run with uvicorn (see :func:`serve`).
    """
    metrics = metrics or Metrics()
    jobs_db = Path(config.jobs_db or Path(config.cache_dir) / "jobs.sqlite")
    uploads = jobs_db.parent / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    scheduler = Scheduler(config, metrics=metrics)
    store = JobStore(jobs_db)
    state = _State(config, metrics, scheduler, store, JobRunner(store, scheduler), uploads)
    app = FastAPI(
        title="ModelMora",
        summary="Models in isolated worker processes under a memory budget.",
        lifespan=_make_lifespan(state),
    )
    max_bytes = int(config.max_request_mb * 2**20)
    app.add_middleware(_Guard, api_key=config.api_key, max_bytes=max_bytes, metrics=metrics)
    _add_error_handlers(app)
    _add_openai_routes(app)
    _add_native_routes(app)
    _add_job_routes(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in errors
        )
        error = ApiError(400, message or "invalid request", code="invalid_request")
        error.param = param or None
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = codes.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        error = ApiError(exc.status_code, str(exc.detail), kind, code, headers=headers)
        return error.response()

    # Raised by input checks in the routes themselves: a 400, not an unexpected error (the
    # catch-all below goes through Starlette's server-error path, which drops the connection).
    @app.exception_handler(ValueError)
    async def bad_input(request: Request, exc: ValueError) -> Response:
        return map_exception(exc).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return map_exception(exc).response()


def _add_openai_routes(app: FastAPI) -> None:
    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> dict[str, Any]:
        return fmt.model_list(_state(request).config.models)

    @app.get("/v1/models/{name}", tags=["openai"])
    async def get_model(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        return fmt.model_entry(state.config.model(name))

    @app.post("/v1/embeddings", tags=["openai"], response_class=FastJSONResponse)
    async def embeddings(request: Request, body: EmbeddingRequest) -> FastJSONResponse:
        state = _state(request)
        state.adapter(body.model, ("embedding",))
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(400, "input must not be an empty list", param="input")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported by this server", param="dimensions")
        vectors = await state.run(body.model, texts)
        return FastJSONResponse(fmt.embeddings(body.model, texts, vectors, body.encoding_format))

    @app.post("/v1/audio/transcriptions", tags=["openai"], response_model=None)
    async def transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        temperature: Annotated[float, Form(ge=0, le=1)] = 0.0,
    ) -> Response:
        state = _state(request)
        state.adapter(model, ("whisper",))
        fmt.check_transcription_options(response_format, granularities or [], language)
        path = await _save_upload(file, state.uploads)
        try:
            item = {"audio": str(path), "language": language}
            (result,) = await state.run(model, [item])
        finally:
            path.unlink(missing_ok=True)
        return fmt.transcription(result, response_format, granularities or ["segment"], temperature)

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None, responses=_SSE)
    async def chat(request: Request, body: ChatRequest) -> Response:
        state = _state(request)
        state.adapter(body.model, ("llm",))
        item = {
            "task": "chat",
            "messages": [fmt.flatten_message(m.role, m.content) for m in body.messages],
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature,
            "stop": body.stop,
        }
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            events = fmt.ChatChunks(body.model, include_usage=usage)
            return await _event_stream(state.stream(body.model, item), events)
        (result,) = await state.run(body.model, [item])
        return JSONResponse(fmt.chat_completion(body.model, result))


async def _save_upload(upload: UploadFile, folder: Path) -> Path:
    """Write an upload to a fresh file (the client's file name is used for nothing but a suffix)."""
    suffix = Path(upload.filename or "").suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = ".bin"
    fd, name = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        while chunk := await upload.read(1 << 20):
            out.write(chunk)
    if os.path.getsize(name) == 0:
        os.unlink(name)
        raise ApiError(400, "the uploaded file is empty", param="file")
    return Path(name)


def _add_native_routes(app: FastAPI) -> None:
    async def blocking(request: Request, fn: Callable[[], Any]) -> Any:
        state = _state(request)
        if not state.started.is_set():
            raise _starting()
        try:
            return await asyncio.to_thread(fn)
        except Exception as exc:
            raise map_exception(exc) from exc

    @app.get("/api/v1/models", tags=["native"])
    async def models(request: Request) -> dict[str, Any]:
        return {"models": await blocking(request, _state(request).scheduler.models)}

    @app.post("/api/v1/models/{name}/load", tags=["native"])
    async def load(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        await blocking(request, lambda: state.scheduler.load(name))
        entry = [m for m in state.scheduler.models() if m.get("name") == name]
        return entry[0] if entry else {"name": name}

    @app.post("/api/v1/models/{name}/unload", tags=["native"])
    async def unload(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        report = await blocking(request, lambda: state.scheduler.unload(name))
        return {"name": name, "release": report}

    @app.post("/api/v1/models/{name}/predict", tags=["native"], response_model=None, responses=_SSE)
    async def predict(
        request: Request, name: str, body: PredictRequest
    ) -> Response | dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        fmt.check_json_input(body.input)
        if body.stream:
            chunks = state.stream(name, body.input, body.priority)
            return await _event_stream(chunks, fmt.OutputChunks())
        (output,) = await state.run(name, [body.input], body.priority)
        return {"model": name, "output": output}

    @app.get("/api/v1/status", tags=["native"])
    async def status(request: Request) -> dict[str, Any]:
        state = _state(request)
        data = dict(await blocking(request, state.scheduler.status))
        data["jobs"] = await asyncio.to_thread(state.store.counts)
        return data

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        state = _state(request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/health/live", tags=["ops"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        state = _state(request)
        if state.start_error is not None:
            message = f"the scheduler failed to start: {state.start_error}"
            return ApiError(503, message, "server_error", "not_ready").response()
        if not state.started.is_set() or not state.scheduler.is_ready():
            return ApiError(503, "not ready yet", "server_error", "not_ready").response()
        return JSONResponse({"status": "ready"})


def _add_job_routes(app: FastAPI) -> None:
    def find(state: _State, job_id: str) -> Any:
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise ApiError(400, f"bad job id {job_id!r}: ids are 32 hex digits", param="id")
        try:
            return state.store.get(job_id)
        except JobNotFound:
            raise ApiError(404, f"job {job_id} does not exist", code="job_not_found") from None

    @app.post("/api/v1/jobs", tags=["jobs"], status_code=202)
    async def create(request: Request, body: JobRequest) -> dict[str, Any]:
        state = _state(request)
        state.adapter(body.model)
        item = fmt.job_input(body.input, state.uploads)
        try:
            job = await asyncio.to_thread(state.store.create, body.model, item, body.priority)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="input") from exc
        state.runner.notify()
        return {"id": job.id, "status": job.status, "model": job.model}

    @app.get("/api/v1/jobs/{job_id}", tags=["jobs"])
    async def get(request: Request, job_id: str) -> dict[str, Any]:
        job: Job = find(_state(request), job_id)
        return job.summary()

    @app.get("/api/v1/jobs/{job_id}/result", tags=["jobs"])
    async def result(request: Request, job_id: str) -> Response:
        job = find(_state(request), job_id)
        if job.status == "succeeded":
            return JSONResponse({"id": job.id, "status": job.status, "result": job.result})
        if job.status in ("failed", "cancelled"):
            message = f"job {job.status}: {job.error_type or ''} {job.error or ''}".strip()
            return ApiError(409, message, code=f"job_{job.status}").response()
        return ApiError(
            409,
            f"job is {job.status}: no result yet",
            code="job_not_finished",
            headers={"Retry-After": "1"},
        ).response()

    @app.delete("/api/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel(request: Request, job_id: str) -> dict[str, Any]:
        state = _state(request)
        find(state, job_id)
        return state.runner.cancel(job_id).summary()


def serve(config: ServerConfig, *, log_level: str = "info", access_log: bool = True) -> None:
    """Run the server with uvicorn until interrupted (SIGINT/SIGTERM stop it cleanly).

    Args:
        config: the configuration; ``host`` and ``port`` say where to listen.
        log_level: uvicorn's log level (critical, error, warning, info, debug, trace).
        access_log: one line per request on stdout (uvicorn's access log).
    """
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=access_log,
    )
