"""The batch workflow's stages on a Ray cluster (``modelmora transcribe --backend ray``).

Only one thing changes from the local backend: who runs a stage's model over the files that
still need it. Everything else stays in this process (the driver), exactly as locally: preparing
the jobs, the resume state, every output, the report and the progress bars. The driver is the
only writer, so a file is written once whichever node ran it, and outputs, report and resume
state are the local backend's (resume works across backends).

Data flow of one stage (:meth:`RayRunner.process`; the local runner's counterpart)::

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmora.models import ModelSpec
from modelmora.runtime.memory import TreeSampler
from modelmora.runtime.spawn import THREAD_ENV_VARS
from modelmora.runtime.worker import Worker
from modelmora.units import MB
from modelmora.workflow.options import INSTALL_HINT, TranscribeOptions
from modelmora.workflow.stages import Job, Stage, StageBook, StageRunner, failure_reason

__all__ = ["RayRunner"]

logger = logging.getLogger(__name__)

#: A file whose node is lost this many times fails instead of being retried again.
MAX_ATTEMPTS = 3
#: Memory requested per stage when no earlier run measured the model (MB).
DEFAULT_FOOTPRINT_MB = 1024.0
#: The actor process itself (Ray worker + modelmora, no model), on top of the model's footprint.
ACTOR_OVERHEAD_MB = 150.0


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
            return {"error": failure_reason(exc, Path(""))}
        self.worker = worker
        return {"load_s": worker.load_s or 0.0, "memory": _memory(worker)}

    def call(self, item: dict[str, Any], path: str, timeout: float) -> dict[str, Any]:
        out: dict[str, Any] = {"load_s": 0.0, "restarted": False}
        if self.worker is None:  # the last one crashed: a fresh one, as the local loop does
            started = self.start()
            if "error" in started:
                return {**out, "load_error": started["error"]}
            out.update(load_s=started["load_s"], restarted=True)
        assert self.worker is not None
        t0 = time.perf_counter()
        try:
            (output,) = self.worker.call([item], timeout=timeout)
        except Exception as exc:
            out["error"] = failure_reason(exc, Path(path))
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
            and resources.get("memory", 0.0) >= self.memory_mb * MB
        )


def _footprints() -> Any:
    from modelmora.paths import default_cache_dir
    from modelmora.runtime.footprints import FootprintStore

    return FootprintStore(default_cache_dir() / "footprints.json")


def _request(opts: TranscribeOptions, stage: Stage, cluster_gpus: float) -> _Request:
    """CPUs, GPUs and memory for the stage's actor; memory from the model's measured peak."""
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
    """The driver's state for one stage on the cluster; every file ends in ``book``."""

    book: StageBook
    options: TranscribeOptions
    request: _Request
    queue: deque[Job]
    inflight: dict[Any, tuple[_Slot, str, Job | None]] = field(default_factory=dict)
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

        stage = self.book.stage
        actor = (
            _actor_class()
            .options(
                num_cpus=self.request.cpus,
                num_gpus=self.request.gpus,
                memory=int(self.request.memory_mb * MB),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
            )
            .remote(
                stage.spec,
                stage.name,
                self.options.memory_budget_mb(),
                self.options.threads,
                {var: os.environ.get(var) for var in THREAD_ENV_VARS},
            )
        )
        slot = _Slot(actor, node)
        self.slots.append(slot)
        self.inflight[actor.start.remote()] = (slot, "start", None)
        logger.info("stage %s: actor on node %s", stage.name, node[:12])

    def dispatch(self, slot: _Slot) -> None:
        """Give the slot the next file, or stop it when none is left."""
        if self.queue:
            job = self.queue.popleft()
            ref = slot.actor.call.remote(
                self.book.stage.item(job), str(job.path), self.options.file_timeout
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
            self.fail_load(result["error"])
            self.inflight[slot.actor.stop.remote()] = (slot, "stop", None)
            return
        self.book.loaded(result["load_s"])
        self.note(result.get("memory"))
        self.dispatch(slot)

    def called(self, slot: _Slot, job: Job, result: dict[str, Any]) -> None:
        book = self.book
        book.loaded(result["load_s"])
        if result["restarted"]:
            book.restarted()
        self.note(result.get("memory"))
        if "release" in result:
            self.released(result["release"])
        if "load_error" in result:  # its fresh worker (after a crash) cannot load the model
            self.queue.appendleft(job)
            self.fail_load(result["load_error"])
        elif "error" in result:
            book.failed(job, result["error"])
        else:
            book.done(job, result["output"], result["wall_s"])
        self.dispatch(slot)

    def stopped(self, slot: _Slot, result: dict[str, Any]) -> None:
        if result["release"] is not None:
            self.released(result["release"])
        self.node_peaks[slot.node or "?"] = result["node_peak_mb"]
        self.retire(slot)

    def lost(self, slot: _Slot, kind: str, job: Job | None, exc: Exception) -> None:
        """The actor (its node) is gone: its file goes back on the queue, an actor elsewhere."""
        name = self.book.stage.name
        logger.warning("stage %s: actor on node %s lost: %s", name, slot.node, exc)
        with contextlib.suppress(Exception):  # "unavailable" may be a blip: it must not linger
            self.retire(slot)
        if slot in self.slots:
            self.slots.remove(slot)
        self.lost_nodes.add(slot.node)
        if job is not None:
            tries = self.attempts[id(job)] = self.attempts.get(id(job), 0) + 1
            if tries >= MAX_ATTEMPTS:
                self.book.failed(job, f"its node was lost {tries} times")
            else:
                logger.warning("stage %s: %s goes back on the queue", name, job.path)
                self.queue.appendleft(job)
        if kind != "stop" and self.queue:
            self.replace()

    def replace(self) -> None:
        nodes = self.nodes()
        if nodes:
            self.book.restarted()
            self.spawn(nodes[0])
        elif not self.slots:  # nothing left to run the rest on
            self.fail_rest("no node of the Ray cluster is left to run it")

    def fail_rest(self, reason: str) -> None:
        while self.queue:
            self.book.failed(self.queue.popleft(), reason)

    def fail_load(self, reason: str) -> None:
        self.book.load_failed(list(self.queue), reason)
        self.queue.clear()

    def note(self, memory: dict[str, Any] | None) -> None:
        if memory is not None:
            self.book.memory(memory["peak_rss_mb"], memory["vram_mb"])

    def released(self, release: dict[str, Any]) -> None:
        self.note(release["memory"])
        self.book.released(release["released"], release["release_s"])


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


class RayRunner(StageRunner):
    """Each stage's model on the nodes of a Ray cluster (``backend="ray"``).

    Entering it connects to the cluster (``options.address``; None: ``$RAY_ADDRESS`` or a Ray
    instance started on this machine for the batch); leaving it disconnects (and stops the
    instance it started).

    Raises:
        ValueError: on entering, when Ray is not installed (the message says how to install it).
    """

    name = "ray"

    def __init__(self, options: TranscribeOptions) -> None:
        super().__init__(options)
        self._owned = False

    def __enter__(self) -> RayRunner:
        try:
            import ray
        except ImportError:
            raise ValueError(INSTALL_HINT) from None
        self._owned = not ray.is_initialized()
        if self._owned:
            ray.init(
                address=self.options.address,
                include_dashboard=False,
                log_to_driver=False,  # the workers' chatter would tear through the progress bars
                logging_level=logging.WARNING,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            import ray

            ray.shutdown()
            self._owned = False

    def process(self, book: StageBook, pending: list[Job]) -> None:
        """Run ``pending`` through the stage's model on the cluster (see the module doc)."""
        import ray

        t0 = time.perf_counter()
        stage, stats = book.stage, book.stats
        gpus = ray.cluster_resources().get("GPU", 0.0)
        request = _request(self.options, stage, gpus)
        state = _StageRun(book, self.options, request, deque(pending))
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
