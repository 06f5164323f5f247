"""Several HTTP front ends over one scheduler (``modelmora serve --http-workers N``): the main
process's side.

The main process keeps everything that must be one: the scheduler (batching, memory budget,
eviction, priorities, admission), the job store and runner, the registry, the model workers,
and the whole app, served on a private Unix socket. It binds the public listening socket once
and starts N front-end processes (:mod:`modelmora.serving.http.front`) that accept on it. A
front end answers the routes that run models itself (parsing, validation, rendering: what one
event loop pays per request) and hands their items to this process's scheduler over a
channel; every other route it forwards as HTTP to the app here, so the registry, jobs, status,
metrics, speakers and readiness behave exactly as in one process.

The channel is a ``multiprocessing.connection`` (pickled tuples, authenticated) on a second
Unix socket in a private folder::

    front end → main   ("submit", rid, model, items, priority)   a request's items, together
                       ("stream", rid, model, item, priority)    one streamed item
                       ("cancel", rid)                           the client went away
                       ("http", [(method, route, status, s)])    the front end's HTTP metrics
                       ("models?",)                              the served models, please
    main → front end   ("hello", config, start_error)            once, on connecting
                       ("done", rid, index, ok, value)           an item's output or exception
                       ("chunk", rid, value)                     a streamed chunk
                       ("models", [ModelConfig])                 after every registry change
                       ("started", start_error)                  the scheduler failed to start

``index`` -1 with ``ok`` false: the request was refused as a whole (queue full, unknown model).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from modelmora.serving.config import ModelConfig
from modelmora.serving.http.state import AppState

__all__ = ["KEY_ENV", "FrontEnds", "portable"]

logger = logging.getLogger(__name__)

#: The environment variable that hands a front end the channel's key (never the command line).
KEY_ENV = "MODELMORA_FRONTEND_KEY"


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles and unpickles as itself, else a ``RuntimeError`` that says it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class _Link:
    """One front end's channel: runs its requests on the scheduler, sends their answers."""

    def __init__(self, conn: Connection, state: AppState, on_http: Callable[[list[Any]], None]):
        self.conn, self.state, self.on_http = conn, state, on_http
        self._send_lock = threading.Lock()
        self._pending: dict[int, list[Future[Any]]] = {}
        self._stopped: set[int] = set()  # streams whose client went away
        self._lock = threading.Lock()
        self.closed = False

    def send(self, message: tuple[Any, ...]) -> None:
        """Send one message; a front end that went away is not an error here."""
        with self._send_lock:
            if self.closed:
                return
            try:
                self.conn.send(message)
            except (OSError, EOFError):
                self.closed = True

    def serve(self) -> None:
        """The link's thread: read messages until the front end goes away."""
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    self._handle(message)
                except Exception:  # a bug here must be loud, and must not end the link
                    logger.exception("front-end message %r failed", message[:2])
        finally:
            self.closed = True
            with self._lock:
                pending, self._pending = self._pending, {}
                self._stopped.update(pending)
            for futures in pending.values():
                for future in futures:
                    future.cancel()
            with contextlib.suppress(OSError):
                self.conn.close()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "submit":
            _, rid, model, items, priority = message
            try:
                futures = self.state.scheduler.submit_many(model, items, priority)
            except Exception as exc:
                self.send(("done", rid, -1, False, portable(exc)))
                return
            self._watch(rid, futures)
        elif kind == "stream":
            _, rid, model, item, priority = message

            def on_chunk(value: Any) -> bool:
                self.send(("chunk", rid, value))
                return rid not in self._stopped and not self.closed

            try:
                future = self.state.scheduler.submit(model, item, priority, on_chunk=on_chunk)
            except Exception as exc:
                self.send(("done", rid, -1, False, portable(exc)))
                return
            self._watch(rid, [future])
        elif kind == "cancel":
            with self._lock:
                self._stopped.add(message[1])
                futures = self._pending.pop(message[1], [])
            for future in futures:
                future.cancel()
        elif kind == "http":
            self.on_http(message[1])
        elif kind == "models?":
            self.send(("models", list(self.state.config.models)))
        else:
            logger.error("unknown front-end message %r", kind)

    def _watch(self, rid: int, futures: list[Future[Any]]) -> None:
        with self._lock:
            self._pending[rid] = futures
        left = [len(futures)]

        def done(index: int, future: Future[Any]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    self._pending.pop(rid, None)
                    self._stopped.discard(rid)
            if future.cancelled():  # cancelled by the front end: nobody waits for it
                return
            error = future.exception()
            if error is None:
                self.send(("done", rid, index, True, future.result()))
            else:
                self.send(("done", rid, index, False, portable(error)))

        for index, future in enumerate(futures):
            future.add_done_callback(functools.partial(done, index))


class FrontEnds:
    """N front-end processes accepting on one socket, fed by this process's :class:`AppState`.

    Args:
        state: the main process's app state (its scheduler serves every front end).
        count: how many front ends.
        listen: the bound, listening public socket; the front ends inherit it.
        folder: a private folder (mode 0700) that holds the channel's socket and
            :attr:`app_socket`, the Unix socket the main process's app is served on (the
            forwarded routes); removed by :meth:`stop`.
        log_level: uvicorn's log level in the front ends.
        access_log: one line per request in the front ends' output.
    """

    def __init__(
        self,
        state: AppState,
        count: int,
        listen: socket.socket,
        folder: Path,
        *,
        log_level: str = "info",
        access_log: bool = True,
    ) -> None:
        self.state, self.count, self.listen = state, count, listen
        self.log_level, self.access_log = log_level, access_log
        self._folder = folder
        self.app_socket = folder / "app.sock"
        self._key = secrets.token_bytes(32)
        self._channel = self._folder / "channel.sock"
        self._listener = Listener(str(self._channel), family="AF_UNIX", authkey=self._key)
        self._links: list[_Link] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._start_error: BaseException | None = None
        state.on_change.append(self._broadcast_models)

    def start(self) -> None:
        """Accept the front ends' channels and start the processes (and restart one that dies)."""
        threading.Thread(target=self._accept, name="modelmora-frontends", daemon=True).start()
        self._procs = [self._spawn(i) for i in range(self.count)]
        threading.Thread(
            target=self._supervise, name="modelmora-frontends-watch", daemon=True
        ).start()

    def started(self, error: BaseException | None) -> None:
        """The scheduler started; ``error``: it failed to, and every front end is told."""
        if error is None:
            return
        with self._lock:
            self._start_error = error
            links = list(self._links)
        for link in links:
            link.send(("started", portable(error)))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the front ends (each drains its requests), then the channel."""
        self._stopping.set()
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.warning("front end %d did not stop in time: killed", proc.pid)
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            self._listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def pids(self) -> list[int]:
        """The front ends' process ids."""
        return [p.pid for p in self._procs]

    # --- inside -------------------------------------------------------------------------------

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        command = [
            *(sys.executable, "-m", "modelmora.serving.http.front"),
            *("--fd", str(self.listen.fileno()), "--channel", str(self._channel)),
            *("--hub", str(self.app_socket), "--log-level", self.log_level),
            *("--index", str(index)),
        ]
        if not self.access_log:
            command.append("--no-access-log")
        env = {**os.environ, KEY_ENV: self._key.hex()}
        return subprocess.Popen(command, pass_fds=[self.listen.fileno()], env=env)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None and not self._stopping.is_set():
                    logger.error(
                        "front end %d exited with %s: restarting it", proc.pid, proc.returncode
                    )
                    self._procs[i] = self._spawn(i)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):  # closed, or a peer without the key
                if self._stopping.is_set():
                    return
                continue
            link = _Link(conn, self.state, self._record_http)
            with self._lock:
                self._links = [x for x in self._links if not x.closed] + [link]
                error = self._start_error
            link.send(("hello", self.state.config, error and portable(error)))
            threading.Thread(target=link.serve, name="modelmora-frontend-link", daemon=True).start()

    def _broadcast_models(self, models: list[ModelConfig]) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.send(("models", models))

    def _record_http(self, records: list[Any]) -> None:
        for method, route, status, seconds in records:
            self.state.metrics.observe_http(method, route, status, seconds)
