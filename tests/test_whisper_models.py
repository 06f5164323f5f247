"""The packaged Whisper models, languages, prompts, batched decoding, in-file progress and the
windows long recordings are transcribed in."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmora.errors import ModelLoadError
from modelmora.models import packaged
from modelmora.models.packaged import PackagedWhisper, packaged_whisper
from modelmora.testing.conversation import espeak_available

REPO = Path(__file__).resolve().parent.parent


def _fake_packages(root: Path, blobs: list[bytes]) -> None:
    for i, blob in enumerate(blobs, 1):
        data = root / f"fake_whisper_part{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{i}").write_bytes(blob)
        if i == 1:
            (data / "config.json").write_text("{}")


def test_split_model_is_joined_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [b"a" * 5000, b"b" * 3000]
    _fake_packages(tmp_path / "site", blobs)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(blobs)
    entry = PackagedWhisper(
        "fake",
        ("fake_whisper_part1", "fake_whisper_part2"),
        "data",
        parts=("model.bin.part1", "model.bin.part2"),
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
    )
    monkeypatch.setitem(packaged.PACKAGED_WHISPER, "fake", entry)
    folder = packaged_whisper("fake", cache_dir=tmp_path / "cache")
    assert folder is not None and (folder / "model.bin").read_bytes() == whole
    assert (folder / "config.json").is_file()
    first = (folder / "model.bin").stat()
    assert packaged_whisper("fake", cache_dir=tmp_path / "cache") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == first.st_mtime_ns  # not joined again
    assert packaged_whisper("not-packaged") is None

    bad = PackagedWhisper(**{**entry.__dict__, "name": "bad", "sha256": "0" * 64})
    monkeypatch.setitem(packaged.PACKAGED_WHISPER, "bad", bad)
    with pytest.raises(ModelLoadError, match=r"SHA-256.*reinstall"):
        packaged_whisper("bad", cache_dir=tmp_path / "cache2")
    assert not list((tmp_path / "cache2").rglob("model.bin*"))  # nothing half-written left


def test_size_names_resolve_to_packaged_copies() -> None:
    from modelmora.models.whisper import DEFAULT_WHISPER_MODEL, resolve_whisper_model

    if packaged_whisper(DEFAULT_WHISPER_MODEL) is None:
        pytest.skip("the packaged Whisper base is not installed")
    folder = Path(resolve_whisper_model(None))
    assert (folder / "model.bin").stat().st_size == packaged.PACKAGED_WHISPER["base"].size
    assert Path(resolve_whisper_model("tiny.en")).is_dir()
    assert resolve_whisper_model("large-v3") == "large-v3"  # faster-whisper fetches it
    assert resolve_whisper_model(str(folder)) == str(folder)


# --- with the model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> Iterator[Any]:
    from modelmora.models.whisper import WhisperAdapter

    if packaged_whisper("base") is None:
        pytest.skip("the packaged Whisper base is not installed")
    adapter = WhisperAdapter("base", cpu_threads=1)  # no spinning threads on a busy machine
    adapter.load()
    yield adapter
    adapter.close()


def _speak(tmp_path: Path, name: str, voice: str, text: str) -> Path:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
    return wav


_SPEECH = {
    "de": "Guten Morgen. Wir besprechen heute den Plan für die neue Version der Anwendung.",
    # espeak-ng's French and Dutch are detected unsurely (p 0.35-0.39) by base: not used
    "it": "Buongiorno a tutti. Oggi parliamo del bilancio del prossimo anno e del progetto.",
    "es": "Buenos días. Hoy vamos a hablar del presupuesto para el próximo año.",
}


@pytest.mark.slow
def test_language_is_detected_per_file(base: Any, tmp_path: Path) -> None:
    for code, text in _SPEECH.items():
        (result,) = base.predict([{"audio": str(_speak(tmp_path, code, code, text))}])
        assert result["language"] == code, result
        assert 0.5 < result["language_probability"] <= 1.0
        assert result["segments"] and result["segments"][0]["words"]
    (given,) = base.predict([{"audio": str(tmp_path / "de.wav"), "language": "de"}])
    assert given["language"] == "de" and "language_probability" not in given


@pytest.mark.slow
def test_a_language_the_model_does_not_know_is_a_clear_error(base: Any, tmp_path: Path) -> None:
    from modelmora.models.whisper import WhisperAdapter

    with pytest.raises(ValueError, match="not one Whisper base knows"):
        base.predict([{"audio": str(_speak(tmp_path, "x", "en", "hello")), "language": "xx"}])
    english_only = WhisperAdapter("tiny.en", cpu_threads=1, language="de")
    with pytest.raises(ValueError, match="English only: use a multilingual model"):
        english_only.load()


@pytest.mark.slow
def test_a_rare_name_is_recognised_with_the_hint_only(base: Any, tmp_path: Path) -> None:
    wav = str(_speak(tmp_path, "name", "en-us", "The new project is called Zorvex."))
    (plain,) = base.predict([{"audio": wav}])
    (prompted,) = base.predict([{"audio": wav, "initial_prompt": "Project names: Zorvex."}])
    (hot,) = base.predict([{"audio": wav, "hotwords": "Zorvex"}])
    texts = [" ".join(s["text"] for s in r["segments"]) for r in (plain, prompted, hot)]
    assert "Zorvex" not in texts[0], texts
    assert "Zorvex" in texts[1] and "Zorvex" in texts[2], texts


@pytest.mark.slow
def test_batched_decoding_matches_sequential(base: Any, meeting: Any) -> None:
    import jiwer

    from modelmora.bench.quality import wer
    from modelmora.models.whisper import WhisperAdapter

    batched = WhisperAdapter("base", cpu_threads=1, batch_size=4)
    batched.load()
    try:
        fast = batched.transcribe(meeting.wav)
    finally:
        batched.close()
    slow = base.transcribe(meeting.wav)
    assert wer(meeting.text, fast.text) <= wer(meeting.text, slow.text) + 0.01
    assert jiwer.wer(slow.text.lower(), fast.text.lower()) < 0.2
    words = [w for s in fast.segments for w in s.words]
    assert len(words) > 50 and all(0 <= w.start <= w.end <= fast.duration + 0.5 for w in words)


@pytest.mark.slow
def test_progress_streams_inside_a_file(base: Any, meeting: Any) -> None:
    values = list(base.predict_stream({"audio": str(meeting.wav)}))
    *progress, transcript = values
    assert transcript["segments"] and len(progress) >= 3
    done = [p["progress_s"] for p in progress]
    assert done == sorted(done) and done[-1] <= progress[-1]["duration_s"]
    assert progress[-1]["duration_s"] == pytest.approx(meeting.duration, abs=0.1)


# --- long recordings: windows ----------------------------------------------------------------


def test_windows_are_cut_where_no_one_speaks(meeting: Any) -> None:
    from modelmora.speech.audio import SAMPLE_RATE, load_audio
    from modelmora.speech.windows import speech_windows

    samples = load_audio(meeting.wav)
    windows = list(speech_windows(samples, 12.0))
    assert len(windows) >= 3 and windows[0][0] == 0 and windows[-1][1] == samples.size
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert end == start  # contiguous: nothing lost, nothing twice
    assert all(6 * SAMPLE_RATE <= b - a <= 12 * SAMPLE_RATE for a, b in windows[:-1])
    cuts = [end / SAMPLE_RATE for _, end in windows[:-1]]
    inside = [(c, t) for c in cuts for t in meeting.turns if t.start < c < t.end]
    assert not inside, inside  # every cut between two turns (at 12 s; see the reference)
    assert list(speech_windows(samples, 60.0)) == [(0, samples.size)]
    with pytest.raises(ValueError, match="window_s must be at least 10 s"):
        list(speech_windows(samples, 5.0))


def test_a_window_is_prompted_with_the_user_prompt_then_the_text_before() -> None:
    from modelmora.models.whisper import WhisperAdapter

    class Tokenizer:
        def encode(self, text: str, add_special_tokens: bool) -> Any:
            return type("Encoding", (), {"ids": [-1] * len(text.split())})()

    adapter = WhisperAdapter("tiny.en")
    adapter._model = type("Model", (), {"max_length": 448, "hf_tokenizer": Tokenizer()})()
    carried = list(range(300))
    assert adapter._prompt(None, carried) == carried[-223:]  # faster-whisper's prompt length
    assert adapter._prompt("Names: Siobhan, Tomas.", carried) == [-1] * 3 + carried[-220:]
    assert adapter._prompt("word " * 400, carried)[-111:] == carried[-111:]  # half kept
    assert adapter._prompt(None, []) is None
    unconditioned = WhisperAdapter("tiny.en", condition_on_previous_text=False)
    unconditioned._model = adapter._model
    assert unconditioned._prompt("Names: Siobhan.", carried) is None  # as faster-whisper
    with pytest.raises(ValueError, match="window_s must be at least 10 s"):
        WhisperAdapter("tiny.en", window_s=1.0)


@pytest.fixture(scope="module")
def tiny_en() -> Iterator[Any]:
    from modelmora.models.whisper import WhisperAdapter

    if packaged_whisper("tiny.en") is None:
        pytest.skip("the packaged Whisper tiny.en is not installed")
    adapter = WhisperAdapter("tiny.en", cpu_threads=1)
    adapter.load()
    yield adapter
    adapter.close()


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4], ids=["sequential", "batched"])
def test_long_audio_is_transcribed_in_windows(tiny_en: Any, meeting: Any, batch_size: int) -> None:
    """A 35 s recording in 12 s windows: the segments are the file's, in order, on its clock."""
    from modelmora.bench.quality import wer
    from modelmora.models.whisper import WhisperAdapter

    windowed = WhisperAdapter("tiny.en", cpu_threads=1, batch_size=batch_size, window_s=12.0)
    windowed._model = tiny_en._model  # the same weights, loaded once
    if batch_size > 1:
        from faster_whisper import BatchedInferencePipeline

        windowed._batched = BatchedInferencePipeline(tiny_en._model)
    *progress, result = windowed.predict_stream({"audio": str(meeting.wav)})
    segments = result["segments"]
    done = [p["progress_s"] for p in progress]
    assert done == sorted(done) and done[-1] == pytest.approx(meeting.duration, abs=0.1)
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and starts[-1] > 25.0  # offset: the last window is at 25 s
    for segment in segments:
        words = segment["words"]
        assert words and segment["start"] <= words[0]["start"] <= words[-1]["end"]
        assert words[-1]["end"] <= segment["end"] + 0.01 <= meeting.duration + 0.5
    text = " ".join(s["text"] for s in segments)
    whole = tiny_en.transcribe(meeting.wav)  # one window: the path short files always took
    assert wer(meeting.text, text) <= wer(meeting.text, whole.text) + 0.1, (text, whole.text)
    assert result["language"] == "en"


