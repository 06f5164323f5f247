"""What every command shares: the typer app and its groups, the error console, JSON output."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

__all__ = ["LIBRARY_HELP", "app", "bench_app", "console", "fail", "print_json", "speakers_app"]

app = typer.Typer(
    name="modelmora",
    help="Run ML models in isolated worker processes: memory measured, release verified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Measure isolation, overhead and the workflows.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
speakers_app = typer.Typer(help="The speaker library: enrolled voices, named in transcripts.")
app.add_typer(speakers_app, name="speakers", no_args_is_help=True)

console = Console(stderr=True)

#: The help of every ``--library`` option.
LIBRARY_HELP = "Speaker library folder (default: <cache dir>/speakers, or $MODELMORA_SPEAKERS)."


def _version(value: bool) -> None:
    if value:
        from modelmora import __version__

        typer.echo(f"modelmora {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages to stderr."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def show(result: Any, table: Callable[[Any], Any], as_json: bool) -> None:
    """Print a benchmark's or command's result: one JSON object, or its rich table."""
    if as_json:
        print_json(result)
    else:
        Console().print(table(result))


def fail(message: object, code: int) -> typer.Exit:
    console.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)
