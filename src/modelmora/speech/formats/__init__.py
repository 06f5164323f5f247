"""Output formats of a transcript: pure render functions, and :func:`write_outputs`.

Every format is a function ``(transcript, options, stem) -> str | bytes`` (:data:`RENDERERS`),
so a caller that wants the text (the HTTP API's subtitles) renders it without touching a disk;
:func:`write_outputs` writes the files, each atomically (a temporary file in the same folder,
then ``os.replace``), so a reader never sees half a file and a crash never leaves one behind.

========  =====================================================================================
txt       one paragraph per speaker turn (``[SPEAKER_00]: text``), optional ``[hh:mm:ss]``
srt, vtt  subtitles, shaped for players (:mod:`~modelmora.speech.formats.subtitles`)
json      the whisperx shape; tsv: whisper's, plus a speaker column; rttm: speaker turns
html      a self-contained page to read, play, search and correct (:mod:`.html`)
docx      a Word document: summary, then turns with speakers in bold and time stamps
========  =====================================================================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from modelmora.paths import write_atomic
from modelmora.speech.formats.common import RenderOptions, speaker_turns
from modelmora.speech.formats.docx import prepare_docx, render_docx
from modelmora.speech.formats.html import render_html
from modelmora.speech.formats.subtitles import render_srt, render_vtt
from modelmora.speech.formats.text import render_json, render_rttm, render_tsv, render_txt
from modelmora.speech.transcript import Transcript

__all__ = [
    "FORMATS",
    "RENDERERS",
    "RenderOptions",
    "parse_formats",
    "prepare_writers",
    "render",
    "speaker_turns",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: A format: (transcript, options, stem) -> the file's text, or bytes for binary formats.
Renderer = Callable[[Transcript, RenderOptions, str], str | bytes]

#: Every format, by name, in the order ``all`` writes them.
RENDERERS: dict[str, Renderer] = {
    "txt": render_txt,
    "srt": render_srt,
    "vtt": render_vtt,
    "json": render_json,
    "tsv": render_tsv,
    "rttm": render_rttm,
    "html": render_html,
    "docx": render_docx,
}

#: Output formats :func:`write_outputs` knows, in the order ``all`` writes them.
FORMATS: tuple[str, ...] = tuple(RENDERERS)


def prepare_writers(formats: Iterable[str]) -> None:
    """Load what the renderers of ``formats`` import on first use (python-docx for docx)."""
    if "docx" in formats:
        prepare_docx()


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """Normalize output formats: ``"all"``, ``"srt,vtt"`` or a list of names.

    Args:
        formats: format names, comma-separated text, or ``"all"``.

    Returns:
        The distinct formats, in :data:`FORMATS` order.

    Raises:
        ValueError: a name is not one of :data:`FORMATS` or ``all``.
    """
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted: set[str] = set()
    for name in (n.strip().lower() for n in names):
        if name == "all":
            wanted.update(FORMATS)
        elif name in RENDERERS:
            wanted.add(name)
        elif name:
            raise ValueError(f"unknown output format {name!r}: use {', '.join(FORMATS)} or all")
    return [name for name in FORMATS if name in wanted]


def render(
    transcript: Transcript, name: str, options: RenderOptions | None = None, stem: str = ""
) -> str | bytes:
    """Render a transcript in one format (``bytes`` for docx, text for the others).

    Raises:
        ValueError: an unknown format.
    """
    key = name.strip().lower()
    if key not in RENDERERS:
        raise ValueError(f"unknown output format {name!r}: use one of {', '.join(FORMATS)}")
    return RENDERERS[key](transcript, options or RenderOptions(), stem)


def write_outputs(
    transcript: Transcript,
    out_dir: str | os.PathLike[str],
    stem: str,
    formats: str | Sequence[str] = "all",
    options: RenderOptions | None = None,
) -> list[Path]:
    """Write a transcript as ``out_dir/<stem>.<format>`` for each format, atomically.

    Speaker labels appear wherever the transcript is diarized: ``[SPEAKER_00]: text`` in txt,
    a ``SPEAKER_00: `` prefix on srt cues, voice spans in vtt, a speaker column in tsv, one
    RTTM line per speaker turn (an undiarized transcript gives an empty RTTM file), coloured
    turns in html and bold names in docx.

    Args:
        transcript: what to write.
        out_dir: the output folder (created if missing).
        stem: the file name without extension (usually the audio file's stem).
        formats: see :func:`parse_formats`.
        options: how to render (subtitle shaping, the page's audio...); ``options.audio``
            is made relative to ``out_dir`` so the page finds the recording beside it.

    Returns:
        The paths written, in :data:`FORMATS` order.

    Raises:
        ValueError: an unknown format, or an empty ``stem``.
        OSError: the folder cannot be created or written.
    """
    if not stem or "/" in stem or stem in (".", ".."):
        raise ValueError(f"bad output stem {stem!r}: give a file name without folders")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    options = options or RenderOptions()
    if options.audio and not options.embed_audio and "://" not in options.audio:
        options = replace(options, audio=os.path.relpath(options.audio, folder))
    written = []
    for name in parse_formats(formats):
        output = RENDERERS[name](transcript, options, stem)
        path = write_atomic(folder / f"{stem}.{name}", [output])
        logger.debug("wrote %s", path)
        written.append(path)
    return written
