"""The HTTP layer in this process: timeouts, auth, what runs on the event loop, error statuses.

These tests drive the app through Starlette's ``TestClient`` (one event loop in one thread,
as uvicorn runs it) or :class:`Serving` directly, so they are fast and can watch what the
loop does; ``tests/test_server.py`` covers the same routes against a real server process.
They avoid anything the declared minimum Python (3.10) lacks, so that a run on it catches
what only happens there (``asyncio.TimeoutError`` is not ``TimeoutError`` before 3.11).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from modelmora.errors import (
    InvalidInput,
    MemoryBudgetExceeded,
    MemoryLimitExceeded,
    ModelLoadError,
    ResultNotPicklable,
    WorkerCrashed,
    WorkerLost,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.serving.config import ModelConfig, ServerConfig
from modelmora.serving.http.app import create_app
from modelmora.serving.http.errors import ApiError, map_exception
from modelmora.serving.http.state import Serving
from modelmora.serving.jobs import JobRunner, JobStore
from modelmora.serving.scheduler.core import ModelUnhealthy, QueueFull, Scheduler, UnknownModel
from modelmora.speech.audio import AudioError

TOY = {"adapter": "toy", "keep_alive_s": 120}


def _config(tmp_path: Path, **kw: Any) -> ServerConfig:
    kw.setdefault("models", [ModelConfig(name="echo", **TOY)])
    return ServerConfig(cache_dir=tmp_path / "cache", memory_budget_mb=2000, **kw)


def _started(http: TestClient) -> TestClient:
    """``http`` once the app's scheduler runs (it starts in the background)."""
    deadline = time.monotonic() + 30
    while http.get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)
    return http


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_config(tmp_path))) as http:
        yield _started(http)


# --- a stuck request is a 504 ------------------------------------------------------------------


class _StuckScheduler:
    """Accepts every request and never answers: what a wedged scheduler looks like."""

    def __init__(self) -> None:
        self.futures: list[Future[Any]] = []

    def submit(self, model: str, item: Any, priority: str = "normal", **kw: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.futures.append(future)
        return future

    def submit_many(
        self, model: str, items: list[Any], priority: str = "normal"
    ) -> list[Future[Any]]:
        return [self.submit(model, item, priority) for item in items]


def _stuck_state(tmp_path: Path) -> tuple[Serving, _StuckScheduler]:
    models = [ModelConfig(name="echo", load_timeout_s=0.1, **TOY)]
    config = _config(tmp_path, models=models, request_timeout_s=0.1)
    scheduler = _StuckScheduler()
    state = Serving(config=config, submitter=scheduler, uploads=tmp_path)
    state.started.set()
    return state, scheduler


def test_a_stuck_request_is_a_504_and_is_cancelled(tmp_path: Path) -> None:
    state, scheduler = _stuck_state(tmp_path)
    with pytest.raises(ApiError) as stuck:
        asyncio.run(state.run("echo", [1, 2]))
    assert stuck.value.status == 504 and stuck.value.code == "timeout"
    assert "no result from model 'echo' within" in stuck.value.message
    assert len(scheduler.futures) == 2 and all(f.cancelled() for f in scheduler.futures)


def test_a_stuck_stream_is_a_504(tmp_path: Path) -> None:
    state, scheduler = _stuck_state(tmp_path)

    async def consume() -> list[Any]:
        return [chunk async for chunk in state.stream("echo", {"op": "hang"})]

    with pytest.raises(ApiError) as stuck:
        asyncio.run(consume())
    assert stuck.value.status == 504 and stuck.value.code == "timeout"
    assert "did not finish within" in stuck.value.message
    assert scheduler.futures[0].cancelled()


# --- the API key -------------------------------------------------------------------------------


def test_the_api_key_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = secrets.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(secrets, "compare_digest", spy)
    with TestClient(create_app(_config(tmp_path, api_key="s3cret"))) as http:
        for header in ("Bearer nope", "Bearer s3cre", "Bearer s3cretX", "s3cret", ""):
            reply = http.get("/v1/models", headers={"Authorization": header})
            assert reply.status_code == 401, header
            assert reply.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401  # no header at all
        ok = http.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    assert len(compared) == 7  # every check, the right key's included, went through it
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in compared)


# --- nothing blocking on the event loop --------------------------------------------------------


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _watch(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, seen: dict[str, bool]) -> None:
    """Record, for every call of ``owner.name``, whether it ran on the event loop's thread."""
    real: Callable[..., Any] = getattr(owner, name)

    def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = f"{owner.__name__}.{name}"
        seen[key] = seen.get(key, False) or _on_event_loop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, watched)


