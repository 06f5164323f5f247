"""The HTTP server, tested against a real ``modelmora serve`` process on a free port.

Toy models (real worker processes with real memory) cover routing, errors, auth, limits,
eviction, crashes and durable jobs; the packaged models (MiniLM, tiny.en, Gemma 3 270M) are
exercised through the official ``openai`` client in the slow tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelmora.bench.server import ServerProcess

TOY = {"adapter": "toy", "keep_alive_s": 120}


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``make_server(config, env=None, args=())`` → a started :class:`ServerProcess`."""
    started: list[ServerProcess] = []

    def make(
        config: dict[str, Any], env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> ServerProcess:
        server = ServerProcess(tmp_path, config, env, args)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with toy models, a 1 MB request limit and a 3 s request timeout."""
    models = [
        {"name": "echo", **TOY, "max_batch_size": 8, "max_wait_ms": 2},
        {"name": "crashy", **TOY},
        {"name": "slow", **TOY},
    ]
    config = {"models": models, "max_request_mb": 1, "request_timeout_s": 3}
    server = ServerProcess(tmp_path_factory.mktemp("toy-server"), config).start()
    yield server
    server.stop()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["message"] and body["type"]
    return body  # type: ignore[no-any-return]


def test_health_models_status_metrics(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        assert http.get("/health/live").json() == {"status": "ok"}
        assert http.get("/health/ready").status_code == 200
        ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert ids == ["echo", "crashy", "slow"]
        assert http.get("/v1/models/echo").json()["id"] == "echo"
        _error(http.get("/v1/models/nope"), 404)
        names = [m["name"] for m in http.get("/api/v1/models").json()["models"]]
        assert set(names) == {"echo", "crashy", "slow"}
        status = http.get("/api/v1/status").json()
        assert "jobs" in status and status["spares"]["ready"] == []  # nothing unloaded yet
        assert status["warm_loads"] == 0
        reply = http.post("/api/v1/models/echo/predict", json={"input": {"a": [1, 2]}})
        assert reply.json() == {"model": "echo", "output": {"a": [1, 2]}}
        metrics = http.get("/metrics").text
        assert "modelmora_http_requests_total" in metrics
        assert "modelmora_request_latency_seconds" in metrics
        assert 'modelmora_worker_starts_total{model="echo",start="cold"} 1.0' in metrics
        assert http.get("/docs").status_code == 200


def test_access_log_and_log_level_options(make_server: Any, tmp_path: Path) -> None:
    line = '"POST /api/v1/models/echo/predict HTTP/1.1" 200'
    for args, logged in (((), True), (("--no-access-log", "--log-level", "warning"), False)):
        server = make_server({"models": [{"name": "echo", **TOY}]}, args=args)
        with server.client() as client:
            assert client.post("/api/v1/models/echo/predict", json={"input": 1}).status_code == 200
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
        assert (line in server.logs()) is logged
        server.log.unlink()
    refused = subprocess.run(
        [sys.executable, "-m", "modelmora.cli", "serve", "--log-level", "loud"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "--log-level must be one of" in refused.stdout + refused.stderr


def test_concurrent_predictions_are_answered_in_order(toy_server: ServerProcess) -> None:
    def one(i: int) -> Any:
        with toy_server.client() as http:
            return http.post("/api/v1/models/echo/predict", json={"input": i}).json()["output"]

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(64))) == list(range(64))


def test_load_and_unload_report_the_release(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        assert http.post("/api/v1/models/slow/load").status_code == 200
        reply = http.post("/api/v1/models/slow/unload")
        assert reply.status_code == 200, reply.text
        assert reply.json()["release"]["released"] is True
        _error(http.post("/api/v1/models/missing/load"), 404)


_BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str | None, str | None, str]] = [
    # method, path, request, status, code, param, a piece of the message
    (
        "post",
        "/v1/embeddings",
        {"content": b"{not json"},  # no Content-Type: not taken as JSON at all
        400,
        "invalid_request",
        None,
        "Input should be a valid dictionary",
    ),
    (
        "post",
        "/v1/embeddings",
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_request",
        None,
        "JSON decode error",
    ),
    ("post", "/v1/embeddings", {"json": {"input": "x"}}, 400, "invalid_request", "model", "model"),
    (
        "post",
        "/v1/embeddings",
        {"json": {"model": "echo", "input": [1, 2]}},
        400,
        "invalid_request",
        "input.str",
        "valid string",
    ),
    (
        "post",
        "/v1/embeddings",
        {"json": {"model": "echo", "input": "x"}},
        400,
        "wrong_model_kind",
        "model",
        "serves embedding models",
    ),
    (
        "post",
        "/v1/embeddings",
        {"json": {"model": "nope", "input": "x"}},
        404,
        "model_not_found",
        None,
        "model 'nope' does not exist (served: echo, crashy, slow)",
    ),
    (
        "post",
        "/v1/embeddings",
        {"json": {"model": "../../etc/passwd", "input": "x"}},
        400,
        "invalid_request",
        "model",
        "bad model name '../../etc/passwd'",
    ),
    (
        "post",
        "/v1/chat/completions",
        {"json": {"model": "echo", "messages": []}},
        400,
        "invalid_request",
        "messages",
        "at least 1 item",
    ),
    ("post", "/api/v1/models/echo/predict", {"json": {}}, 400, "invalid_request", "input", "input"),
    ("post", "/api/v1/models/..%2F..%2Fetc/load", {}, 404, "not_found", None, "Not Found"),
    ("post", "/api/v1/models/.../load", {}, 400, "invalid_input", None, "bad model name '...'"),
    (
        "post",
        "/api/v1/jobs",
        {"json": {"model": "echo", "input": 1, "priority": "x"}},
        400,
        "invalid_request",
        "priority",
        "'critical', 'high', 'normal' or 'low'",
    ),
    (
        "post",
        "/api/v1/jobs",
        {"json": {"model": "echo", "input": {"audio": "/etc"}}},
        400,
        "invalid_input",
        "input.audio",
        "server-side file paths are not accepted",
    ),
    ("get", "/api/v1/jobs/not-an-id", {}, 400, None, "id", "ids are 32 hex digits"),
    (
        "get",
        "/api/v1/jobs/" + "0" * 32,
        {},
        404,
        "job_not_found",
        None,
        f"job {'0' * 32} does not exist",
    ),
    ("get", "/no/such/route", {}, 404, "not_found", None, "Not Found"),
    ("delete", "/v1/models", {}, 405, "method_not_allowed", None, "Method Not Allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "param", "needle"),
    _BAD_REQUESTS,
    ids=[f"{c[0]} {c[1][:40]} {c[3]}" for c in _BAD_REQUESTS],
)
def test_bad_requests_get_a_json_4xx(
    toy_server: ServerProcess,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
    needle: str,
) -> None:
    with toy_server.client() as http:
        error = _error(http.request(method.upper(), path, **kwargs), status)
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, param), error
    assert needle in error["message"], error


def test_transcription_form_is_validated(toy_server: ServerProcess) -> None:
    files = {"file": ("a.wav", b"RIFF....", "audio/wav")}
    with toy_server.client() as http:
        data = {"model": "echo"}
        _error(http.post("/v1/audio/transcriptions", files=files, data=data), 400)
        _error(http.post("/v1/audio/transcriptions", data=data), 400)  # no file


def test_the_models_own_error_is_a_400(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        reply = http.post("/api/v1/models/echo/predict", json={"input": {"op": "raise"}})
        assert "toy model failure" in _error(reply, 400)["message"]


def test_oversized_requests_get_413(toy_server: ServerProcess) -> None:
    big = {"model": "echo", "input": "x" * (2 * 2**20)}
    with toy_server.client() as http:
        _error(http.post("/v1/embeddings", json=big), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts the stream
            yield b'{"input": "'
            for _ in range(40):
                yield b"y" * 65536
            yield b'"}'

        _error(http.post("/api/v1/models/echo/predict", content=chunks()), 413)
        assert http.get("/health/live").status_code == 200


def test_a_worker_crash_is_a_5xx_and_the_next_request_works(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        reply = http.post("/api/v1/models/crashy/predict", json={"input": {"op": "segfault"}})
        assert reply.status_code in (502, 503), reply.text
        assert "SIGSEGV" in _error(reply, reply.status_code)["message"]
        reply = http.post("/api/v1/models/crashy/predict", json={"input": "still here"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["output"] == "still here"
        assert 'modelmora_crashes_total{model="crashy"}' in http.get("/metrics").text


def test_a_call_past_the_request_timeout_is_a_504(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        reply = http.post("/api/v1/models/slow/predict", json={"input": {"op": "hang"}})
        _error(reply, 504)
        reply = http.post("/api/v1/models/slow/predict", json={"input": "after"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["output"] == "after"


def test_jobs_succeed_fail_and_cancel(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        ok = http.post("/api/v1/jobs", json={"model": "echo", "input": [1, "two"]})
        assert ok.status_code == 202, ok.text
        bad = http.post("/api/v1/jobs", json={"model": "echo", "input": {"op": "raise"}})
        blocker = http.post("/api/v1/jobs", json={"model": "slow", "input": {"op": "sleep"}})
        later = http.post(
            "/api/v1/jobs", json={"model": "slow", "input": 5, "priority": "low"}
        ).json()["id"]
        cancelled = http.delete(f"/api/v1/jobs/{later}").json()
        assert cancelled["status"] == "cancelled"
        for job_id in (ok.json()["id"], bad.json()["id"], blocker.json()["id"]):
            _wait_job(http, job_id)
        result = http.get(f"/api/v1/jobs/{ok.json()['id']}/result").json()
        assert result["result"] == [1, "two"]
        failed = http.get(f"/api/v1/jobs/{bad.json()['id']}").json()
        assert failed["status"] == "failed" and failed["error_type"] == "ValueError"
        assert (
            "toy model failure"
            in _error(http.get(f"/api/v1/jobs/{bad.json()['id']}/result"), 409)["message"]
        )
        assert http.get(f"/api/v1/jobs/{later}").json()["status"] == "cancelled"


def _wait_job(http: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def test_auth_from_config(make_server: Any) -> None:
    server = make_server({"api_key": "s3cret", "models": [{"name": "echo", **TOY}]})
    http = httpx.Client(base_url=server.url, timeout=60)
    for path in ("/v1/models", "/api/v1/status", "/metrics", "/docs"):
        assert _error(http.get(path), 401)["code"] == "invalid_api_key"
    wrong = http.get("/v1/models", headers={"Authorization": "Bearer nope"})
    _error(wrong, 401)
    assert http.get("/health/live").status_code == 200
    assert http.get("/health/ready").status_code == 200
    with server.client() as authed:
        assert authed.get("/v1/models").status_code == 200
        reply = authed.post("/api/v1/models/echo/predict", json={"input": 1})
        assert reply.json()["output"] == 1


def test_auth_from_environment(make_server: Any) -> None:
    server = make_server({"models": [{"name": "echo", **TOY}]}, env={"MODELMORA_API_KEY": "k"})
    _error(httpx.get(f"{server.url}/v1/models"), 401)
    with server.client() as http:
        assert http.get("/v1/models").status_code == 200


def test_eviction_under_a_budget_that_fits_two_of_three(make_server: Any) -> None:
    models = [{"name": n, **TOY, "params": {"alloc_mb": 150}} for n in ("a", "b", "c")]
    server = make_server({"memory_budget_mb": 400, "models": models})
    with server.client() as http:
        for name in ["a", "b", "c", "a", "b", "c", "a"]:
            reply = http.post(f"/api/v1/models/{name}/predict", json={"input": name})
            assert reply.status_code == 200, reply.text
            loaded = [m for m in http.get("/api/v1/models").json()["models"] if _resident(m)]
            assert len(loaded) <= 2, loaded
        metrics = http.get("/metrics").text
    evictions = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("modelmora_evictions_total{")
    )
    assert evictions >= 4


def _resident(model: dict[str, Any]) -> bool:
    return model.get("state") in ("loaded", "loading", "busy", "idle", "resident", "ready")


def test_queue_limit_gives_503_with_retry_after(make_server: Any) -> None:
    server = make_server({"queue_limit": 2, "models": [{"name": "slow", **TOY}]})

    def one(_: int) -> httpx.Response:
        with server.client() as http:
            return http.post("/api/v1/models/slow/predict", json={"input": {"op": "sleep"}})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    refused = [r for r in replies if r.status_code == 503]
    assert refused, [r.status_code for r in replies]
    assert int(refused[0].headers["Retry-After"]) >= 1
    assert _error(refused[0], 503)["code"] == "queue_full"
    assert all(r.status_code in (200, 503) for r in replies)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_queued_jobs_survive_a_restart(make_server: Any, sig: int) -> None:
    config = {"models": [{"name": "slow", **TOY}]}
    server = make_server(config)
    with server.client() as http:
        ids = [
            http.post(
                "/api/v1/jobs", json={"model": "slow", "input": {"op": "sleep", "seconds": 0.3}}
            ).json()["id"]
            for _ in range(12)
        ]
        time.sleep(0.5)  # some running, most queued
        assert http.get(f"/api/v1/jobs/{ids[-1]}").json()["status"] == "queued"
    server.stop(sig)
    server.start()
    with server.client() as http:
        jobs = [_wait_job(http, job_id, timeout=90) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(ids)


# --- streamed predictions (toy models) --------------------------------------------------------


def _stream_op(value: Any, then: dict[str, Any] | None = None, delay: float = 0.0) -> Any:
    return {"op": "stream", "value": value, "then": then, "delay": delay}


def _events(response: httpx.Response) -> Iterator[tuple[Any, float]]:
    """The server-sent events of a response (``[DONE]`` as a string), each with its arrival."""
    t0 = time.monotonic()
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield (data if data == "[DONE]" else json.loads(data)), time.monotonic() - t0


def _stream_predict(http: httpx.Client, model: str, item: Any) -> list[Any]:
    body = {"input": item, "stream": True}
    with http.stream("POST", f"/api/v1/models/{model}/predict", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event for event, _ in _events(response)]


def test_streamed_predict_sends_chunks_as_they_come(toy_server: ServerProcess) -> None:
    item = _stream_op(["a", "b"], {"op": "sleep", "seconds": 1.0})
    body = {"input": item, "stream": True}
    with toy_server.client() as http:
        with http.stream("POST", "/api/v1/models/echo/predict", json=body) as response:
            assert response.status_code == 200
            events = list(_events(response))
        assert [e for e, _ in events] == [{"output": "a"}, {"output": "b"}, "[DONE]"]
        assert events[1][1] < events[2][1] - 0.6, events  # sent while the model still worked
        assert _stream_predict(http, "echo", "whole") == [{"output": "whole"}, "[DONE]"]


def test_streamed_predict_failures(toy_server: ServerProcess) -> None:
    with toy_server.client() as http:
        # nothing streamed yet: an ordinary JSON error with its status
        body = {"input": {"op": "raise", "message": "early"}, "stream": True}
        reply = http.post("/api/v1/models/echo/predict", json=body)
        assert "early" in _error(reply, 400)["message"]
        # mid-stream: an error event ends the stream (no [DONE], no hang)
        events = _stream_predict(http, "echo", _stream_op([1], {"op": "raise", "message": "mid"}))
        assert events[0] == {"output": 1} and len(events) == 2
        assert "mid" in events[1]["error"]["message"]
        assert events[1]["error"]["code"] == "invalid_input"
        events = _stream_predict(http, "crashy", _stream_op([1], {"op": "exit", "code": 3}))
        assert events[0] == {"output": 1} and events[1]["error"]["code"] == "worker_crashed"
        t0 = time.monotonic()
        events = _stream_predict(http, "slow", _stream_op([1], {"op": "hang"}))
        assert events[0] == {"output": 1} and events[1]["error"]["code"] == "timeout"
        assert time.monotonic() - t0 < 10  # the 3 s request timeout, not a hang
        for model in ("echo", "crashy", "slow"):
            reply = http.post(f"/api/v1/models/{model}/predict", json={"input": "after"})
            assert reply.status_code == 200 and reply.json()["output"] == "after", reply.text


def test_client_disconnect_stops_the_stream(make_server: Any) -> None:
    server = make_server({"models": [{"name": "s", **TOY}], "request_timeout_s": 60})
    item = _stream_op(list(range(500)), delay=0.02)  # 10 s if nobody stops it
    with server.client() as http:
        with http.stream("POST", "/api/v1/models/s/predict", json={"input": item, "stream": True}):
            pass  # headers only: the first chunk was produced, then the client hangs up
        pid = http.get("/api/v1/models").json()["models"][0]["pid"]
        t0 = time.monotonic()
        reply = http.post("/api/v1/models/s/predict", json={"input": "next"})
        assert reply.json()["output"] == "next"
        assert time.monotonic() - t0 < 3.0  # the worker was free again: generation stopped
        model = http.get("/api/v1/models").json()["models"][0]
        assert model["pid"] == pid and model["crashes"] == 0  # stopped, not killed


# --- real models, through the official openai client -----------------------------------------


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The packaged default models (``modelmora serve`` with no config), on a free port."""
    folder = tmp_path_factory.mktemp("model-server")
    env = {"MODELMORA_CACHE_DIR": str(folder / "cache"), "OMP_NUM_THREADS": "2"}
    server = ServerProcess(folder, None, env).start(timeout=180)
    yield server
    server.stop()


@pytest.fixture
def openai_client(model_server: ServerProcess) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{model_server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.slow
def test_openai_embeddings(openai_client: Any) -> None:
    import numpy as np

    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Stock prices fell."]
    reply = openai_client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = np.array([d.embedding for d in reply.data])  # the client asked for base64
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    floats = openai_client.embeddings.create(
        model="all-minilm-l6-v2", input=texts[0], encoding_format="float"
    )
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-5)
    assert reply.usage.prompt_tokens > 0 and reply.model == "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelmora.testing.conversation import espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    turns = [(0, "Hello world. The weather is nice today.")]
    return make_conversation(path, turns).wav


@pytest.mark.slow
def test_openai_transcription(openai_client: Any, speech_wav: Path) -> None:
    with speech_wav.open("rb") as audio:
        plain = openai_client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert "weather" in plain.text.lower()
    with speech_wav.open("rb") as audio:
        verbose = openai_client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
        )
    assert verbose.language == "en" and verbose.duration > 1
    assert verbose.segments and verbose.words
    assert "weather" in [w.word.lower().strip(".,") for w in verbose.words]
    assert all(w.start <= w.end for w in verbose.words)
    for kind, marker in (("srt", " --> "), ("vtt", "WEBVTT"), ("text", "weather")):
        with speech_wav.open("rb") as audio:
            text = openai_client.audio.transcriptions.create(
                model="whisper-1", file=audio, response_format=kind
            )
        assert (
            isinstance(text, str) and marker in text.lower() if kind == "text" else marker in text
        )


