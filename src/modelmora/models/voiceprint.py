"""Voiceprints: the diarizer's speaker embedding model, used on its own (workers only).

:class:`SpeakerEmbedder` is the small interface naming and linking need from a speaker model:
the speech of some time ranges of a recording → one L2-normalised embedding, plus the model's
name and version (recorded as ``name@version``) so embeddings of different models are never
compared. The default diarizer's CAM++ :class:`modelmora.models.diarization.SpeakerEmbedder`
is one.

:class:`VoiceprintAdapter` is the worker adapter that enrollment runs (``modelmora speakers
add``, ``POST /api/v1/speakers``)::

    {"audio": path}  ──►  {"embedding": [...], "speech_s": 7.3, "model": "<name>@<version>"}

:func:`speaker_centroids` gives each diarized speaker's embedding, which the diarizer's result
carries so speakers can be named and linked after clustering, for engines that do not make
their own (``resemblyzer``, ``pyannote``, engines of your own).

:class:`SpeakersAdapter` (kind ``speakers``) loads no model: it links and names the speakers of
a whole batch from those embeddings (:func:`modelmora.speech.identify.identify`), in the short
worker the batch engine starts at the end of its diarize stage, so the orchestrator never
imports numpy::

    {"transcripts": [...], "link": True, "speakers": True, "library": folder | None}
        ──►  {"transcripts": [...], "people": 3, "named": 1, "model": "...", "warnings": [...],
              "log": [[logger, level, message], ...]}
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from modelmora.models import Adapter, Capabilities, check_device
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.identify import identify
from modelmora.speech.speakers import SpeakerLibrary
from modelmora.speech.transcript import Transcript, Turn

__all__ = [
    "CENTROID_MAX_S",
    "SpeakerEmbedder",
    "SpeakersAdapter",
    "VoiceprintAdapter",
    "model_key",
    "name_result",
    "speaker_centroids",
    "speech_only",
    "speech_seconds",
]

logger = logging.getLogger(__name__)

_FRAME_S = 0.01
#: At most this much of one speaker's speech is embedded for their centroid (seconds).
CENTROID_MAX_S = 90.0


class SpeakerEmbedder(Protocol):
    """A speaker embedding model: audio (+ time ranges) → one L2-normalised embedding."""

    name: str
    version: str

    def embed(self, audio: Any, ranges: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
        """The embedding of the speech in ``ranges`` (seconds) of ``audio``, or of all of it."""
        ...


def model_key(embedder: SpeakerEmbedder) -> str:
    """``name@version``: what voiceprints and transcripts record of the model."""
    return f"{embedder.name}@{embedder.version}"


def _cut(wav: np.ndarray, ranges: Sequence[tuple[float, float]] | None, limit: float) -> np.ndarray:
    """The samples of ``ranges`` (all of ``wav`` when None), at most ``limit`` seconds."""
    most = int(min(limit, wav.size / SAMPLE_RATE) * SAMPLE_RATE)
    if ranges is None:
        return wav[:most]
    pieces, total = [], 0
    for start, end in ranges:
        piece = wav[max(0, int(start * SAMPLE_RATE)) : max(0, int(end * SAMPLE_RATE))]
        piece = piece[: max(0, most - total)]
        pieces.append(piece)
        total += piece.size
    return np.concatenate(pieces) if pieces else wav[:0]


def speech_only(wav: np.ndarray) -> np.ndarray:
    """The speech of ``wav`` (16 kHz), silences cut (WebRTC VAD + energy gate, 10 ms frames)."""
    from modelmora.models.diarization.resemblyzer import speech_frames

    speech = speech_frames(wav.astype(np.float32))
    voiced = np.repeat(speech, int(SAMPLE_RATE * _FRAME_S))
    return wav[: voiced.size][voiced]


def speech_seconds(wav: np.ndarray) -> float:
    """Seconds of speech in ``wav`` (16 kHz), by :func:`speech_only`'s detection."""
    return speech_only(wav).size / SAMPLE_RATE


