"""What every output format shares: the render options and the speaker turns of a transcript."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from modelmora.speech.transcript import Segment, Transcript, Word, format_timestamp

__all__ = [
    "PARAGRAPH_PAUSE_S",
    "PARAGRAPH_SEGMENTS",
    "SPEAKER_COLOURS",
    "RenderOptions",
    "SpeakerTurn",
    "clock",
    "speaker_turns",
    "split_speakers",
    "summary_blocks",
]


#: Speaker colours (RGB hex) of the HTML viewer and the DOCX, by order of first appearance.
SPEAKER_COLOURS = (
    "1f77b4", "d62728", "2ca02c", "9467bd", "ff7f0e", "17becf", "8c564b", "e377c2", "7f7f7f",
    "bcbd22",
)  # fmt: skip


#: Undiarized text is cut into paragraphs at a pause this long (seconds)...
PARAGRAPH_PAUSE_S = 2.0
#: ...or after this many segments (the HTML viewer follows the same rule).
PARAGRAPH_SEGMENTS = 6


@dataclass(frozen=True)
class RenderOptions:
    """How a transcript is rendered (every field has the default that renders as before).

    Attributes:
        max_line_width: srt/vtt: the most characters on one subtitle line (None: no limit).
        max_line_count: srt/vtt: the most lines in one cue (None: one cue per segment).
        max_duration: srt/vtt: the longest cue, seconds (None: no limit).
        min_duration: srt/vtt: a shorter cue is shown longer, up to the next cue's start.
        highlight_words: srt/vtt: karaoke cues, the spoken word underlined (as whisper's).
        txt_timestamps: txt: an ``[hh:mm:ss]`` stamp at the start of every turn.
        low_confidence: html/docx: words scored below this are marked.
        audio: html: the recording, as the page's player loads it (a path, made relative to
            the output folder by :func:`~modelmora.speech.formats.write_outputs`, or a URL).
        embed_audio: html: embed the recording (``audio`` must then be a readable file).
        summary: html/docx: the summary (Markdown-ish text) shown above the transcript.
        title: html/docx: the document's title (default: the output's stem).
    """

    max_line_width: int | None = None
    max_line_count: int | None = None
    max_duration: float | None = None
    min_duration: float | None = None
    highlight_words: bool = False
    txt_timestamps: bool = False
    low_confidence: float = 0.5
    audio: str | None = None
    embed_audio: bool = False
    summary: str | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_line_width", "max_line_count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in ("max_duration", "min_duration"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive seconds, got {value}")
        if self.max_duration and self.min_duration and self.min_duration > self.max_duration:
            raise ValueError(
                f"min_duration ({self.min_duration}) is longer than max_duration "
                f"({self.max_duration})"
            )
        if self.embed_audio and not self.audio:
            raise ValueError("embed_audio needs the recording: give audio")


@dataclass
class SpeakerTurn:
    """Consecutive segments of one speaker (or, undiarized, of nobody): one paragraph."""

    speaker: str | None
    segments: list[Segment] = field(default_factory=list)

    @property
    def start(self) -> float:
        """When the turn starts, seconds."""
        return self.segments[0].start

    @property
    def end(self) -> float:
        """When the turn ends, seconds."""
        return max(segment.end for segment in self.segments)

    @property
    def text(self) -> str:
        """The turn's text, its segments joined by spaces."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def speaker_turns(transcript: Transcript) -> Iterator[SpeakerTurn]:
    """Group consecutive segments of the same speaker into turns, in time order (a segment
    whose words change speaker is cut first: see :func:`split_speakers`). Without speakers,
    a pause of :data:`PARAGRAPH_PAUSE_S` or :data:`PARAGRAPH_SEGMENTS` segments end a turn,
    so an undiarized transcript still reads in paragraphs."""
    turn: SpeakerTurn | None = None
    for segment in split_speakers(transcript).segments:
        if (
            turn is not None
            and turn.speaker == segment.speaker
            and not _new_paragraph(turn, segment)
        ):
            turn.segments.append(segment)
            continue
        if turn is not None:
            yield turn
        turn = SpeakerTurn(segment.speaker, [segment])
    if turn is not None:
        yield turn


def _new_paragraph(turn: SpeakerTurn, segment: Segment) -> bool:
    if turn.speaker is not None:
        return False
    pause = segment.start - turn.segments[-1].end
    return pause >= PARAGRAPH_PAUSE_S or len(turn.segments) >= PARAGRAPH_SEGMENTS


def clock(seconds: float) -> str:
    """``hh:mm:ss`` (no milliseconds): the stamp people read in a transcript."""
    return format_timestamp(max(seconds, 0.0))[:8]


def summary_blocks(summary: str) -> list[tuple[str, str]]:
    """The summary's Markdown-ish lines as ``(kind, text)`` blocks: ``heading``, ``bullet``,
    ``para`` (one per line: a model's summary is not hard-wrapped). The summary file's own
    title (``# ...``) and footer rule (``---``) are dropped, emphasis marks stripped."""
    blocks: list[tuple[str, str]] = []
    for raw in summary.strip().splitlines():
        line = raw.strip()
        if not line or line == "---" or line.startswith("# "):
            continue
        bullet = re.match(r"^(?:[-*]|\d+[.)])\s+(.*)", line)
        if bullet:
            blocks.append(("bullet", bullet.group(1).strip("_*")))
        elif line.startswith("#"):
            blocks.append(("heading", line.lstrip("#").strip()))
        else:
            blocks.append(("para", line.strip("_*")))
    return blocks


def split_speakers(transcript: Transcript) -> Transcript:
    """The transcript with every segment whose words have several speakers cut where the
    speaker changes (the diarizer labels words; a segment may straddle a change of voice)."""
    segments: list[Segment] = []
    for segment in transcript.segments:
        runs: list[list[Word]] = []
        for word in segment.words:
            who = word.speaker or segment.speaker
            if runs and ((runs[-1][0].speaker or segment.speaker) == who or not word.word.strip()):
                runs[-1].append(word)
            else:
                runs.append([word])
        if len(runs) <= 1:
            segments.append(replace(segment, id=len(segments)))
            continue
        for run in runs:
            text = "".join(word.word for word in run)
            who = run[0].speaker or segment.speaker
            segments.append(Segment(len(segments), run[0].start, run[-1].end, text, run, who))
    return replace(transcript, segments=segments)
