"""Request checks and response bodies in the shapes OpenAI's API (and its clients) use.

Pure functions between the HTTP routes of :mod:`modelmora.serving.http.routes` and the
adapters' outputs:
embedding vectors become ``{"object": "list", "data": [...]}`` (floats or base64 float32),
transcript dicts become json/text/srt/vtt/verbose_json, chat results become
``chat.completion`` objects, and the pieces of a streamed completion server-sent
``chat.completion.chunk`` events. Subtitles are rendered in memory by
:func:`modelmora.speech.formats.render`, the same renderers the CLI writes files with.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from modelmora.errors import InvalidInput
from modelmora.models.llm import estimate_tokens
from modelmora.serving.config import ModelConfig
from modelmora.speech.formats import render
from modelmora.speech.transcript import Transcript

__all__ = [
    "RESPONSE_FORMATS",
    "ChatChunks",
    "EventFormat",
    "OutputChunks",
    "chat_completion",
    "check_json_input",
    "check_transcription_options",
    "embeddings",
    "flatten_message",
    "job_input",
    "model_entry",
    "model_list",
    "transcription",
]

#: ``response_format`` values of ``/v1/audio/transcriptions``.
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_GRANULARITIES = ("word", "segment")
_STARTED = int(time.time())


#: A request value the server cannot use; ``param`` names the field (a 400 ``invalid_input``).
InputError = InvalidInput


def model_entry(model: ModelConfig) -> dict[str, Any]:
    """One ``/v1/models`` entry."""
    return {"id": model.name, "object": "model", "created": _STARTED, "owned_by": "modelmora"}


def model_list(models: Iterable[ModelConfig]) -> dict[str, Any]:
    """The ``/v1/models`` body."""
    return {"object": "list", "data": [model_entry(m) for m in models]}


def embeddings(
    model: str, texts: list[str], vectors: list[list[float]], encoding: str
) -> dict[str, Any]:
    """The ``/v1/embeddings`` body.

    Args:
        model: the model name.
        texts: the text inputs (for the usage count; images are not counted).
        vectors: one vector per input.
        encoding: ``float`` (lists of numbers) or ``base64`` (little-endian float32 bytes).
    """
    data = []
    for index, vector in enumerate(vectors):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(estimate_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def check_transcription_options(
    response_format: str, granularities: list[str], language: str | None
) -> None:
    """Validate the transcription form fields.

    Raises:
        InputError: an unknown format or granularity, word timestamps without verbose_json,
            or a language that is not a short code.
    """
    if response_format not in RESPONSE_FORMATS:
        raise InputError(
            f"unknown response_format {response_format!r}: "
            f"use one of {', '.join(RESPONSE_FORMATS)}",
            "response_format",
        )
    for name in granularities:
        if name not in _GRANULARITIES:
            raise InputError(
                f"unknown timestamp granularity {name!r}: use word or segment",
                "timestamp_granularities[]",
            )
    if granularities and response_format != "verbose_json":
        raise InputError(
            "timestamp_granularities needs response_format=verbose_json",
            "timestamp_granularities[]",
        )
    if language is not None and not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z]{2,4})?", language):
        message = f"bad language {language!r}: give an ISO-639 code such as 'en'"
        raise InputError(message, "language")


def transcription(
    result: dict[str, Any], response_format: str, granularities: list[str], temperature: float
) -> Response:
    """The ``/v1/audio/transcriptions`` response for one whisper worker result.

    Args:
        result: the transcript dict (:meth:`Transcript.to_dict` shape).
        response_format: one of :data:`RESPONSE_FORMATS`.
        granularities: ``word`` and/or ``segment`` (verbose_json only).
        temperature: echoed in verbose_json segments.
    """
    transcript = Transcript.from_dict(result)
    if response_format == "json":
        return JSONResponse({"text": transcript.text})
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format in ("srt", "vtt"):
        text = render(transcript, response_format)
        assert isinstance(text, str)  # srt and vtt are text (only docx renders bytes)
        return PlainTextResponse(text)
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language or "",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": seg.id,
                "seek": 0,
                "start": round(seg.start, 3),
                "end": round(seg.end, 3),
                "text": seg.text,
                "tokens": [],
                "temperature": temperature,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for seg in transcript.segments
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for seg in transcript.segments
            for w in seg.words
        ]
    return JSONResponse(body)


def flatten_message(role: str, content: str | list[dict[str, Any]] | None) -> dict[str, str]:
    """A chat message with its content as one string (text parts joined).

    Raises:
        InputError: a content part that is not text.
    """
    if content is None or isinstance(content, str):
        return {"role": role, "content": content or ""}
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InputError(
                f"content part of type {part.get('type')!r} is not supported: only text",
                "messages",
            )
        texts.append(part["text"])
    return {"role": role, "content": "\n".join(texts)}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_completion(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` body for one LLM worker result."""
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result["text"]},
                "finish_reason": result.get("finish_reason") or "stop",
                "logprobs": None,
            }
        ],
        "usage": result.get("usage"),
    }


