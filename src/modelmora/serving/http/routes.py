"""The HTTP routes, in groups: each ``add_*_routes`` function registers one group on the app.

* :func:`add_openai_routes`: ``/v1/models`` (OpenAI's shapes, built by
  :mod:`modelmora.serving.http.openai`);
* :func:`add_inference_routes`: the routes that run models, ``/v1/embeddings``,
  ``/v1/audio/transcriptions``, ``/v1/chat/completions`` and ``/api/v1/models/{name}/predict``;
* :func:`add_native_routes`: ``/api/v1/models`` (list, load, unload),
  ``/api/v1/status``, ``/metrics`` and the health checks;
* :func:`add_job_routes`: ``/api/v1/jobs`` (create, get, result, cancel).

A route finds the :class:`~modelmora.serving.http.state.AppState` on ``app.state.modelmora``.
A streamed
answer is server-sent events; a client that disconnects stops the generation.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import pydantic_core
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import modelmora.serving.http.diarized as diarized
import modelmora.serving.http.openai as fmt
from modelmora.serving.http.bodies import ChatRequest, EmbeddingRequest, JobRequest, PredictRequest
from modelmora.serving.http.errors import ApiError, map_exception, starting_error
from modelmora.serving.http.state import AppState, Serving
from modelmora.serving.jobs import Job, JobNotFound

__all__ = [
    "FastJSONResponse",
    "add_inference_routes",
    "add_job_routes",
    "add_native_routes",
    "add_openai_routes",
]


class FastJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core's serializer, with no validation pass over the content.

    For bodies that are large lists of numbers (embeddings): FastAPI's default path walks the
    returned value once to validate it and again to encode it, in Python.
    """

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


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


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.modelmora
    return state


def _serving(request: Request) -> Serving:
    state: Serving = request.app.state.modelmora
    return state


def add_openai_routes(app: FastAPI) -> None:
    """Register the OpenAI-compatible model list: ``/v1/models`` and ``/v1/models/{name}``."""

    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> dict[str, Any]:
        return fmt.model_list(_state(request).config.models)

    @app.get("/v1/models/{name}", tags=["openai"])
    async def get_model(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        return fmt.model_entry(state.config.model(name))


def add_inference_routes(app: FastAPI) -> None:
    """Register the routes that run models: embeddings, transcriptions, chat and predict.

    They need only :class:`~modelmora.serving.http.state.Serving`: a front-end process
    (``--http-workers``) answers them itself and forwards every other route to the main process.
    """

    @app.post("/v1/embeddings", tags=["openai"], response_class=FastJSONResponse)
    async def embeddings(request: Request, body: EmbeddingRequest) -> FastJSONResponse:
        state = _serving(request)
        state.adapter(body.model, "/v1/embeddings")
        given = [body.input] if isinstance(body.input, str) else body.input
        if not given:
            raise ApiError(400, "input must not be an empty list", param="input")
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported by this server", param="dimensions")
        try:
            items = [v if isinstance(v, str) else v.item() for v in given]
        except ValueError as exc:
            raise ApiError(400, str(exc), param="input") from None
        vectors = await state.run(body.model, items)
        texts = [v for v in items if isinstance(v, str)]
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
        speaker_names: Annotated[list[str] | None, Form(alias="known_speaker_names[]")] = None,
        speaker_refs: Annotated[list[str] | None, Form(alias="known_speaker_references[]")] = None,
        chunking_strategy: Annotated[str | None, Form()] = None,  # accepted; not needed here
    ) -> Response:
        state = _serving(request)
        state.adapter(model, "/v1/audio/transcriptions")
        diarize = response_format == diarized.DIARIZED
        fmt.check_transcription_options(
            "json" if diarize else response_format, granularities or [], language
        )
        diarizer = _diarizer_of(state, model) if diarize else None
        known = diarized.known_speakers(speaker_names or [], speaker_refs or [])
        path = await _save_upload(file, state.uploads)
        try:
            item = {"audio": str(path), "language": language}
            if prompt:  # OpenAI's prompt is Whisper's initial prompt
                item["initial_prompt"] = prompt
            (result,) = await state.run(model, [item])
            if diarizer is not None:
                labelled = diarized.diarizer_input(str(path), result, known)
                (speakers,) = await state.run(diarizer, [labelled])
                return JSONResponse(diarized.diarized_json(result, speakers, known))
        finally:
            path.unlink(missing_ok=True)
        return fmt.transcription(result, response_format, granularities or ["segment"], temperature)

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None, responses=_SSE)
    async def chat(request: Request, body: ChatRequest) -> Response:
        state = _serving(request)
        state.adapter(body.model, "/v1/chat/completions")
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

    @app.post("/api/v1/models/{name}/predict", tags=["native"], response_model=None, responses=_SSE)
    async def predict(
        request: Request, name: str, body: PredictRequest
    ) -> Response | dict[str, Any]:
        state = _serving(request)
        state.adapter(name)
        fmt.check_json_input(body.input)
        if body.stream:
            chunks = state.stream(name, body.input, body.priority)
            return await _event_stream(chunks, fmt.OutputChunks())
        (output,) = await state.run(name, [body.input], body.priority)
        return {"model": name, "output": output}


