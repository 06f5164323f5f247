"""Loading audio files for the speech models, with clear errors for files that are not audio.

:func:`load_audio` decodes any file FFmpeg reads (through PyAV, as faster-whisper does) into a
mono float32 array at 16 kHz. Before decoding it checks the things that otherwise surface as
obscure FFmpeg errors or hangs, and raises :class:`AudioError` with a one-line reason:

==============================  =====================================================
input                           result
==============================  =====================================================
missing path                    ``AudioError: no such file``
a folder, FIFO, device          ``AudioError: not a regular file`` (never opened: a FIFO
                                would block forever)
unreadable (permissions)        ``AudioError: permission denied``
0 bytes                         ``AudioError: empty file``
bytes FFmpeg cannot parse       ``AudioError: not an audio file``
no audio stream (an image)      ``AudioError: no audio stream``
header promises more than the   ``AudioError: truncated`` (``allow_truncated=True`` keeps
file holds                      the part that decodes)
nothing decodes                 ``AudioError: no audio samples``
decoding takes too long         ``AudioError: decoding timed out``
pure silence                    **not an error**: the samples are returned; transcription
                                then yields an empty transcript (no segments). Whether a
                                file holds speech is the speech model's call, not the
                                loader's, and "no one spoke" is a valid result.
==============================  =====================================================

Nothing heavy is imported at module level (the batch orchestrator checks files with
:func:`check_audio_file` and must not import numpy); numpy, PyAV and faster-whisper load on first
use.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelmora.errors import ModelMoraError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SAMPLE_RATE", "AudioError", "audio_duration", "check_audio_file", "load_audio"]

logger = logging.getLogger(__name__)

#: The sample rate Whisper and the speaker encoder work at.
SAMPLE_RATE = 16000

# A decode may run this long before it is abandoned: a floor plus a generous per-MB allowance
# (FFmpeg decodes compressed audio at hundreds of times real time, so this only trips on a stuck
# demuxer, never on a long recording).
_TIMEOUT_FLOOR_S = 60.0
_TIMEOUT_PER_MB_S = 5.0
# A decode shorter than this fraction of the duration the header declares counts as truncated.
_TRUNCATION_RATIO = 0.98
_TRUNCATION_SLACK_S = 0.1
# FFmpeg's decode: frames are resampled in groups of this many samples (as faster-whisper does);
# the array is first sized for this long when the header declares no duration.
_GROUP_SAMPLES = 500_000
_GUESS_S = 600.0


class AudioError(ModelMoraError):
    """An audio file cannot be used; the message says why in one line, naming the file."""


def check_audio_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a non-empty, readable regular file (without decoding it).

    Args:
        path: the audio file.

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        AudioError: the file is missing, not a regular file, unreadable or empty.
    """
    file = Path(path)
    try:
        info = file.stat()
    except FileNotFoundError:
        raise AudioError(f"{file}: no such file") from None
    except PermissionError:
        raise AudioError(f"{file}: permission denied") from None
    except OSError as exc:
        raise AudioError(f"{file}: cannot stat ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{file}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioError(f"{file}: not a regular file")
    if info.st_size == 0:
        raise AudioError(f"{file}: empty file (0 bytes)")
    try:
        with file.open("rb") as handle:
            handle.read(1)
    except PermissionError:
        raise AudioError(f"{file}: permission denied") from None
    except OSError as exc:
        raise AudioError(f"{file}: cannot read ({exc.strerror or exc})") from None
    return file


def _declared_duration(container: Any) -> float | None:
    """The duration the container's header declares, in seconds (None if it declares none)."""
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000.0  # AV_TIME_BASE
    return None


def _wav_declared_duration(file: Path) -> float | None:
    """For a RIFF/WAVE file, the duration its ``data`` chunk header declares.

    FFmpeg clamps a WAV's duration to the bytes present, so a truncated WAV only shows up by
    reading the header ourselves. Streaming placeholders (size 0 or 0xFFFFFFFF) declare nothing.
    """
    with file.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                fmt = handle.read(size + (size & 1))
                byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else 0
            elif kind == b"data":
                if byte_rate <= 0 or size in (0, 0xFFFFFFFF):
                    return None
                return size / byte_rate
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)


