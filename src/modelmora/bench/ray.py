"""The Ray backend's benchmark: the same batch on this machine and on a Ray cluster.

``modelmora bench pipeline --backend ray`` runs the whole workflow (transcribe, diarize,
summarize) on the same files twice, each time as the command users run: with the local backend,
then with ``--backend ray`` on a cluster of several nodes started on this machine. It reports
the wall time of both, each node's memory (its raylet's process tree: the raylet, its Ray
workers, the stage actor and the model's process) against the largest single stage of the
local run, and whether the outputs are byte-identical.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from modelmora.bench.harness import cpu_count, run_transcribe
from modelmora.runtime.memory import TreeSampler

__all__ = ["format_ray_table", "run_ray_bench"]

logger = logging.getLogger(__name__)


def _node_processes(cluster: Any) -> dict[str, int]:
    """Each node's raylet PID (its workers, our actors and their models are below it)."""
    nodes = [cluster.head_node, *cluster.worker_nodes]
    return {f"node{i}": node.all_processes["raylet"][0].process.pid for i, node in enumerate(nodes)}


def run_ray_bench(
    files: list[Path], work: Path, log: Path, device: str, nodes: int = 2
) -> dict[str, Any]:
    """The batch (all stages) locally, then on a Ray cluster of ``nodes`` nodes on this machine.

    The cluster is started first and runs the batch as an existing cluster would (its start is
    reported apart). Each node's memory is its raylet's process tree (the raylet, its Ray
    workers, our stage actor and the model's process), sampled during the batch; its idle
    level, sampled before, is reported beside the peak.

    Args:
        files: the audio files.
        work: where outputs and memory reports go.
        log: the commands' output.
        device: ``auto``, ``cpu`` or ``cuda``.
        nodes: Ray nodes (each with 1 CPU, so one stage actor per node).

    Returns:
        The figures (``targets`` holds each against its target).
    """
    from ray.cluster_utils import Cluster

    flags = ["--diarize", "--summarize", "--device", device]
    wall_local, _, peak_local, code = run_transcribe(
        files, work / "local", log, *flags, "--memory-report", str(work / "local.json")
    )
    if code != 0:
        raise RuntimeError(f"the local batch failed (exit {code}): see {log}")
    # this machine's own address: Ray's driver turns a loopback address into it when it connects
    args: dict[str, Any] = {"num_cpus": 1}
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**args, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        start_s = time.perf_counter() - t0
        raylets = _node_processes(cluster)
        idle = {name: TreeSampler(pid).sample() for name, pid in raylets.items()}
        samplers = {name: TreeSampler(pid).start() for name, pid in raylets.items()}
        wall_ray, _, _, code = run_transcribe(
            files,
            work / "ray",
            log,
            *flags,
            "--memory-report",
            str(work / "ray.json"),
            "--backend",
            "ray",
            "--address",
            str(cluster.address),
        )
        peaks = {name: sampler.stop() for name, sampler in samplers.items()}
    finally:
        cluster.shutdown()
    if code != 0:
        raise RuntimeError(f"the Ray batch failed (exit {code}): see {log}")
    local = json.loads((work / "local.json").read_text())
    on_ray = json.loads((work / "ray.json").read_text())
    return _ray_figures(files, device, nodes, start_s, (wall_local, peak_local, local),
                        (wall_ray, on_ray), idle, peaks, _same_outputs(work, files))  # fmt: skip


def _same_outputs(work: Path, files: list[Path]) -> bool:
    """Transcript outputs byte-identical between the two runs? (Summaries are left out: the
    LLM samples at a temperature with an unseeded sampler, so two local runs differ too.)"""
    for wav in files:
        for suffix in (".txt", ".srt", ".vtt", ".json", ".tsv", ".rttm"):
            a, b = (work / side / f"{wav.stem}{suffix}" for side in ("local", "ray"))
            if a.read_bytes() != b.read_bytes():
                logger.warning("outputs differ: %s and %s", a, b)
                return False
    return True


