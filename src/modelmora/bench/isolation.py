"""``modelmora bench isolation``: a model in a worker that exits, or ``del`` + ``gc.collect()``.

Two tests, each in processes of their own, on the same model and the same input:

1. **Subprocess** — the benchmark process starts a :class:`~modelmora.Worker`, which loads the
   model and runs one inference, then stops it. Measured: the benchmark process's own RSS
   (baseline → during → after), the worker's own RSS and peak (as the worker reports it: the
   proof of concept's blind spot, where only the parent was measured and "nothing leaked" was
   true by construction), its VRAM by PID, and the machine (available RAM; GPU memory in use).
2. **Same process** — a *fresh helper process of its own* (:mod:`modelmora.bench.inprocess`)
   imports the framework, loads the model, runs the inference, then drops it with ``del`` +
   ``gc.collect()`` (+ ``torch.cuda.empty_cache()`` on CUDA). Its RSS (and VRAM) is reported
   after each step. The two tests never share an interpreter or an allocator.

The verdict compares what each approach left behind (see :func:`decide_verdict`). The memory
over time of both tests is sampled and drawn by :mod:`modelmora.bench.timeline`.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from modelmora.bench.inprocess import sample_input
from modelmora.bench.timeline import Timeline, draw_panel
from modelmora.models import ModelSpec
from modelmora.runtime.memory import (
    available_mb,
    gpu_used_mb,
    nvml_available,
    process_rss_mb,
    vram_by_pid_mb,
)
from modelmora.runtime.worker import Worker
from modelmora.units import check_device

__all__ = [
    "FALLBACK_MODEL",
    "NOISE_FLOOR_MB",
    "IsolationOptions",
    "IsolationResult",
    "decide_verdict",
    "format_table",
    "plot_timelines",
    "run_isolation",
]

logger = logging.getLogger(__name__)

#: Below this many MB a delta is measurement noise (allocator slack, page-cache jitter).
NOISE_FLOOR_MB = 5.0
#: PASS when the subprocess delta is under this fraction of the same-process delta.
PASS_RATIO = 0.5
#: What runs when the requested model's framework is not installed (the POC's "dummy mode"):
#: 200 MB of weights freed on ``del``, plus 50 MB that its inference leaks in-process.
FALLBACK_MODEL = "toy:alloc_mb=200,leak_mb=50"
_PROBE = "modelmora.bench.inprocess:InProcessProbe"


def decide_verdict(
    subprocess_delta_mb: float, inprocess_delta_mb: float, noise_mb: float = NOISE_FLOOR_MB
) -> tuple[str, str]:
    """The proof of concept's verdict, made safe for models that leak nothing.

    Rules, in order:

    - same-process delta under ``noise_mb``: ``del`` + ``gc`` already gave (nearly) everything
      back, so isolation has nothing to show: ``NO-LEAK`` if the subprocess delta is under the
      floor too, else ``FAIL``. Never ``PASS``: a ratio of two noise figures means nothing.
    - subprocess delta under ``PASS_RATIO`` (50%) of the same-process delta: ``PASS``.
    - subprocess delta smaller than the same-process delta by more than ``noise_mb``:
      ``PARTIAL`` (isolation helps, but not dramatically).
    - otherwise ``FAIL`` (no significant difference).

    Args:
        subprocess_delta_mb: benchmark process RSS after the worker exited, minus its baseline.
        inprocess_delta_mb: helper process RSS after ``del`` + ``gc``, minus its baseline.
        noise_mb: the noise floor in MB (must be non-negative).

    Returns:
        ``(verdict, reason)``: verdict is ``PASS``, ``PARTIAL``, ``FAIL`` or ``NO-LEAK``.

    Raises:
        ValueError: a negative noise floor.
    """
    if noise_mb < 0:
        raise ValueError(f"noise_mb must be non-negative, got {noise_mb}")
    sub, inproc = subprocess_delta_mb, inprocess_delta_mb
    if inproc < noise_mb:
        if sub < noise_mb:
            return "NO-LEAK", (
                f"del + gc.collect() gave back all but {inproc:+.1f} MB (under the {noise_mb:g} MB "
                "noise floor): this model does not show what isolation is for"
            )
        return "FAIL", f"the subprocess approach kept {sub:+.1f} MB, in-process {inproc:+.1f} MB"
    if sub < PASS_RATIO * inproc:
        return "PASS", (
            f"the subprocess approach kept {sub:+.1f} MB vs {inproc:+.1f} MB in-process "
            f"(under {PASS_RATIO:.0%})"
        )
    if sub < inproc - noise_mb:
        return "PARTIAL", (
            f"the subprocess approach kept {sub:+.1f} MB vs {inproc:+.1f} MB in-process: "
            "better, but not by half"
        )
    return "FAIL", f"no significant difference: {sub:+.1f} MB vs {inproc:+.1f} MB in-process"


@dataclass
class IsolationOptions:
    """Settings of one isolation benchmark run.

    Attributes:
        model: a model spec (``embedding``, ``whisper``, ``toy:alloc_mb=300,leak_mb=100``...).
        iterations: load/use/release cycles in each test (drift per cycle reported when > 1).
        device: ``auto``, ``cpu`` or ``cuda``.
        noise_mb: the verdict's noise floor.
        interval: seconds between memory samples of the timelines.
        settle_s: seconds to wait after a release before measuring "after".
        load_timeout: seconds a model may take to load.
        stop_timeout: seconds a worker may take to exit gracefully before SIGTERM (a torch
            interpreter can take several seconds to tear down on a busy machine).
    """

    model: str = "embedding"
    iterations: int = 1
    device: str = "auto"
    noise_mb: float = NOISE_FLOOR_MB
    interval: float = 0.05
    settle_s: float = 0.3
    load_timeout: float = 600.0
    stop_timeout: float = 60.0

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        ModelSpec.parse(self.model)  # fails early, naming the valid kinds


@dataclass
class IsolationResult:
    """What one run measured (MB unless named otherwise). ``to_dict`` is the ``--json`` shape."""

    verdict: str
    verdict_reason: str
    model: str
    device: str
    iterations: int
    noise_floor_mb: float
    subprocess_delta_mb: float
    inprocess_delta_mb: float
    inprocess_model_delta_mb: float
    worker_peak_rss_mb: float
    worker_peak_vram_mb: float | None
    subprocess: dict[str, Any]
    inprocess: dict[str, Any]
    fallback: str | None = None
    notes: list[str] = field(default_factory=list)
    timelines: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the timelines (those go to the plot)."""
        data = asdict(self)
        data.pop("timelines")
        return data


