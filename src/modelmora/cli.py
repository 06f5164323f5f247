"""The ``modelmora`` command line: transcribe, serve, bench.

Each command is a thin wrapper: it parses options, calls the engine in its own module, and
prints. Heavy modules are imported inside the commands so ``modelmora --help`` stays fast.
Exit codes: 0 done, 1 some work failed (the rest was done), 2 usage error.
"""

from __future__ import annotations

import json
import logging
import sys

import typer
from rich.console import Console

__all__ = ["app", "main"]

app = typer.Typer(
    name="modelmora",
    help="Run ML models in isolated worker processes: memory measured, release verified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Measure isolation, overhead and the workflows.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from . import __version__

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


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@bench_app.command("overhead")
def bench_overhead(
    spawn_runs: int = typer.Option(10, help="Worker starts to time (median reported)."),
    calls: int = typer.Option(1000, help="Small calls to time (p50/p99 reported)."),
    array_runs: int = typer.Option(10, help="38 MB array round trips to time (median)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """What isolation costs: worker spawn→ready, call round trip, 38 MB array round trip."""
    from .bench_overhead import format_table, run_overhead

    result = run_overhead(spawn_runs=spawn_runs, calls=calls, array_runs=array_runs)
    if as_json:
        _print_json(result)
    else:
        Console().print(format_table(result))


# Commands of the other workflows are added below this line.


def main() -> None:
    """Entry point of the ``modelmora`` console script."""
    app()


if __name__ == "__main__":
    main()
