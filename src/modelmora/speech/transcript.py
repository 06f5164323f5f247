"""Transcripts: the result records of the speech workflow.

A :class:`Transcript` holds segments of text with word timings and, once diarized, a speaker on
every word and segment. ``to_dict``/``from_dict`` use the JSON shape of whisperx::

    {"segments": [{"start": 0.0, "end": 2.1, "text": " Hello.", "speaker": "SPEAKER_00",
                   "words": [{"word": " Hello.", "start": 0.0, "end": 2.1, "score": 0.9,
                              "speaker": "SPEAKER_00"}]}],
     "language": "en", "duration": 2.5}

The output formats (txt, srt, vtt, json, tsv, rttm, html, docx) and ``write_outputs`` live in
:mod:`modelmora.speech.formats`, which builds on these records.

This module is pure Python: importing it costs no ML framework.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmora.paths import write_atomic

__all__ = [
    "Segment",
    "Transcript",
    "Turn",
    "Word",
    "format_timestamp",
    "read_rttm",
    "write_atomic",
]

logger = logging.getLogger(__name__)


@dataclass
class Word:
    """One word with its timing (seconds) and, once diarized, its speaker."""

    start: float
    end: float
    word: str
    probability: float = 1.0
    speaker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The whisperx word record (``probability`` is called ``score`` there)."""
        data: dict[str, Any] = {
            "word": self.word,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "score": round(self.probability, 4),
        }
        if self.speaker is not None:
            data["speaker"] = self.speaker
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Word:
        """Build a word from a whisperx or faster-whisper record (``score`` or ``probability``)."""
        return cls(
            start=float(data["start"]),
            end=float(data["end"]),
            word=str(data["word"]),
            probability=float(data.get("score", data.get("probability", 1.0))),
            speaker=data.get("speaker"),
        )


@dataclass
class Segment:
    """A stretch of text (usually a sentence) with its words and speaker."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The whisperx segment record."""
        data: dict[str, Any] = {
            "id": self.id,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "words": [word.to_dict() for word in self.words],
        }
        if self.speaker is not None:
            data["speaker"] = self.speaker
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], index: int = 0) -> Segment:
        """Build a segment from a whisperx record; ``index`` is its id when the record has none."""
        return cls(
            id=int(data.get("id", index)),
            start=float(data["start"]),
            end=float(data["end"]),
            text=str(data["text"]),
            words=[Word.from_dict(word) for word in data.get("words") or []],
            speaker=data.get("speaker"),
        )


@dataclass(frozen=True)
class Turn:
    """A stretch of time (seconds) during which one speaker talks (one RTTM line)."""

    start: float
    end: float
    speaker: str


@dataclass
class Transcript:
    """The transcript of one audio file.

    Attributes:
        segments: the segments, in time order.
        language: the detected or given language code (``"en"``), or None if unknown.
        duration: the audio's duration in seconds.
        turns: speaker turns from diarization (finer than segments: they follow the voice,
            not the text); empty until diarized. The RTTM output uses them when present.
        language_probability: how sure the language detection was (0-1), or None when the
            language was given rather than detected.
    """

    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    duration: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    language_probability: float | None = None

    @property
    def text(self) -> str:
        """All the text, segments joined by spaces."""
        return " ".join(segment.text.strip() for segment in self.segments).strip()

    @property
    def speakers(self) -> list[str]:
        """The speaker labels, in order of first appearance."""
        seen: dict[str, None] = {}
        for segment in self.segments:
            if segment.speaker is not None:
                seen.setdefault(segment.speaker)
        for turn in self.turns:
            seen.setdefault(turn.speaker)
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        """The whisperx JSON shape (plus ``duration`` and, when diarized, ``turns``)."""
        data: dict[str, Any] = {
            "segments": [segment.to_dict() for segment in self.segments],
            "language": self.language,
            "duration": round(self.duration, 3),
        }
        if self.language_probability is not None:
            data["language_probability"] = round(self.language_probability, 4)
        if self.turns:
            data["turns"] = [
                [round(turn.start, 3), round(turn.end, 3), turn.speaker] for turn in self.turns
            ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        """Build a transcript from :meth:`to_dict`'s shape (or a whisperx result).

        Raises:
            ValueError: ``data`` has no ``segments`` list.
        """
        if not isinstance(data.get("segments"), list):
            raise ValueError("transcript data needs a 'segments' list")
        segments = [Segment.from_dict(seg, index) for index, seg in enumerate(data["segments"])]
        duration = float(data.get("duration") or (segments[-1].end if segments else 0.0))
        turns = [Turn(float(s), float(e), str(spk)) for s, e, spk in data.get("turns") or []]
        probability = data.get("language_probability")
        return cls(
            segments,
            data.get("language"),
            duration,
            turns,
            None if probability is None else float(probability),
        )


def format_timestamp(seconds: float, decimal: str = ".", always_hours: bool = True) -> str:
    """Format seconds as ``HH:MM:SS.mmm`` (``decimal=","`` gives the SRT form).

    Args:
        seconds: a non-negative time.
        decimal: the separator before the milliseconds.
        always_hours: write ``00:`` hours even when zero.

    Returns:
        The timestamp text.

    Raises:
        ValueError: ``seconds`` is negative.
    """
    if seconds < 0:
        raise ValueError(f"timestamp must be non-negative, got {seconds}")
    millis = round(seconds * 1000.0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    hours_part = f"{hours:02d}:" if always_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def read_rttm(path: str | os.PathLike[str]) -> list[Turn]:
    """Read the speaker turns of an RTTM file (every ``SPEAKER`` line, any file id).

    Args:
        path: the RTTM file.

    Returns:
        The turns, sorted by start time.

    Raises:
        ValueError: a ``SPEAKER`` line has fewer than 8 fields or bad numbers.
    """
    turns = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{number}: RTTM line needs at least 8 fields")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise ValueError(f"{path}:{number}: bad RTTM onset/duration") from None
        turns.append(Turn(start, start + duration, fields[7]))
    return sorted(turns, key=lambda turn: (turn.start, turn.end))
