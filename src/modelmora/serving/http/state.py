"""What the routes share: :class:`Serving` (what the inference routes need) and
:class:`AppState` (all of it: the scheduler, the jobs, the registry).

:meth:`Serving.run` submits the items of a request together (so the scheduler batches them with
the items of concurrent requests) and awaits the futures without blocking the event loop;
:meth:`Serving.stream` submits one item with a chunk callback and yields the worker's chunks as
they are produced. Both go through a :class:`Submitter`: the scheduler itself, or in a front-end
process (``--http-workers``) the scheduler of the main process over a local channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modelmora.serving.config import ModelConfig, ServerConfig
from modelmora.serving.http.bodies import check_name
from modelmora.serving.http.errors import ApiError, map_exception, starting_error
from modelmora.serving.jobs import JobRunner, JobStore
from modelmora.serving.metrics import Metrics
from modelmora.serving.registry import RuntimeRegistry
from modelmora.serving.scheduler.core import Scheduler

__all__ = ["ROUTE_TASKS", "AppState", "Serving", "Submitter"]

#: The task each task-specific route serves (what a refusal tells the client).
ROUTE_TASKS = {
    "/v1/embeddings": "embedding",
    "/v1/audio/transcriptions": "transcription",
    "/v1/chat/completions": "chat",
    "/v1/rerank": "rerank",
}


class Submitter(Protocol):
    """What runs requests: :class:`~modelmora.serving.scheduler.core.Scheduler`'s two calls."""

    def submit(
        self,
        model: str,
        item: Any,
        priority: str = "normal",
        *,
        on_chunk: Callable[[Any], Any] | None = None,
    ) -> Future[Any]: ...

    def submit_many(
        self, model: str, items: list[Any], priority: str = "normal"
    ) -> list[Future[Any]]: ...


@dataclass(kw_only=True)
class Serving:
    """What the inference routes share: the config, the submitter, the uploads folder."""

    config: ServerConfig
    submitter: Submitter
    uploads: Path
    started: threading.Event = field(default_factory=threading.Event)
    start_error: BaseException | None = None

    def adapter(self, name: str, route: str = "") -> str:
        """The adapter kind of model ``name``, checked against the routes its adapter answers.

        Args:
            name: the model.
            route: the route asking (``/v1/embeddings``...); ``""``: any model will do.

        Raises:
            ApiError: 404 for an unknown model; 400 naming the model's task when its adapter
                does not declare ``route``.
        """
        check_name(name)
        try:
            cfg = self.config.model(name)
        except KeyError:
            names = ", ".join(m.name for m in self.config.models) or "none"
            raise ApiError(
                404, f"model {name!r} does not exist (served: {names})", code="model_not_found"
            ) from None
        caps = cfg.capabilities
        if route and route not in caps.routes:
            answers = ", ".join(caps.routes) or "none but predict"
            raise ApiError(
                400,
                f"model {name!r} is a {caps.task} model (adapter {cfg.adapter}): {route} serves "
                f"{ROUTE_TASKS.get(route, 'other')} models. Routes it answers: {answers} "
                f"(and POST /api/v1/models/{name}/predict)",
                code="wrong_model_kind",
                param="model",
            )
        return cfg.adapter

    async def run(self, model: str, items: list[Any], priority: str = "normal") -> list[Any]:
        """Submit the items together; await them all (within ``request_timeout_s``), in order."""
        if not self.started.is_set():
            raise starting_error()
        futures: list[Future[Any]] = []
        try:
            futures = self.submitter.submit_many(model, items, priority)
            waits = [asyncio.wrap_future(f) for f in futures]
            # The scheduler kills a call past request_timeout_s; this bound also covers the
            # wait in the queue and a (re)load, so it only fires when something is stuck.
            limit = self.config.request_timeout_s + self.config.model(model).load_timeout_s
            try:
                return await asyncio.wait_for(asyncio.gather(*waits), timeout=limit)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
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
            raise starting_error()
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
            future = self.submitter.submit(model, item, priority, on_chunk=on_chunk)
        except Exception as exc:
            raise map_exception(exc) from exc
        future.add_done_callback(on_done)
        limit = self.config.request_timeout_s + self.config.model(model).load_timeout_s
        deadline = loop.time() + limit
        try:
            while True:
                try:
                    is_chunk, value = await asyncio.wait_for(queue.get(), deadline - loop.time())
                except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
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


@dataclass(kw_only=True)
class AppState(Serving):
    """What all the routes share: :class:`Serving`, the scheduler, the job store and runner."""

    metrics: Metrics
    scheduler: Scheduler
    store: JobStore
    runner: JobRunner
    #: the run-time changes of the registry (``None``: changes are not kept)
    registry: RuntimeRegistry | None = None
    #: held while the registry changes (one change at a time)
    changing: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: called after each change of the registry, with the models now served
    on_change: list[Callable[[list[ModelConfig]], None]] = field(default_factory=list)

    def origin(self, name: str) -> str:
        """Where model ``name`` comes from: ``config``, ``runtime`` or ``config+runtime``."""
        return self.registry.origin(name) if self.registry is not None else "config"

    def changed(self) -> None:
        """Tell the listeners of :attr:`on_change` (the front ends) what is served now."""
        for listener in self.on_change:
            listener(list(self.config.models))
