"""Transcripts built without a model: from a generated conversation's reference, or long
synthetic meetings (for the output formats' tests and size/speed figures)."""

from __future__ import annotations

import random
import re

from modelmora.speech.transcript import Segment, Transcript, Word
from modelmora.testing.conversation import Conversation

__all__ = ["synthetic_meeting", "transcript_of"]

_VOCABULARY = [
    "the",
    "we",
    "launch",
    "plan",
    "team",
    "budget",
    "release",
    "next",
    "week",
    "customer",
    "review",
    "design",
    "meeting",
    "should",
    "could",
    "will",
    "data",
    "model",
    "server",
    "test",
    "bug",
    "fix",
    "report",
    "numbers",
    "quarter",
    "sales",
    "users",
    "agreed",
    "decision",
    "action",
    "item",
    "deadline",
    "Monday",
    "Friday",
    "Maria",
    "Peter",
    "notes",
    "marketing",
]


def _spread(text: str, start: float, end: float, speaker: str | None) -> list[Word]:
    """The words of ``text`` with times spread over ``[start, end]`` by character count."""
    pieces = list(re.finditer(r"\S+", text))
    scale = (end - start) / max(len(text), 1)
    return [
        Word(
            round(start + m.start() * scale, 3),
            round(start + m.end() * scale, 3),
            " " + m.group(),
            1.0,
            speaker,
        )
        for m in pieces
    ]


def transcript_of(conversation: Conversation, *, labels: str = "SPEAKER_{:02d}") -> Transcript:
    """The transcript a perfect recogniser would give for a generated conversation.

    One segment per reference turn, speakers relabelled ``spk0`` -> ``SPEAKER_00``, word
    times spread over the turn by character count (so each word's start is exact by
    construction, which is what the viewer's seek and highlight tests need).
    """
    segments = []
    for index, (turn, text) in enumerate(zip(conversation.turns, conversation.texts, strict=True)):
        speaker = labels.format(int(turn.speaker.removeprefix("spk")))
        words = _spread(text, turn.start, turn.end, speaker)
        segments.append(Segment(index, turn.start, turn.end, " " + text, words, speaker))
    return Transcript(segments, "en", conversation.duration)


def synthetic_meeting(
    hours: float = 2.0, speakers: int = 4, *, words_per_minute: int = 150, seed: int = 0
) -> Transcript:
    """A long diarized meeting of random words: turns of 1-6 sentences, pauses, scores.

    Args:
        hours: its length.
        speakers: how many people talk.
        words_per_minute: the speaking rate (150 is a typical meeting).
        seed: the random seed (same seed, same transcript).
    """
    rng = random.Random(seed)
    step = 60.0 / words_per_minute
    segments: list[Segment] = []
    t, speaker = 0.5, 0
    while t < hours * 3600:
        speaker = (speaker + rng.randint(1, speakers - 1)) % speakers if speakers > 1 else 0
        label = f"SPEAKER_{speaker:02d}"
        for _ in range(rng.randint(1, 6)):
            words = []
            for n in range(rng.randint(4, 24)):
                text = rng.choice(_VOCABULARY)
                text = text.capitalize() if n == 0 else text
                score = rng.random() ** 0.2  # mostly confident, a few doubtful
                words.append(Word(round(t, 3), round(t + step * 0.8, 3), " " + text, score, label))
                t += step
            words[-1].word += "."
            text = "".join(w.word for w in words)
            segments.append(
                Segment(len(segments), words[0].start, words[-1].end, text, words, label)
            )
            t += 0.3
        t += rng.uniform(0.2, 1.5)
    return Transcript(segments, "en", t)