@pytest.mark.slow
def test_openai_chat_and_stream(openai_client: Any) -> None:
    messages = [{"role": "user", "content": "Say hello."}]
    reply = openai_client.chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=12, temperature=0
    )
    text = reply.choices[0].message.content
    assert isinstance(text, str) and reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage  # a 270M base model may well stop at once: text can be empty
    assert usage.prompt_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    stream = openai_client.chat.completions.create(
        model="gemma-3-270m",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # temperature 0: the same completion
    assert chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


_COUNTING = [{"role": "user", "content": "List the numbers from one to twenty."}]


@pytest.mark.slow
def test_openai_chat_streams_tokens_as_they_are_generated(openai_client: Any) -> None:
    options = {"model": "gemma-3-270m", "messages": _COUNTING, "max_tokens": 48, "temperature": 0}
    text = openai_client.chat.completions.create(**options).choices[0].message.content
    t0 = time.monotonic()
    stream = openai_client.chat.completions.create(
        **options, stream=True, stream_options={"include_usage": True}
    )
    arrivals = [(chunk, time.monotonic() - t0) for chunk in stream]
    total = time.monotonic() - t0
    pieces = [
        (c.choices[0].delta.content, t)
        for c, t in arrivals
        if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 5, pieces  # token by token, not one block
    assert "".join(p for p, _ in pieces) == text  # temperature 0: what the model generated
    # the first token is out long before the last one is generated (relative times: a fast
    # machine generates the whole reply in a fraction of a second)
    first, last = pieces[0][1], pieces[-1][1]
    assert first < 0.5 * last and first < 0.5 * total, (first, last, total)
    usage = arrivals[-1][0].usage
    assert usage.prompt_tokens > 1 and usage.completion_tokens > 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.slow
def test_llm_adapter_streams_from_an_openai_compatible_server(model_server: ServerProcess) -> None:
    from modelmora.models.llm import LlmAdapter

    adapter = LlmAdapter(model=model_server.url, remote_model="gemma-3-270m")
    adapter.load()
    item = {"task": "chat", "messages": _COUNTING, "max_tokens": 48, "temperature": 0}
    try:
        (whole,) = adapter.predict([item])
        pieces = list(adapter.predict_stream(item))
    finally:
        adapter.close()
    assert len(pieces) > 5
    assert "".join(p["text"] for p in pieces) == whole["text"]
    assert pieces[-1]["finish_reason"] == whole["finish_reason"]
    assert pieces[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]
