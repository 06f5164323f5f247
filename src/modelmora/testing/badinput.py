"""A corpus of bad audio inputs, for testing that a batch survives whatever users hand it.

:func:`make_bad_inputs` writes 40-odd files (and a few things that are not files) into a
folder: empty and one-byte files, WAV headers cut short or lying about their length, zero
channels, zero sample rates, random bytes under audio extensions, other formats' magic bytes
followed by garbage, text and images named ``.wav``, 8 kHz and 48 kHz stereo audio, a long
silence, clipped noise, NaN samples, a folder, a symlink loop, a dangling symlink, a link to
``/dev/zero``, a FIFO (which blocks whoever opens it), and a file without read permission.

Each entry says what a correct engine does with it (:attr:`BadInput.expect`):

- ``error``: a one-line per-file error (the file is not usable audio);
- ``transcript``: a transcript (the audio is odd but fine: the engine must cope);
- ``either``: both are acceptable (e.g. noise, where a model may or may not hear words).

Never acceptable, whatever the entry: a crash of the batch, or a hang.

Only numpy and the standard library are used, so the corpus can be made anywhere::

    from modelmora.testing.badinput import make_bad_inputs
    corpus = make_bad_inputs("bad-inputs", speech="examples/conversation.wav")
"""

from __future__ import annotations

import logging
import os
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["EXPECTATIONS", "BadInput", "make_bad_inputs"]

logger = logging.getLogger(__name__)

#: What an entry may expect of the engine.
EXPECTATIONS = ("error", "transcript", "either")

_RATE = 16000


@dataclass(frozen=True)
class BadInput:
    """One entry of the corpus.

    Attributes:
        name: a short unique identifier (also the file name's stem).
        path: where it was made (a file, or a folder, link or FIFO).
        category: the input class it stands for (``empty``, ``header``, ``random``...).
        expect: ``error``, ``transcript`` or ``either`` (see the module docstring).
        description: what it is, in a few words.
    """

    name: str
    path: Path
    category: str
    expect: str
    description: str


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _wav_bytes(
    data: bytes,
    *,
    channels: int = 1,
    rate: int = _RATE,
    bits: int = 16,
    fmt_tag: int = 1,
    data_size: int | None = None,
    riff_size: int | None = None,
    extra_chunks: bytes = b"",
) -> bytes:
    """A RIFF/WAVE file whose header fields can each be made to lie."""
    block = max(channels, 0) * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    size = len(data) if data_size is None else data_size
    body = (
        b"WAVE"
        + extra_chunks
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", size & 0xFFFFFFFF)
        + data
    )
    total = len(body) if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", total & 0xFFFFFFFF) + body


def _write_wav(path: Path, samples: np.ndarray, rate: int = _RATE, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(_pcm16(samples))


def _speech_samples(speech: Path | None, rng: np.random.Generator) -> np.ndarray:
    """Mono 16 kHz samples of the given speech WAV, or a 2 s gliding tone without one."""
    if speech is not None:
        with wave.open(str(speech), "rb") as handle:
            if handle.getsampwidth() == 2 and handle.getframerate() == _RATE:
                raw = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")
                mono = raw.reshape(-1, handle.getnchannels()).mean(axis=1)
                return (mono / 32768.0).astype(np.float32)
        logger.warning("%s is not 16 kHz 16-bit PCM: using a tone instead", speech)
    t = np.arange(2 * _RATE) / _RATE
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * t) * t)).astype(np.float32)


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    n = round(samples.size * rate / _RATE)
    return np.interp(np.linspace(0, samples.size - 1, n), np.arange(samples.size), samples)


