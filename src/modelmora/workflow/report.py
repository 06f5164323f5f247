"""What a batch did: per-file results, per-stage costs, and the reports written from them.

:class:`BatchReport` is what :func:`modelmora.workflow.engine.transcribe_files` returns; its
:meth:`~BatchReport.to_dict` is ``modelmora-report.json`` and its
:meth:`~BatchReport.memory_report` the ``--memory-report`` document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REPORT_NAME", "REPORT_VERSION", "BatchReport", "FileResult", "StageStats"]

#: The batch report's file name (inside the output folder).
REPORT_NAME = "modelmora-report.json"
#: Version of the report and of the per-file state files (bumped when their shape changes).
REPORT_VERSION = 1


@dataclass
class StageStats:
    """What one stage cost: the memory report's record for it.

    Attributes:
        name: ``transcribe``, ``diarize`` or ``summarize``.
        peak_rss_mb: highest RSS of the stage's worker(s), as each reported it (its ``VmHWM``).
        peak_vram_mb: highest GPU memory NVML attributed to the worker (None without a GPU).
        load_s: seconds spent loading the model (summed over restarts).
        wall_s: seconds from the first worker's start to the last one's verified release.
        released: every worker of the stage was verified gone (and off the GPU).
        release_s: longest stop-to-verified-release time of the stage's workers.
        processed: files run through the model in this run.
        cached: files whose result was reused from an earlier run.
        failed: files that failed in this stage.
        restarts: fresh workers started after one crashed, hung or hit the memory budget.
        gpu_before_mb: device memory in use (NVML, machine-wide) before the stage started.
        gpu_after_mb: the same after the stage's worker was released.
        identify_s: seconds spent linking and naming speakers after the diarize stage (their
            worker's start and stop included).
    """

    name: str
    peak_rss_mb: float = 0.0
    peak_vram_mb: float | None = None
    load_s: float = 0.0
    wall_s: float = 0.0
    released: bool = True
    release_s: float = 0.0
    processed: int = 0
    cached: int = 0
    failed: int = 0
    restarts: int = 0
    gpu_before_mb: float | None = None
    gpu_after_mb: float | None = None
    identify_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record, rounded for the JSON report."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class FileResult:
    """The outcome for one input file (one entry of ``modelmora-report.json``).

    Attributes:
        path: the input path as given.
        stem: the name its outputs use (``<stem>.srt``...).
        status: ``ok`` or ``failed``.
        error: the one-line reason when failed.
        stages: per stage: ``status`` (done, cached, failed, skipped) and ``wall_s``.
        outputs: the files written for it.
        summary: ``status`` (ok, cached, failed, skipped, disabled), ``reason`` if missing,
            and once written ``items`` (kept) and ``unsupported`` (items left out because
            they named facts the transcript does not contain).
        duration_s: the audio's duration, once transcribed.
        language: the language Whisper used.
        language_probability: how sure its detection was (None when the language was given).
        speakers: speaker labels found, once diarized.
        note: something worth knowing that is not an error (e.g. no speech detected).
    """

    path: str
    stem: str
    status: str = "ok"
    error: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=lambda: {"status": "disabled"})
    duration_s: float | None = None
    language: str | None = None
    language_probability: float | None = None
    speakers: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the file failed."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The report entry."""
        return asdict(self)


@dataclass
class BatchReport:
    """What :func:`transcribe_files` did.

    Attributes:
        files: one result per input, in input order.
        stages: the cost of each stage that was enabled, in order.
        run: run-wide memory figures (see :meth:`memory_report`).
        out_dir: the output folder.
        report_path: the JSON report written there.
        log_path: this run's log file.
        wall_s: seconds the whole batch took.
    """

    files: list[FileResult]
    stages: list[StageStats]
    run: dict[str, float]
    out_dir: Path
    report_path: Path
    log_path: Path
    wall_s: float = 0.0

    @property
    def failed(self) -> list[FileResult]:
        """The files that failed."""
        return [f for f in self.files if not f.ok]

    @property
    def exit_code(self) -> int:
        """0 when every file is done, 1 when some failed (the CLI's exit code)."""
        return 1 if self.failed else 0

    def memory_report(self) -> dict[str, Any]:
        """The ``--memory-report`` document: ``{"stages": [...], "run": {...}}``."""
        return {"stages": [s.to_dict() for s in self.stages], "run": dict(self.run)}

    def to_dict(self) -> dict[str, Any]:
        """The ``modelmora-report.json`` document."""
        return {
            "version": REPORT_VERSION,
            "files_total": len(self.files),
            "files_ok": len(self.files) - len(self.failed),
            "files_failed": len(self.failed),
            "wall_s": round(self.wall_s, 3),
            "log": str(self.log_path),
            "files": [f.to_dict() for f in self.files],
            **self.memory_report(),
        }
