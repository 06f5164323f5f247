"""Shared pieces of the reliability suite: the counts table, the process table, short clips.

Every test records what it tried through the ``tally`` fixture: per fault or input class, how
many trials it ran (``tried``), how many ModelMora came through as specified (``survived``),
and how many requests, files or jobs were lost (``lost``). At the end of the session the
counts are written as JSON to ``$MODELMORA_RELIABILITY_JSON`` when that is set (see
``scripts/reliability_report.py``, which turns them into the table in docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

_COUNTS: dict[str, dict[str, Any]] = {}

CHILD_MARKER = "modelmora.runtime._child"


@dataclass
class Count:
    """One row of the table: a fault or input class and what became of its trials."""

    section: str
    name: str
    tried: int = 0
    survived: int = 0
    lost: int = 0


class Tally:
    """Adds trials to the session's counts (one row per fault or input class)."""

    def record(self, section: str, name: str, *, tried: int, survived: int, lost: int = 0) -> None:
        """Add ``tried`` trials of ``name``, of which ``survived`` passed and ``lost`` lost work."""
        key = f"{section}/{name}"
        row = _COUNTS.setdefault(key, asdict(Count(section, name)))
        row["tried"] += tried
        row["survived"] += survived
        row["lost"] += lost


@pytest.fixture
def tally() -> Tally:
    """Record trials for the reliability table."""
    return Tally()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("MODELMORA_RELIABILITY_JSON")
    if target and _COUNTS:
        rows = sorted(_COUNTS.values(), key=lambda r: (r["section"], r["name"]))
        Path(target).write_text(json.dumps({"rows": rows}, indent=2) + "\n", encoding="utf-8")


# --- the process table -------------------------------------------------------------------


def workers_of(parent_pid: int) -> list[psutil.Process]:
    """Worker processes started by ``parent_pid``, alive or orphaned.

    A worker's command line is ``python -m modelmora.runtime._child FD PARENT_PID``, so its parent
    is known even after the parent died (other people's workers on this machine are ignored).
    """
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if CHILD_MARKER in cmd and cmd[-1:] == [str(parent_pid)]:
            found.append(proc)
    return found


def tree_of(pid: int) -> list[int]:
    """``pid`` and all its descendants (empty if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def survivors(pids: Iterable[int], parent_pid: int | None = None) -> list[int]:
    """Which of ``pids`` (and of ``parent_pid``'s workers or their process groups) still run."""
    pids = set(pids)
    if parent_pid is not None:
        pids |= {p.pid for p in workers_of(parent_pid)}
    groups = set(pids)
    alive = set()
    for proc in psutil.process_iter(["status"]):
        try:
            in_group = os.getpgid(proc.pid) in groups
        except (ProcessLookupError, PermissionError):
            continue
        if (proc.pid in pids or in_group) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            alive.add(proc.pid)
    return sorted(alive)


def wait_all_gone(pids: Iterable[int], parent_pid: int | None, timeout: float) -> list[int]:
    """Poll until none of ``pids`` (see :func:`survivors`) runs; return those left at the end."""
    deadline = time.monotonic() + timeout
    left = survivors(pids, parent_pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = survivors(pids, parent_pid)
    return left


def wait_for_worker(parent_pid: int, timeout: float = 120.0) -> psutil.Process:
    """The first worker ``parent_pid`` starts (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = workers_of(parent_pid)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"process {parent_pid} started no worker within {timeout} s")


# --- short speech clips ----------------------------------------------------------------------

CLIP_TEXTS = ("Hello there.", "Open the door.", "Good morning.")


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three one-second espeak-ng clips, one voice each."""
    from modelmora.testing.conversation import espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("clips")
    return [
        make_conversation(folder / f"clip{i}.wav", [(i % 3, text)]).wav
        for i, text in enumerate(CLIP_TEXTS)
    ]


def outputs_of(folder: Path) -> dict[str, bytes]:
    """The transcript outputs in ``folder`` (not the report, log or state), by file name."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith((".", "modelmora-"))
    }
