"""Shared fixtures."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# --- speech: audio files (generated once per session, cached in a temp folder) ---------------


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1) -> Path:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for generated audio."""
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def tone_wav(audio_dir: Path) -> Path:
    """2 s of a 440 Hz tone, stereo 44.1 kHz (so loading must downmix and resample)."""
    t = np.arange(2 * 44100) / 44100
    tone = 0.3 * np.sin(2 * math.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    return _write_wav(audio_dir / "tone.wav", stereo, rate=44100, channels=2)


@pytest.fixture(scope="session")
def bad_audio(audio_dir: Path, tone_wav: Path) -> dict[str, Path]:
    """Files that are not usable audio, by kind; plus ``silence`` (usable, but no speech)."""
    folder = audio_dir / "bad"
    folder.mkdir()
    (folder / "a_directory.wav").mkdir()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.mp3").write_text("this is not audio at all\n" * 50)
    (folder / "random.flac").write_bytes(np.random.default_rng(0).bytes(20000))
    whole = tone_wav.read_bytes()
    (folder / "truncated.wav").write_bytes(whole[: len(whole) // 3])
    (folder / "header_only.wav").write_bytes(whole[:44])
    (folder / "cut_header.wav").write_bytes(whole[:20])
    _write_wav(folder / "silence.wav", np.zeros(3 * 16000))
    return {
        "missing": folder / "missing.wav",
        "directory": folder / "a_directory.wav",
        "empty": folder / "empty.wav",
        "text": folder / "text.mp3",
        "random": folder / "random.flac",
        "truncated": folder / "truncated.wav",
        "header_only": folder / "header_only.wav",
        "cut_header": folder / "cut_header.wav",
        "silence": folder / "silence.wav",
    }


@pytest.fixture(scope="session")
def meeting() -> object:
    """The bundled two-speaker example (examples/conversation.*) as a Conversation."""
    from modelmora.speech.transcript import read_rttm
    from modelmora.testing.conversation import Conversation

    wav = REPO / "examples" / "conversation.wav"
    lines = (REPO / "examples" / "conversation.txt").read_text().splitlines()
    return Conversation(
        wav=wav,
        rttm=wav.with_suffix(".rttm"),
        txt=wav.with_suffix(".txt"),
        turns=read_rttm(wav.with_suffix(".rttm")),
        texts=[line.partition(": ")[2] for line in lines],
        duration=wav.stat().st_size / 32000,
    )


@pytest.fixture(scope="session")
def standup(audio_dir: Path) -> object:
    """A generated three-speaker conversation (needs espeak-ng)."""
    from modelmora.testing.conversation import (
        THREE_SPEAKER_SCRIPT,
        espeak_available,
        make_conversation,
    )

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return make_conversation(audio_dir / "standup.wav", THREE_SPEAKER_SCRIPT)


@pytest.fixture(scope="session")
def dialogue(audio_dir: Path) -> object:
    """A short generated two-speaker exchange (four turns, ~15 s; needs espeak-ng)."""
    from modelmora.testing.conversation import MEETING_SCRIPT, espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return make_conversation(audio_dir / "dialogue.wav", MEETING_SCRIPT[:4])


@pytest.fixture(scope="session")
def short_dialogue(audio_dir: Path) -> object:
    """Two generated turns by two voices (~6 s; needs espeak-ng), for batches run often."""
    from modelmora.testing.conversation import MEETING_SCRIPT, espeak_available, make_conversation

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    return make_conversation(audio_dir / "short_dialogue.wav", MEETING_SCRIPT[2:4])
