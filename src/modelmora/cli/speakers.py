"""``modelmora speakers ...``: the speaker library (enrolled voices, named in transcripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelmora.cli.common import LIBRARY_HELP, console, fail, print_json, speakers_app


@speakers_app.command("add")
def speakers_add(
    name: Annotated[str, typer.Argument(help="The person's name.")],
    clips: Annotated[list[Path], typer.Argument(help="Clips of them alone (any audio).")],
    library: str | None = typer.Option(None, help=LIBRARY_HELP),
    keep_audio: bool = typer.Option(False, help="Also copy the clips into the library."),
    device: str = typer.Option("cpu", help="auto|cpu|cuda for the speaker model."),
) -> None:
    """Enroll a speaker: their voiceprint (embeddings, never the audio unless asked)."""
    from modelmora.errors import ModelMoraError
    from modelmora.speech.audio import AudioError
    from modelmora.speech.speakers import SpeakerLibrary
    from modelmora.workflow.speakers import enroll

    shelf = SpeakerLibrary(library)
    try:
        path = enroll(name, clips, shelf, keep_audio=keep_audio, device=device)
    except (ValueError, AudioError) as exc:
        raise fail(exc, 2) from None
    except ModelMoraError as exc:
        raise fail(exc, 1) from None
    console.print(f"enrolled {name} from {len(clips)} clip(s) in {path}", markup=False)


@speakers_app.command("list")
def speakers_list(
    library: str | None = typer.Option(None, help=LIBRARY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the enrolled speakers."""
    from rich.table import Table

    from modelmora.speech.speakers import SpeakerLibrary

    shelf = SpeakerLibrary(library)
    rows = shelf.describe()
    if as_json:
        print_json({"library": str(shelf.folder), "speakers": rows})
        return
    table = Table(title=f"speakers in {shelf.folder}")
    for column in ("name", "clips", "speech s", "models", "audio kept"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            str(row["clips"]),
            f"{row['speech_s']:.1f}",
            ", ".join(row["models"]),
            "yes" if row["audio_kept"] else "no",
        )
    Console().print(table)


@speakers_app.command("rm")
def speakers_rm(
    name: Annotated[str, typer.Argument(help="The enrolled name.")],
    library: str | None = typer.Option(None, help=LIBRARY_HELP),
) -> None:
    """Forget an enrolled speaker."""
    from modelmora.speech.speakers import SpeakerLibrary

    try:
        SpeakerLibrary(library).remove(name)
    except KeyError as exc:
        raise fail(exc.args[0], 2) from None
    console.print(f"removed {name}", markup=False)


@speakers_app.command("rename")
def speakers_rename(
    old: Annotated[str, typer.Argument(help="The enrolled name.")],
    new: Annotated[str, typer.Argument(help="The new name.")],
    library: str | None = typer.Option(None, help=LIBRARY_HELP),
) -> None:
    """Rename an enrolled speaker."""
    from modelmora.speech.speakers import SpeakerLibrary

    try:
        SpeakerLibrary(library).rename(old, new)
    except KeyError as exc:
        raise fail(exc.args[0], 2) from None
    except ValueError as exc:
        raise fail(exc, 2) from None
    console.print(f"renamed {old} to {new}", markup=False)
