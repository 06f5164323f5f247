"""The in-process speech API with real models: tiny.en Whisper, Resemblyzer, the bundled GGUF.

Models are cached by :mod:`modelmora.workflow.inprocess` for the whole module, so each loads once.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelmora.models.llm import _pack
from modelmora.speech.audio import AudioError
from modelmora.speech.formats import write_outputs
from modelmora.speech.transcript import Segment, Transcript, Turn, Word, read_rttm
from modelmora.testing.conversation import diarization_error_rate
from modelmora.workflow import inprocess as speech


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


@pytest.fixture(scope="module", autouse=True)
def _release_models() -> Iterator[None]:
    yield
    speech.clear_models()


@pytest.fixture(scope="module")
def meeting_transcript(meeting: Any) -> Transcript:
    return speech.transcribe(meeting.wav, cpu_threads=2)


# --- align: pure -------------------------------------------------------------------------------


def test_align_makes_segments_follow_their_words() -> None:
    transcript = Transcript(
        [
            Segment(0, 0.0, 2.0, " a b", [Word(0.3, 0.8, " a"), Word(0.7, 0.6, " b")]),
            Segment(1, 1.5, 9.0, " c", [Word(0.5, 12.0, " c")]),
            Segment(2, 8.0, 11.0, " (no words)"),
        ],
        "en",
        10.0,
    )
    aligned = speech.align(transcript)
    a, b = aligned.segments[0].words
    assert (a.start, a.end, b.start, b.end) == (0.3, 0.8, 0.8, 0.8)
    assert (aligned.segments[0].start, aligned.segments[0].end) == (0.3, 0.8)
    assert (aligned.segments[1].start, aligned.segments[1].end) == (0.8, 10.0)
    assert (aligned.segments[2].start, aligned.segments[2].end) == (10.0, 10.0)
    assert transcript.segments[0].start == 0.0  # the input is untouched
    assert speech.align(aligned) == aligned  # idempotent


# --- transcribe --------------------------------------------------------------------------------


@pytest.mark.slow
def test_transcribe_meeting(meeting: Any, meeting_transcript: Transcript) -> None:
    import jiwer

    transcript = meeting_transcript
    assert transcript.language == "en"
    assert transcript.duration == pytest.approx(meeting.duration, abs=0.1)
    wer = jiwer.wer(_normalize(meeting.text), _normalize(transcript.text))
    assert wer < 0.25, transcript.text
    words = [w for s in transcript.segments for w in s.words]
    assert len(words) > 50
    assert all(0 <= w.start <= w.end <= transcript.duration + 0.5 for w in words)
    assert all(0 < w.probability <= 1 for w in words)


@pytest.mark.slow
def test_transcribe_silence_gives_empty_transcript(bad_audio: dict[str, Path]) -> None:
    transcript = speech.transcribe(bad_audio["silence"], cpu_threads=2)
    assert transcript.segments == [] and transcript.duration == pytest.approx(3.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "text", "empty", "directory"])
def test_transcribe_bad_file(bad_audio: dict[str, Path], kind: str) -> None:
    with pytest.raises(AudioError):
        speech.transcribe(bad_audio[kind], cpu_threads=2)


@pytest.mark.slow
def test_whisper_adapter_predict_contract(meeting: Any) -> None:
    from modelmora.speech.audio import load_audio

    adapter = speech._adapter("whisper", model=None, cpu_threads=2)
    samples = load_audio(meeting.wav)[: 16000 * 6]
    (result,) = adapter.predict([{"audio": samples}])
    assert set(result) >= {"segments", "language", "duration"}
    assert result["segments"][0]["words"][0].keys() >= {"word", "start", "end", "score"}
    json.dumps(result)  # plain data: travels between processes and to disk
    with pytest.raises(ValueError, match="audio"):
        adapter.predict([{"path": "x.wav"}])


# --- diarize -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_diarize_meeting(meeting: Any, meeting_transcript: Transcript, tmp_path: Path) -> None:
    import pysrt

    # Two synthetic voices sit near the default engine's merge threshold: give the count.
    transcript = speech.diarize(meeting.wav, speech.align(meeting_transcript), num_speakers=2)
    assert transcript.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert diarization_error_rate(meeting.turns, transcript.turns) <= 0.15
    words = [w for s in transcript.segments for w in s.words]
    assert all(w.speaker in ("SPEAKER_00", "SPEAKER_01") for w in words)
    assert all({w.speaker for w in s.words} == {s.speaker} for s in transcript.segments)
    # Each reference turn's words mostly carry one speaker, alternating like the reference.
    firsts = [s.speaker for s in transcript.segments]
    assert firsts[0] == "SPEAKER_00" and "SPEAKER_01" in firsts[1:3]

    write_outputs(transcript, tmp_path, "meeting", "all")
    cues = pysrt.open(str(tmp_path / "meeting.srt"))
    assert all(cue.text.startswith(("SPEAKER_00: ", "SPEAKER_01: ")) for cue in cues)

    def rounded(turns: list[Turn]) -> list[tuple[float, float, str]]:
        return [(round(t.start, 3), round(t.end, 3), t.speaker) for t in turns]

    assert rounded(read_rttm(tmp_path / "meeting.rttm")) == rounded(transcript.turns)


@pytest.mark.slow
def test_diarize_three_speakers(standup: Any) -> None:
    transcript = speech.diarize(standup.wav, Transcript())
    assert len(transcript.speakers) == 3
    assert diarization_error_rate(standup.turns, transcript.turns) <= 0.25


@pytest.mark.slow
def test_diarize_given_speaker_count(standup: Any) -> None:
    transcript = speech.diarize(standup.wav, Transcript(), num_speakers=2)
    assert len(transcript.speakers) == 2


@pytest.mark.slow
def test_diarize_silence(bad_audio: dict[str, Path]) -> None:
    segment = Segment(0, 0.5, 1.0, " ghost", [Word(0.5, 1.0, " ghost")])
    transcript = speech.diarize(bad_audio["silence"], Transcript([segment], "en", 3.0))
    assert transcript.turns == [] and transcript.segments[0].speaker is None


def test_diarizer_rejects_bad_counts() -> None:
    from modelmora.models.diarization import DiarizerAdapter

    with pytest.raises(ValueError, match="min_speakers"):
        DiarizerAdapter(min_speakers=3, max_speakers=2)
    with pytest.raises(ValueError, match="num_speakers"):
        DiarizerAdapter(num_speakers=0)


# --- summarize ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_summarize_with_bundled_gguf(meeting_transcript: Transcript) -> None:
    summary = speech.summarize(meeting_transcript, max_tokens=64)
    # trimmed, sectioned text; each of the three answers within the token cap (every word
    # costs at least one token), plus the headings and the [mm:ss] pointers
    assert summary and summary == summary.strip()
    assert summary.startswith("## What was discussed")
    headings = sum(len(line.split()) for line in summary.splitlines() if line.startswith("##"))
    pointers = summary.count("[")
    assert len(summary.split()) - headings - pointers <= 3 * 64
    assert speech.summarize(Transcript()) == ""


@pytest.mark.slow
def test_summary_by_smollm2_is_sectioned_pointed_and_checked(meeting: Any) -> None:
    from modelmora.models.llm import LlmAdapter, resolve_llm_model, transcript_lines
    from modelmora.speech.facts import FactCheck

    segments = [
        {"start": 4.5 * i, "end": 4.5 * i + 4, "text": text, "speaker": f"SPEAKER_0{i % 2}"}
        for i, text in enumerate(meeting.texts)
    ]
    adapter = LlmAdapter(n_threads=2, temperature=0.0)  # the default: SmolLM2-135M-Instruct
    try:
        (result,) = adapter.predict([{"task": "summarize", "segments": segments}])
    finally:
        adapter.close()
    text = result["summary"]
    assert "SmolLM2" in str(resolve_llm_model(None))
    assert text.index("## What was discussed") < text.index("## Decisions")
    assert text.index("## Decisions") < text.index("## Action items")
    check = FactCheck("\n".join(transcript_lines(segments)))
    items = [line for line in text.splitlines() if line.startswith("- ")]
    assert items and len(items) == result["facts"]["items"]
    for line in items:  # every kept item holds only facts of the transcript, and says where
        stamp = re.search(r"\[(\d\d):(\d\d)\]$", line)
        assert stamp and int(stamp[1]) * 60 + int(stamp[2]) <= segments[-1]["start"], line
        assert check.unsupported(line) == [], line
    assert "Good morning" not in text  # not the transcript again
    assert result["facts"]["unsupported"] == len(result["facts"]["left_out"])


@pytest.mark.slow
def test_llm_chat_and_map_reduce_locally(meeting_transcript: Transcript) -> None:
    from modelmora.models.llm import LlmAdapter

    adapter = LlmAdapter(n_ctx=256, max_tokens=32, temperature=0.0)
    adapter.load()
    try:
        (reply,) = adapter.predict(
            [
                {
                    "task": "chat",
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 8,
                }
            ]
        )
        assert set(reply) == {"text", "finish_reason", "usage"}
        assert 0 < reply["usage"]["completion_tokens"] <= 8
        segments = meeting_transcript.to_dict()["segments"]
        asked: list[str] = []
        replies: list[str] = []
        original = adapter._ask

        def ask(prompt: str) -> str:
            asked.append(prompt)
            replies.append(original(prompt))
            return replies[-1]

        adapter._ask = ask  # type: ignore[method-assign]
        (result,) = adapter.predict([{"task": "summarize", "segments": segments}])
        assert len(asked) >= 3 and "part 1 of" in asked[0]  # mapped chunks, then reduced
        parts = zip(asked, replies, strict=True)
        mapped = [reply.strip() for prompt, reply in parts if prompt.startswith("This is part")]
        # the last question reads what was answered about the parts
        assert any(reply and reply[:60] in asked[-1] for reply in mapped)
        assert result["summary"].startswith("## What was discussed")
        with pytest.raises(ValueError, match="summarize, chat"):
            adapter.predict([{"task": "translate"}])
    finally:
        adapter.close()


class _FakeOpenAIServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint that records the requests it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeOpenAI)
        self.requests: list[tuple[str, dict[str, Any]]] = []


class _FakeOpenAI(BaseHTTPRequestHandler):
    server: _FakeOpenAIServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        text = f"summary of {len(body['messages'][-1]['content'])} chars"
        reply = {
            "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_llm_over_http(meeting: Any) -> None:
    from modelmora.models.llm import LlmAdapter

    server = _FakeOpenAIServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        adapter = LlmAdapter(url, n_ctx=300, max_tokens=32, remote_model="llama3")
        segments = [
            {"text": text, "speaker": f"SPEAKER_0{i % 2}"}
            for i, text in enumerate(meeting.texts * 3)
        ]
        (result,) = adapter.predict([{"task": "summarize", "segments": segments}])
        # the server's answers go through the same check: its invented numbers are left out
        assert result["summary"].startswith("## What was discussed")
        assert result["facts"]["unsupported"] >= 1 and result["facts"]["items"] == 0
        assert "summary of" not in result["summary"]
        requests = server.requests
        assert {path for path, _ in requests} == {"/v1/chat/completions"}
        assert len(requests) >= 3  # mapped chunks, then reduced
        assert all(body["model"] == "llama3" for _, body in requests)
        sent = len(requests)
        adapter2 = LlmAdapter(url + "/v1/chat/completions")
        (reply,) = adapter2.predict(
            [{"task": "chat", "messages": [{"role": "user", "content": "hi"}], "stop": ["\n"]}]
        )
        assert reply["usage"]["total_tokens"] == 13 and reply["finish_reason"] == "stop"
        assert len(requests) == sent + 1 and requests[-1][1]["stop"] == ["\n"]
        assert requests[-1][1]["messages"] == [{"role": "user", "content": "hi"}]
    finally:
        server.shutdown()
        server.server_close()


@given(
    costs=st.lists(st.integers(1, 12), max_size=40),
    limit=st.integers(1, 30),
)
def test_pack_keeps_order_and_limit(costs: list[int], limit: int) -> None:
    items = [f"w{i}" for i in range(len(costs))]
    pieces = _pack(items, costs, limit, " ")
    assert " ".join(pieces).split() == items  # nothing lost, nothing reordered
    cost_of = dict(zip(items, costs, strict=True))
    for piece in pieces:
        words = piece.split()
        # a piece over the limit is a single item that alone costs more
        assert sum(cost_of[w] for w in words) <= limit or len(words) == 1
