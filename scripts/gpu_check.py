"""GPU release checks on a CUDA machine (NVML device view), printed as JSON.

1. A toy CUDA worker allocates 2 GB of VRAM: NVML must list its PID holding it; after the
   stop the PID must be gone from NVML and device memory back within 100 MB of the baseline.
2. The server's scheduler with two embedding models on CUDA and a VRAM budget that fits one:
   requests alternate between them; device memory (sampled every 10 ms) must never exceed
   the baseline plus the budget, and must come back after each eviction.

Usage: python scripts/gpu_check.py [--minilm DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from modelmora import Worker
from modelmora.runtime.memory import gpu_used_mb, nvml_available, vram_by_pid_mb


def settle(baseline: float, slack: float = 100.0, timeout: float = 10.0) -> tuple[float, float]:
    """Wait until device memory is within ``slack`` MB of ``baseline``; return (used, seconds)."""
    t0 = time.monotonic()
    used = gpu_used_mb() or 0.0
    while used - baseline > slack and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
        used = gpu_used_mb() or 0.0
    return used, time.monotonic() - t0


def check_release(alloc_mb: float = 2048) -> dict[str, Any]:
    baseline = gpu_used_mb() or 0.0
    t0 = time.monotonic()
    worker = Worker(f"toy-cuda:alloc_mb={alloc_mb}").start()
    start_s = time.monotonic() - t0
    pid = worker.pid
    held = vram_by_pid_mb().get(pid or -1, 0.0)
    during = gpu_used_mb() or 0.0
    reported = worker.memory.vram_mb if worker.memory else None
    report = worker.stop()
    after, settle_s = settle(baseline)
    return {
        "alloc_mb": alloc_mb,
        "baseline_used_mb": round(baseline, 1),
        "during_used_mb": round(during, 1),
        "after_used_mb": round(after, 1),
        "back_within_100mb": after - baseline <= 100,
        "pid_vram_mb_nvml": round(held, 1),
        "pid_vram_mb_reported_by_worker": reported,
        "pid_listed_after_stop": pid in vram_by_pid_mb(),
        "released": report.released,
        "release_s": round(report.release_s, 3),
        "device_memory_back_s": round(settle_s, 3),
        "worker_start_s": round(start_s, 3),
    }


def check_scheduler(minilm: str | None) -> dict[str, Any]:
    """Two phases: footprints declared in the config, then learned from the first phase."""
    source = {"source": minilm} if minilm else {}
    # One model's VRAM footprint, measured, sizes the budget to fit one model and not two.
    spec = f"embedding:model={minilm},device=cuda" if minilm else "embedding:device=cuda"
    with Worker(spec) as probe:
        probe.call(["warm up"])
        one = vram_by_pid_mb().get(probe.pid or -1, 0.0)
    budget = one * 1.5
    cache = Path(tempfile.mkdtemp(prefix="modelmora-gpu-"))
    return {
        "one_model_vram_mb": round(one, 1),
        "vram_budget_mb": round(budget, 1),
        "declared": _alternate(source, {"vram_footprint_mb": one}, budget, cache),
        "learned": _alternate(source, {}, budget, cache),  # footprints.json from phase 1
    }


def _alternate(source: dict[str, Any], hint: dict[str, Any], budget: float, cache: Path) -> Any:
    from modelmora.serving.config import ModelConfig, ServerConfig
    from modelmora.serving.scheduler.core import Scheduler

    baseline = gpu_used_mb() or 0.0
    models = [
        ModelConfig(name=n, adapter="embedding", device="cuda", **hint, **source) for n in "ab"
    ]
    config = ServerConfig(
        memory_budget_mb=64_000, vram_budget_mb=budget, cache_dir=cache, models=models
    )
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], (gpu_used_mb() or 0.0) - baseline)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    rounds = []
    with Scheduler(config) as sched:
        sampler.start()
        for i in range(4):
            name = "ab"[i % 2]
            vec = sched.submit(name, f"request {i}").result(timeout=300)
            resident = [m["name"] for m in sched.models() if m["state"] == "resident"]
            used = round((gpu_used_mb() or 0) - baseline, 1)
            rounds.append({"model": name, "dim": len(vec), "resident": resident, "used": used})
        evictions = sum(m.get("evictions", 0) for m in sched.models())
    stop.set()
    sampler.join()
    after, _ = settle(baseline)
    return {
        "peak_device_used_over_baseline_mb": round(peak[0], 1),
        "never_over_budget": peak[0] <= budget,
        "evictions": evictions,
        "after_close_over_baseline_mb": round(after - baseline, 1),
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", help="all-MiniLM-L6-v2 directory (default: the package's)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if not nvml_available():
        print("no GPU visible to NVML: nothing to check", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    for name, check in (("release", check_release), ("scheduler", check_scheduler)):
        try:
            result[name] = check(args.minilm) if name == "scheduler" else check()
        except Exception as exc:  # report what failed and go on with the next check
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({name: result[name]}), flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
