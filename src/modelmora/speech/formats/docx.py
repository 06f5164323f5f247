"""A Word document (python-docx): the title, the summary, then the turns.

Each turn is one paragraph: the speaker in bold (in the speaker's colour), its ``[hh:mm:ss]``
time stamp in grey, then the text. Words the recogniser was unsure of are shown in grey italics
when the transcript has word scores. Word and LibreOffice open it.
"""

from __future__ import annotations

import ctypes
import gc
import io
import zipfile
from typing import Any

from modelmora.speech.formats.common import (
    SPEAKER_COLOURS,
    RenderOptions,
    SpeakerTurn,
    clock,
    speaker_turns,
    split_speakers,
    summary_blocks,
)
from modelmora.speech.transcript import Transcript

__all__ = ["INSTALL_HINT", "render_docx"]

INSTALL_HINT = "the docx format needs python-docx: pip install 'modelmora[speech]'"


def _summary(document: Any, summary: str) -> None:
    document.add_heading("Summary", level=1)
    for kind, text in summary_blocks(summary):
        if kind == "bullet":
            document.add_paragraph(text, style="List Bullet")
        elif kind == "heading":
            document.add_heading(text, level=2)
        else:
            document.add_paragraph(text)


def _turn(document: Any, turn: SpeakerTurn, colours: dict[str, str], low: float) -> None:
    from docx.shared import RGBColor

    paragraph = document.add_paragraph()
    if turn.speaker:
        name = paragraph.add_run(turn.speaker)
        name.bold = True
        name.font.color.rgb = RGBColor.from_string(colours[turn.speaker])
        paragraph.add_run(" ")
    stamp = paragraph.add_run(f"[{clock(turn.start)}]")
    stamp.font.color.rgb = RGBColor(0x80, 0x80, 0x80)
    paragraph.add_run("\n" if turn.speaker else " ")
    for index, segment in enumerate(turn.segments):
        words = [w for w in segment.words if w.word.strip()]
        if not words:
            paragraph.add_run((" " if index else "") + segment.text.strip())
            continue
        for position, word in enumerate(words):
            text = word.word.strip() if index == position == 0 else word.word
            if position == 0 and index and not text.startswith(" "):
                text = " " + text
            run = paragraph.add_run(text)
            if word.probability < low:
                run.italic = True
                run.font.color.rgb = RGBColor(0x99, 0x66, 0x00)


def prepare_docx() -> None:
    """Import python-docx and parse its template once (about 20 MB with lxml, kept).

    A batch calls this before its first file, so what the writer costs is paid at the start,
    and the orchestrator's memory over the batch shows only what the files themselves add.
    Does nothing when python-docx is not installed (rendering then says how to install it).
    """
    try:
        import docx
    except ImportError:
        return
    docx.Document()


def render_docx(transcript: Transcript, options: RenderOptions, stem: str = "") -> bytes:
    """The document as bytes (see the module's docstring).

    Raises:
        RuntimeError: python-docx is not installed (the message says how to install it).
    """
    try:
        import docx
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    document = docx.Document()
    document.core_properties.title = options.title or stem or "Transcript"
    document.add_heading(options.title or stem or "Transcript", level=0)
    if options.summary and options.summary.strip():
        _summary(document, options.summary)
    document.add_heading("Transcript", level=1)
    colours = {
        speaker: SPEAKER_COLOURS[index % len(SPEAKER_COLOURS)]
        for index, speaker in enumerate(split_speakers(transcript).speakers)
    }
    for turn in speaker_turns(transcript):
        _turn(document, turn, colours, options.low_confidence)
    document.core_properties.author = "modelmora"
    buffer = io.BytesIO()
    document.save(buffer)
    del document
    _give_back_freed_heap()
    return _reproducible(buffer.getvalue())


def _give_back_freed_heap() -> None:
    """Return the heap lxml freed to the OS (glibc only; elsewhere nothing happens).

    Building a document parses python-docx's template with lxml: about 3 MB a document that
    glibc keeps after it is freed, up to some 30 MB, which a batch's orchestrator showed as
    growth over its first files. ``malloc_trim`` hands it back (a few milliseconds, with the
    collection before it).
    """
    gc.collect()  # python-docx's objects hold cycles: free them first
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reproducible(blob: bytes) -> bytes:
    """The same document with every zip entry dated 1980-01-01, so the same transcript gives
    the same bytes (python-docx stamps each entry with the time of writing; a resumed batch
    must give identical outputs)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as source, zipfile.ZipFile(out, "w") as target:
        for entry in source.infolist():
            info = zipfile.ZipInfo(entry.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = entry.external_attr
            target.writestr(info, source.read(entry.filename))
    return out.getvalue()
