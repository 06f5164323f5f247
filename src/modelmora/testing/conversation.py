"""Synthetic multi-speaker conversations for tests and examples, spoken by espeak-ng.

:func:`make_conversation` speaks each turn with its speaker's voice (espeak-ng voices differ in
timbre, pitch and speed, so a speaker encoder can tell them apart), trims each utterance's
silence, joins them with pauses, and writes three files next to each other:

- ``<stem>.wav``  16 kHz mono 16-bit PCM;
- ``<stem>.rttm`` the reference diarization (one line per utterance, speakers ``spk0``...);
- ``<stem>.txt``  the reference text, one ``spkN: text`` line per turn.

Needs the ``espeak-ng`` program (``apt-get install espeak-ng``) plus numpy, scipy and soundfile.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelmora.speech.transcript import Turn

__all__ = [
    "DEFAULT_VOICES",
    "MEETING_SCRIPT",
    "THREE_SPEAKER_SCRIPT",
    "Conversation",
    "Voice",
    "diarization_error_rate",
    "espeak_available",
    "make_conversation",
]

logger = logging.getLogger(__name__)

_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: a name (``en-us+m3``), words per minute and pitch (0-99)."""

    name: str
    speed: int = 160
    pitch: int = 50


#: Voices chosen to be far apart: a low slow American man, a high British woman, a fast man.
DEFAULT_VOICES: tuple[Voice, ...] = (
    Voice("en-us+m3", speed=150, pitch=30),
    Voice("en-gb+f2", speed=170, pitch=75),
    Voice("en+m7", speed=185, pitch=50),
)

#: A short planning meeting between two people, with decisions and action items.
MEETING_SCRIPT: tuple[tuple[int, str], ...] = (
    (0, "Good morning. Let's review the launch plan for the new mobile app."),
    (1, "Sure. The beta test finished on Friday, and users reported two login bugs."),
    (0, "Can we fix both bugs before the release?"),
    (1, "Yes. Maria will fix the login bugs by Wednesday."),
    (0, "Good. Then we decide to launch on the first of June."),
    (1, "Agreed. I will write the release notes and send them to marketing."),
    (0, "Please also book the meeting room for the launch review next Monday."),
    (1, "Will do. Anything else?"),
    (0, "No, that's all. Thanks everyone."),
)

#: A three-person stand-up: every speaker talks at least twice.
THREE_SPEAKER_SCRIPT: tuple[tuple[int, str], ...] = (
    (0, "Let's start the stand-up. Yesterday I finished the database migration."),
    (1, "I reviewed the payment service and found a memory leak in the worker pool."),
    (2, "I spent the day on customer support tickets about slow exports."),
    (0, "Can the leak explain the slow exports?"),
    (1, "Possibly. I will profile the workers this afternoon."),
    (2, "Then I will wait for your results before I answer the customers."),
    (0, "Good. Let's meet again tomorrow at ten."),
)


