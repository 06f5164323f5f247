"""What every diarization engine shares: its result, the engine protocol, speaker assignment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from modelmora.speech.transcript import Segment, Turn, Word

__all__ = [
    "AudioInput",
    "Diarization",
    "Engine",
    "assign_speakers",
    "check_counts",
    "name_by_appearance",
]

AudioInput = str | os.PathLike[str] | np.ndarray


@dataclass
class Diarization:
    """An engine's answer for one recording.

    Attributes:
        turns: speaker turns in time order (may overlap where two people talk at once).
        speaker_embeddings: one unit centroid embedding per speaker label (empty when the
            engine has none), for linking speakers across recordings.
        embedding_model: ``name@version`` of the model that made the embeddings.
    """

    turns: list[Turn]
    speaker_embeddings: dict[str, list[float]] = field(default_factory=dict)
    embedding_model: str | None = None

    @property
    def speakers(self) -> list[str]:
        """Speaker labels in order of first appearance."""
        return list(dict.fromkeys(turn.speaker for turn in self.turns))


class Engine(Protocol):
    """A diarization engine: constructed cheaply, loaded once, then run per recording.

    Constructors take ``num_speakers``, ``min_speakers``, ``max_speakers`` and ``device`` as
    keywords (plus their own options); ``module:Class`` engines follow the same shape.
    """

    def load(self) -> None: ...

    def diarize(self, audio: AudioInput) -> Diarization: ...

    def close(self) -> None: ...


def check_counts(num_speakers: int | None, min_speakers: int, max_speakers: int) -> None:
    """Raise ValueError on inconsistent speaker counts."""
    if num_speakers is not None and num_speakers < 1:
        raise ValueError(f"num_speakers must be at least 1, got {num_speakers}")
    if not 1 <= min_speakers <= max_speakers:
        raise ValueError(
            f"need 1 <= min_speakers <= max_speakers, got {min_speakers} and {max_speakers}"
        )


def name_by_appearance(
    turns: list[tuple[float, float, int]],
    embeddings: dict[int, np.ndarray] | None = None,
) -> tuple[list[Turn], dict[str, list[float]]]:
    """Name integer speakers ``SPEAKER_00``... by first appearance; sort turns by start."""
    ordered = sorted(turns, key=lambda t: (t[0], t[1]))
    names: dict[int, str] = {}
    for _, _, label in ordered:
        names.setdefault(label, f"SPEAKER_{len(names):02d}")
    named = [Turn(round(s, 3), round(e, 3), names[label]) for s, e, label in ordered]
    vectors = {
        names[label]: [round(float(x), 6) for x in vector]
        for label, vector in (embeddings or {}).items()
        if label in names
    }
    return named, dict(sorted(vectors.items()))


def _speaker_at(start: float, end: float, turns: list[Turn]) -> str | None:
    """The speaker overlapping ``[start, end]`` the most, else the nearest turn's speaker."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    if overlap:
        return max(overlap, key=lambda speaker: overlap[speaker])
    middle = (start + end) / 2
    nearest = min(turns, key=lambda t: max(t.start - middle, middle - t.end, 0.0))
    return nearest.speaker


def assign_speakers(segments: list[Segment], turns: list[Turn]) -> list[Segment]:
    """Put one speaker on every word and segment; split segments where the speaker changes.

    Turns may overlap (two voices at once): a word takes the speaker whose turns cover most of
    it, so every word still has exactly one speaker.

    Args:
        segments: transcript segments (words optional).
        turns: speaker turns.

    Returns:
        New segments, renumbered from 0. A segment with words is split at each change of its
        words' speaker; one without words takes the speaker it overlaps most.
    """
    labelled: list[Segment] = []
    for segment in segments:
        if not segment.words:
            speaker = _speaker_at(segment.start, segment.end, turns)
            labelled.append(replace(segment, speaker=speaker))
            continue
        words = [replace(w, speaker=_speaker_at(w.start, w.end, turns)) for w in segment.words]
        group: list[Word] = [words[0]]
        for word in words[1:]:
            if word.speaker != group[-1].speaker:
                labelled.append(_segment_of(segment, group))
                group = []
            group.append(word)
        labelled.append(_segment_of(segment, group))
    for index, segment in enumerate(labelled):
        segment.id = index
    return labelled


def _segment_of(parent: Segment, words: list[Word]) -> Segment:
    if len(words) == len(parent.words):
        return replace(parent, words=words, speaker=words[0].speaker)
    text = "".join(word.word for word in words)
    return Segment(parent.id, words[0].start, words[-1].end, text, words, words[0].speaker)
