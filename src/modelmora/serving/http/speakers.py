"""The speaker library over HTTP: enroll from an upload, list, show, forget.

Routes::

    POST   /api/v1/speakers          multipart: name, file (repeatable), keep_audio
    GET    /api/v1/speakers          every enrolled speaker
    GET    /api/v1/speakers/{name}   one speaker
    DELETE /api/v1/speakers/{name}

The library is the server's ``speakers_dir`` (default ``<cache_dir>/speakers``); the server's
``diarizer`` models name speakers from it. Enrollment embeds the clips with the server's
``voiceprint`` model when the config has one (so it counts against the memory budget like any
model), else in a one-off worker.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile

from modelmora.models import ModelSpec
from modelmora.runtime.worker import Worker
from modelmora.serving.http.errors import ApiError, starting_error
from modelmora.serving.http.state import AppState
from modelmora.speech.speakers import MIN_ENROLL_SPEECH_S, SpeakerLibrary, check_name

__all__ = ["add_speaker_routes"]


def _library(request: Request) -> tuple[AppState, SpeakerLibrary]:
    state: AppState = request.app.state.modelmora
    return state, SpeakerLibrary(state.config.speakers_dir)


async def _save(upload: UploadFile, folder: Path) -> Path:
    suffix = Path(upload.filename or "").suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,5}", suffix):
        suffix = ".bin"
    fd, name = tempfile.mkstemp(dir=folder, prefix="speaker-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        while chunk := await upload.read(1 << 20):
            out.write(chunk)
    if os.path.getsize(name) == 0:
        os.unlink(name)
        raise ApiError(400, "an uploaded clip is empty", param="file")
    return Path(name)


def _embed_once(paths: list[Path]) -> list[Any]:
    with Worker(ModelSpec("voiceprint", {"device": "cpu"}), name="voiceprint") as worker:
        return worker.call([{"audio": str(p)} for p in paths])


async def _embed(state: AppState, paths: list[Path]) -> list[Any]:
    configured = [m.name for m in state.config.models if m.adapter == "voiceprint"]
    if configured:
        return await state.run(configured[0], [{"audio": str(p)} for p in paths])
    if not state.started.is_set():
        raise starting_error()
    return await asyncio.to_thread(_embed_once, paths)


def _one(library: SpeakerLibrary, name: str) -> dict[str, Any]:
    for row in library.describe():
        if row["name"] == name:
            return {k: v for k, v in row.items() if k != "file"}
    raise ApiError(404, f"no speaker {name!r} is enrolled", code="speaker_not_found")


def add_speaker_routes(app: FastAPI) -> None:
    """Register the ``/api/v1/speakers`` routes."""

    @app.post("/api/v1/speakers", tags=["speakers"], status_code=201)
    async def enroll(
        request: Request,
        name: Annotated[str, Form()],
        file: Annotated[list[UploadFile], File()],
        keep_audio: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        state, library = _library(request)
        try:
            name = check_name(name)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="name") from None
        paths = [await _save(upload, state.uploads) for upload in file]
        try:
            outputs = await _embed(state, paths)
            for upload, output in zip(file, outputs, strict=True):
                if output["speech_s"] < MIN_ENROLL_SPEECH_S:
                    raise ApiError(
                        422,
                        f"{upload.filename or 'a clip'} holds only {output['speech_s']:.1f} s of "
                        f"speech; enrollment needs at least {MIN_ENROLL_SPEECH_S:.0f} s per clip",
                        code="too_little_speech",
                        param="file",
                    )
            library.add(
                name,
                outputs[0]["model"],
                [o["embedding"] for o in outputs],
                [o["speech_s"] for o in outputs],
                keep_audio=paths if keep_audio else (),
            )
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        return _one(library, name)

    @app.get("/api/v1/speakers", tags=["speakers"])
    async def list_speakers(request: Request) -> dict[str, Any]:
        _, library = _library(request)
        rows = [{k: v for k, v in row.items() if k != "file"} for row in library.describe()]
        return {"object": "list", "data": rows}

    @app.get("/api/v1/speakers/{name}", tags=["speakers"])
    async def get_speaker(request: Request, name: str) -> dict[str, Any]:
        return _one(_library(request)[1], name)

    @app.delete("/api/v1/speakers/{name}", tags=["speakers"])
    async def delete_speaker(request: Request, name: str) -> dict[str, Any]:
        _, library = _library(request)
        try:
            library.remove(name)
        except KeyError:
            raise ApiError(
                404, f"no speaker {name!r} is enrolled", code="speaker_not_found"
            ) from None
        return {"name": name, "deleted": True}
