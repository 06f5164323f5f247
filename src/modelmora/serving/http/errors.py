"""HTTP errors: :class:`ApiError`, the mapping of runtime exceptions to status codes, handlers.

Every failure is answered as a JSON error in OpenAI's shape, ``{"error": {"message", "type",
"code", "param"}}``: :func:`map_exception` is the one place where the scheduler's, the workers'
and the models' exceptions become HTTP status codes; :func:`add_error_handlers` makes FastAPI's
own errors (validation, 404, 405, 413) answer in the same shape.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from modelmora.errors import (
    InvalidInput,
    MemoryBudgetExceeded,
    MemoryLimitExceeded,
    ModelLoadError,
    ResultNotPicklable,
    WorkerCrashed,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.serving.scheduler.core import ModelUnhealthy, QueueFull, UnknownModel
from modelmora.speech.audio import AudioError

__all__ = ["ApiError", "add_error_handlers", "map_exception", "starting_error"]

# The server's log: an unexpected error is its record, whichever module writes it.
logger = logging.getLogger("modelmora.serving.http.app")


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


# before Python 3.11, asyncio's and concurrent.futures' TimeoutError are not the builtin one
_TIMEOUTS = (WorkerTimeout, TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)


def _retry_after(exc: Exception) -> dict[str, str]:
    seconds = getattr(exc, "retry_after_s", None) or 1.0
    return {"Retry-After": str(max(1, round(float(seconds))))}


def map_exception(exc: BaseException) -> ApiError:
    """The HTTP error for an exception raised by the scheduler, a worker or the model.

    Only the model's declared input errors are the client's fault (400 ``invalid_input``):
    :class:`~modelmora.errors.InvalidInput`, any ``ValueError`` (what adapters raise for an
    item they refuse) and :class:`~modelmora.speech.audio.AudioError`. A lost worker is a 5xx
    (502 crashed or over its memory cap, 503 stopped, 504 timed out); anything unexpected
    (``TypeError``, ``KeyError``...) is logged with its traceback and answered 500.

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
    if isinstance(exc, _TIMEOUTS):
        return ApiError(504, msg or "the request timed out", "server_error", "timeout")
    if isinstance(exc, MemoryLimitExceeded):
        return ApiError(502, msg, "server_error", "worker_memory_limit")
    if isinstance(exc, WorkerCrashed):
        return ApiError(502, msg, "server_error", "worker_crashed")
    if isinstance(exc, ResultNotPicklable):
        return ApiError(502, msg, "server_error", "result_not_picklable")
    if isinstance(exc, WorkerStopped):
        return ApiError(503, msg, "server_error", "worker_stopped", headers=_retry_after(exc))
    if isinstance(exc, InvalidInput):
        return ApiError(400, msg, code="invalid_input", param=exc.param)
    if isinstance(exc, ValueError | AudioError):  # what adapters raise for an item they refuse
        return ApiError(400, msg, code="invalid_input", param=getattr(exc, "param", None))
    # anything else (TypeError, KeyError...) is a bug on the server's side, not the client's
    logger.error("unexpected error: %r", exc, exc_info=exc)
    return ApiError(500, f"internal error: {type(exc).__name__}: {msg}", "server_error")


def starting_error() -> ApiError:
    """The 503 answered while the scheduler is still starting (``Retry-After: 1``)."""
    return ApiError(
        503, "the server is starting", "server_error", "starting", headers={"Retry-After": "1"}
    )


def add_error_handlers(app: FastAPI) -> None:
    """Answer every error on ``app`` as an :class:`ApiError`: validation errors are 400s."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
        if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
            param = ""
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
