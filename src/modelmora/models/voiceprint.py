"""Voiceprints: the diarizer's speaker embedding model, used on its own (workers only).

:class:`SpeakerEmbedder` is the small interface naming and linking need from a speaker model:
the speech of some time ranges of a recording → one L2-normalised embedding, plus the model's
key (``name@version``) so embeddings of different models are never compared.

:class:`VoiceprintAdapter` is the worker adapter that enrollment runs (``modelmora speakers
add``, ``POST /api/v1/speakers``)::

    {"audio": path}  ──►  {"embedding": [...], "speech_s": 7.3, "model": "resemblyzer@0.1.4"}

:func:`speaker_centroids` gives each diarized speaker's embedding, which the diarizer's result
carries so speakers can be named and linked after clustering.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import Adapter, check_device, resolve_device
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.transcript import Turn

__all__ = [
    "ResemblyzerEmbedder",
    "SpeakerEmbedder",
    "VoiceprintAdapter",
    "name_result",
    "speaker_centroids",
    "speech_seconds",
]

logger = logging.getLogger(__name__)

_FRAME_S = 0.01
#: At most this much of one speaker's speech is embedded for their centroid (seconds).
CENTROID_MAX_S = 90.0


class SpeakerEmbedder(Protocol):
    """A speaker embedding model: audio (+ time ranges) → one L2-normalised embedding."""

    model: str

    def embed(
        self, wav: np.ndarray, ranges: Sequence[tuple[float, float]] | None = None
    ) -> np.ndarray:
        """The embedding of the speech in ``ranges`` (seconds) of ``wav`` (16 kHz), or of all."""
        ...


def _cut(wav: np.ndarray, ranges: Sequence[tuple[float, float]] | None, limit: float) -> np.ndarray:
    if ranges is None:
        return wav[: int(min(limit, wav.size / SAMPLE_RATE) * SAMPLE_RATE)]
    pieces, total = [], 0
    most = int(min(limit, wav.size / SAMPLE_RATE) * SAMPLE_RATE)
    for start, end in ranges:
        piece = wav[max(0, int(start * SAMPLE_RATE)) : max(0, int(end * SAMPLE_RATE))]
        piece = piece[: max(0, most - total)]
        pieces.append(piece)
        total += piece.size
    return np.concatenate(pieces) if pieces else wav[:0]


class ResemblyzerEmbedder:
    """Resemblyzer's GE2E d-vectors (256-d) of the speech in some ranges of a recording.

    Args:
        encoder: a loaded ``resemblyzer.VoiceEncoder`` (None: load one on ``device``).
        device: torch device when loading.
    """

    def __init__(self, encoder: Any = None, device: str = "cpu") -> None:
        if encoder is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", UserWarning)
                    from resemblyzer import VoiceEncoder
            except ImportError as exc:
                raise ModelLoadError(
                    f"cannot import resemblyzer ({exc}): pip install resemblyzer 'setuptools<81'"
                ) from exc
            encoder = VoiceEncoder(device=resolve_device(device), verbose=False)
        self.encoder = encoder
        self.model = f"resemblyzer@{metadata.version('resemblyzer')}"

    def embed(
        self, wav: np.ndarray, ranges: Sequence[tuple[float, float]] | None = None
    ) -> np.ndarray:
        """See :class:`SpeakerEmbedder`; silence inside the ranges is cut first."""
        from resemblyzer.audio import normalize_volume

        from modelmora.models.diarizer import speech_frames

        audio = _cut(wav.astype(np.float32), ranges, CENTROID_MAX_S)
        speech = speech_frames(audio)
        frame = int(SAMPLE_RATE * _FRAME_S)
        voiced = np.repeat(speech, frame)
        kept = audio[: voiced.size][voiced] if voiced.any() else audio
        kept = normalize_volume(kept, -30, increase_only=True)
        if kept.size < SAMPLE_RATE // 2:  # Resemblyzer needs a partial of 1.6 s at best
            kept = np.pad(kept, (0, SAMPLE_RATE // 2 - kept.size))
        embedding = np.asarray(self.encoder.embed_utterance(kept), dtype=np.float64)
        return embedding / (np.linalg.norm(embedding) + 1e-12)


def speech_seconds(wav: np.ndarray) -> float:
    """Seconds of speech the diarizer's speech detection finds in ``wav`` (16 kHz)."""
    from modelmora.models.diarizer import speech_frames

    return float(speech_frames(wav.astype(np.float32)).sum()) * _FRAME_S


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
        embeddings[label] = [round(float(x), 6) for x in embedder.embed(wav, spans)]
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
    from modelmora.speech.speakers import SpeakerLibrary, match_speakers, thresholds_for
    from modelmora.speech.transcript import Transcript

    transcript = Transcript.from_dict({"segments": [], **result})
    enrolled = SpeakerLibrary(library).voiceprints(model)
    matches = match_speakers(transcript.speaker_embeddings, enrolled, thresholds_for(model))
    mapping = {label: m.name for label, m in matches.items() if m.name}
    identities = {mapping.get(label, label): match.to_dict() for label, match in matches.items()}
    named = transcript.relabel(mapping)
    named.speaker_identities = identities
    data = named.to_dict()
    return {
        **result,
        **{k: data[k] for k in ("segments", "turns", "speaker_embeddings") if k in data},
        "speakers": named.speakers,
        "speaker_identities": identities,
    }


class VoiceprintAdapter(Adapter):
    """Enrollment: one clip in, its speaker embedding and seconds of speech out.

    Args:
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = check_device(device)
        self._embedder: ResemblyzerEmbedder | None = None

    def load(self) -> None:
        """Load the speaker embedding model."""
        self._embedder = ResemblyzerEmbedder(device=self.device)
        logger.info("loaded %s", self._embedder.model)

    def predict(self, batch: list[Any]) -> list[Any]:
        """Embed each clip.

        Args:
            batch: items ``{"audio": path or 16 kHz float32 array}``, optionally with
                ``"ranges": [[start, end], ...]`` (seconds): only that part of the audio.

        Returns:
            ``{"embedding": [...], "speech_s": float, "model": "name@version"}`` per item.

        Raises:
            modelmora.speech.audio.AudioError: a clip is not usable audio.
        """
        if self._embedder is None:
            self.load()
        assert self._embedder is not None
        results = []
        for item in batch:
            audio = item["audio"] if isinstance(item, dict) else item
            wav = audio.astype(np.float32) if isinstance(audio, np.ndarray) else load_audio(audio)
            ranges = item.get("ranges") if isinstance(item, dict) else None
            if ranges:
                wav = _cut(wav, [(float(a), float(b)) for a, b in ranges], float("inf"))
            speech = speech_seconds(wav)
            embedding = self._embedder.embed(wav) if speech > 0 else np.zeros(1)
            results.append(
                {
                    "embedding": [round(float(x), 6) for x in embedding],
                    "speech_s": round(speech, 2),
                    "model": self._embedder.model,
                }
            )
        return results

    def close(self) -> None:
        """Drop the model."""
        self._embedder = None