def _ray_figures(
    files: list[Path],
    device: str,
    nodes: int,
    start_s: float,
    local: tuple[float, float, dict[str, Any]],
    on_ray: tuple[float, dict[str, Any]],
    idle: dict[str, float],
    peaks: dict[str, float],
    same: bool,
) -> dict[str, Any]:
    wall_local, peak_local, memory_local = local
    wall_ray, memory_ray = on_ray
    largest = memory_local["run"]["max_stage_peak_mb"]
    node_rows = {
        name: {
            "idle_mb": round(idle[name], 1),
            "peak_mb": round(peaks[name], 1),
            "peak_above_idle_mb": round(peaks[name] - idle[name], 1),
        }
        for name in peaks
    }
    busiest = max(row["peak_above_idle_mb"] for row in node_rows.values())
    figures: dict[str, Any] = {
        "backend": "ray",
        "files": len(files),
        "device": device,
        "cpus": cpu_count(),
        "nodes": nodes,
        "audio_s": round(sum(w.stat().st_size / 32000 for w in files), 1),
        "cluster_start_s": round(start_s, 1),
        "wall": {
            "local_s": round(wall_local, 1),
            "ray_s": round(wall_ray, 1),
            "ray_over_local": round(wall_ray / wall_local, 3),
        },
        "memory": {
            "local_run_peak_rss_mb": round(peak_local, 1),
            "local_max_stage_peak_mb": largest,
            "local_stages": memory_local["stages"],
            "ray_stages": memory_ray["stages"],
            "nodes": node_rows,
            "busiest_node_over_max_stage": round(busiest / largest, 3),
        },
        "same_outputs": same,
    }
    checks = {
        "ray_over_local": (figures["wall"]["ray_over_local"], 1.3),
        "busiest_node_over_max_stage": (figures["memory"]["busiest_node_over_max_stage"], 1.3),
    }
    figures["targets"] = {
        name: {"value": value, "target": f"<= {bound}", "pass": value <= bound}
        for name, (value, bound) in checks.items()
    }
    return figures


def format_ray_table(f: dict[str, Any]) -> Any:
    """The Ray benchmark's figures as a rich table."""
    from rich.table import Table

    table = Table(
        title=f"Ray backend: {f['files']} files, {f['audio_s']} s of audio, {f['nodes']} nodes "
        f"on one machine ({f['cpus']} CPUs), device {f['device']}"
    )
    for column in ("figure", "measured", "beside it", "target"):
        table.add_column(column)
    w, m, t = f["wall"], f["memory"], f["targets"]
    verdict = {k: "PASS" if v["pass"] else "FAIL" for k, v in t.items()}
    table.add_row(
        "wall, Ray backend",
        f"{w['ray_s']:.1f} s",
        f"local backend {w['local_s']:.1f} s; cluster start {f['cluster_start_s']:.1f} s apart",
        f"{w['ray_over_local']:.2f}x <= 1.3 {verdict['ray_over_local']}",
    )
    for name, row in m["nodes"].items():
        table.add_row(
            f"peak, {name}",
            f"{row['peak_above_idle_mb']:.0f} MB above idle",
            f"idle {row['idle_mb']:.0f} MB; peak {row['peak_mb']:.0f} MB; "
            f"largest stage (local) {m['local_max_stage_peak_mb']:.0f} MB",
            "",
        )
    table.add_row(
        "busiest node / largest stage",
        f"{m['busiest_node_over_max_stage']:.2f}",
        f"local run peak, all processes {m['local_run_peak_rss_mb']:.0f} MB",
        f"<= 1.3 {verdict['busiest_node_over_max_stage']}",
    )
    same = "identical" if f["same_outputs"] else "DIFFER"
    table.add_row("transcript outputs", same, "local vs Ray (summaries are sampled)", "")
    return table