def _diarizer_of(state: Serving, model: str) -> str:
    """The diarizer model configured for transcription model ``model`` (400 if none)."""
    name = state.config.model(model).diarizer
    if name is None:
        raise ApiError(
            400,
            f"model {model!r} has no diarizer: add 'diarizer: NAME' (a model with adapter "
            "diarizer) to its config entry to use response_format=diarized_json",
            param="response_format",
        )
    state.adapter(name)
    return name


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


def add_native_routes(app: FastAPI) -> None:
    """Register the native routes (models, load, unload, status) and the ops routes."""

    async def blocking(request: Request, fn: Callable[[], Any]) -> Any:
        state = _state(request)
        if not state.started.is_set():
            raise starting_error()
        try:
            return await asyncio.to_thread(fn)
        except Exception as exc:
            raise map_exception(exc) from exc

    @app.get("/api/v1/models", tags=["native"])
    async def models(request: Request) -> dict[str, Any]:
        state = _state(request)
        entries = await blocking(request, state.scheduler.models)
        return {"models": [{**e, "origin": state.origin(e["name"])} for e in entries]}

    @app.post("/api/v1/models/{name}/load", tags=["native"])
    async def load(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        entry: dict[str, Any] = await blocking(request, lambda: state.scheduler.load(name))
        return entry

    @app.post("/api/v1/models/{name}/unload", tags=["native"])
    async def unload(request: Request, name: str) -> dict[str, Any]:
        state = _state(request)
        state.adapter(name)
        report = await blocking(request, lambda: state.scheduler.unload(name))
        return {"name": name, "release": report}

    @app.get("/api/v1/status", tags=["native"])
    async def status(request: Request) -> dict[str, Any]:
        state = _state(request)
        data = dict(await blocking(request, state.scheduler.status))
        data["jobs"] = await asyncio.to_thread(state.store.counts)
        if state.registry is not None:
            data["runtime_changes"] = state.registry.changes()
        return data

    @app.get("/api/v1/releases", tags=["native"])
    async def releases(request: Request) -> dict[str, Any]:
        """The most recent worker exits (up to 100): model, reason, and what was released."""
        return {"releases": await blocking(request, _state(request).scheduler.releases)}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        state = _state(request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/health/live", tags=["ops"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/models", tags=["ops"])
    async def health_models(request: Request) -> dict[str, Any]:
        """Each model's state and health: unhealthy ones get no traffic until ``retry_after_s``."""
        entries = await blocking(request, _state(request).scheduler.models)
        keys = ("name", "state", "error", "retry_after_s", "load_failures", "last_used")
        models = [
            {k: e.get(k) for k in keys} | {"healthy": e["state"] != "unhealthy"} for e in entries
        ]
        return {"models": models}

    @app.get("/health/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        state = _state(request)
        if state.start_error is not None:
            message = f"the scheduler failed to start: {state.start_error}"
            return ApiError(503, message, "server_error", "not_ready").response()
        # is_ready takes the scheduler's lock (a dispatch pass may hold it): not on the loop
        if not state.started.is_set() or not await asyncio.to_thread(state.scheduler.is_ready):
            return ApiError(503, "not ready yet", "server_error", "not_ready").response()
        return JSONResponse({"status": "ready"})


def add_job_routes(app: FastAPI) -> None:
    """Register the job routes: create, get, result, cancel."""

    async def find(state: AppState, job_id: str, fn: Callable[[str], Job] | None = None) -> Job:
        """``fn(job_id)`` (the store's ``get`` by default) in a thread: SQLite, maybe fsync'd,
        never on the event loop."""
        if not re.fullmatch(r"[0-9a-f]{32}", job_id):
            raise ApiError(400, f"bad job id {job_id!r}: ids are 32 hex digits", param="id")
        try:
            return await asyncio.to_thread(fn or state.store.get, job_id)
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
        job = await find(_state(request), job_id)
        return job.summary()

    @app.get("/api/v1/jobs/{job_id}/result", tags=["jobs"])
    async def result(request: Request, job_id: str) -> Response:
        job = await find(_state(request), job_id)
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
        job = await find(state, job_id, state.runner.cancel)  # an fsync'd UPDATE
        return job.summary()
