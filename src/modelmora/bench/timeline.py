"""Memory over time: named series sampled in a background thread, with labelled events.

The isolation benchmark (:mod:`modelmora.bench.isolation`) records one :class:`Timeline` per
test (the benchmark process, the worker, the helper, their VRAM) and draws each on a panel of
its plot with :func:`draw_panel`. matplotlib is imported by the caller that makes the figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Timeline", "draw_panel"]


class Timeline:
    """Samples named memory series in a background thread and keeps labelled events.

    Use as a context manager: sampling runs inside the ``with`` block (one sample on entry,
    one on exit), every ``interval`` seconds.

    Args:
        interval: seconds between samples.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.t0 = time.monotonic()
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.events: list[tuple[float, str]] = []
        self._probes: dict[str, Callable[[], float | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelmora-bench", daemon=True)

    def watch(self, name: str, probe: Callable[[], float | None]) -> None:
        """Sample ``probe()`` (MB, or None for no point) as the series ``name`` from now on."""
        with self._lock:
            self._probes[name] = probe
            self.series.setdefault(name, [])

    def mark(self, label: str) -> None:
        """An event at this moment (a sample is taken with it)."""
        self.sample()
        self.events.append((time.monotonic() - self.t0, label))

    def sample(self) -> None:
        """One point of every series, now."""
        with self._lock:
            now = time.monotonic() - self.t0
            for name, probe in self._probes.items():
                value = probe()
                if value is not None:
                    self.series[name].append((now, value))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Timeline:
        self.t0 = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def to_dict(self) -> dict[str, Any]:
        """``{"series": {name: [(s, MB)...]}, "events": [(s, label)...]}``, seconds from entry."""
        return {"series": self.series, "events": self.events}


def draw_panel(ax: Any, timeline: dict[str, Any], baseline_mb: float, note: str) -> None:
    """Draw one timeline onto a matplotlib axis: its series, a baseline, its events, a note.

    Args:
        ax: the axis.
        timeline: what :meth:`Timeline.to_dict` returned.
        baseline_mb: the level drawn as a dotted line (the process's RSS before the test).
        note: a summary boxed in the lower right corner.
    """
    for name, points in timeline["series"].items():
        if points:
            xs, ys = zip(*points, strict=True)
            vram = "VRAM" in name
            colour = "tab:green" if vram else "tab:blue" if "benchmark" in name else "tab:orange"
            ax.plot(
                xs,
                ys,
                label=name,
                color=colour,
                linestyle="--" if vram else "-",
                linewidth=1.8,
                drawstyle="steps-post",
            )
    ax.axhline(baseline_mb, color="grey", linestyle=":", linewidth=1)
    ax.annotate(
        f"baseline {baseline_mb:.0f} MB",
        (0.005, baseline_mb),
        xycoords=("axes fraction", "data"),
        fontsize=8,
        color="grey",
        xytext=(0, 3),
        textcoords="offset points",
    )
    events = timeline["events"]
    span = max((t for t, _ in events), default=1.0) or 1.0
    level, last = 0, None
    for t, label in events:
        # Labels of events closer than 6% of the run are stacked down so they stay legible.
        level = level + 1 if last is not None and t - last < 0.06 * span else 0
        last = t
        ax.axvline(t, color="black", alpha=0.25, linewidth=0.8)
        ax.annotate(
            label,
            (t, 1.0 - 0.2 * (level % 4)),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            va="top",
            ha="left",
            xytext=(2, -2),
            textcoords="offset points",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    ax.text(
        0.99,
        0.04,
        note,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        bbox={"boxstyle": "round", "fc": "#f4f4f4", "ec": "#999999"},
    )
