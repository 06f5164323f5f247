"""The ``modelmora`` command line: transcribe, serve, bench.

Each command is a thin wrapper: it parses options, calls the engine in its own module, and
prints. Heavy modules are imported inside the commands so ``modelmora --help`` stays fast.
Exit codes: 0 done, 1 some work failed (the rest was done), 2 usage error.
"""

from __future__ import annotations

# Importing the command modules registers their commands on the app.
from modelmora.cli import bench, serving, speakers, transcribe  # noqa: F401
from modelmora.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``modelmora`` console script."""
    app()