def _resolve(options: IsolationOptions) -> tuple[ModelSpec, str, str | None, list[str]]:
    """The spec to run, the device, the fallback note, and notes for the output."""
    notes: list[str] = []
    spec = ModelSpec.parse(options.model)
    fallback = None
    needed = spec.capabilities().frameworks
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        fallback = (
            f"{', '.join(missing)} is not installed: ran the toy model {FALLBACK_MODEL} instead "
            f"of {spec.label()} (dummy mode)"
        )
        spec = ModelSpec.parse(FALLBACK_MODEL)
    device = options.device
    if device == "auto":
        device = "cuda" if nvml_available() and importlib.util.find_spec("torch") else "cpu"
    elif device == "cuda" and not nvml_available():
        raise ValueError("--device cuda: no CUDA GPU is visible here (use auto or cpu)")
    takes_device = spec.capabilities().takes_device
    if takes_device and "device" not in spec.params:
        spec = ModelSpec(spec.kind, {**spec.params, "device": device})
    elif device == "cuda" and not takes_device:
        notes.append(f"adapter {spec.kind!r} takes no device: it ran where it always runs")
    return spec, device, fallback, notes


def _drift(values: list[float]) -> float | None:
    """Growth per cycle: the least-squares slope of the per-cycle "after" figures."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def _machine() -> dict[str, float | None]:
    return {"available_mb": available_mb(), "gpu_used_mb": gpu_used_mb()}


def _run_subprocess(
    spec: ModelSpec, options: IsolationOptions, timeline: Timeline
) -> dict[str, Any]:
    """Test 1: the benchmark process starts a worker, uses it, stops it; memory on all sides."""
    sample = sample_input(spec.kind)
    current: list[Worker] = []
    timeline.watch("benchmark process", process_rss_mb)
    timeline.watch("worker process", lambda: current[0].rss_mb() if current else 0.0)
    if nvml_available():
        timeline.watch("worker VRAM", lambda: _vram(current[0].pid) if current else None)
    gc.collect()
    baseline, machine_before = process_rss_mb(), _machine()
    cycles: list[dict[str, Any]] = []
    for i in range(options.iterations):
        tag = f" #{i + 1}" if options.iterations > 1 else ""
        timeline.mark(f"start{tag}")
        worker = Worker(
            spec,
            name=f"bench {spec.label()}",
            load_timeout=options.load_timeout,
            stop_timeout=options.stop_timeout,
        )
        current.append(worker)  # sampled from its spawn on, through the load
        worker.start()
        timeline.mark("loaded")
        worker.call([sample])
        timeline.mark("inference")
        memory = worker.memory
        cycle: dict[str, Any] = {
            "parent_during_mb": process_rss_mb(),
            "worker_rss_mb": memory.rss_mb if memory else None,
            "worker_peak_rss_mb": memory.peak_rss_mb if memory else None,
            "worker_vram_mb": memory.vram_mb if memory else None,
            "load_s": worker.load_s,
            "machine_during": _machine(),
        }
        report = worker.stop()
        current.clear()
        timeline.mark("exit")
        time.sleep(options.settle_s)
        gc.collect()
        cycle.update(
            parent_after_mb=process_rss_mb(),
            released=report.released,
            release_s=report.release_s,
            stop_stage=report.stage,
            machine_after=_machine(),
        )
        cycles.append(cycle)
    afters = [c["parent_after_mb"] for c in cycles]
    vrams = [c["worker_vram_mb"] for c in cycles if c["worker_vram_mb"] is not None]
    return {
        "process": "benchmark process (parent of the worker)",
        "baseline_mb": baseline,
        "during_mb": max(c["parent_during_mb"] for c in cycles),
        "after_mb": afters[-1],
        "delta_mb": afters[-1] - baseline,
        "worker_peak_rss_mb": max(c["worker_peak_rss_mb"] or 0.0 for c in cycles),
        "worker_peak_vram_mb": max(vrams) if vrams else None,
        "released": all(c["released"] for c in cycles),
        "release_s": max(c["release_s"] for c in cycles),
        "stop_stages": sorted({c["stop_stage"] for c in cycles}),
        "machine_before": machine_before,
        "machine_during": cycles[-1]["machine_during"],
        "machine_after": cycles[-1]["machine_after"],
        "drift_mb_per_cycle": _drift(afters),
        "cycles": cycles,
    }


def _vram(pid: int | None) -> float | None:
    return vram_by_pid_mb().get(pid, 0.0) if pid is not None else None


def _run_inprocess(
    spec: ModelSpec, options: IsolationOptions, timeline: Timeline
) -> dict[str, Any]:
    """Test 2: load, use, del + gc in a fresh helper process of its own; its memory per step."""
    probe_spec = ModelSpec(_PROBE, {"kind": spec.kind, "params": dict(spec.params)})
    probe_worker = Worker(
        probe_spec,
        name="in-process probe",
        load_timeout=options.load_timeout,
        stop_timeout=options.stop_timeout,
    )
    with probe_worker as probe:
        pid = probe.pid
        timeline.watch("helper process", lambda: process_rss_mb(pid))
        if nvml_available():
            timeline.watch("helper VRAM", lambda: _vram(pid))
        machine_before = _machine()
        steps: dict[str, dict[str, Any]] = {}
        cycles: list[dict[str, Any]] = []

        def step(name: str, label: str | None = None) -> dict[str, Any]:
            (report,) = probe.call([{"step": name}], timeout=options.load_timeout)
            if label:
                timeline.mark(label)
            steps[name] = report
            return dict(report)

        step("baseline")
        step("import", "import")
        for i in range(options.iterations):
            tag = f" #{i + 1}" if options.iterations > 1 else ""
            step("load", f"loaded{tag}")
            during = step("inference", "inference")
            machine_during = _machine()
            released = step("release", "del + gc")
            cycles.append({"during": during, "after": released, "machine_during": machine_during})
        time.sleep(options.settle_s)
        machine_after = _machine()
    timeline.mark("helper exit")
    return _inprocess_summary(pid, steps, cycles, machine_before, machine_after)


def _inprocess_summary(
    pid: int | None,
    steps: dict[str, dict[str, Any]],
    cycles: list[dict[str, Any]],
    machine_before: dict[str, float | None],
    machine_after: dict[str, float | None],
) -> dict[str, Any]:
    baseline = steps["baseline"]["rss_mb"]
    afters = [c["after"]["rss_mb"] for c in cycles]
    last = cycles[-1]
    return {
        "process": f"fresh helper process of its own (pid {pid})",
        "fresh_process": True,
        "pid": pid,
        "baseline_mb": baseline,
        "after_import_mb": steps["import"]["rss_mb"],
        "during_mb": max(c["during"]["rss_mb"] for c in cycles),
        "after_mb": afters[-1],
        "delta_mb": afters[-1] - baseline,
        "model_delta_mb": afters[-1] - steps["import"]["rss_mb"],
        "peak_rss_mb": max(c["after"]["peak_rss_mb"] for c in cycles),
        "vram_during_mb": last["during"]["vram_mb"],
        "vram_after_mb": last["after"]["vram_mb"],
        "cuda_reserved_after_mb": last["after"]["cuda_reserved_mb"],
        "cuda_allocated_after_mb": last["after"]["cuda_allocated_mb"],
        "machine_before": machine_before,
        "machine_during": last["machine_during"],
        "machine_after": machine_after,
        "drift_mb_per_cycle": _drift(afters),
        "cycles": [
            {"during_mb": c["during"]["rss_mb"], "after_mb": c["after"]["rss_mb"]} for c in cycles
        ],
    }


def run_isolation(options: IsolationOptions | None = None) -> IsolationResult:
    """Run both tests and decide the verdict.

    Args:
        options: what to run (defaults: the embedding model, one cycle, device auto).

    Returns:
        The measurements, the verdict and the timelines (for :func:`plot_timelines`).

    Raises:
        ValueError: bad options, or ``cuda`` asked for where no GPU is visible.
        ModelLoadError: the model failed to load (in either test).
    """
    options = options or IsolationOptions()
    spec, device, fallback, notes = _resolve(options)
    if fallback:
        logger.warning("%s", fallback)
    with Timeline(options.interval) as t1:
        sub = _run_subprocess(spec, options, t1)
    with Timeline(options.interval) as t2:
        inproc = _run_inprocess(spec, options, t2)
    verdict, reason = decide_verdict(sub["delta_mb"], inproc["delta_mb"], options.noise_mb)
    notes.append(
        "test 2 (same process) ran in a fresh helper process of its own "
        f"(pid {inproc['pid']}), not in the benchmark's process"
    )
    return IsolationResult(
        verdict=verdict,
        verdict_reason=reason,
        model=spec.label(),
        device=device,
        iterations=options.iterations,
        noise_floor_mb=options.noise_mb,
        subprocess_delta_mb=sub["delta_mb"],
        inprocess_delta_mb=inproc["delta_mb"],
        inprocess_model_delta_mb=inproc["model_delta_mb"],
        worker_peak_rss_mb=sub["worker_peak_rss_mb"],
        worker_peak_vram_mb=sub["worker_peak_vram_mb"],
        subprocess=sub,
        inprocess=inproc,
        fallback=fallback,
        notes=notes,
        timelines={"subprocess": t1.to_dict(), "inprocess": t2.to_dict()},
    )


def _mb(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f} MB" if signed else f"{value:.1f} MB"


def _table_rows(result: IsolationResult) -> list[tuple[str, str, str]]:
    sub, inp = result.subprocess, result.inprocess
    rows = [
        ("process measured", "benchmark process", f"fresh helper (pid {inp['pid']})"),
        ("baseline RSS", _mb(sub["baseline_mb"]), _mb(inp["baseline_mb"])),
        ("after import", "never imported", _mb(inp["after_import_mb"])),
        ("loaded + inference", _mb(sub["during_mb"]), _mb(inp["during_mb"])),
        ("model process peak", _mb(sub["worker_peak_rss_mb"]), _mb(inp["peak_rss_mb"])),
        (
            "release",
            f"exit ({', '.join(sub['stop_stages'])}, {sub['release_s']:.2f} s)",
            "del + gc",
        ),
        ("after release", _mb(sub["after_mb"]), _mb(inp["after_mb"])),
        ("delta from baseline", _mb(sub["delta_mb"], True), _mb(inp["delta_mb"], True)),
        ("  of it: framework", "—", _mb(inp["after_import_mb"] - inp["baseline_mb"], True)),
        ("  of it: model", "—", _mb(inp["model_delta_mb"], True)),
    ]
    if sub["worker_peak_vram_mb"] is not None or inp["vram_during_mb"] is not None:
        rows += [
            ("VRAM (pid) in use", _mb(sub["worker_peak_vram_mb"]), _mb(inp["vram_during_mb"])),
            (
                "VRAM (pid) after",
                "none (gone)" if sub["released"] else "NOT verified",
                _mb(inp["vram_after_mb"]),
            ),
            ("torch reserved after", "—", _mb(inp["cuda_reserved_after_mb"])),
        ]
    for key, label in (
        ("available_mb", "machine avail."),
        ("gpu_used_mb", "machine GPU used"),
    ):
        if sub["machine_before"][key] is None:
            continue
        for name, where in (
            ("before", "machine_before"),
            ("during", "machine_during"),
            ("after", "machine_after"),
        ):
            rows.append((f"{label} {name}", _mb(sub[where][key]), _mb(inp[where][key])))
    if result.iterations > 1:
        rows.append(
            (
                "drift per cycle",
                _mb(sub["drift_mb_per_cycle"], True),
                _mb(inp["drift_mb_per_cycle"], True),
            )
        )
    return rows


def format_table(result: IsolationResult) -> Table:
    """The result as a rich table: both tests side by side, the verdict in the caption."""
    colour = {"PASS": "green", "PARTIAL": "yellow", "FAIL": "red"}.get(result.verdict, "cyan")
    table = Table(
        title=f"Isolation: {result.model} on {result.device} ({result.iterations} cycle(s))",
        caption=f"[bold {colour}]{result.verdict}[/]: {result.verdict_reason}\n"
        + "\n".join([*([result.fallback] if result.fallback else []), *result.notes]),
    )
    table.add_column("measurement")
    table.add_column("test 1: subprocess, then exit", justify="right")
    table.add_column("test 2: same process, del + gc", justify="right")
    for row in _table_rows(result):
        table.add_row(*row)
    return table


def plot_timelines(result: IsolationResult, path: str) -> None:
    """Draw memory over time for both tests (two panels, same scale) into a PNG.

    Args:
        result: a result of :func:`run_isolation` (with its timelines).
        path: the image file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 8.5), sharey=True)
    sub, inp = result.subprocess, result.inprocess
    panels = (
        (
            "subprocess",
            "Test 1: model in a worker process, stopped (the process exits)",
            sub,
            f"benchmark process after exit: {sub['delta_mb']:+.1f} MB\n"
            f"worker peak {sub['worker_peak_rss_mb']:.0f} MB, all given back",
        ),
        (
            "inprocess",
            "Test 2: model in-process, then del + gc.collect() (a fresh helper process)",
            inp,
            f"kept after del + gc: {inp['delta_mb']:+.1f} MB\n"
            f"(framework import: {inp['after_import_mb'] - inp['baseline_mb']:+.1f} MB)",
        ),
    )
    for ax, (key, title, summary, note) in zip(axes, panels, strict=True):
        draw_panel(ax, result.timelines[key], summary["baseline_mb"], note)
        ax.set_title(title, loc="left", fontsize=11)
        ax.set_ylabel("MB (RSS; VRAM dashed)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", fontsize=9)
    axes[-1].set_xlabel("seconds since the test started")
    top = max(
        (v for tl in result.timelines.values() for pts in tl["series"].values() for _, v in pts),
        default=1.0,
    )
    axes[0].set_ylim(0, top * 1.3)  # shared: headroom for the event labels
    fig.suptitle(
        f"{result.model} on {result.device} — {result.verdict}: subprocess kept "
        f"{result.subprocess_delta_mb:+.1f} MB, in-process kept "
        f"{result.inprocess_delta_mb:+.1f} MB",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
