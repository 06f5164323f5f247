"""``modelmora bench peers``: ModelMora beside LitServe, Ray Serve and (given its own
environment) infinity-emb, same model, same load.

Each server serves all-MiniLM-L6-v2 (the packaged copy) with its own dynamic batching at the
same settings (max batch 32, 5 ms; infinity batches what is queued and has no wait setting),
one short sentence per request. Servers run one at a time,
as their own processes, alternated over ``rounds``, each round driven by the same load
generator: ``wrk`` when it is on the PATH (Debian's package), else a built-in keep-alive client
with one thread per connection (which costs this machine's CPU too: prefer ``wrk``).

Per server: requests/s, p50 and p99 at 1 and at 32 connections, the peak RSS of its whole
process tree and the CPU time of the tree per request at 1 connection. ``--json`` prints
``{"servers": {"modelmora": {"rps_c1": .., "p50_c1_ms": .., "rps_c32": .., "p99_c32_ms": ..,
"rss_mb": .., ...}, "litserve": {..}, "ray-serve": {..}}, ...}``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.table import Table

__all__ = [
    "DEFAULT_SERVERS",
    "PEERS",
    "PeersOptions",
    "format_table",
    "parse_wrk",
    "run_peers_bench",
]

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."

#: The servers this benchmark knows, in table order.
PEERS: tuple[str, ...] = ("modelmora", "litserve", "ray-serve", "infinity")
#: The servers run when none are named (infinity needs an interpreter of its own).
DEFAULT_SERVERS: tuple[str, ...] = ("modelmora", "litserve", "ray-serve")


@dataclass
class PeersOptions:
    """What to run.

    Args:
        servers: which of :data:`PEERS` to run.
        rounds: alternated rounds (each server once per round).
        duration_s: seconds of load per measurement.
        connections: the concurrent connections of the loaded measurement.
        model: the sentence-transformers model folder (None: the packaged all-MiniLM-L6-v2).
        use_wrk: drive the load with ``wrk`` when available.
        http_workers: ModelMora's front-end counts to run (``--http-workers``); each count
            but 1 is one more server in the table, ``modelmora-http<N>``.
        infinity_bin: the ``infinity_emb`` command (infinity-emb pins older transformers and
            numpy than ModelMora's: it gets a virtual environment of its own); default: the
            one on the PATH.

    Raises:
        ValueError: an unknown server or a count below 1.
    """

    servers: tuple[str, ...] = DEFAULT_SERVERS
    rounds: int = 2
    duration_s: float = 10.0
    connections: int = 32
    model: str | None = None
    use_wrk: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    http_workers: tuple[int, ...] = (1,)
    infinity_bin: str | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.servers if s not in PEERS]
        if unknown:
            raise ValueError(f"unknown server(s) {unknown}: choose from {', '.join(PEERS)}")
        if "infinity" in self.servers:
            self.infinity_bin = self.infinity_bin or shutil.which("infinity_emb")
            if self.infinity_bin is None:
                raise ValueError(
                    "infinity: no infinity_emb command; install infinity-emb[server,torch] in a "
                    "virtual environment of its own and pass --infinity-bin ENV/bin/infinity_emb"
                )
        if not self.http_workers or min(self.http_workers) < 1:
            raise ValueError("http_workers: one or more counts of at least 1")
        if min(self.rounds, self.connections) < 1 or self.duration_s <= 0:
            raise ValueError("rounds and connections must be at least 1, duration positive")


@dataclass
class Load:
    """One measurement: requests/s and latency percentiles (ms) over a fixed duration."""

    connections: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --- the servers ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(name: str, port: int, model: str, folder: Path, opts: PeersOptions) -> list[str]:
    batching = ["--max-batch-size", str(opts.max_batch_size)]
    batching += ["--batch-timeout-ms", str(opts.max_wait_ms)]
    if name.startswith("modelmora"):
        config = {
            "cache_dir": str(folder / "cache"),
            "queue_limit": 4096,
            "http_workers": _http_workers(name),
            "models": [
                {
                    "name": "mini",
                    "adapter": "embedding",
                    "source": model,
                    "max_batch_size": opts.max_batch_size,
                    "max_wait_ms": opts.max_wait_ms,
                }
            ],
        }
        path = folder / "server.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return [
            *(sys.executable, "-m", "modelmora", "serve", "--config", str(path)),
            *("--port", str(port), "--no-access-log", "--log-level", "warning"),
        ]
    if name == "infinity":  # batches what is queued: it has no wait setting
        assert opts.infinity_bin is not None
        return [
            *(opts.infinity_bin, "v2", "--model-id", model, "--served-model-name", "mini"),
            *("--port", str(port), "--batch-size", str(opts.max_batch_size)),
            *("--engine", "torch", "--device", "cpu", "--log-level", "warning"),
        ]
    module = {"litserve": "litserve_app", "ray-serve": "rayserve_app"}[name]
    return [
        *(sys.executable, "-m", f"modelmora.bench.peers.{module}"),
        *("--port", str(port), "--model", model, *batching),
    ]


def _http_workers(name: str) -> int:
    """``modelmora-http4`` → 4; ``modelmora`` → 1."""
    return int(name.removeprefix("modelmora-http")) if name.startswith("modelmora-http") else 1


def _lineup(opts: PeersOptions) -> tuple[str, ...]:
    """The servers to run: the peers asked for, with a ModelMora per front-end count."""
    variants = tuple(f"modelmora-http{n}" for n in opts.http_workers if n != 1)
    names: list[str] = []
    for name in opts.servers:
        if name == "modelmora":
            names += (["modelmora"] if 1 in opts.http_workers else []) + list(variants)
        else:
            names.append(name)
    return tuple(names)


def _route(name: str) -> tuple[str, bytes]:
    if name.startswith("modelmora"):
        return "/v1/embeddings", json.dumps({"model": "mini", "input": TEXT}).encode()
    if name == "infinity":
        return "/embeddings", json.dumps({"model": "mini", "input": [TEXT]}).encode()
    path = "/predict" if name == "litserve" else "/"
    return path, json.dumps({"input": TEXT}).encode()


@contextlib.contextmanager
def _server(name: str, model: str, folder: Path, opts: PeersOptions) -> Iterator[tuple[int, int]]:
    """Start one server and wait until it answers a real request; yield (pid, port)."""
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _command(name, port, model, folder, opts),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # no telemetry, no hub: every server reads the local model folder
            env={
                **os.environ,
                "DO_NOT_TRACK": "1",
                "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                "HF_HUB_OFFLINE": "1",
            },
        )
    try:
        _wait_ready(proc, port, name, log_path)
        yield proc.pid, port
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, name: str, log: Path) -> None:
    path, body = _route(name)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            conn.close()
            if reply.status == 200:
                return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not start answering requests; its log ends:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then SIGKILL its whole session (Ray leaves daemons otherwise)."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    for p in _session(proc.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            if p.pid != sid and os.getsid(p.pid) == sid:
                found.append(p)
    return found


def _tree(pid: int) -> list[psutil.Process]:
    """The server and everything it started: its descendants (ModelMora's workers run in
    sessions of their own) and the members of its session (Ray's daemons are re-parented)."""
    try:
        root = psutil.Process(pid)
        procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return []
    for p in _session(pid):
        procs.setdefault(p.pid, p)
    return list(procs.values())


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _tree_rss_mb(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total / 2**20


# --- the load ------------------------------------------------------------------------------

_WRK_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str, connections: int) -> Load:
    """Read ``wrk --latency`` output into a :class:`Load`.

    Raises:
        ValueError: the output has no throughput or latency distribution (wrk failed).
    """
    rps = _WRK_RPS.search(output)
    total = _WRK_TOTAL.search(output)
    latency = {q: float(v) * _UNIT_MS[u] for q, v, u in _WRK_LATENCY.findall(output)}
    if not rps or not total or set(latency) != {"50", "99"}:
        raise ValueError(f"cannot read wrk's output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Load(
        connections=connections,
        requests=int(total.group(1)),
        errors=errors,
        rps=float(rps.group(1)),
        p50_ms=round(latency["50"], 2),
        p99_ms=round(latency["99"], 2),
    )


def _wrk(port: int, name: str, connections: int, duration: float, folder: Path) -> Load:
    path, body = _route(name)
    script = folder / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    threads = max(1, min(connections, 2))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s"]
    command += [
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60)
    return parse_wrk(out.stdout, connections)


def _builtin(port: int, name: str, connections: int, duration: float) -> Load:
    """One thread and one keep-alive connection per simulated client, for ``duration``."""
    path, body = _route(name)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                reply.read()
                ok = reply.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append(time.perf_counter() - start)
            if not ok:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    ordered = sorted(latencies) or [0.0]

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 2)

    return Load(
        connections, len(latencies), errors[0], len(latencies) / elapsed, pct(0.5), pct(0.99)
    )


def _measure(
    pid: int, port: int, name: str, connections: int, opts: PeersOptions, folder: Path
) -> Load:
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_before = _tree_cpu_s(pid)
    try:
        if opts.use_wrk and shutil.which("wrk"):
            load = _wrk(port, name, connections, opts.duration_s, folder)
        else:
            load = _builtin(port, name, connections, opts.duration_s)
    finally:
        done.set()
        sampler.join()
    load.cpu_s = _tree_cpu_s(pid) - cpu_before
    load.peak_rss_mb = round(max(peak[0], _tree_rss_mb(pid)), 1)
    return load


# --- the benchmark -------------------------------------------------------------------------


def _one_round(name: str, model: str, folder: Path, opts: PeersOptions) -> dict[str, Any]:
    with _server(name, model, folder / name, opts) as (pid, port):
        start_rss = _tree_rss_mb(pid)
        _measure(pid, port, name, opts.connections, replace_duration(opts, 2.0), folder)  # warm-up
        c1 = _measure(pid, port, name, 1, opts, folder)
        cn = _measure(pid, port, name, opts.connections, opts, folder)
    return {
        "c1": asdict(c1),
        "cN": asdict(cn),
        "rss_mb": round(max(start_rss, c1.peak_rss_mb, cn.peak_rss_mb), 1),
        "cpu_ms_per_request_c1": round(c1.cpu_s * 1000 / max(c1.requests, 1), 2),
    }


def replace_duration(opts: PeersOptions, seconds: float) -> PeersOptions:
    """A copy of ``opts`` with another load duration (the warm-up's)."""
    return PeersOptions(**{**asdict(opts), "duration_s": seconds, "servers": opts.servers})


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str, sub: str | None = None) -> float:
        values = [r[key][sub] if sub else r[key] for r in rounds]
        return round(statistics.fmean(values), 2)

    return {
        "rps_c1": mean("c1", "rps"),
        "p50_c1_ms": mean("c1", "p50_ms"),
        "p99_c1_ms": mean("c1", "p99_ms"),
        "rps_c32": mean("cN", "rps"),
        "p50_c32_ms": mean("cN", "p50_ms"),
        "p99_c32_ms": mean("cN", "p99_ms"),
        "rss_mb": mean("rss_mb"),
        "cpu_ms_per_request_c1": mean("cpu_ms_per_request_c1"),
        "errors": sum(r["c1"]["errors"] + r["cN"]["errors"] for r in rounds),
        "rps_c32_rounds": [round(r["cN"]["rps"], 1) for r in rounds],
    }


