"""``modelmora bench startup``: what a cold and a framework-warm worker cost, per packaged model.

For each model: a cold worker start (a fresh interpreter and the handshake) → the model loaded
→ the first inference → the second inference → stop with verified release, repeated ``runs``
times; medians are reported. The *cost of isolation* is what a request pays when its model
gets a fresh worker, over a model already resident and warm: cold start → first result, minus
a warm (second) inference.

Each run also prepares a spare (:mod:`modelmora.runtime.spares`: a worker that imported the
adapter's framework and holds no model), measures it (RSS, PSS, time to prepare), and starts
the same model from it: ``warm_first_result_s`` is that start → first result, beside
``cold_first_result_s``. Cold and warm runs alternate, so both see the same machine.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.table import Table

from modelmora.bench.inprocess import sample_input
from modelmora.errors import ModelLoadError, WorkerError
from modelmora.models import ModelSpec
from modelmora.runtime.worker import Worker

__all__ = ["DEFAULT_MODELS", "StartupRow", "format_table", "run_startup"]

logger = logging.getLogger(__name__)

#: The packaged models (offline) and a bare toy worker, the runtime's own floor.
DEFAULT_MODELS: tuple[str, ...] = ("toy", "embedding", "whisper", "diarizer", "llm")
_FIELDS = ("process_s", "load_s", "first_s", "second_s", "stop_s", "cold_first_result_s")
_WARM_FIELDS = ("warm_first_result_s", "warm_load_s", "spare_prepare_s", "spare_rss_mb")


@dataclass
class StartupRow:
    """Medians (seconds) over the runs of one model; ``error`` set when it could not run.

    Attributes:
        model: the spec as given.
        runs: runs that completed.
        process_s: spawn → ready minus the model's load: interpreter start + handshake.
        load_s: the model's load, as timed inside the worker.
        first_s: first inference round trip.
        second_s: second inference round trip (warm).
        stop_s: stop → release verified.
        cold_first_result_s: worker start → first result.
        isolation_cost_s: ``cold_first_result_s - second_s``.
        peak_rss_mb: the worker's peak RSS (largest over the runs).
        warm_first_result_s: start from a prepared spare → first result.
        warm_load_s: the model's load in the spare, as timed inside it.
        spare_prepare_s: spawn of a spare → its framework imported.
        spare_rss_mb, spare_pss_mb: what a waiting spare holds (PSS: shared pages split).
        error: why the model was skipped.
    """

    model: str
    runs: int = 0
    process_s: float | None = None
    load_s: float | None = None
    first_s: float | None = None
    second_s: float | None = None
    stop_s: float | None = None
    cold_first_result_s: float | None = None
    isolation_cost_s: float | None = None
    peak_rss_mb: float | None = None
    warm_first_result_s: float | None = None
    warm_load_s: float | None = None
    spare_prepare_s: float | None = None
    spare_rss_mb: float | None = None
    spare_pss_mb: float | None = None
    error: str | None = None
    samples: dict[str, list[float]] = field(default_factory=dict, repr=False)


def _one_run(spec: ModelSpec, sample: Any, load_timeout: float) -> tuple[dict[str, float], float]:
    t0 = time.perf_counter()
    worker = Worker(
        spec, name=f"startup {spec.label()}", load_timeout=load_timeout, stop_timeout=60.0
    ).start()
    try:
        ready = time.perf_counter()
        worker.call([sample])
        first = time.perf_counter()
        worker.call([sample])
        second = time.perf_counter()
    finally:
        report = worker.stop()
    load_s = worker.load_s or 0.0
    timings = {
        "process_s": (ready - t0) - load_s,
        "load_s": load_s,
        "first_s": first - ready,
        "second_s": second - first,
        "stop_s": report.release_s,
        "cold_first_result_s": first - t0,
    }
    peak = worker.memory.peak_rss_mb if worker.memory else 0.0
    return timings, peak


def _warm_run(spec: ModelSpec, sample: Any, load_timeout: float) -> dict[str, float]:
    name = f"startup {spec.label()}"
    spare = Worker(spec, name=f"spare {name}", load_timeout=load_timeout, stop_timeout=60.0)
    t0 = time.perf_counter()
    spare.prepare()
    prepared = time.perf_counter()
    rss, pss = spare.rss_mb(), 0.0
    with contextlib.suppress(psutil.Error, AttributeError, TypeError):
        pss = psutil.Process(spare.pid).memory_full_info().pss / 2**20
    worker = Worker(spec, name=name, load_timeout=load_timeout, stop_timeout=60.0)
    t1 = time.perf_counter()
    try:
        worker.start(spare=spare)
        worker.call([sample])
        first = time.perf_counter()
    finally:
        worker.stop()
        spare.stop()
    if not worker.warm:
        raise WorkerError(f"{name}: the spare died before it was used")
    return {
        "warm_first_result_s": first - t1,
        "warm_load_s": worker.load_s or 0.0,
        "spare_prepare_s": prepared - t0,
        "spare_rss_mb": rss,
        "spare_pss_mb": pss,
    }


def _measure(
    model: str, runs: int, load_timeout: float, warm: bool = True, audio: str | None = None
) -> StartupRow:
    row = StartupRow(model=model)
    try:
        spec = ModelSpec.parse(model)
        sample = sample_input(spec.kind)
        if audio is not None and spec.kind in ("whisper", "diarizer"):
            sample = {**sample, "audio": audio}
        for _ in range(runs):
            timings, peak = _one_run(spec, sample, load_timeout)
            if warm:
                timings.update(_warm_run(spec, sample, load_timeout))
            for key, value in timings.items():
                row.samples.setdefault(key, []).append(value)
            row.peak_rss_mb = max(row.peak_rss_mb or 0.0, peak)
            row.runs += 1
    except (ModelLoadError, WorkerError) as exc:
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        logger.warning("bench startup: %s skipped: %s", model, row.error)
        return row
    for key in _FIELDS + (("spare_pss_mb", *_WARM_FIELDS) if warm else ()):
        setattr(row, key, statistics.median(row.samples[key]))
    assert row.cold_first_result_s is not None and row.second_s is not None
    row.isolation_cost_s = row.cold_first_result_s - row.second_s
    return row


def run_startup(
    models: list[str] | None = None,
    runs: int = 5,
    load_timeout: float = 600.0,
    warm: bool = True,
    audio: str | None = None,
) -> dict[str, Any]:
    """Time cold worker starts, and warm ones from a spare, for each model.

    Args:
        models: model specs (defaults to :data:`DEFAULT_MODELS`).
        runs: cold (and warm) starts per model; medians are reported.
        load_timeout: seconds a model may take to load.
        warm: also time a start from a prepared spare after each cold one.
        audio: a recording the Whisper and diarizer models run on (default: 2 s of a
            synthetic voiced tone, on which Whisper may decode at length: it is no speech).

    Returns:
        ``{"runs": runs, "models": [StartupRow as dict, ...]}``; a model that cannot load
        (its package missing, say) has ``error`` set and no timings.

    Raises:
        ValueError: ``runs`` below 1, or a malformed model spec.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    models = list(models or DEFAULT_MODELS)
    for model in models:
        ModelSpec.parse(model)  # fail early, naming the valid kinds
    if audio is not None and not Path(audio).is_file():
        raise ValueError(f"--audio {audio}: no such file")
    rows = [_measure(model, runs, load_timeout, warm, audio) for model in models]
    return {"runs": runs, "audio": audio, "models": [_row_dict(row) for row in rows]}