def _probe(file: Path) -> float | None:
    """Open the file with PyAV; return its declared duration. Raises AudioError if unusable."""
    import av

    try:
        with av.open(str(file), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(f"{file}: no audio stream (is it a video or image without sound?)")
            return _declared_duration(container)
    except av.error.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioError(f"{file}: not an audio file ({reason})") from None


def _run_bounded(func: Any, timeout: float, what: str) -> Any:
    """Run ``func()`` in a daemon thread; give up after ``timeout`` seconds.

    A stuck FFmpeg call cannot be interrupted from Python, so the thread is abandoned (it is a
    daemon and dies with the process); the caller gets an error instead of a hang.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="modelmora-decode", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AudioError(f"{what}: decoding timed out after {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _read_direct(file: Path, sr: int) -> Any:
    """Mono WAV/FLAC already at ``sr`` Hz, read straight into one float32 array; else None.

    FFmpeg's path (:func:`_decode_ffmpeg`) resamples and converts every sample; this reads
    the file once into its final array: the same values for 16-bit PCM (divided by 32768),
    full precision for float files. Anything else, or any error, goes to FFmpeg.
    """
    if file.suffix.lower() not in (".wav", ".flac"):
        return None
    try:
        import soundfile

        info = soundfile.info(str(file))
        if info.samplerate != sr or info.channels != 1 or info.frames <= 0:
            return None
        samples, _ = soundfile.read(str(file), dtype="float32", always_2d=False)
    except Exception:  # not for this reader: FFmpeg decides
        return None
    return samples if samples.ndim == 1 and samples.size else None


def _decode_ffmpeg(file: Path, sr: int, declared: float | None) -> Any:
    """Any format FFmpeg reads, decoded to mono 16-bit at ``sr`` Hz, into one float32 array.

    The same samples as faster-whisper's ``decode_audio`` (the same resampling of the same
    500 000-sample groups, then divided by 32768), but each group is converted as it comes
    into an array sized from the header's ``declared`` duration (grown if the header says too
    little), so the peak is about the array itself, not 2.8 times it.
    """
    import gc

    import av
    import numpy as np

    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sr)
    fifo = av.audio.fifo.AudioFifo()
    out = np.empty(int((declared or _GUESS_S) * sr * 1.01) + sr, dtype=np.float32)
    filled = 0

    def store(frames: list[Any]) -> None:
        nonlocal out, filled
        for frame in frames:
            pcm = frame.to_ndarray().reshape(-1)
            if filled + pcm.size > out.size:  # the header said too little: grow
                grown = np.empty(max(2 * out.size, filled + pcm.size), dtype=np.float32)
                grown[:filled] = out[:filled]
                out = grown
            out[filled : filled + pcm.size] = pcm
            out[filled : filled + pcm.size] /= 32768.0
            filled += pcm.size

    with av.open(str(file), mode="r", metadata_errors="ignore") as container:
        packets = container.decode(audio=0)
        while True:
            try:
                frame = next(packets)
            except StopIteration:
                break
            except av.error.InvalidDataError:  # a damaged frame: skipped, as faster-whisper does
                continue
            frame.pts = None
            fifo.write(frame)
            if fifo.samples >= _GROUP_SAMPLES:
                store(resampler.resample(fifo.read()))
        if fifo.samples > 0:
            store(resampler.resample(fifo.read()))
        store(resampler.resample(None))  # flush
    del resampler, fifo
    gc.collect()  # PyAV's resampler objects are only freed by a collection (faster-whisper #390)
    out.resize(filled, refcheck=False)
    return out


def load_audio(
    path: str | os.PathLike[str],
    sr: int = SAMPLE_RATE,
    *,
    allow_truncated: bool = False,
    timeout: float | None = None,
) -> np.ndarray:
    """Decode an audio file to a mono float32 array in [-1, 1] at ``sr`` Hz.

    Any format FFmpeg reads works (wav, flac, mp3, m4a, ogg, the audio of a video...).
    Pure silence is returned as is (it is not an error; see the module docstring).

    Args:
        path: the audio file.
        sr: the sample rate to resample to.
        allow_truncated: keep what decodes from a file shorter than its header declares
            (a recording cut off by a crash) instead of raising.
        timeout: seconds the decode may take; None scales with the file size
            (60 s plus 5 s per MB).

    Returns:
        The samples, shape ``(n,)``, dtype float32, ``n > 0``.

    Raises:
        ValueError: ``sr`` is not positive.
        AudioError: the file is missing, unreadable, empty, not audio, truncated, holds no
            samples, or takes longer than ``timeout`` to decode.
    """
    import numpy as np

    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    file = check_audio_file(path)
    if timeout is None:
        size_mb = file.stat().st_size / 1e6
        timeout = _TIMEOUT_FLOOR_S + _TIMEOUT_PER_MB_S * size_mb

    def decode() -> tuple[np.ndarray, float | None]:
        declared = _probe(file)
        header = _wav_declared_duration(file)
        samples = _read_direct(file, sr)
        if samples is None:
            try:
                samples = _decode_ffmpeg(file, sr, declared)
            except Exception as exc:
                raise AudioError(f"{file}: cannot decode ({exc})") from None
        return np.asarray(samples, dtype=np.float32), header if header is not None else declared

    samples, declared = _run_bounded(decode, timeout, str(file))
    if samples.size == 0:
        raise AudioError(f"{file}: no audio samples could be decoded (not audio, or corrupt)")
    decoded = samples.size / sr
    if declared is not None and decoded < declared * _TRUNCATION_RATIO - _TRUNCATION_SLACK_S:
        message = (
            f"{file}: truncated (header declares {declared:.2f} s, only {decoded:.2f} s decode)"
        )
        if not allow_truncated:
            raise AudioError(message)
        logger.warning("%s; keeping the part that decodes", message)
    logger.debug("loaded %s: %.2f s at %d Hz", file, decoded, sr)
    return samples


def audio_duration(path: str | os.PathLike[str], *, timeout: float = 30.0) -> float:
    """The duration of an audio file in seconds, from its header (decoding only if it has none).

    Args:
        path: the audio file.
        timeout: seconds the probe may take.

    Returns:
        The duration in seconds.

    Raises:
        AudioError: the file is not usable audio (see :func:`load_audio`).
    """
    file = check_audio_file(path)
    declared = _run_bounded(lambda: _probe(file), timeout, str(file))
    if declared is not None and declared > 0:
        return float(declared)
    return load_audio(file).size / SAMPLE_RATE
