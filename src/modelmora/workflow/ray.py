"""The batch workflow's stages on a Ray cluster (``modelmora transcribe --backend ray``).

Only one thing changes from the local backend: who runs a stage's model over the files that
still need it. Everything else stays in this process (the driver), exactly as locally: preparing
the jobs, the resume state, every output, the report and the progress bars. The driver is the
only writer, so a file is written once whichever node ran it, and outputs, report and resume
state are the local backend's (resume works across backends).

Data flow of one stage (:func:`process`, called by the engine in place of its local loop)::

    pending files ─► queue ─► one _StageActor per node that fits the stage's resource request
                                (CPUs, GPUs, memory = the model's measured footprint)
        actor.start()  ─► a modelmora Worker: the model in its own process on that node
        actor.call()   ─► one file at a time from the shared queue (fast nodes take more)
        ray.wait       ─► per file, as it finishes: accept + resume state + outputs (driver)
        node lost      ─► its file in flight goes back on the queue; a fresh actor elsewhere
        queue empty    ─► actor.stop() (worker stopped, release verified) ─► ray.kill(actor)

Each actor is a dedicated Ray worker process that is killed after its stage, and the model
lives in that actor's own child process, so a node's memory comes back between stages as it
does locally. This process imports ``ray`` but never an ML framework.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmora.models import ModelSpec
from modelmora.runtime.memory import TreeSampler
from modelmora.runtime.worker import THREAD_ENV_VARS, Worker

if TYPE_CHECKING:
    from modelmora.workflow.engine import _Job, _Run, _Stage
    from modelmora.workflow.report import StageStats

__all__ = ["INSTALL_HINT", "StageRunner", "ray_available", "ray_stage_runner"]

logger = logging.getLogger(__name__)

#: What to tell users who ask for the Ray backend without Ray installed.
INSTALL_HINT = "the ray backend needs Ray: pip install 'modelmora[ray]'"

#: A file whose node is lost this many times fails instead of being retried again.
MAX_ATTEMPTS = 3
#: Memory requested per stage when no earlier run measured the model (MB).
DEFAULT_FOOTPRINT_MB = 1024.0
#: The actor process itself (Ray worker + modelmora, no model), on top of the model's footprint.
ACTOR_OVERHEAD_MB = 150.0

StageRunner = Callable[["_Run", "_Stage", "list[_Job]", "StageStats", Any], None]


def ray_available() -> bool:
    """True when Ray can be imported (the ``ray`` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


# --- the actor (runs on the cluster's nodes) --------------------------------------------------


class _StageActor:
    """One stage's model on one node: a modelmora Worker, fed one file at a time.

    Plain class; :func:`_actor_class` wraps it with ``ray.remote`` (Ray stays optional).
    Every method returns plain data and never raises for a model or file problem, so a
    ``RayActorError`` on the driver always means the actor (its node) was lost.
    """

    def __init__(
        self,
        spec: ModelSpec,
        name: str,
        memory_limit_mb: float | None,
        threads: int | None,
        thread_env: dict[str, str | None],
    ) -> None:
        # Ray caps the numeric thread pools at the CPUs requested; the local backend lets the
        # libraries use the machine unless ``threads`` says otherwise, and the results (and
        # speed) should match it, so the caps go back to what the driver had.
        for var, value in thread_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self.spec, self.name = spec, name
        self.memory_limit_mb, self.threads = memory_limit_mb, threads
        self.worker: Worker | None = None
        self.sampler = TreeSampler().start()  # this process and its model worker: the node's share

    def start(self) -> dict[str, Any]:
        worker = Worker(
            self.spec, name=self.name, memory_limit_mb=self.memory_limit_mb, threads=self.threads
        )
        try:
            worker.start()
        except Exception as exc:
            from modelmora.workflow.engine import _one_line

            return {"error": _one_line(exc, Path(""))}
        self.worker = worker
        return {"load_s": worker.load_s or 0.0, "memory": _memory(worker)}

    def call(self, item: dict[str, Any], path: str, timeout: float) -> dict[str, Any]:
        from modelmora.workflow.engine import _one_line

        out: dict[str, Any] = {"load_s": 0.0, "restarted": False}
        if self.worker is None:  # the last one crashed: a fresh one, as the local loop does
            started = self.start()
            if "error" in started:
                return {**out, "error": f"the {self.name} model did not load: {started['error']}"}
            out.update(load_s=started["load_s"], restarted=True)
        assert self.worker is not None
        t0 = time.perf_counter()
        try:
            (output,) = self.worker.call([item], timeout=timeout)
        except Exception as exc:
            out["error"] = _one_line(exc, Path(path))
            out["memory"] = _memory(self.worker)
            if not self.worker.alive:  # crashed, hung or over budget: it was killed
                out["release"] = self._stop_worker()
            return out
        return {**out, "output": output, "wall_s": time.perf_counter() - t0,
                "memory": _memory(self.worker)}  # fmt: skip

    def stop(self) -> dict[str, Any]:
        release = self._stop_worker() if self.worker is not None else None
        return {"release": release, "node_peak_mb": self.sampler.stop()}

    def _stop_worker(self) -> dict[str, Any]:
        assert self.worker is not None
        memory = _memory(self.worker)
        report = self.worker.stop()
        self.worker = None
        return {"released": report.released, "release_s": report.release_s, "memory": memory}


def _memory(worker: Worker) -> dict[str, Any] | None:
    if worker.memory is None:
        return None
    return {"peak_rss_mb": worker.memory.peak_rss_mb, "vram_mb": worker.memory.vram_mb}


def _actor_class() -> Any:
    import ray

    return ray.remote(max_restarts=0, max_task_retries=0)(_StageActor)


# --- resources ------------------------------------------------------------------------------


@dataclass
class _Request:
    """What one stage actor asks of a node."""

    cpus: float
    gpus: float
    memory_mb: float
    source: str

    def fits(self, resources: dict[str, float]) -> bool:
        return (
            resources.get("CPU", 0.0) >= self.cpus
            and resources.get("GPU", 0.0) >= self.gpus
            and resources.get("memory", 0.0) >= self.memory_mb * 2**20
        )


def _footprints() -> Any:
    from modelmora.paths import default_cache_dir
    from modelmora.runtime.footprints import FootprintStore

    return FootprintStore(default_cache_dir() / "footprints.json")


def _request(run: _Run, stage: _Stage, cluster_gpus: float) -> _Request:
    """CPUs, GPUs and memory for the stage's actor; memory from the model's measured peak."""
    opts = run.options
    known = _footprints().get(stage.spec.label())
    footprint = known["peak_rss_mb"] if known else DEFAULT_FOOTPRINT_MB
    on_gpu = opts.device == "cuda" or (opts.device == "auto" and cluster_gpus > 0)
    uses_gpu = on_gpu and stage.spec.capabilities().takes_device
    return _Request(
        cpus=float(opts.threads or 1),
        gpus=1.0 if uses_gpu else 0.0,
        memory_mb=round(footprint + ACTOR_OVERHEAD_MB, 1),
        source="measured" if known else "estimated",
    )


# --- the driver's side of a stage -------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """One stage actor as the driver sees it."""

    actor: Any
    node: str | None = None


@dataclass
class _StageRun:
    """The driver's state for one stage on the cluster."""

    run: _Run
    stage: _Stage
    stats: StageStats
    task: Any
    request: _Request
    queue: deque[_Job]
    inflight: dict[Any, tuple[_Slot, str, _Job | None]] = field(default_factory=dict)
    slots: list[_Slot] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)
    node_peaks: dict[str, float] = field(default_factory=dict)
    lost_nodes: set[str | None] = field(default_factory=set)

    # --- actors -----------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Alive nodes whose total resources fit the request and hold none of our actors."""
        import ray

        taken = {s.node for s in self.slots} | self.lost_nodes
        return [
            n["NodeID"]
            for n in ray.nodes()
            if n["Alive"] and self.request.fits(n["Resources"]) and n["NodeID"] not in taken
        ]

    def spawn(self, node: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts = self.run.options
        actor = (
            _actor_class()
            .options(
                num_cpus=self.request.cpus,
                num_gpus=self.request.gpus,
                memory=int(self.request.memory_mb * 2**20),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            )
            .remote(
                self.stage.spec,
                self.stage.name,
                opts.memory_budget_mb(),
                opts.threads,
                {var: os.environ.get(var) for var in THREAD_ENV_VARS},
            )
        )
        slot = _Slot(actor, node)
        self.slots.append(slot)
        self.inflight[actor.start.remote()] = (slot, "start", None)
        logger.info("stage %s: actor on node %s", self.stage.name, node[:12])

    def dispatch(self, slot: _Slot) -> None:
        """Give the slot the next file, or stop it when none is left."""
        if self.queue:
            job = self.queue.popleft()
            ref = slot.actor.call.remote(
                self.stage.item(job), str(job.path), self.run.options.file_timeout
            )
            self.inflight[ref] = (slot, "call", job)
        else:
            self.inflight[slot.actor.stop.remote()] = (slot, "stop", None)

    def retire(self, slot: _Slot) -> None:
        import ray

        ray.kill(slot.actor, no_restart=True)
        self.slots.remove(slot)

    # --- results ----------------------------------------------------------------------------

    def started(self, slot: _Slot, result: dict[str, Any]) -> None:
        if "error" in result:  # the model cannot load: no file of this stage can run
            reason = f"the {self.stage.name} model did not load: {result['error']}"
            self.fail_rest(reason)
            self.inflight[slot.actor.stop.remote()] = (slot, "stop", None)
            return
        self.stats.load_s += result["load_s"]
        self.note(result.get("memory"))
        self.dispatch(slot)

    def called(self, slot: _Slot, job: _Job, result: dict[str, Any]) -> None:
        from modelmora.workflow.engine import _one_line

        stats, stage = self.stats, self.stage
        stats.load_s += result["load_s"]
        stats.restarts += int(result["restarted"])
        self.note(result.get("memory"))
        if "release" in result:
            self.released(result["release"])
        if "error" in result:
            self.run.fail(job, stage, result["error"])
            stats.failed += 1
        else:
            try:
                stage.accept(job, result["output"])
                self.run.save(job, stage.name, result["output"], result["wall_s"])
            except Exception as exc:
                self.run.fail(job, stage, _one_line(exc, job.path))
                stats.failed += 1
            else:
                wall_s = round(result["wall_s"], 3)
                job.result.stages[stage.name] = {"status": "done", "wall_s": wall_s}
                stats.processed += 1
        self.advance()
        self.dispatch(slot)

    def stopped(self, slot: _Slot, result: dict[str, Any]) -> None:
        if result["release"] is not None:
            self.released(result["release"])
        self.node_peaks[slot.node or "?"] = result["node_peak_mb"]
        self.retire(slot)

    def lost(self, slot: _Slot, kind: str, job: _Job | None, exc: Exception) -> None:
        """The actor (its node) is gone: its file goes back on the queue, an actor elsewhere."""
        logger.warning("stage %s: actor on node %s lost: %s", self.stage.name, slot.node, exc)
        with contextlib.suppress(Exception):  # "unavailable" may be a blip: it must not linger
            self.retire(slot)
        if slot in self.slots:
            self.slots.remove(slot)
        self.lost_nodes.add(slot.node)
        if job is not None:
            tries = self.attempts[id(job)] = self.attempts.get(id(job), 0) + 1
            if tries >= MAX_ATTEMPTS:
                self.run.fail(job, self.stage, f"its node was lost {tries} times")
                self.stats.failed += 1
                self.advance()
            else:
                logger.warning("stage %s: %s goes back on the queue", self.stage.name, job.path)
                self.queue.appendleft(job)
        if kind != "stop" and self.queue:
            self.replace()

    def replace(self) -> None:
        nodes = self.nodes()
        if nodes:
            self.stats.restarts += 1
            self.spawn(nodes[0])
        elif not self.slots:  # nothing left to run the rest on
            self.fail_rest("no node of the Ray cluster is left to run it")

    def fail_rest(self, reason: str) -> None:
        while self.queue:
            self.run.fail(self.queue.popleft(), self.stage, reason)
            self.stats.failed += 1
            self.advance()

    def note(self, memory: dict[str, Any] | None) -> None:
        if memory is None:
            return
        self.stats.peak_rss_mb = max(self.stats.peak_rss_mb, memory["peak_rss_mb"])
        if memory["vram_mb"] is not None:
            self.stats.peak_vram_mb = max(self.stats.peak_vram_mb or 0.0, memory["vram_mb"])

    def released(self, release: dict[str, Any]) -> None:
        self.note(release["memory"])
        self.stats.released = self.stats.released and release["released"]
        self.stats.release_s = max(self.stats.release_s, release["release_s"])

    def advance(self) -> None:
        if self.run.progress is not None and self.task is not None:
            self.run.progress.advance(self.task)


def _loop(state: _StageRun) -> None:
    """Wait for whichever actor answers next until every file is accounted for."""
    import ray
    from ray.exceptions import ActorUnschedulableError, RayActorError

    while state.inflight:
        (ref,), _ = ray.wait(list(state.inflight), num_returns=1)
        slot, kind, job = state.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except (RayActorError, ActorUnschedulableError) as exc:
            state.lost(slot, kind, job, exc)
            continue
        if kind == "start":
            state.started(slot, result)
        elif kind == "call":
            assert job is not None
            state.called(slot, job, result)
        else:
            state.stopped(slot, result)


def process(run: _Run, stage: _Stage, pending: list[_Job], stats: StageStats, task: Any) -> None:
    """Run ``pending`` through the stage's model on the cluster; every file is accounted for.

    The Ray counterpart of the engine's local loop (same arguments, same effects on the jobs,
    the resume state, the outputs and ``stats``).

    Args:
        run: the batch's shared state (options, folders, progress).
        stage: the stage to run.
        pending: the files that still need it (not cached).
        stats: the stage's record, updated in place.
        task: the stage's progress bar task, or None.
    """
    import ray

    t0 = time.perf_counter()
    request = _request(run, stage, ray.cluster_resources().get("GPU", 0.0))
    state = _StageRun(run, stage, stats, task, request, deque(pending))
    nodes = state.nodes()[: len(pending)]
    logger.info(
        "stage %s: %d file(s) on %d node(s), each asking %s CPU, %s GPU, %.0f MB (%s)",
        stage.name,
        len(pending),
        len(nodes),
        request.cpus,
        request.gpus,
        request.memory_mb,
        request.source,
    )
    try:
        for node in nodes:
            state.spawn(node)
        if not nodes:
            state.fail_rest(
                f"no node of the Ray cluster has {request.cpus} CPU, {request.gpus} GPU "
                f"and {request.memory_mb:.0f} MB of memory"
            )
        _loop(state)
    finally:
        for slot in list(state.slots):  # an error above: nothing may keep running
            state.retire(slot)
        stats.wall_s = time.perf_counter() - t0
    for node, peak in state.node_peaks.items():
        logger.info("stage %s: node %s peak %.0f MB", stage.name, node[:12], peak)
    if stats.peak_rss_mb:
        _footprints().update(stage.spec.label(), stats.peak_rss_mb, stats.peak_vram_mb)


@contextlib.contextmanager
def ray_stage_runner(address: str | None) -> Iterator[StageRunner]:
    """Connect to Ray for one batch and yield the stage runner the engine calls.

    Args:
        address: the cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None uses
            ``$RAY_ADDRESS`` or starts a Ray instance on this machine for the batch.

    Yields:
        :func:`process`.

    Raises:
        ValueError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    owned = not ray.is_initialized()
    if owned:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,  # the workers' chatter would tear through the progress bars
            logging_level=logging.WARNING,
        )
    try:
        yield process
    finally:
        if owned:
            ray.shutdown()