def speaker_centroids(
    embedder: SpeakerEmbedder, wav: np.ndarray, turns: Sequence[Turn]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each speaker's embedding, from the speech of their turns (at most 90 s of it).

    Returns:
        label → L2-normalised embedding (as a list), and label → seconds of talk.
    """
    ranges: dict[str, list[tuple[float, float]]] = {}
    for turn in turns:
        ranges.setdefault(turn.speaker, []).append((turn.start, turn.end))
    embeddings, talk = {}, {}
    for label, spans in ranges.items():
        speech = _cut(wav, spans, CENTROID_MAX_S)
        if speech.size < SAMPLE_RATE // 10:
            continue
        embeddings[label] = [round(float(x), 6) for x in embedder.embed(speech)]
        talk[label] = round(float(sum(end - start for start, end in spans)), 2)
    return embeddings, talk


def name_result(
    result: Mapping[str, Any], library: str | os.PathLike[str], model: str
) -> dict[str, Any]:
    """Name the speakers of one diarizer result from a speaker library (the server's use).

    Args:
        result: a diarizer output (``segments``, ``turns``, ``speaker_embeddings``...).
        library: the speaker library folder.
        model: the embedding model key.

    Returns:
        The result relabelled, with ``speaker_identities`` holding each naming's similarity.
    """
    transcript = Transcript.from_dict({"segments": [], **result})
    transcript.embedding_model = transcript.embedding_model or model
    # The batch's rules on one file: too short a speaker stays anonymous, the file's other
    # speakers and the library's other voices are the cohort of score normalisation.
    (named,) = identify([transcript], SpeakerLibrary(library), link=False).transcripts
    identities = named.speaker_identities
    data = named.to_dict()
    return {
        **result,
        **{k: data[k] for k in ("segments", "turns", "speaker_embeddings") if k in data},
        "speakers": named.speakers,
        "speaker_identities": identities,
    }


class VoiceprintAdapter(Adapter):
    """Enrollment: one clip in, its speaker embedding and seconds of speech out.

    The embedding model is the default diarizer's (CAM++), so enrolled voices compare with
    the speakers every diarizer engine's results carry.

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = check_device(device)
        self._embedder: Any = None

    def load(self) -> None:
        """Load the speaker embedding model."""
        from modelmora.models.diarization.embeddings import SpeakerEmbedder as CamPlusPlus

        self._embedder = CamPlusPlus(self.device)
        self._embedder.load()
        logger.info("loaded %s", model_key(self._embedder))

    def predict(self, batch: list[Any]) -> list[Any]:
        """Embed the speech of each clip (silences cut first).

        Args:
            batch: items ``{"audio": path or 16 kHz float32 array}``, optionally with
                ``"ranges": [[start, end], ...]`` (seconds): only that part of the audio.

        Returns:
            ``{"embedding": [...], "speech_s": float, "model": "name@version"}`` per item
            (``speech_s`` 0 and an empty embedding when the clip holds no speech).

        Raises:
            modelmora.speech.audio.AudioError: a clip is not usable audio.
        """
        if self._embedder is None:
            self.load()
        results = []
        for item in batch:
            audio = item["audio"] if isinstance(item, dict) else item
            wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
            ranges = item.get("ranges") if isinstance(item, dict) else None
            if ranges:
                wav = _cut(wav, [(float(a), float(b)) for a, b in ranges], float("inf"))
            speech = speech_only(wav)
            seconds = speech.size / SAMPLE_RATE
            speech = speech[: int(CENTROID_MAX_S * SAMPLE_RATE)]
            embedding = self._embedder.embed(speech) if speech.size >= SAMPLE_RATE // 10 else []
            results.append(
                {
                    "embedding": [round(float(x), 6) for x in embedding],
                    "speech_s": round(seconds, 2),
                    "model": model_key(self._embedder),
                }
            )
        return results

    def close(self) -> None:
        """Drop the model."""
        self._embedder = None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.name, record.levelno, record.getMessage()])


@contextlib.contextmanager
def _package_records() -> Iterator[list[list[Any]]]:
    """The package's log records of the block (``[logger name, level, message]``), kept for
    the parent to log as its own instead of going to this worker's stderr."""
    collect, package = _Collect(), logging.getLogger("modelmora")
    level, propagate = package.level, package.propagate
    package.setLevel(logging.DEBUG)  # the parent's loggers filter when they log them
    package.propagate = False
    package.addHandler(collect)
    try:
        yield collect.records
    finally:
        package.removeHandler(collect)
        package.setLevel(level)
        package.propagate = propagate


class SpeakersAdapter(Adapter):
    """Link and name a batch's speakers from the embeddings their transcripts carry (no model).

    The batch engine's worker for :func:`modelmora.speech.identify.identify`: the comparisons
    need numpy, and the orchestrator must not import it (its memory would stay there for the
    rest of the batch).
    """

    capabilities = Capabilities(
        task="speakers", frameworks=("numpy",), footprint_mb=80.0, vram_footprint_mb=0.0
    )

    def predict(self, batch: list[Any]) -> list[Any]:
        """Identify the speakers of each item's transcripts, together.

        Args:
            batch: items ``{"transcripts": [transcript dicts], "link": bool, "speakers":
                bool, "library": folder or None}``: link the same voice across the
                transcripts (``link``), name enrolled voices (``speakers``; ``library``
                None is the default library).

        Returns:
            Per item: ``{"transcripts": [dicts, same order], "people", "named", "model",
            "warnings", "log"}``: ``log`` holds the package's log records of the call
            (``[logger name, level, message]``), for the caller to log as its own.

        Raises:
            ValueError: an item without a ``transcripts`` list.
        """
        results = []
        for item in batch:
            if not isinstance(item, dict) or not isinstance(item.get("transcripts"), list):
                raise ValueError("each speakers input must be a dict with a 'transcripts' list")
            with _package_records() as records:
                library = SpeakerLibrary(item.get("library")) if item.get("speakers") else None
                transcripts = [Transcript.from_dict(t) for t in item["transcripts"]]
                found = identify(transcripts, library, bool(item.get("link", True)))
            results.append(
                {
                    "transcripts": [t.to_dict() for t in found.transcripts],
                    "people": found.people,
                    "named": found.named,
                    "model": found.model,
                    "warnings": list(found.warnings),
                    "log": records,
                }
            )
        return results