def run_peers_bench(options: PeersOptions | None = None) -> dict[str, Any]:
    """Run every server of ``options`` over alternated rounds; return the JSON-ready result."""
    opts = options or PeersOptions()
    model = opts.model
    if model is None:
        from modelmora.models.embedding import default_embedding_path

        model = default_embedding_path()
    lineup = _lineup(opts)
    per_server: dict[str, list[dict[str, Any]]] = {name: [] for name in lineup}
    with tempfile.TemporaryDirectory(prefix="modelmora-peers-") as tmp:
        for index in range(opts.rounds):
            order = lineup if index % 2 == 0 else tuple(reversed(lineup))
            for name in order:
                per_server[name].append(_one_round(name, model, Path(tmp), opts))
    return {
        "servers": {
            name: {**_summary(rounds), "rounds": rounds} for name, rounds in per_server.items()
        },
        "settings": {
            "connections": opts.connections,
            "duration_s": opts.duration_s,
            "rounds": opts.rounds,
            "max_batch_size": opts.max_batch_size,
            "max_wait_ms": opts.max_wait_ms,
            "http_workers": list(opts.http_workers),
            "load_generator": "wrk" if opts.use_wrk and shutil.which("wrk") else "built-in",
        },
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
    }


def format_table(result: dict[str, Any]) -> Table:
    """The side-by-side table of :func:`run_peers_bench`'s result."""
    n = result["settings"]["connections"]
    table = Table(
        title=f"same model, one sentence per request ({result['settings']['load_generator']})"
    )
    for column in (
        "server",
        "req/s c1",
        "p50",
        "p99",
        f"req/s c{n}",
        "p50",
        "p99",
        "CPU ms/req c1",
        "RSS MB",
    ):
        table.add_column(
            column, justify="left" if column == "server" else "right", no_wrap=column == "server"
        )
    for name, s in result["servers"].items():
        table.add_row(
            name,
            f"{s['rps_c1']:.1f}",
            f"{s['p50_c1_ms']:.1f}",
            f"{s['p99_c1_ms']:.0f}",
            f"{s['rps_c32']:.1f}",
            f"{s['p50_c32_ms']:.0f}",
            f"{s['p99_c32_ms']:.0f}",
            f"{s['cpu_ms_per_request_c1']:.1f}",
            f"{s['rss_mb']:.0f}",
        )
    return table
