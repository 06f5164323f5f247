"""A self-contained HTML page to read, play, search and correct a transcript.

The page is one file: the viewer's stylesheet and script (``viewer/``, package data) are inlined,
the transcript travels as JSON inside it, and the recording is referenced by a relative path
(or embedded as a ``data:`` URI with ``embed_audio``), so it opens from a folder or a mail
attachment with no network. The script builds the turns from the JSON, so the file stays
small (a 2-hour meeting is a few MB; see ``docs/formats.md`` for measured figures).

What the page does (``viewer/viewer.js``): speaker turns with time stamps, one colour per
speaker; click a word to play from there; the word being spoken is highlighted and kept in
view; low-confidence words are marked; search; rename a speaker everywhere at once; correct a
word (double-click it); export the corrected transcript as txt, srt, vtt or json; space
plays and pauses.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
import string
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modelmora.speech.formats.common import (
    PARAGRAPH_PAUSE_S,
    PARAGRAPH_SEGMENTS,
    SPEAKER_COLOURS,
    RenderOptions,
    split_speakers,
    summary_blocks,
)
from modelmora.speech.transcript import Transcript

__all__ = ["page_data", "render_html"]


def _asset(name: str) -> str:
    # One child per joinpath: Python 3.10's Traversable takes no more.
    return (resources.files("modelmora.speech.formats") / "viewer" / name).read_text("utf-8")


def page_data(transcript: Transcript, options: RenderOptions, stem: str = "") -> dict[str, Any]:
    """The transcript as the viewer's script reads it (compact arrays, times in seconds).

    ``segments`` are ``[start, end, speaker index or -1, text, words]`` with words as
    ``[start, end, text, score]``; ``speakers`` are the labels (or names) by index.
    """
    transcript = split_speakers(transcript)
    speakers = transcript.speakers
    index = {speaker: number for number, speaker in enumerate(speakers)}
    segments = [
        [
            round(segment.start, 3),
            round(segment.end, 3),
            index.get(segment.speaker, -1) if segment.speaker is not None else -1,
            segment.text.strip(),
            [
                [round(w.start, 3), round(w.end, 3), w.word, round(w.probability, 2)]
                for w in segment.words
                if w.word.strip()
            ],
        ]
        for segment in transcript.segments
    ]
    return {
        "stem": stem or "transcript",
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "speakers": speakers,
        "colours": [f"#{colour}" for colour in SPEAKER_COLOURS],
        "low": options.low_confidence,
        "paragraph": [PARAGRAPH_PAUSE_S, PARAGRAPH_SEGMENTS],  # undiarized text: new paragraph
        "segments": segments,
    }


def _summary_html(summary: str | None) -> str:
    if not summary or not summary.strip():
        return ""
    parts: list[str] = []
    in_list = False
    for kind, text in summary_blocks(summary):
        if kind == "bullet" and not in_list:
            parts.append("<ul>")
        elif kind != "bullet" and in_list:
            parts.append("</ul>")
        in_list = kind == "bullet"
        tag = {"bullet": "li", "heading": "h3", "para": "p"}[kind]
        parts.append(f"<{tag}>{html.escape(text)}</{tag}>")
    if in_list:
        parts.append("</ul>")
    body = "\n".join(parts)
    return f'<details id="mm-summary" open><summary>Summary</summary>\n{body}\n</details>'


def _audio_src(options: RenderOptions) -> str:
    if not options.audio:
        return ""
    if not options.embed_audio:
        return options.audio if "://" in options.audio else quote(options.audio)
    path = Path(options.audio)
    mime = mimetypes.guess_type(path.name)[0] or "audio/wav"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """The page (see the module's docstring).

    Raises:
        OSError: ``embed_audio`` is set and the recording cannot be read.
    """
    data = json.dumps(page_data(transcript, options, stem), ensure_ascii=False)
    src = _audio_src(options)
    audio = (
        f'<audio id="mm-audio" controls preload="metadata" src="{html.escape(src)}"></audio>'
        if src
        else '<audio id="mm-audio" hidden></audio>'
    )
    page = string.Template(_asset("viewer.html"))
    return page.substitute(
        title=html.escape(options.title or stem or "Transcript"),
        language=html.escape(transcript.language or "en"),
        css=_asset("viewer.css"),
        # "</script" or "<!--" would end the JSON's script element early: "<" only occurs
        # inside JSON strings, where "\u003c" is the same character.
        data=data.replace("<", "\\u003c"),
        js=_asset("viewer.js").replace("</script", "<\\/script"),
        summary=_summary_html(options.summary),
        audio=audio,
    )
