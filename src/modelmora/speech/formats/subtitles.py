"""SubRip and WebVTT subtitles, shaped for players: line width, lines per cue, cue durations.

Without shaping options a cue is a segment, as whisper writes them. With any of
``max_line_width``, ``max_line_count`` or ``max_duration`` the cues are rebuilt from the word
timings: words are laid into lines of at most ``max_line_width`` characters, a cue takes at
most ``max_line_count`` lines and lasts at most ``max_duration`` seconds, and a cue starts at
its first word and ends at its last (a word is never split). Whatever the options, a cue never
holds two speakers: a change of speaker starts a new cue. ``min_duration`` then lengthens short
cues, never into the next one. ``highlight_words`` writes whisper's karaoke cues: one cue per
word, that word underlined.

Speakers: SRT has no syntax for them, so the label prefixes the text (``SPEAKER_00: Hello``);
WebVTT has voice spans (``<v SPEAKER_00>Hello``), which players and ``webvtt-py`` read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from modelmora.speech.formats.common import RenderOptions, split_speakers
from modelmora.speech.transcript import Segment, Transcript, Word, format_timestamp

__all__ = ["Cue", "build_cues", "render_srt", "render_vtt"]

#: A silence this long between two words ends a cue (whisper's writer uses the same).
GAP_S = 3.0


@dataclass
class Cue:
    """One subtitle: its words (laid out in ``lines``, lists of word indices) and speaker."""

    start: float
    end: float
    speaker: str | None
    words: list[Word] = field(default_factory=list)
    lines: list[list[int]] = field(default_factory=list)
    text: str | None = None  # the segment's own text, for cues that are whole segments

    def line_texts(self, escape: Callable[[str], str], underline: int | None = None) -> list[str]:
        """The text of each line, escaped; ``underline``: the word to wrap in ``<u>``."""
        if self.text is not None:
            return [escape(self.text)]
        out = []
        for line in self.lines:
            parts = []
            for index in line:
                word = escape(self.words[index].word)
                if index == underline:
                    word = re.sub(r"^(\s*)(.*?)(\s*)$", r"\1<u>\2</u>\3", word)
                parts.append(word)
            out.append("".join(parts).strip())
        return out


def _tokens(segment: Segment) -> list[Word]:
    """The segment's words; for a segment without word timings, its text split at spaces with
    times spread by character offset."""
    if segment.words:
        return [w for w in segment.words if w.word.strip()]
    text = segment.text
    pieces = list(re.finditer(r"\s*\S+", text))
    span = max(segment.end - segment.start, 0.0)
    scale = span / max(len(text), 1)
    return [
        Word(
            segment.start + m.start() * scale,
            segment.start + m.end() * scale,
            m.group(),
            1.0,
            segment.speaker,
        )
        for m in pieces
    ]


def _layout(words: list[Word], width: int | None, prefix: int) -> list[list[int]]:
    """Greedy lines of at most ``width`` characters (the first line after ``prefix`` ones)."""
    lines: list[list[int]] = []
    length = 0
    for index, word in enumerate(words):
        size = len(word.word.strip())
        if lines and (width is None or length + 1 + size <= width):
            lines[-1].append(index)
            length += 1 + size
        else:
            lines.append([index])
            length = size + (prefix if len(lines) == 1 else 0)
    return lines


def _fits(words: list[Word], options: RenderOptions, prefix: int) -> bool:
    if options.max_duration is not None and words[-1].end - words[0].start > options.max_duration:
        return False
    if options.max_line_count is None:
        return True
    return len(_layout(words, options.max_line_width, prefix)) <= options.max_line_count


def _shaped(transcript: Transcript, options: RenderOptions, label_width: int) -> list[Cue]:
    cues: list[Cue] = []
    current: list[Word] = []
    speaker: str | None = None
    for segment in split_speakers(transcript).segments:
        who = segment.speaker
        prefix = len(f"{who}: ") if who and label_width else 0
        for position, word in enumerate(_tokens(segment)):
            if current and (
                who != speaker
                or (position == 0 and options.max_line_count is None)  # keep segments apart
                or word.start - current[-1].end > GAP_S
                or not _fits([*current, word], options, prefix)
            ):
                cues.append(_cue(current, speaker, options, label_width))
                current = []
            current.append(word)
            speaker = who
    if current:
        cues.append(_cue(current, speaker, options, label_width))
    return cues


def _cue(words: list[Word], speaker: str | None, options: RenderOptions, label: int) -> Cue:
    prefix = len(f"{speaker}: ") if speaker and label else 0
    lines = _layout(words, options.max_line_width, prefix)
    return Cue(words[0].start, max(w.end for w in words), speaker, words, lines)


def _plain(transcript: Transcript) -> list[Cue]:
    """One cue per segment (a segment whose words change speaker is cut there first)."""
    cues = []
    for segment in split_speakers(transcript).segments:
        words = [w for w in segment.words if w.word.strip()]
        cue = Cue(segment.start, segment.end, segment.speaker, words)
        cue.text = segment.text.strip()
        cues.append(cue)
    return cues


def build_cues(transcript: Transcript, options: RenderOptions, label_width: bool) -> list[Cue]:
    """The cues of a transcript under ``options`` (see the module's docstring).

    Args:
        transcript: what to subtitle.
        options: the shaping options.
        label_width: whether the speaker label is part of the text (SRT), so it counts
            toward ``max_line_width``.
    """
    shaping = options.max_line_width or options.max_line_count or options.max_duration
    cues = _shaped(transcript, options, int(label_width)) if shaping else _plain(transcript)
    if options.min_duration:
        for cue, after in zip(cues, [*cues[1:], None], strict=True):
            limit = after.start if after is not None else max(transcript.duration, cue.end)
            cue.end = max(cue.end, min(cue.start + options.min_duration, limit))
    return cues


def _timed_texts(
    cues: list[Cue], options: RenderOptions, escape: Callable[[str], str]
) -> Iterator[tuple[float, float, Cue, list[str]]]:
    """Each cue's (start, end, cue, lines); with ``highlight_words``, whisper's karaoke cues:
    one per word with that word underlined, plus a plain one over each gap between words."""
    for cue in cues:
        if not options.highlight_words or not cue.words:
            yield cue.start, cue.end, cue, cue.line_texts(escape)
            continue
        if cue.text is not None:  # a whole segment: lay its words on one line to underline
            cue.text, cue.lines = None, [list(range(len(cue.words)))]
        last = cue.start
        for index, word in enumerate(cue.words):
            if last < word.start:
                yield last, word.start, cue, cue.line_texts(escape)
            yield word.start, word.end, cue, cue.line_texts(escape, underline=index)
            last = word.end


def render_srt(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm`` times, the speaker as a ``SPEAKER: `` prefix."""
    out = []
    cues = build_cues(transcript, options, label_width=True)
    timed = _timed_texts(cues, options, lambda text: text)
    for number, (start, end, cue, lines) in enumerate(timed, start=1):
        label = f"{cue.speaker}: " if cue.speaker else ""
        body = "\n".join([label + lines[0], *lines[1:]]) if lines else label.strip()
        out.append(
            f"{number}\n{format_timestamp(start, ',')} --> {format_timestamp(end, ',')}\n{body}\n\n"
        )
    return "".join(out)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(transcript: Transcript, options: RenderOptions, stem: str = "") -> str:
    """WebVTT: the speaker as a voice span (``<v SPEAKER_00>text``), text escaped."""
    out = ["WEBVTT\n\n"]
    cues = build_cues(transcript, options, label_width=False)
    for start, end, cue, lines in _timed_texts(cues, options, _vtt_escape):
        voice = f"<v {_vtt_escape(cue.speaker)}>" if cue.speaker else ""
        body = "\n".join(lines)
        out.append(f"{format_timestamp(start)} --> {format_timestamp(end)}\n{voice}{body}\n\n")
    return "".join(out)
