"""The stage runners and the engine's bookkeeping, with toy models in real workers (fast).

The transcribe stage's model is swapped for a toy one through :mod:`modelmora.testing.faults`
(this process only), so these tests need no weights and take a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from rich.console import Console

from modelmora.models import ModelSpec
from modelmora.speech.speakers import SpeakerLibrary
from modelmora.speech.transcript import Transcript
from modelmora.testing.faults import canned_stages, crash_on, stage_model
from modelmora.workflow import engine
from modelmora.workflow.engine import RUNNERS, transcribe_files
from modelmora.workflow.inprocess import align
from modelmora.workflow.options import BACKENDS, TranscribeOptions
from modelmora.workflow.speakers import identify


def _files(folder: Path, *names: str) -> list[Path]:
    """Non-empty input files (the toy model never decodes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"RIFF not really audio")
    return paths


def _workers() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "modelmora.runtime._child" in " ".join(p.cmdline())
    ]


def test_every_backend_has_a_runner_by_its_name() -> None:
    assert set(RUNNERS) == set(BACKENDS)
    assert all(runner.name == name for name, runner in RUNNERS.items())


def test_a_model_that_cannot_load_fills_the_progress_bar(tmp_path: Path) -> None:
    """Each file the stage could not run counts on its bar, as the Ray runner counts it."""
    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    paths = _files(tmp_path / "in", "a.wav", "b.wav", "c.wav")
    with stage_model("transcribe", lambda spec: ModelSpec("toy", {"load_error": "no weights"})):
        report = transcribe_files(paths, TranscribeOptions(), tmp_path / "out", console=console)
    assert [f.error for f in report.files] == [
        "transcribe: the transcribe model did not load: worker transcribe: the model failed "
        "to load: RuntimeError: no weights"
    ] * 3
    (stage,) = report.stages
    assert (stage.processed, stage.failed, stage.restarts) == (0, 3, 0)
    bars = re.findall(r"transcribe\s.*?(\d+)/(\d+)", buffer.getvalue())
    assert bars and bars[-1] == ("3", "3"), buffer.getvalue()


