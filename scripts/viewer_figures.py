"""Figures of the HTML viewer for a long meeting, measured in headless Chromium; printed as JSON.

A synthetic diarized meeting (``testing.transcripts.synthetic_meeting``: 4 speakers, 150
words a minute) is rendered with ``-f html``; the page is opened from a file and timed:

- ``first_render_ms``: navigation start to the first frame after the script built the turns;
- ``rename_ms``: renaming one speaker in every turn, until the next frame;
- ``search_ms``: a search that matches across the whole meeting, until the next frame;
- ``seek_far_ms``: a seek two hours in (highlight the word, scroll it into view, next frame);
- ``scroll_end_ms``: a jump to the end of the page, until the next frame;
- ``scroll_30_screens_ms``: scrolling one screen per frame for 30 frames (60 fps: 500 ms).

Usage::

    python scripts/viewer_figures.py [--hours 2] [--runs 3] [--firefox]
    python scripts/viewer_figures.py --screenshot docs/viewer.png --page out/conversation.html
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from modelmora.speech.formats import write_outputs
from modelmora.testing.browser import chromium, console_errors, firefox
from modelmora.testing.transcripts import synthetic_meeting

# Run a step, then resolve with the milliseconds until the frame after it was painted.
_TIMED = """
const done = arguments[arguments.length - 1];
const t0 = performance.now();
Promise.resolve((%s)()).then(() =>
  requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0)));
"""

_STEPS = {
    "rename_ms": "() => window.modelmora.rename(0, 'Alice Example')",
    "search_ms": "() => window.modelmora.find('budget')",
    "seek_far_ms": "() => window.modelmora.seek(window.modelmora.words.at(-5).s)",
    "scroll_end_ms": "() => { window.scrollTo(0, document.body.scrollHeight); "
    "document.body.getBoundingClientRect(); }",
    # One screen further on each of 30 animation frames, from the top (60 fps: 500 ms).
    "scroll_30_screens_ms": "() => new Promise((done) => { window.scrollTo(0, 0); let n = 0;"
    " const step = () => { window.scrollBy(0, 700);"
    " if (++n < 30) requestAnimationFrame(step); else done(); };"
    " requestAnimationFrame(step); })",
}


def _first_render_ms(driver: Any) -> float:
    script = (
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => setTimeout(() => done(performance.now()), 0));"
    )
    return float(driver.execute_async_script(script))


def measure(page: Path, runs: int) -> dict[str, Any]:
    """Open ``page`` ``runs`` times; the median of each figure."""
    figures: dict[str, list[float]] = {"first_render_ms": [], **{k: [] for k in _STEPS}}
    with chromium() as driver:
        driver.set_script_timeout(120)
        for _ in range(runs):
            driver.get(page.as_uri())
            figures["first_render_ms"].append(_first_render_ms(driver))
            for name, step in _STEPS.items():
                figures[name].append(float(driver.execute_async_script(_TIMED % step)))
            errors = console_errors(driver)
            if errors:
                raise RuntimeError(f"the page logged errors: {errors}")
        counts = driver.execute_script(
            "return [document.querySelectorAll('.turn').length, window.modelmora.words.length,"
            " document.querySelectorAll('.spk').length]"
        )
    return {
        "turns": counts[0],
        "words": counts[1],
        **{name: round(statistics.median(values), 1) for name, values in figures.items()},
        "runs": runs,
    }


def measure_firefox(page: Path, runs: int) -> dict[str, Any]:
    """The same figures in Firefox (over WebDriver BiDi)."""
    frame = "new Promise((done) => requestAnimationFrame(() => setTimeout(() => done(%s), 0)))"
    figures: dict[str, list[float]] = {"first_render_ms": [], **{k: [] for k in _STEPS}}
    with firefox() as browser:
        for _ in range(runs):
            browser.navigate(page.as_uri())
            figures["first_render_ms"].append(float(browser.evaluate(frame % "performance.now()")))
            for name, step in _STEPS.items():
                timed = frame % "performance.now() - t0"
                script = (
                    f"(() => {{ const t0 = performance.now(); ({step})(); return {timed}; }})()"
                )
                figures[name].append(float(browser.evaluate(script)))
        if browser.console_errors():
            raise RuntimeError(f"the page logged errors: {browser.console_errors()}")
        version = browser.version
    return {
        "browser": f"firefox {version}",
        **{name: round(statistics.median(values), 1) for name, values in figures.items()},
    }


def screenshot(page: Path, out: Path) -> None:
    """A screenshot of ``page`` for the README: the summary folded, a word highlighted (as
    while playing), the second speaker renamed "Maria"."""
    with chromium() as driver:
        driver.set_window_size(1200, 820)
        driver.get(page.as_uri())
        driver.execute_script(
            "const w = window.modelmora.words[Math.min(14, window.modelmora.words.length - 1)];"
            "window.modelmora.seek(w.s); window.scrollTo(0, 0);"
            "const box = document.getElementById('mm-summary'); if (box) box.open = false;"
        )
        driver.execute_script(
            "if (window.modelmora.names.length > 1) window.modelmora.rename(1, 'Maria');"
        )
        time.sleep(0.3)
        driver.save_screenshot(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--firefox", action="store_true", help="also measure in Firefox")
    parser.add_argument("--screenshot", type=Path, help="write a PNG of --page here instead")
    parser.add_argument("--page", type=Path, help="the page to screenshot")
    args = parser.parse_args()
    if args.screenshot:
        if args.page is None:
            parser.error("--screenshot needs --page")
        screenshot(args.page.resolve(), args.screenshot)
        return
    transcript = synthetic_meeting(args.hours, args.speakers)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        (page,) = write_outputs(transcript, folder, "meeting", ["html"])
        render_s = time.perf_counter() - t0
        result = {
            "hours": args.hours,
            "speakers": args.speakers,
            "segments": len(transcript.segments),
            "html_bytes": page.stat().st_size,
            "render_s": round(render_s, 3),
            **measure(page, args.runs),
        }
        if args.firefox:
            result["firefox"] = measure_firefox(page, args.runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