def test_database_and_scheduler_calls_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bool] = {}
    for owner, name in (
        (JobStore, "get"),
        (JobStore, "cancel"),
        (JobStore, "create"),
        (JobRunner, "cancel"),
        (Scheduler, "models"),
        (Scheduler, "status"),
        (Scheduler, "load"),
        (Scheduler, "is_ready"),
    ):
        _watch(monkeypatch, owner, name, seen)
    with TestClient(create_app(_config(tmp_path))) as http:
        _started(http)
        job = http.post("/api/v1/jobs", json={"model": "echo", "input": {"op": "sleep"}}).json()
        assert http.get(f"/api/v1/jobs/{job['id']}").status_code == 200
        assert http.get(f"/api/v1/jobs/{job['id']}/result").status_code in (200, 409)
        assert http.delete(f"/api/v1/jobs/{job['id']}").json()["status"] in (
            "cancelled",
            "succeeded",
        )
        assert http.get("/api/v1/jobs/" + "0" * 32).status_code == 404
        assert http.get("/api/v1/models").status_code == 200
        loaded = http.post("/api/v1/models/echo/load")
        assert loaded.status_code == 200 and loaded.json()["state"] == "resident"
        assert http.get("/api/v1/status").status_code == 200
    assert set(seen) == {
        "JobStore.get",
        "JobStore.cancel",
        "JobStore.create",
        "JobRunner.cancel",
        "Scheduler.models",
        "Scheduler.status",
        "Scheduler.load",
        "Scheduler.is_ready",
    }
    assert not [name for name, on_loop in seen.items() if on_loop], seen


def test_a_blocked_scheduler_does_not_stall_other_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # while one request waits for the scheduler (its lock, a load), the loop answers the next
    entered, release = threading.Event(), threading.Event()

    def blocking(real: Callable[..., Any]) -> Callable[..., Any]:
        def slow(self: Scheduler, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            release.wait(10)
            return real(self, *args, **kwargs)

        return slow

    for name in ("models", "status", "load"):
        monkeypatch.setattr(Scheduler, name, blocking(getattr(Scheduler, name)))
    replies: list[int] = []
    with TestClient(create_app(_config(tmp_path))) as http:
        _started(http)
        for method, route in (
            ("GET", "/api/v1/models"),
            ("GET", "/api/v1/status"),
            ("POST", "/api/v1/models/echo/load"),
        ):
            entered.clear()
            release.clear()
            waiting = threading.Thread(
                target=lambda m=method, r=route: replies.append(http.request(m, r).status_code)
            )
            waiting.start()
            try:
                assert entered.wait(30), route
                t0 = time.monotonic()
                assert http.get("/health/live").status_code == 200
                assert time.monotonic() - t0 < 3.0, route  # not the 10 s the other one waits
            finally:
                release.set()
                waiting.join(30)
    assert replies == [200, 200, 200]


# --- exceptions → statuses ---------------------------------------------------------------------

#: Every exception the server expects, with its status and code.
EXPECTED: list[tuple[Callable[[str], BaseException], int, str | None]] = [
    (lambda m: UnknownModel(m, ["a"]), 404, "model_not_found"),
    (lambda m: QueueFull(m, 2.0), 503, "queue_full"),
    (lambda m: ModelUnhealthy(m, 2.0), 503, "model_unhealthy"),
    (MemoryBudgetExceeded, 507, "memory_budget_exceeded"),
    (ModelLoadError, 503, "model_load_failed"),
    (WorkerTimeout, 504, "timeout"),
    (TimeoutError, 504, "timeout"),
    (asyncio.TimeoutError, 504, "timeout"),
    (concurrent.futures.TimeoutError, 504, "timeout"),  # Scheduler.load(timeout=...)
    (lambda m: MemoryLimitExceeded(m, 100.0, 120.0), 502, "worker_memory_limit"),
    (lambda m: WorkerCrashed(m, -11), 502, "worker_crashed"),
    (ResultNotPicklable, 502, "result_not_picklable"),
    (WorkerStopped, 503, "worker_stopped"),
    (InvalidInput, 400, "invalid_input"),
    (ValueError, 400, "invalid_input"),
    (AudioError, 400, "invalid_input"),
]
#: Bugs on the server's side: never the client's fault.
UNEXPECTED: list[type[BaseException]] = [
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    RuntimeError,
    ZeroDivisionError,
    AssertionError,
]

_messages = st.text(min_size=0, max_size=40)


@given(case=st.sampled_from(EXPECTED), message=_messages)
def test_every_expected_exception_has_its_status(
    case: tuple[Callable[[str], BaseException], int, str | None], message: str
) -> None:
    make, status, code = case
    exc = make(message)
    error = map_exception(exc)
    assert (error.status, error.code) == (status, code)
    assert error.message  # never empty, whatever the exception said
    if status == 503 and code != "worker_stopped":
        assert int((error.headers or {})["Retry-After"]) >= 1
    assert (error.status == 400) == isinstance(exc, ValueError | AudioError)


@given(kind=st.sampled_from(UNEXPECTED), message=_messages)
def test_any_other_exception_is_a_500(kind: type[BaseException], message: str) -> None:
    error = map_exception(kind(message))
    assert error.status == 500 and error.type == "server_error"
    assert kind.__name__ in error.message


_LOST: list[Callable[[str], WorkerLost]] = [
    WorkerCrashed,
    WorkerTimeout,
    WorkerStopped,
    lambda m: MemoryLimitExceeded(m, 100.0, 120.0),
]


@given(make=st.sampled_from(_LOST), message=_messages)
def test_a_lost_worker_is_never_the_clients_fault(
    make: Callable[[str], WorkerLost], message: str
) -> None:
    exc = make(message)
    assert isinstance(exc, WorkerLost)
    assert map_exception(exc).status >= 500


def test_a_500_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    try:
        {}["missing"]
    except KeyError as exc:
        error = map_exception(exc)
    assert error.status == 500
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_invalid_input_keeps_its_param_across_a_pickle() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(InvalidInput("bad item", param="input.audio")))
    assert isinstance(exc, InvalidInput) and isinstance(exc, ValueError)
    assert str(exc) == "bad item" and exc.param == "input.audio"
    assert map_exception(exc).param == "input.audio"


