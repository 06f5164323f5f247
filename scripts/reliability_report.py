"""Run the reliability suite and write its counts as the table in docs/reliability.md.

    python scripts/reliability_report.py                 # run tests/reliability, then write
    python scripts/reliability_report.py --from counts.json [--from more.json]   # only write

The suite records, per fault or input class, how many trials it ran, how many came through
as specified and how many requests, files or jobs were lost (tests/reliability/conftest.py);
this script sums those counts and replaces the table between the markers in the document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- counts:begin -->", "<!-- counts:end -->"


def run_suite(target: Path) -> int:
    """Run tests/reliability with the counts written to ``target``; return pytest's status."""
    # the report counts 10 kill -9 trials of a stage worker (the test suite runs 4)
    env = {"MODELMORA_KILL_TRIALS": "10", **os.environ, "MODELMORA_RELIABILITY_JSON": str(target)}
    argv = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"]
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode


def merge(paths: list[Path]) -> list[dict[str, object]]:
    """Sum the rows of several counts files (same section and name: one row)."""
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            key = (str(row["section"]), str(row["name"]))
            into = rows.setdefault(key, {**row, "tried": 0, "survived": 0, "lost": 0})
            for field in ("tried", "survived", "lost"):
                into[field] = int(into[field]) + int(row[field])  # type: ignore[call-overload]
    return [rows[key] for key in sorted(rows)]


def table(rows: list[dict[str, object]]) -> str:
    """The markdown table of the counts."""
    lines = [
        "| section | fault or input class | tried | survived | lost |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['section']} | {r['name']} | {r['tried']} | {r['survived']} | {r['lost']} |"
        )
    return "\n".join(lines)


def write(rows: list[dict[str, object]], doc: Path = DOC) -> None:
    """Replace the table between the markers of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from",
        dest="sources",
        type=Path,
        action="append",
        default=[],
        help="counts JSON written by an earlier run (repeatable)",
    )
    args = parser.parse_args()
    status = 0
    sources = list(args.sources)
    if not sources:
        target = Path(tempfile.mkdtemp()) / "counts.json"
        status = run_suite(target)
        if not target.exists():
            print("the suite recorded no counts", file=sys.stderr)
            return status or 1
        sources = [target]
    rows = merge(sources)
    write(rows)
    sys.stdout.write(table(rows) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