def test_the_sampler_stops_when_the_batch_raises(tmp_path: Path) -> None:
    """An exception out of the batch leaves no thread sampling memory behind."""

    class Broken(Console):
        def print(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("console gone")

    before = {t.ident for t in threading.enumerate() if t.name == "modelmora-sampler"}
    with pytest.raises(RuntimeError, match="console gone"):
        # a missing file: its error line goes to the console, which raises
        transcribe_files([tmp_path / "nope.wav"], TranscribeOptions(), tmp_path, console=Broken())
    left = [
        t for t in threading.enumerate() if t.name == "modelmora-sampler" and t.ident not in before
    ]
    assert not left


def test_ctrl_c_mid_file_stops_the_batch_at_once(tmp_path: Path) -> None:
    """SIGINT while a worker is busy on a file: the worker is killed, not waited for.

    A graceful stop would wait for the file in flight (here it never ends) until the stop
    timeout; the batch must instead be out within a second or two whatever the machine's load.
    """
    paths = _files(tmp_path / "in", "a_hang.wav", "b.wav")
    interrupted: dict[str, float] = {}

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _workers():
            time.sleep(0.05)
        time.sleep(1.0)  # the toy model loads in a fraction of that: the file is in flight
        interrupted["at"] = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)

    # A shell's background job inherits SIGINT ignored; Ctrl-C in a terminal is the case here.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stage_model("transcribe", lambda spec: ModelSpec("toy")), crash_on("*hang*", "hang"):
            threading.Thread(target=interrupt, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                transcribe_files(paths, TranscribeOptions(), tmp_path / "out")
    finally:
        signal.signal(signal.SIGINT, previous)
    stop_s = time.monotonic() - interrupted["at"]
    assert stop_s < 3.0, f"the batch took {stop_s:.1f} s to stop after SIGINT"
    assert not _workers()


# A diarized batch in a fresh interpreter (this one imported numpy long ago), on canned outputs.
_DIARIZED_BATCH = """
import json, sys
from pathlib import Path
from modelmora.testing.faults import canned_stages
from modelmora.workflow.engine import transcribe_files
from modelmora.workflow.options import TranscribeOptions

canned, library, out = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], sys.argv[3]
paths = [Path(out).parent / name for name in canned["transcribe"]]
with canned_stages(canned):
    report = transcribe_files(paths, TranscribeOptions(diarize=True, library=library), out)
found = {"exit_code": report.exit_code, "report": report.to_dict(), "numpy": "numpy" in sys.modules}
print(json.dumps(found))
"""

MODEL = "campplus_cn_en_common@test"


def _voice(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=192)
    return vector / np.linalg.norm(vector)


def _heard(vector: np.ndarray, seed: int) -> list[float]:
    """The same voice in another recording: a little noise, re-normalised, as JSON floats."""
    other = vector + 0.03 * np.random.default_rng(100 + seed).normal(size=vector.size)
    return [round(float(x), 6) for x in other / np.linalg.norm(other)]


def _canned(voices: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, dict[str, Any]]:
    """Whisper's and the diarizer's outputs for files where ``voices[file]`` speak in turn
    (2.5 s each: long enough to be named and linked)."""
    transcribed, diarized = {}, {}
    for n, (name, speakers) in enumerate(voices.items()):
        segments = [
            {"start": 3.0 * i, "end": 3.0 * i + 2.5, "text": f" Line {i}.",
             "words": [{"word": f" Line {i}.", "start": 3.0 * i, "end": 3.0 * i + 2.5,
                        "score": 0.9}]}
            for i in range(len(speakers))
        ]  # fmt: skip
        transcribed[name] = {"segments": segments, "language": "en", "duration": 9.0}
        labelled = [
            {**seg, "speaker": label, "words": [{**w, "speaker": label} for w in seg["words"]]}
            for seg, (label, _) in zip(segments, speakers, strict=True)
        ]
        diarized[name] = {
            "segments": labelled,
            "speakers": [label for label, _ in speakers],
            "turns": [[s["start"], s["end"], s["speaker"]] for s in labelled],
            "speaker_embeddings": {
                label: _heard(v, 10 * n + i) for i, (label, v) in enumerate(speakers)
            },
            "embedding_model": MODEL,
        }
    return {"transcribe": transcribed, "diarize": diarized}


def test_a_diarized_batch_links_and_names_speakers_without_numpy_here(tmp_path: Path) -> None:
    """Linking and naming run in a worker: the orchestrator never imports numpy (whose memory
    would stay for the rest of the batch), and the outputs are what the in-process
    ``identify`` makes of the same input."""
    maria, omar, stranger = _voice(1), _voice(2), _voice(3)
    library = SpeakerLibrary(tmp_path / "library")
    library.add("Maria", MODEL, [maria.tolist()], [8.0])
    library.add("Noor", "another-model@1", [_voice(4).tolist()], [8.0])  # logged: no voiceprint
    canned = _canned(
        {
            "a.wav": [("SPEAKER_00", omar), ("SPEAKER_01", maria), ("SPEAKER_02", stranger)],
            "b.wav": [("SPEAKER_00", stranger), ("SPEAKER_01", _voice(5))],
        }
    )
    (tmp_path / "canned.json").write_text(json.dumps(canned))
    _files(tmp_path, *canned["transcribe"])
    out = tmp_path / "out"
    script = [_DIARIZED_BATCH, str(tmp_path / "canned.json"), str(library.folder), str(out)]
    argv = [sys.executable, "-c", *script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["exit_code"] == 0, result["report"]
    assert result["numpy"] is False
    diarize = next(s for s in result["report"]["stages"] if s["name"] == "diarize")
    assert diarize["identify_s"] > 0 and diarize["released"]

    merged = [  # what the engine holds once both stages are done: aligned, then diarized
        {**align(Transcript.from_dict(canned["transcribe"][name])).to_dict(), **diarized}
        for name, diarized in canned["diarize"].items()
    ]
    expected = identify([Transcript.from_dict(t) for t in merged], library)
    written = [json.loads((out / f"{stem}.json").read_text()) for stem in ("a", "b")]
    assert written == [t.to_dict() for t in expected.transcripts]
    assert set(written[0]["speaker_identities"]) == {"SPEAKER_00", "Maria", "SPEAKER_01"}
    assert set(written[1]["speaker_identities"]) == {"SPEAKER_01", "SPEAKER_02"}
    assert written[1]["speaker_identities"]["SPEAKER_01"]["files"] == 2  # the stranger, linked
    (log,) = out.glob("modelmora-*.log")
    assert log.read_text().count("'Noor' has no voiceprint of") == 1  # the worker's, logged here


def test_a_speakers_worker_that_dies_leaves_the_per_file_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch goes on without linking: every file is written, with its own labels."""
    same, other = _voice(1), _voice(2)
    canned = _canned(
        {"a.wav": [("SPEAKER_00", other), ("SPEAKER_01", same)], "b.wav": [("SPEAKER_00", same)]}
    )
    spec = engine.ModelSpec

    def dying(kind: str, params: dict[str, Any] | None = None) -> ModelSpec:
        return spec("toy", {"load_exit": 3}) if kind == "speakers" else spec(kind, params or {})

    monkeypatch.setattr(engine, "ModelSpec", dying)
    buffer = StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    paths = _files(tmp_path, *canned["transcribe"])
    with canned_stages(canned):
        report = transcribe_files(
            paths,
            TranscribeOptions(diarize=True, formats="json"),
            tmp_path / "out",
            console=console,
        )
    assert report.exit_code == 0
    assert [f.speakers for f in report.files] == [["SPEAKER_00", "SPEAKER_01"], ["SPEAKER_00"]]
    written = json.loads((tmp_path / "out" / "b.json").read_text())
    assert "speaker_identities" not in written
    assert "warning: speakers not linked or named: worker speakers" in buffer.getvalue()