def _header_cases(speech: np.ndarray) -> list[tuple[str, str, str, bytes, str]]:
    """(name, category, expect, bytes, description) of files with broken WAV headers."""
    pcm = _pcm16(speech)
    whole = _wav_bytes(pcm)
    one_second = pcm[: 2 * _RATE]
    return [
        ("one_byte", "empty", "error", b"R", "a single byte"),
        ("riff_magic_only", "header", "error", b"RIFF", "the four RIFF magic bytes"),
        ("header_cut_20", "header", "error", whole[:20], "a WAV header cut at 20 bytes"),
        ("header_only", "header", "error", whole[:44], "a full header, no samples"),
        ("truncated_half", "header", "error", whole[: len(whole) // 2], "half a WAV file"),
        (
            "huge_declared_length",
            "header",
            "error",
            _wav_bytes(one_second, data_size=0x7FFFFFF0),
            "1 s of samples under a header declaring 18 hours",
        ),
        (
            "riff_size_lies",
            "header",
            "transcript",
            _wav_bytes(pcm, riff_size=0x10),
            "a whole WAV whose RIFF size says 16 bytes",
        ),
        (
            "zero_channels",
            "header",
            "error",
            _wav_bytes(one_second, channels=0),
            "a WAV declaring 0 channels",
        ),
        (
            "zero_sample_rate",
            "header",
            "error",
            _wav_bytes(one_second, rate=0),
            "a WAV declaring 0 Hz",
        ),
        (
            "bits_per_sample_3",
            "header",
            "either",
            _wav_bytes(one_second, bits=3),
            "a WAV declaring 3-bit samples",
        ),
        (
            "unknown_codec_tag",
            "header",
            "either",
            _wav_bytes(one_second, fmt_tag=0x7777),
            "a WAV whose codec tag no decoder knows",
        ),
        (
            "streaming_size_zero",
            "header",
            "transcript",
            _wav_bytes(pcm, data_size=0),
            "a WAV with a streaming placeholder size (0)",
        ),
        (
            "unknown_chunks_first",
            "header",
            "transcript",
            _wav_bytes(pcm, extra_chunks=b"junk" + struct.pack("<I", 6) + b"\0" * 6),
            "a valid WAV with an unknown chunk before fmt",
        ),
    ]


def _byte_cases(rng: np.random.Generator) -> list[tuple[str, str, str, bytes, str]]:
    """Files whose bytes are not audio at all, under audio names."""
    noise = rng.bytes(8192)
    return [
        ("random_wav", "random", "error", noise, "8 KB of random bytes named .wav"),
        ("random_mp3", "random", "either", rng.bytes(8192), "random bytes named .mp3"),
        ("random_flac", "random", "error", rng.bytes(8192), "random bytes named .flac"),
        ("random_ogg", "random", "error", rng.bytes(8192), "random bytes named .ogg"),
        ("random_noext", "random", "either", rng.bytes(4096), "random bytes, no extension"),
        ("zeros_wav", "random", "error", bytes(8192), "8 KB of zero bytes"),
        ("text_wav", "extension", "error", b"not audio at all\n" * 64, "text named .wav"),
        ("json_mp3", "extension", "error", b'{"audio": false}\n' * 32, "JSON named .mp3"),
        (
            "png_wav",
            "extension",
            "error",
            b"\x89PNG\r\n\x1a\n" + rng.bytes(2048),
            "PNG magic bytes and garbage, named .wav",
        ),
        (
            "id3_garbage_mp3",
            "magic",
            "either",
            b"ID3\x04\x00\x00\x00\x00\x00\x10" + rng.bytes(4096),
            "an ID3 tag then garbage",
        ),
        ("flac_magic_garbage", "magic", "error", b"fLaC" + rng.bytes(4096), "FLAC magic, garbage"),
        ("ogg_magic_garbage", "magic", "error", b"OggS" + rng.bytes(4096), "Ogg magic, garbage"),
        (
            "mp4_magic_garbage",
            "magic",
            "error",
            b"\x00\x00\x00\x18ftypmp42" + rng.bytes(4096),
            "MP4 ftyp box then garbage",
        ),
    ]


_EXTENSIONS = {
    "random_wav": ".wav",
    "random_mp3": ".mp3",
    "random_flac": ".flac",
    "random_ogg": ".ogg",
    "random_noext": "",
    "json_mp3": ".mp3",
    "id3_garbage_mp3": ".mp3",
    "flac_magic_garbage": ".flac",
    "ogg_magic_garbage": ".ogg",
    "mp4_magic_garbage": ".m4a",
}


def _signal_cases(
    folder: Path, speech: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, str, str, str]]:
    """Odd but decodable audio; writes the files, returns (file, category, expect, text)."""
    stereo48 = _resample(speech, 48000)
    _write_wav(folder / "rate_8khz.wav", _resample(speech, 8000), rate=8000)
    _write_wav(
        folder / "stereo_48khz.wav", np.stack([stereo48, stereo48], axis=1).reshape(-1), 48000, 2
    )
    _write_wav(folder / "long_silence.wav", np.zeros(120 * 8000), rate=8000)
    _write_wav(folder / "clipping_noise.wav", np.clip(rng.normal(0, 3.0, _RATE), -1, 1))
    _write_wav(folder / "full_scale_dc.wav", np.ones(_RATE))
    _write_wav(folder / "ten_samples.wav", speech[_RATE // 2 : _RATE // 2 + 10])
    with_nan = np.where(np.arange(_RATE) % 7 == 0, np.nan, 0.1).astype("<f4")
    (folder / "nan_float.wav").write_bytes(
        _wav_bytes(with_nan.tobytes(), bits=32, fmt_tag=3)  # IEEE float samples
    )
    (folder / "wav_named.mp3").write_bytes(_wav_bytes(_pcm16(speech)))
    (folder / "wav_named.txt").write_bytes(_wav_bytes(_pcm16(speech)))
    _write_wav(folder / "spaces and ünïcode.wav", speech)
    return [
        ("rate_8khz.wav", "sample rate", "transcript", "speech at 8 kHz"),
        ("stereo_48khz.wav", "sample rate", "transcript", "speech, 48 kHz stereo"),
        ("long_silence.wav", "silence", "transcript", "two minutes of digital silence"),
        ("clipping_noise.wav", "noise", "either", "1 s of clipped white noise"),
        ("full_scale_dc.wav", "noise", "either", "1 s stuck at full scale"),
        ("ten_samples.wav", "tiny", "either", "ten samples of audio"),
        ("nan_float.wav", "noise", "either", "float WAV full of NaN"),
        ("wav_named.mp3", "extension", "transcript", "a WAV named .mp3"),
        ("wav_named.txt", "extension", "transcript", "a WAV named .txt"),
        ("spaces and ünïcode.wav", "name", "transcript", "speech under an odd file name"),
    ]


def _special_files(folder: Path, speech: np.ndarray) -> list[BadInput]:
    """Things that are not regular files, or cannot be read."""
    made = []
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    made.append(BadInput("empty", empty, "empty", "error", "0 bytes"))
    directory = folder / "a_directory.wav"
    directory.mkdir()
    made.append(BadInput("directory", directory, "not a file", "error", "a folder named .wav"))
    loop_a, loop_b = folder / "loop_a.wav", folder / "loop_b.wav"
    loop_a.symlink_to(loop_b.name)
    loop_b.symlink_to(loop_a.name)
    made.append(BadInput("symlink_loop", loop_a, "not a file", "error", "a symlink loop"))
    dangling = folder / "dangling.wav"
    dangling.symlink_to("does-not-exist.wav")
    made.append(BadInput("dangling_symlink", dangling, "not a file", "error", "a broken link"))
    device = folder / "dev_zero.wav"
    device.symlink_to("/dev/zero")
    made.append(BadInput("device", device, "not a file", "error", "a link to /dev/zero"))
    fifo = folder / "fifo.wav"
    os.mkfifo(fifo)
    made.append(BadInput("fifo", fifo, "not a file", "error", "a FIFO (opening it blocks)"))
    missing = folder / "missing.wav"
    made.append(BadInput("missing", missing, "not a file", "error", "a path that does not exist"))
    locked = folder / "unreadable.wav"
    _write_wav(locked, speech)
    locked.chmod(0)
    # root reads through permissions: there the file is simply speech.
    expect = "transcript" if os.geteuid() == 0 else "error"
    made.append(BadInput("unreadable", locked, "permissions", expect, "mode 000"))
    return made


def make_bad_inputs(
    folder: str | os.PathLike[str], *, speech: str | os.PathLike[str] | None = None, seed: int = 0
) -> list[BadInput]:
    """Write the corpus of bad inputs into ``folder`` (created; must not hold a corpus yet).

    Args:
        folder: where to write the files.
        speech: a 16 kHz 16-bit PCM WAV of speech, used for the variants that should still
            transcribe (other rates, wrong extensions, lying headers); a tone without one.
        seed: the seed of the random bytes (the corpus is the same for the same seed).

    Returns:
        The entries, each with what a correct engine does with it.

    Raises:
        FileExistsError: the folder already holds a corpus.
        OSError: the folder cannot be written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "empty.wav").exists():
        raise FileExistsError(f"{out} already holds a corpus of bad inputs")
    rng = np.random.default_rng(seed)
    samples = _speech_samples(Path(speech) if speech is not None else None, rng)
    corpus = _special_files(out, samples)
    for name, category, expect, data, description in _header_cases(samples) + _byte_cases(rng):
        path = out / f"{name}{_EXTENSIONS.get(name, '.wav')}"
        path.write_bytes(data)
        corpus.append(BadInput(name, path, category, expect, description))
    for file, category, expect, description in _signal_cases(out, samples, rng):
        name = file.replace(".", "_").replace(" ", "_")
        corpus.append(BadInput(name, out / file, category, expect, description))
    logger.info("wrote %d bad inputs into %s", len(corpus), out)
    return corpus
