"""Fault injection for the workflow's tests: real faults in real workers, never a user option.

:class:`FaultOnMatch` is a ``module:Class`` adapter that wraps a real one and, on inputs whose
``audio`` file name matches a glob, segfaults, hangs or exits: a real native crash in the real
worker, so the batch's crash handling is tested end to end. :func:`stage_model` swaps the
model of one stage of :func:`~modelmora.workflow.engine.transcribe_files` for the duration of a
``with`` block (this process only)::

    with crash_on("*crash*"):              # the transcribe worker segfaults on b_crash.wav
        report = transcribe_files(paths, options, out)

:func:`canned_stages` makes every stage's worker a toy that answers each file with a given
output (Whisper's, the diarizer's...), for tests of what the engine does around the models.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fnmatch
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from modelmora.models import Adapter, ModelSpec, resolve_adapter
from modelmora.workflow import engine

__all__ = ["FAULTS", "FaultOnMatch", "canned_stages", "crash_on", "stage_model"]

#: What :class:`FaultOnMatch` can do to a matching input.
FAULTS = ("segfault", "hang", "exit")


class FaultOnMatch(Adapter):
    """Wraps an adapter and fails on inputs whose audio file name matches a glob.

    Args:
        inner: the adapter kind to wrap (``whisper``, ``toy``, a ``module:Class``).
        pattern: a glob matched against each input's ``audio`` file name.
        fault: ``segfault`` (SIGSEGV in native code), ``hang`` (sleeps until killed) or
            ``exit`` (``os._exit(3)``).
        params: the wrapped adapter's parameters.
    """

    def __init__(
        self,
        inner: str,
        pattern: str,
        fault: str = "segfault",
        params: dict[str, Any] | None = None,
    ) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: use one of {', '.join(FAULTS)}")
        self.inner = resolve_adapter(inner)(**(params or {}))
        self.pattern = pattern
        self.fault = fault

    def load(self) -> None:
        self.inner.load()

    def predict(self, batch: list[Any]) -> list[Any]:
        for item in batch:
            name = Path(str(item.get("audio", ""))).name if isinstance(item, dict) else ""
            if fnmatch.fnmatch(name, self.pattern):
                self._fail()
        return list(self.inner.predict(batch))

    def _fail(self) -> None:
        if self.fault == "segfault":
            ctypes.string_at(0)  # SIGSEGV, on purpose
        elif self.fault == "exit":
            os._exit(3)
        while True:  # hang
            time.sleep(3600)

    def close(self) -> None:
        self.inner.close()


@contextlib.contextmanager
def stage_model(stage: str, replace: Callable[[ModelSpec], ModelSpec]) -> Iterator[None]:
    """For the ``with`` block: ``stage``'s model is ``replace(its usual spec)``.

    The stage keeps its name and its resume key, so results are saved as usual.

    Args:
        stage: ``transcribe``, ``diarize`` or ``summarize``.
        replace: the spec to load instead, from the usual one.
    """
    build = engine.build_stages

    def patched(run: Any) -> list[Any]:
        return [
            dataclasses.replace(s, spec=replace(s.spec)) if s.name == stage else s
            for s in build(run)
        ]

    engine.build_stages = patched
    try:
        yield
    finally:
        engine.build_stages = build


@contextlib.contextmanager
def canned_stages(outputs: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """For the ``with`` block: each stage's worker is a toy answering with canned outputs.

    Args:
        outputs: stage name → input file name → what that stage's model returns for it
            (a stage missing here runs its usual model).
    """
    build = engine.build_stages

    def toy(stage: Any) -> Any:
        given = outputs[stage.name]

        def item(job: Any) -> dict[str, Any]:
            return {"op": "echo", "value": given[job.path.name]}

        return dataclasses.replace(stage, spec=ModelSpec("toy"), item=item)

    def patched(run: Any) -> list[Any]:
        return [toy(s) if s.name in outputs else s for s in build(run)]

    engine.build_stages = patched
    try:
        yield
    finally:
        engine.build_stages = build


def crash_on(
    pattern: str, fault: str = "segfault", stage: str = "transcribe"
) -> contextlib.AbstractContextManager[None]:
    """For a ``with`` block: ``stage``'s worker suffers ``fault`` on files matching ``pattern``.

    Args:
        pattern: a glob matched against each file's name (``*crash*``).
        fault: one of :data:`FAULTS`.
        stage: the stage whose model fails.
    """

    def wrap(spec: ModelSpec) -> ModelSpec:
        params = {"inner": spec.kind, "pattern": pattern, "fault": fault, "params": spec.params}
        return ModelSpec(f"{__name__}:FaultOnMatch", params)

    return stage_model(stage, wrap)
