"""A front-end process of ``modelmora serve --http-workers N`` (see
:mod:`modelmora.serving.http.frontends` for the design and the channel's messages).

It accepts on the listening socket it inherits and answers the routes that run models
(:func:`~modelmora.serving.http.routes.add_inference_routes` and ``/v1/rerank``) with the same
handlers, middleware and error mapping as a one-process server; their items go to the main
process's scheduler through :class:`RemoteScheduler`. Any other request is forwarded as it is
to the main process's app (:class:`Forward`). The front end's HTTP metrics are sent to the main
process, whose ``/metrics`` counts every front end's requests. When the main process goes away
the front end fails what waits (503) and exits.

Run by the main process only: ``python -m modelmora.serving.http.front --fd N --channel PATH
--hub PATH`` with the channel's key in ``MODELMORA_FRONTEND_KEY``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from modelmora.errors import WorkerStopped
from modelmora.serving.config import ModelConfig, ServerConfig
from modelmora.serving.http.frontends import KEY_ENV
from modelmora.serving.http.state import Serving

__all__ = ["Forward", "RemoteScheduler", "create_front_app", "main"]

logger = logging.getLogger(__name__)

#: How often the front end sends its HTTP metrics to the main process.
METRICS_FLUSH_S = 0.5


class RemoteScheduler:
    """The main process's scheduler, seen from a front end: :meth:`submit`, :meth:`submit_many`.

    Futures are ``concurrent.futures`` futures, resolved by the channel's reader thread
    (:meth:`serve`); cancelling one tells the main process to drop or stop its request.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._ids = itertools.count()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pending: dict[int, list[Future[Any]]] = {}
        self._chunks: dict[int, Callable[[Any], Any]] = {}
        self.gone = False

    def submit(
        self,
        model: str,
        item: Any,
        priority: str = "normal",
        *,
        on_chunk: Callable[[Any], Any] | None = None,
    ) -> Future[Any]:
        """Queue one item in the main process (streamed through ``on_chunk`` if given)."""
        if on_chunk is None:
            return self.submit_many(model, [item], priority)[0]
        return self._request("stream", model, item, priority, 1, on_chunk)[0]

    def submit_many(
        self, model: str, items: list[Any], priority: str = "normal"
    ) -> list[Future[Any]]:
        """Queue a request's items together in the main process; one future per item."""
        return self._request("submit", model, items, priority, len(items), None)

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message to the main process (a lost channel fails the request later)."""
        with self._send_lock:
            try:
                self.conn.send(message)
            except (OSError, EOFError):
                self.gone = True

    def _request(
        self,
        kind: str,
        model: str,
        payload: Any,
        priority: str,
        count: int,
        on_chunk: Callable[[Any], Any] | None,
    ) -> list[Future[Any]]:
        if self.gone:
            raise _gone()
        rid = next(self._ids)
        futures: list[Future[Any]] = [Future() for _ in range(count)]
        with self._lock:
            self._pending[rid] = futures
            if on_chunk is not None:
                self._chunks[rid] = on_chunk
        for future in futures:
            future.add_done_callback(lambda f: self._cancelled(rid, f))
        self.send((kind, rid, model, payload, priority))
        if self.gone:
            with self._lock:
                self._pending.pop(rid, None)
                self._chunks.pop(rid, None)
            raise _gone()
        return futures

    def _cancelled(self, rid: int, future: Future[Any]) -> None:
        if not future.cancelled():
            return
        with self._lock:
            known = self._pending.pop(rid, None) is not None
            self._chunks.pop(rid, None)
        if known:
            self.send(("cancel", rid))

    def serve(self, on_message: Callable[[tuple[Any, ...]], None]) -> None:
        """The reader thread: resolve futures and pass chunks; other messages to ``on_message``.

        Returns when the main process is gone, after failing every waiting request.
        """
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    return
                kind = message[0]
                if kind == "done":
                    self._done(*message[1:])
                elif kind == "chunk":
                    with self._lock:
                        on_chunk = self._chunks.get(message[1])
                    if on_chunk is not None and on_chunk(message[2]) is False:
                        self.send(("cancel", message[1]))
                else:
                    on_message(message)
        finally:
            self.gone = True
            with self._lock:
                pending, self._pending = self._pending, {}
                self._chunks.clear()
            for futures in pending.values():
                for future in futures:
                    with contextlib.suppress(InvalidStateError):
                        future.set_exception(_gone())

    def _done(self, rid: int, index: int, ok: bool, value: Any) -> None:
        with self._lock:
            futures = self._pending.get(rid)
            if futures is None:  # cancelled here meanwhile
                return
            targets = futures if index < 0 else [futures[index]]
            if index < 0 or all(f.done() or f is targets[0] for f in futures):
                self._pending.pop(rid, None)
                self._chunks.pop(rid, None)
        for future in targets:
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)


def _gone() -> WorkerStopped:
    return WorkerStopped("the server's main process is gone: retry in a moment")


class _HttpRecords:
    """The front end's HTTP metrics, sent to the main process every ``METRICS_FLUSH_S``."""

    def __init__(self, remote: RemoteScheduler) -> None:
        self.remote = remote
        self._records: list[tuple[str, str, int, float]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._flush, name="modelmora-http-metrics", daemon=True).start()

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._records.append((method, route, status, seconds))

    def _flush(self) -> None:
        while not self.remote.gone:
            time.sleep(METRICS_FLUSH_S)
            with self._lock:
                records, self._records = self._records, []
            if records:
                self.remote.send(("http", records))