def test_a_model_error_over_http_is_a_400_and_a_server_bug_a_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply = client.post("/api/v1/models/echo/predict", json={"input": {"op": "raise"}})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_input"
    assert "toy model failure" in reply.json()["error"]["message"]

    def broken(self: Scheduler, *args: Any, **kwargs: Any) -> Future[Any]:
        raise KeyError("a bug in the server")

    monkeypatch.setattr(Scheduler, "submit_many", broken)
    reply = client.post("/api/v1/models/echo/predict", json={"input": 1})
    assert reply.status_code == 500, reply.text
    assert reply.json()["error"]["type"] == "server_error"


# --- the transcription prompt reaches Whisper (real tiny.en) -----------------------------------


@pytest.fixture(scope="module")
def weather_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelmora.testing.conversation import espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "weather.wav"
    return make_conversation(path, [(0, "The weather is nice today.")]).wav


PROMPT = "A weather report from Zyxwick."
#: Whisper as fast as it goes: the packaged tiny.en, no VAD, no word timings (the prompt is
#: what is tested, not the default model).
FAST = {"model": "tiny.en", "cpu_threads": 2, "vad_filter": False, "word_timestamps": False}


@pytest.mark.slow
def test_the_whisper_adapter_hands_the_prompt_to_faster_whisper(
    weather_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faster_whisper import WhisperModel

    from modelmora.models.whisper import WhisperAdapter

    used: list[str | None] = []
    real = WhisperModel.transcribe

    def recording(self: WhisperModel, *args: Any, **kwargs: Any) -> Any:
        segments, info = real(self, *args, **kwargs)
        used.append(info.transcription_options.initial_prompt)  # what it decoded with
        return segments, info

    monkeypatch.setattr(WhisperModel, "transcribe", recording)
    adapter = WhisperAdapter(**FAST)  # type: ignore[arg-type]
    adapter.load()
    try:
        (transcript,) = adapter.predict([{"audio": str(weather_wav), "initial_prompt": PROMPT}])
    finally:
        adapter.close()
    assert used == [PROMPT]
    assert "weather" in " ".join(s["text"] for s in transcript["segments"]).lower()


@pytest.mark.slow
def test_the_transcription_route_passes_the_prompt(
    tmp_path: Path, weather_wav: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items: list[Any] = []
    real = Scheduler.submit_many

    def recording(self: Scheduler, model: str, queued: list[Any], *args: Any, **kw: Any) -> Any:
        items.extend(queued)
        return real(self, model, queued, *args, **kw)

    monkeypatch.setattr(Scheduler, "submit_many", recording)
    fast = {k: v for k, v in FAST.items() if k != "model"}
    whisper = ModelConfig(name="whisper-1", adapter="whisper", source="tiny.en", params=fast)
    with TestClient(create_app(_config(tmp_path, models=[whisper]))) as http:
        _started(http)
        with weather_wav.open("rb") as audio:
            files = {"file": ("weather.wav", audio, "audio/wav")}
            data = {"model": "whisper-1", "prompt": PROMPT}
            reply = http.post("/v1/audio/transcriptions", files=files, data=data)
        assert reply.status_code == 200, reply.text
        assert "weather" in reply.json()["text"].lower()
    assert [item.get("initial_prompt") for item in items] == [PROMPT]