@pytest.mark.slow
def test_progress_inside_a_file_reaches_the_progress_bar(meeting: Any, tmp_path: Path) -> None:
    """The transcribe stage's bar shows seconds done out of the file's, while the file runs."""
    import re
    from io import StringIO

    from rich.console import Console

    from modelmora.workflow.engine import transcribe_files
    from modelmora.workflow.options import TranscribeOptions

    if packaged_whisper("tiny.en") is None:
        pytest.skip("the packaged Whisper tiny.en is not installed")
    buffer = StringIO()
    console = Console(file=buffer, width=120, force_terminal=True)
    options = TranscribeOptions(model="tiny.en", formats="json", threads=1)
    report = transcribe_files([meeting.wav], options, tmp_path, console=console)
    assert not report.failed
    seen = [(int(d), int(t)) for d, t in re.findall(r"transcribe (\d+)/(\d+)s", buffer.getvalue())]
    assert seen and all(total == round(meeting.duration) for _, total in seen), seen
    assert any(0 < done < total for done, total in seen), seen  # inside the file, not after it


def test_prompt_and_batch_options_from_yaml_and_flags(tmp_path: Path) -> None:
    from modelmora.workflow.options import load_options

    config = tmp_path / "modelmora.yaml"
    config.write_text("initial_prompt: 'Attendees: Siobhan.'\nhotwords: Kestrel\nbatch_size: 4\n")
    options = load_options(config, hotwords="Zorvex")
    assert (options.initial_prompt, options.hotwords, options.batch_size) == (
        "Attendees: Siobhan.",
        "Zorvex",
        4,
    )
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        load_options(batch_size=0)