class Forward:
    """Pure ASGI middleware: requests ``app`` has no route for go to the main process's app.

    The request is streamed to the main process's Unix socket and its answer streamed back
    (server-sent events included), headers and status as they are.
    """

    def __init__(self, app: Any, routes: Any, hub_socket: Path) -> None:
        self.app, self.routes, self.hub_socket = app, routes, hub_socket
        self._client: Any = None

    def _local(self, scope: dict[str, Any]) -> bool:
        from starlette.routing import Match

        return any(route.matches(scope)[0] == Match.FULL for route in self.routes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._local(scope):
            await self.app(scope, receive, send)
            return
        import httpx

        if self._client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.hub_socket))
            self._client = httpx.AsyncClient(transport=transport, timeout=None)

        async def body() -> Any:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        path = scope.get("raw_path") or scope["path"].encode()
        url = "http://main" + path.decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        request = self._client.build_request(scope["method"], url, headers=headers, content=body())
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            await _unavailable(send, f"the server's main process did not answer: {exc}")
            return
        try:
            raw = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": raw}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


#: Headers about one connection, not the request: never forwarded.
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer"}


async def _unavailable(send: Any, message: str) -> None:
    import json

    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "server_error",
                "code": "unavailable",
                "param": None,
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_front_app(
    config: ServerConfig, remote: RemoteScheduler, hub_socket: Path
) -> tuple[Any, Serving]:
    """The front end's ASGI app: the inference routes here, everything else forwarded.

    Returns:
        The app and its :class:`Serving` state, whose ``started`` and ``config`` the channel's
        messages keep current.
    """
    from fastapi import FastAPI

    from modelmora.serving.http.app import Guard, uploads_dir
    from modelmora.serving.http.errors import add_error_handlers
    from modelmora.serving.http.rerank import add_rerank_routes
    from modelmora.serving.http.routes import add_inference_routes

    state = Serving(config=config, submitter=remote, uploads=uploads_dir(config))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # the main process has them
    app.state.modelmora = state
    add_error_handlers(app)
    add_inference_routes(app)
    add_rerank_routes(app)
    records = _HttpRecords(remote)
    guarded = Guard(
        app,
        api_key=config.api_key,
        max_bytes=int(config.max_request_mb * 2**20),
        observe=records.add,
    )
    return Forward(guarded, app.router.routes, hub_socket), state


def _on_message(state: Serving) -> Callable[[tuple[Any, ...]], None]:
    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "models":
            models: list[ModelConfig] = message[1]
            state.config = state.config.model_copy(update={"models": models})
        elif message[0] == "started" and message[1] is not None:  # the scheduler failed
            state.start_error = message[1]
            state.started.clear()

    return on_message


def main(argv: list[str] | None = None) -> None:
    """Connect to the main process, then serve on the inherited socket until SIGTERM."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m modelmora.serving.http.front")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    key = bytes.fromhex(os.environ.pop(KEY_ENV))
    conn = Client(args.channel, family="AF_UNIX", authkey=key)
    _, config, error = conn.recv()  # ("hello", ...)
    remote = RemoteScheduler(conn)
    app, state = create_front_app(config, remote, Path(args.hub))
    # Requests are taken at once: before the scheduler is up they wait in its queue.
    state.start_error = error
    if error is None:
        state.started.set()

    def read() -> None:
        remote.serve(_on_message(state))
        logger.warning("front end %d: the main process is gone, stopping", args.index)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=read, name="modelmora-channel", daemon=True).start()
    sock = socket.socket(fileno=args.fd)
    config = uvicorn.Config(
        app, log_level=args.log_level, access_log=not args.no_access_log, lifespan="off"
    )
    if args.index == 0:  # uvicorn's logging is configured now
        host, port = sock.getsockname()[:2]
        logging.getLogger("uvicorn.error").info(
            "ModelMora listening on http://%s:%d (front end %d)", host, port, os.getpid()
        )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