@dataclass
class Conversation:
    """The files :func:`make_conversation` wrote and what they contain.

    Attributes:
        wav: the audio (16 kHz mono 16-bit PCM).
        rttm: the reference diarization.
        txt: the reference text, one ``speaker: text`` line per turn.
        turns: the reference turns (seconds), speakers named ``spk0``, ``spk1``...
        texts: the text of each turn, in order.
        duration: the audio's duration in seconds.
    """

    wav: Path
    rttm: Path
    txt: Path
    turns: list[Turn] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def num_speakers(self) -> int:
        """How many distinct speakers talk."""
        return len({turn.speaker for turn in self.turns})

    @property
    def text(self) -> str:
        """All the reference text, joined by spaces."""
        return " ".join(self.texts)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on the PATH."""
    return shutil.which("espeak-ng") is not None


def _speak(text: str, voice: Voice, workdir: Path) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return float32 samples at 16 kHz, silence trimmed."""
    import soundfile
    from scipy.signal import resample_poly

    out = workdir / "utterance.wav"
    command = ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch)]
    subprocess.run([*command, "-w", str(out), text], check=True, capture_output=True, timeout=60)
    samples, rate = soundfile.read(out, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != _SAMPLE_RATE:
        divisor = np.gcd(rate, _SAMPLE_RATE)
        mono = resample_poly(mono, _SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return _trim(mono)


def _trim(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Cut leading and trailing silence so the reference turn matches the voiced part."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if loud.size == 0:
        return samples[:0]
    return samples[loud[0] : loud[-1] + 1]


def make_conversation(
    path: str | os.PathLike[str],
    turns: Sequence[tuple[int, str]] = MEETING_SCRIPT,
    voices: Sequence[Voice | str] = DEFAULT_VOICES,
    *,
    pause: float = 0.6,
    lead: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
) -> Conversation:
    """Synthesize a conversation and write its audio, reference RTTM and reference text.

    Args:
        path: the wav file to write; the ``.rttm`` and ``.txt`` go next to it.
        turns: ``(speaker index, text)`` pairs, in speaking order.
        voices: one voice per speaker index (a :class:`Voice` or an espeak-ng voice name).
        pause: silence between turns, seconds.
        lead: silence at the start and end, seconds.
        noise: standard deviation of white noise added everywhere (0 for none).
        seed: seed of the noise.

    Returns:
        The files and the reference turns.

    Raises:
        ValueError: no turns, or a turn names a speaker without a voice.
        FileNotFoundError: espeak-ng is not installed.
    """
    import soundfile

    if not turns:
        raise ValueError("a conversation needs at least one turn")
    resolved = [Voice(v) if isinstance(v, str) else v for v in voices]
    for speaker, _ in turns:
        if not 0 <= speaker < len(resolved):
            raise ValueError(f"turn speaker {speaker} has no voice: give {speaker + 1} voices")
    if not espeak_available():
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = Path(path)
    wav.parent.mkdir(parents=True, exist_ok=True)
    pieces: list[np.ndarray] = [np.zeros(int(lead * _SAMPLE_RATE), dtype=np.float32)]
    reference: list[Turn] = []
    offset = lead
    gap = np.zeros(int(pause * _SAMPLE_RATE), dtype=np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        for index, (speaker, text) in enumerate(turns):
            utterance = _speak(text, resolved[speaker], Path(workdir))
            if index:
                pieces.append(gap)
                offset += pause
            pieces.append(utterance)
            length = utterance.size / _SAMPLE_RATE
            reference.append(Turn(round(offset, 3), round(offset + length, 3), f"spk{speaker}"))
            offset += length
    pieces.append(np.zeros(int(lead * _SAMPLE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    if noise > 0:
        audio = audio + np.random.default_rng(seed).normal(0.0, noise, audio.size)
    audio = np.clip(audio / max(1.0, float(np.abs(audio).max()) / 0.9), -1.0, 1.0)
    soundfile.write(wav, audio.astype(np.float32), _SAMPLE_RATE, subtype="PCM_16")
    conversation = Conversation(
        wav=wav,
        rttm=wav.with_suffix(".rttm"),
        txt=wav.with_suffix(".txt"),
        turns=reference,
        texts=[text for _, text in turns],
        duration=audio.size / _SAMPLE_RATE,
    )
    _write_references(conversation, turns)
    logger.info("wrote %s (%.1f s, %d turns)", wav, conversation.duration, len(turns))
    return conversation


def _write_references(conversation: Conversation, turns: Sequence[tuple[int, str]]) -> None:
    stem = conversation.wav.stem
    rttm_lines = [
        f"SPEAKER {stem} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in conversation.turns
    ]
    conversation.rttm.write_text("".join(rttm_lines), encoding="utf-8")
    text_lines = [f"spk{speaker}: {text}\n" for speaker, text in turns]
    conversation.txt.write_text("".join(text_lines), encoding="utf-8")


def diarization_error_rate(
    reference: Sequence[Turn],
    hypothesis: Sequence[Turn],
    collar: float = 0.0,
    skip_overlap: bool = False,
) -> float:
    """The diarization error rate of ``hypothesis`` against ``reference`` (pyannote.metrics).

    Speaker names need not match: the metric maps them optimally. The scored region is the union
    of both annotations' extents.

    Args:
        reference: the true turns (e.g. from :func:`modelmora.speech.transcript.read_rttm`).
        hypothesis: the turns to score.
        collar: seconds around each reference boundary not scored (0: the strict form).
        skip_overlap: do not score regions where reference speakers overlap.

    Returns:
        The DER, a fraction (0.15 is 15%).
    """
    import warnings

    from pyannote.core import Annotation
    from pyannote.core import Segment as Span
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: Sequence[Turn]) -> Annotation:
        result = Annotation()
        for index, turn in enumerate(turns):
            result[Span(turn.start, turn.end), index] = turn.speaker
        return result

    metric = DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "uem was approximated": intended here
        return float(metric(annotation(reference), annotation(hypothesis)))
