"""``response_format=diarized_json``: a real Whisper and a real diarizer, each in its worker
under the scheduler, answer the bundled two-speaker conversation in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmora.bench.server import ServerProcess
from modelmora.serving.http.diarized import diarized_json

REPO = Path(__file__).resolve().parents[1]
WAV = REPO / "examples" / "conversation.wav"


def test_segments_get_letters_and_known_names_are_kept() -> None:
    labelled = {
        "segments": [
            {"start": 0, "end": 1, "text": " Hi.", "speaker": "SPEAKER_01"},
            {"start": 1, "end": 2, "text": " Yes.", "speaker": "Ada"},
            {"start": 2, "end": 3, "text": " Ok.", "speaker": "SPEAKER_00"},
            {"start": 3, "end": 4, "text": " So.", "speaker": "SPEAKER_01"},
        ]
    }
    body = diarized_json({"duration": 4.2}, labelled, [{"name": "Ada", "audio": "data:,"}])
    assert [s["speaker"] for s in body["segments"]] == ["A", "Ada", "B", "A"]
    assert body["text"] == "Hi. Yes. Ok. So." and body["usage"]["seconds"] == 5
    assert body["segments"][0] == {
        "type": "transcript.text.segment", "id": "seg_0", "start": 0.0, "end": 1.0,
        "text": "Hi.", "speaker": "A",
    }  # fmt: skip


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 17 s of the conversation: four turns, two speakers."""
    import soundfile as sf

    samples, rate = sf.read(WAV, dtype="float32")
    path = tmp_path_factory.mktemp("diarized") / "two-speakers.wav"
    sf.write(path, samples[: 17 * rate], rate)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [
        {"name": "whisper-1", "adapter": "whisper", "device": "cpu", "diarizer": "speakers"},
        {"name": "speakers", "adapter": "diarizer", "device": "cpu", "params": {"num_speakers": 2}},
        {"name": "plain", "adapter": "whisper", "device": "cpu"},
    ]
    folder = tmp_path_factory.mktemp("diarized-server")
    proc = ServerProcess(folder, {"models": models}, env={"OMP_NUM_THREADS": "2"}).start()
    yield proc
    proc.stop()


@pytest.mark.slow
def test_diarized_json_through_the_openai_client(server: ServerProcess, wav: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with wav.open("rb") as audio:
        reply = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="diarized_json"
        )
    data = reply.model_dump() if hasattr(reply, "model_dump") else dict(reply)
    segments = data["segments"]
    assert segments and {s["speaker"] for s in segments} == {"A", "B"}
    assert all(s["type"] == "transcript.text.segment" and s["end"] >= s["start"] for s in segments)
    assert data["duration"] > 10 and data["text"]
    assert segments[0]["speaker"] == "A" and segments[0]["start"] < 2.0


@pytest.mark.slow
def test_diarized_json_refusals(server: ServerProcess, wav: Path) -> None:
    with server.client() as http:

        def post(model: str, **form: Any) -> Any:
            data = {"model": model, "response_format": "diarized_json", **form}
            files = {"file": ("a.wav", wav.read_bytes(), "audio/wav")}
            return http.post("/v1/audio/transcriptions", data=data, files=files)

        no_diarizer = post("plain")
        assert no_diarizer.status_code == 400 and "has no diarizer" in no_diarizer.text
        unpaired = post("whisper-1", **{"known_speaker_names[]": ["Ada", "Bob"]})
        assert unpaired.status_code == 400 and "one reference per name" in unpaired.text
        bad_ref = {"known_speaker_names[]": ["Ada"], "known_speaker_references[]": ["x.wav"]}
        refused = post("whisper-1", **bad_ref)
        assert refused.status_code == 400 and "audio data URL" in refused.text
