"""Cutting a long recording into windows at pauses, so each window is transcribed on its own.

faster-whisper computes the log-mel features of all the audio it is given at once, and the
short-time Fourier transform behind them peaks at about 0.7 MB per second of audio (2.5 GB for
an hour) on top of the samples. Handing Whisper one window of a few minutes at a time bounds that
to the window's share, whatever the recording's length (see docs/models.md, Long recordings).

:func:`speech_windows` places each cut in the longest pause of the window's second half, as
Silero VAD (faster-whisper's own voice-activity detector) finds pauses, or at the quietest
tenth of a second there when nobody pauses, so no word is split across two windows. Windows
are found one at a time, as the caller asks for them: the detector only ever sees the half
window it searches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from modelmora.speech.audio import SAMPLE_RATE

__all__ = ["MIN_WINDOW_S", "speech_windows"]

#: The shortest window allowed (a cut is searched in the second half of each window).
MIN_WINDOW_S = 10.0
# Pauses worth cutting in: 0.2 s of non-speech or more, with 30 ms of the speech kept each side.
_PAUSE_MS = 200
_PAD_MS = 30
_QUIET_FRAME_S = 0.1  # the frame the loudness fallback compares


def speech_windows(
    samples: np.ndarray, window_s: float, sr: int = SAMPLE_RATE
) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, end)`` sample ranges covering ``samples``, cut at pauses.

    Args:
        samples: mono audio.
        window_s: the longest window, seconds; each is at least half of it, but the last.
        sr: the sample rate of ``samples``.

    Yields:
        ``(start, end)`` with ``end - start <= window_s * sr``; the first starts at 0, each
        next one where the previous ended, the last ends at ``samples.size``. Audio no longer
        than ``window_s`` is one window.

    Raises:
        ValueError: ``window_s`` is below :data:`MIN_WINDOW_S`.
    """
    if window_s < MIN_WINDOW_S:
        raise ValueError(f"window_s must be at least {MIN_WINDOW_S:g} s, got {window_s:g}")
    size = int(window_s * sr)
    start = 0
    while samples.size - start > size:
        low = start + size // 2
        end = low + _cut(samples[low : start + size], sr)
        yield start, end
        start = end
    yield start, samples.size


def _cut(region: np.ndarray, sr: int) -> int:
    """Where to cut ``region``: the middle of its longest pause, else its quietest moment."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(min_silence_duration_ms=_PAUSE_MS, speech_pad_ms=_PAD_MS)
    speech = get_speech_timestamps(region, options, sampling_rate=sr)
    if not speech:
        return region.size  # silence throughout: the longest window
    bounds = [0] + [b for s in speech for b in (s["start"], s["end"])] + [region.size]
    pauses = [(b - a, a) for a, b in zip(bounds[::2], bounds[1::2], strict=True) if b > a]
    if pauses:
        length, at = max(pauses)  # the longest; of equal ones, the latest
        return at + length // 2
    frame = int(_QUIET_FRAME_S * sr)
    count = region.size // frame
    if count == 0:
        return region.size
    loudness = np.square(region[: count * frame].reshape(count, frame)).mean(axis=1)
    return int(np.argmin(loudness)) * frame + frame // 2