def _event(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


_DONE = "data: [DONE]\n\n"


class EventFormat(Protocol):
    """How a streamed response writes its server-sent events (:class:`ChatChunks`...)."""

    def chunk(self, value: Any) -> str:
        """The events of one chunk from the worker ("" for none)."""
        ...

    def end(self) -> str:
        """The events after the last chunk."""
        ...

    def error(self, error: dict[str, Any]) -> str:
        """The event of a failure midway (the stream ends after it)."""
        ...


class ChatChunks:
    """Server-sent ``chat.completion.chunk`` events of one completion, as its pieces arrive.

    The LLM adapter streams ``{"text": piece}`` dicts, the last one with ``finish_reason`` and
    ``usage``. The events are a role chunk, one content chunk per non-empty piece, a chunk
    with the finish reason, the usage chunk when asked (``stream_options.include_usage``) and
    ``data: [DONE]``.

    Args:
        model: the model name echoed in every chunk.
        include_usage: send the usage chunk before ``[DONE]``.
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.base = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage
        self.finish_reason = "stop"
        self.usage: dict[str, int] | None = None
        self._started = False

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _event({**self.base, "choices": [choice]})

    def _start(self) -> str:
        if self._started:
            return ""
        self._started = True
        return self._choice({"role": "assistant", "content": ""})

    def chunk(self, piece: dict[str, Any]) -> str:
        """The events of one piece from the adapter ("" when it carries no text)."""
        out = self._start()
        if piece.get("text"):
            out += self._choice({"content": piece["text"]})
        self.finish_reason = piece.get("finish_reason") or self.finish_reason
        self.usage = piece.get("usage") or self.usage
        return out

    def end(self) -> str:
        """The finish chunk, the usage chunk if asked, and ``[DONE]``."""
        out = self._start() + self._choice({}, self.finish_reason)
        if self.include_usage:
            out += _event({**self.base, "choices": [], "usage": self.usage})
        return out + _DONE

    def error(self, error: dict[str, Any]) -> str:
        """An ``{"error": ...}`` event: the stream failed (OpenAI's clients raise on it)."""
        return _event({"error": error})


class OutputChunks:
    """Server-sent events of a native streamed prediction: ``{"output": chunk}`` each, then
    ``[DONE]``; a failure is an ``{"error": ...}`` event."""

    def chunk(self, value: Any) -> str:
        """The event of one chunk."""
        return _event({"output": jsonable_encoder(value)})

    def end(self) -> str:
        """``[DONE]``."""
        return _DONE

    def error(self, error: dict[str, Any]) -> str:
        """An ``{"error": ...}`` event."""
        return _event({"error": error})


def check_json_input(value: Any) -> None:
    """Refuse inputs that name files on the server (``audio`` paths).

    Raises:
        InputError: a dict input with a string ``audio`` value.
    """
    if isinstance(value, dict) and isinstance(value.get("audio"), str):
        raise InputError(
            "server-side file paths are not accepted: send the audio as audio_base64, or use "
            "/v1/audio/transcriptions",
            "input.audio",
        )


def job_input(value: Any, uploads: Path) -> Any:
    """A job's input as stored: ``audio_base64`` is decoded into a file under ``uploads``.

    Args:
        value: the JSON input of the request.
        uploads: the folder of uploaded audio (next to the jobs database).

    Returns:
        The input, with ``{"audio_base64": ...}`` replaced by ``{"audio": <path>}``.

    Raises:
        InputError: a server path in ``audio``, or ``audio_base64`` that is not base64.
    """
    check_json_input(value)
    if not (isinstance(value, dict) and "audio_base64" in value):
        return value
    try:
        data = base64.b64decode(str(value["audio_base64"]), validate=True)
    except ValueError:
        raise InputError("audio_base64 is not valid base64", "input.audio_base64") from None
    if not data:
        raise InputError("audio_base64 is empty", "input.audio_base64")
    path = uploads / f"job-{uuid.uuid4().hex}.audio"
    path.write_bytes(data)
    item = {k: v for k, v in value.items() if k != "audio_base64"}
    item["audio"] = str(path)
    return item
