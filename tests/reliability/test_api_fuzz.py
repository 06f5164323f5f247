"""The HTTP API against its own OpenAPI schema (schemathesis), and path traversal refused.

A live ``modelmora serve`` process with toy models; schemathesis generates requests for every
operation in ``/openapi.json`` and checks: no 5xx, responses of the declared content type and
matching their declared schema. Then every file or model name field gets path traversal
attempts, which must be refused with a JSON 4xx and touch nothing outside the server's folders.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from modelmora.bench.server import ServerProcess

from .conftest import Tally

TOY = {"adapter": "toy", "keep_alive_s": 300}
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 15


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [{"name": "echo", **TOY, "max_batch_size": 8, "max_wait_ms": 2}]
    config = {"models": models, "max_request_mb": 1, "request_timeout_s": 5}
    server = ServerProcess(tmp_path_factory.mktemp("fuzz-server"), config).start()
    yield server
    server.stop()


def _fuzzer(operation: Any, counts: dict[str, int]) -> Any:
    """A hypothesis test of one operation, counting the cases it tried and that passed."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        counts["tried"] += 1
        case.call_and_validate(checks=CHECKS, timeout=30)
        counts["survived"] += 1

    return fuzz


def test_api_conforms_to_its_schema(api: ServerProcess, tally: Tally) -> None:
    """Every operation of /openapi.json, a bounded number of generated requests each."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        counts = {"tried": 0, "survived": 0}

        fuzz = _fuzzer(operation, counts)
        try:
            fuzz()
        except Exception as exc:  # hypothesis re-raises the (shrunk) failing case
            failures.append(f"{operation.label}: {str(exc)[:600]}")
        tally.record("bad input", "HTTP API (schemathesis cases)", **counts)
    assert not failures, "\n".join(failures)


TRAVERSAL = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "..", "a/../../b"]


def _attempts(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, request kwargs) putting ``name`` in every file or model name field."""
    audio = base64.b64encode(b"RIFF").decode()
    return [
        ("GET", f"/v1/models/{name}", {}),
        ("POST", f"/api/v1/models/{name}/load", {}),
        ("POST", f"/api/v1/models/{name}/unload", {}),
        ("POST", f"/api/v1/models/{name}/predict", {"json": {"input": 1}}),
        ("POST", "/v1/embeddings", {"json": {"model": name, "input": "x"}}),
        ("POST", "/v1/chat/completions", {"json": {"model": name, "messages": []}}),
        ("POST", "/api/v1/jobs", {"json": {"model": name, "input": 1}}),
        ("POST", "/api/v1/jobs", {"json": {"model": "echo", "input": {"audio": name}}}),
        ("POST", "/api/v1/models/echo/predict", {"json": {"input": {"audio": name}}}),
        ("GET", f"/api/v1/jobs/{name}", {}),
        ("GET", f"/api/v1/jobs/{name}/result", {}),
        ("DELETE", f"/api/v1/jobs/{name}", {}),
        (
            "POST",
            "/v1/audio/transcriptions",
            {"files": {"file": (name, b"RIFF0000", "audio/wav")}, "data": {"model": name}},
        ),
        (
            "POST",
            "/api/v1/jobs",
            {"json": {"model": "echo", "input": {"audio_base64": audio, "name": name}}},
        ),
    ]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_path_traversal_is_refused(api: ServerProcess, tally: Tally, name: str) -> None:
    before = sorted(p.name for p in Path("/etc").iterdir())
    refused = 0
    attempts = _attempts(name)
    with api.client() as http:
        for method, path, kwargs in attempts:
            reply = http.request(method, path, **kwargs)
            body = reply.json()
            served = reply.status_code < 400 and "passwd" in str(body) and "root:" in str(body)
            # the one accepted shape: audio bytes stored under a server-made name
            stored_safely = reply.status_code == 202 and "audio_base64" in str(kwargs)
            if (400 <= reply.status_code < 500 and "error" in body) or stored_safely:
                refused += not served
    tally.record(
        "bad input", "path traversal in file/model names", tried=len(attempts), survived=refused
    )
    assert refused == len(attempts)
    assert sorted(p.name for p in Path("/etc").iterdir()) == before
