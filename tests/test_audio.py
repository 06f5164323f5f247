"""Audio loading: decoding, resampling, and a clear error for every kind of bad file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from modelmora.errors import ModelMoraError
from modelmora.speech.audio import (
    SAMPLE_RATE,
    AudioError,
    audio_duration,
    check_audio_file,
    load_audio,
)


def test_load_downmixes_and_resamples(tone_wav: Path) -> None:
    samples = load_audio(tone_wav)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - 2 * SAMPLE_RATE) <= 160
    assert 0.25 < np.abs(samples).max() < 0.35
    assert load_audio(tone_wav, sr=8000).size == pytest.approx(16000, abs=80)
    assert audio_duration(tone_wav) == pytest.approx(2.0, abs=0.01)


def test_load_flac(tmp_path: Path) -> None:
    import soundfile

    path = tmp_path / "noise.flac"
    soundfile.write(path, np.random.default_rng(1).uniform(-0.5, 0.5, 24000), 24000)
    assert load_audio(path).size == pytest.approx(16000, abs=160)
    assert audio_duration(path) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_mono_wav_at_the_rate_reads_as_ffmpeg_decodes_it(tmp_path: Path, subtype: str) -> None:
    import soundfile
    from faster_whisper import decode_audio

    path = tmp_path / "mono.wav"
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    soundfile.write(path, tone, SAMPLE_RATE, subtype=subtype)
    direct = load_audio(path)  # read straight into its array, not through FFmpeg
    ffmpeg = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    assert direct.dtype == np.float32 and direct.shape == ffmpeg.shape
    assert np.abs(direct - ffmpeg).max() <= 1 / 32768  # FFmpeg's path rounds to 16 bits


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "empty file"),
        ("text", "not an audio file"),
        ("random", "(not an audio file|no audio samples)"),
        ("cut_header", "not an audio file"),
        ("truncated", "truncated"),
        ("header_only", "(truncated|no audio samples)"),
    ],
)
def test_bad_files_raise_one_line_errors(
    bad_audio: dict[str, Path], kind: str, reason: str
) -> None:
    path = bad_audio[kind]
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(info.value, ModelMoraError)
    if kind not in ("truncated", "header_only"):
        with pytest.raises(AudioError, match=reason):
            audio_duration(path)


def test_truncated_file_can_be_salvaged(bad_audio: dict[str, Path]) -> None:
    samples = load_audio(bad_audio["truncated"], allow_truncated=True)
    assert 0.3 * SAMPLE_RATE < samples.size < 1.0 * SAMPLE_RATE


def test_silence_is_not_an_error(bad_audio: dict[str, Path]) -> None:
    samples = load_audio(bad_audio["silence"])
    assert samples.size == 3 * SAMPLE_RATE and not samples.any()


def test_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(fifo)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tone_wav: Path, tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    path.write_bytes(tone_wav.read_bytes())
    path.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        check_audio_file(path)


def test_decoding_is_bounded(tone_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    monkeypatch.setattr(av, "open", lambda *a, **k: time.sleep(30))  # FFmpeg stuck on a file
    started = time.monotonic()
    with pytest.raises(AudioError, match="timed out"):
        load_audio(tone_wav, timeout=0.5)
    assert time.monotonic() - started < 5


def test_bad_sample_rate(tone_wav: Path) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        load_audio(tone_wav, sr=0)