def _row_dict(row: StartupRow) -> dict[str, Any]:
    data = asdict(row)
    data.pop("samples")
    return data


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1e3:.0f} ms" if value < 10 else f"{value:.1f} s"


def format_table(result: dict[str, Any]) -> Table:
    """The result as a rich table (medians)."""
    table = Table(
        title=f"Cold worker start per model (median of {result['runs']})",
        caption="start: interpreter + handshake; stop: until the release is verified; "
        "cold: spawn → first result; warm: start from a spare (framework imported) → first "
        "result; cost (of isolation) = cold minus a warm call; prepare: a spare, until "
        "ready; spare MB: its RSS/PSS",
    )
    headers = (
        "model",
        "start",
        "load",
        "1st call",
        "2nd call",
        "stop",
        "cold",
        "warm",
        "cost",
        "peak",
        "prepare",
        "spare MB",
    )
    for name in headers:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in result["models"]:
        if row["error"]:
            table.add_row(row["model"], f"[red]skipped[/]: {row['error']}", *[""] * 10)
            continue
        peak = f"{row['peak_rss_mb']:.0f} MB" if row["peak_rss_mb"] else "—"
        spare_mem = "—"
        if row["spare_rss_mb"] is not None:
            spare_mem = f"{row['spare_rss_mb']:.0f}/{row['spare_pss_mb'] or 0:.0f} MB"
        table.add_row(
            row["model"],
            *(_ms(row[key]) for key in ("process_s", "load_s", "first_s", "second_s", "stop_s")),
            _ms(row["cold_first_result_s"]),
            _ms(row["warm_first_result_s"]),
            _ms(row["isolation_cost_s"]),
            peak,
            _ms(row["spare_prepare_s"]),
            spare_mem,
        )
    return table
