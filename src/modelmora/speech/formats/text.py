"""The formats of the text itself: the readable txt, and json/tsv/rttm for programs."""

from __future__ import annotations

import json

from modelmora.speech.formats.common import RenderOptions, clock, speaker_turns
from modelmora.speech.transcript import Transcript, Turn

__all__ = ["render_json", "render_rttm", "render_tsv", "render_txt", "speaker_runs"]


def render_txt(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """One paragraph per speaker turn (``[SPEAKER_00]: text``, a blank line between turns).

    Undiarized, one line per segment as whisper writes it. With ``txt_timestamps`` every
    paragraph (or line) starts with its ``[hh:mm:ss]``.
    """
    diarized = any(segment.speaker for segment in transcript.segments)
    lines = []
    for turn in speaker_turns(transcript):
        stamp = f"[{clock(turn.start)}] " if options.txt_timestamps else ""
        if diarized:
            label = ""
            if turn.speaker:
                label = f"{turn.speaker}: " if stamp else f"[{turn.speaker}]: "
            lines.append(f"{stamp}{label}{turn.text}\n\n")
            continue
        for segment in turn.segments:
            stamp = f"[{clock(segment.start)}] " if options.txt_timestamps else ""
            lines.append(f"{stamp}{segment.text.strip()}\n")
    return "".join(lines)


def render_tsv(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """whisper's TSV (integer milliseconds), with a ``speaker`` column once diarized."""
    # Tabs in the text are replaced so the columns stay aligned.
    diarized = bool(transcript.speakers)
    lines = ["start\tend\tspeaker\ttext\n" if diarized else "start\tend\ttext\n"]
    for segment in transcript.segments:
        text = segment.text.strip().replace("\t", " ")
        start, end = round(segment.start * 1000), round(segment.end * 1000)
        speaker = f"{segment.speaker or ''}\t" if diarized else ""
        lines.append(f"{start}\t{end}\t{speaker}{text}\n")
    return "".join(lines)


def render_json(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """The whisperx JSON shape (:meth:`Transcript.to_dict`)."""
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"


def speaker_runs(transcript: Transcript) -> list[Turn]:
    """The diarization's turns, or else runs of consecutive segments of one speaker."""
    if transcript.turns:
        return list(transcript.turns)
    return [
        Turn(turn.start, turn.end, turn.speaker)
        for turn in speaker_turns(transcript)
        if turn.speaker is not None
    ]


def render_rttm(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """One RTTM ``SPEAKER`` line per speaker turn (empty when undiarized)."""
    # RTTM file ids cannot hold spaces: the id is the first whitespace-free field.
    file_id = "_".join(stem.split()) or "audio"
    return "".join(
        f"SPEAKER {file_id} 1 {turn.start:.3f} {max(turn.end - turn.start, 0.0):.3f} "
        f"<NA> <NA> {turn.speaker} <NA> <NA>\n"
        for turn in speaker_runs(transcript)
    )
