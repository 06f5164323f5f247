"""Transcript records and output writers: shapes, round trips, parsers, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelmora.speech.formats import FORMATS, parse_formats, write_outputs
from modelmora.speech.transcript import (
    Segment,
    Transcript,
    Turn,
    Word,
    format_timestamp,
    read_rttm,
    write_atomic,
)


def _transcript(diarized: bool) -> Transcript:
    a = "SPEAKER_00" if diarized else None
    b = "SPEAKER_01" if diarized else None
    segments = [
        Segment(
            0,
            0.5,
            1.7,
            " Hello there.",
            [Word(0.5, 0.9, " Hello", 0.9, a), Word(1.0, 1.7, " there.", 0.8, a)],
            a,
        ),
        Segment(1, 2.0, 3661.25, " Hi,\tall good?", [Word(2.0, 3661.25, " Hi,", 0.7, b)], b),
    ]
    turns = [Turn(0.5, 1.7, "SPEAKER_00"), Turn(2.0, 3661.25, "SPEAKER_01")] if diarized else []
    return Transcript(segments, "en", 3662.0, turns)


def test_dict_round_trip_uses_whisperx_shape() -> None:
    transcript = _transcript(diarized=True)
    data = transcript.to_dict()
    assert set(data["segments"][0]) == {"id", "start", "end", "text", "words", "speaker"}
    assert data["segments"][0]["words"][0] == {
        "word": " Hello",
        "start": 0.5,
        "end": 0.9,
        "score": 0.9,
        "speaker": "SPEAKER_00",
    }
    assert data["language"] == "en"
    again = Transcript.from_dict(json.loads(json.dumps(data)))
    assert again == transcript
    assert again.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert again.text == "Hello there. Hi,\tall good?"


def test_from_dict_accepts_faster_whisper_words_and_rejects_garbage() -> None:
    data = {
        "segments": [
            {
                "start": 0,
                "end": 1,
                "text": "x",
                "words": [{"word": "x", "start": 0, "end": 1, "probability": 0.5}],
            }
        ]
    }
    transcript = Transcript.from_dict(data)
    assert transcript.segments[0].words[0].probability == 0.5
    assert transcript.duration == 1.0
    with pytest.raises(ValueError, match="segments"):
        Transcript.from_dict({"text": "no segments"})


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3661.2506, ",") == "01:01:01,251"
    assert format_timestamp(59.9999) == "00:01:00.000"
    assert format_timestamp(5.5, always_hours=False) == "00:05.500"
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_parse_formats() -> None:
    assert parse_formats("all") == list(FORMATS)
    assert parse_formats("vtt, srt,srt") == ["srt", "vtt"]
    assert parse_formats(["JSON"]) == ["json"]
    assert parse_formats("docx,html") == ["html", "docx"]
    with pytest.raises(ValueError, match="txt, srt, vtt, json, tsv, rttm, html, docx or all"):
        parse_formats("doc")


@pytest.mark.parametrize("diarized", [True, False])
def test_every_format_parses_back(tmp_path: Path, diarized: bool) -> None:
    import pysrt
    import webvtt

    transcript = _transcript(diarized)
    paths = write_outputs(transcript, tmp_path / "out", "my talk", "all")
    assert [p.suffix[1:] for p in paths] == list(FORMATS)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(p.name for p in paths)

    txt = (tmp_path / "out" / "my talk.txt").read_text()
    srt = pysrt.open(str(tmp_path / "out" / "my talk.srt"))
    vtt = webvtt.read(str(tmp_path / "out" / "my talk.vtt"))
    assert len(srt) == len(vtt) == 2
    assert srt[1].end.ordinal == 3661250
    assert vtt[1].end == "01:01:01.250"
    tsv = (tmp_path / "out" / "my talk.tsv").read_text().splitlines()
    assert len(tsv) == 3 and tsv[2].split("\t")[:2] == ["2000", "3661250"]
    data = json.loads((tmp_path / "out" / "my talk.json").read_text())
    assert Transcript.from_dict(data) == transcript
    turns = read_rttm(tmp_path / "out" / "my talk.rttm")
    if diarized:
        assert txt.splitlines()[0] == "[SPEAKER_00]: Hello there."
        assert srt[0].text == "SPEAKER_00: Hello there."
        # WebVTT names the speaker in a voice span, not in the text.
        assert (vtt[1].voice, vtt[1].text) == ("SPEAKER_01", "Hi,\tall good?")
        assert tsv[0] == "start\tend\tspeaker\ttext"
        assert turns == transcript.turns
        line = (tmp_path / "out" / "my talk.rttm").read_text().splitlines()[0]
        assert line == "SPEAKER my_talk 1 0.500 1.200 <NA> <NA> SPEAKER_00 <NA> <NA>"
    else:
        assert txt.splitlines()[0] == "Hello there."
        assert srt[0].text == "Hello there."
        assert vtt[0].voice is None
        assert turns == []


def test_rttm_falls_back_to_segment_speakers(tmp_path: Path) -> None:
    transcript = _transcript(diarized=True)
    transcript.turns = []
    transcript.segments.append(Segment(2, 3661.5, 3661.9, " More.", [], "SPEAKER_01"))
    (path,) = write_outputs(transcript, tmp_path, "x", ["rttm"])
    assert read_rttm(path) == [Turn(0.5, 1.7, "SPEAKER_00"), Turn(2.0, 3661.9, "SPEAKER_01")]


def test_empty_transcript_writes_valid_files(tmp_path: Path) -> None:
    import pysrt

    paths = write_outputs(Transcript([], "en", 10.0), tmp_path, "silence")
    assert len(paths) == len(FORMATS)
    assert len(pysrt.open(str(tmp_path / "silence.srt"))) == 0
    assert (tmp_path / "silence.vtt").read_text().startswith("WEBVTT")
    assert read_rttm(tmp_path / "silence.rttm") == []
    assert json.loads((tmp_path / "silence.json").read_text())["segments"] == []


def test_bad_stem_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stem"):
        write_outputs(_transcript(False), tmp_path, "a/b")


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def chunks():
        yield "new partial"
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        write_atomic(target, chunks())
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    write_atomic(target, ["a", "b"])
    assert target.read_text() == "ab"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_read_rttm_rejects_short_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.rttm"
    path.write_text(";; comment\nSPEAKER f 1 0.0\n")
    with pytest.raises(ValueError, match="8 fields"):
        read_rttm(path)


def test_import_is_light() -> None:
    code = (
        "import sys, modelmora.speech.transcript, modelmora.speech.audio, modelmora.speech.formats;"
        "import modelmora.workflow.inprocess;"
        "heavy = {'torch', 'faster_whisper', 'av', 'resemblyzer', 'llama_cpp', 'sklearn', 'docx'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_atomic_gives_outputs_the_mode_the_umask_asks_for(tmp_path, umask, mode):
    # A fresh interpreter with a known umask: the expected mode is spelled out, not computed
    # from the module's own reading of the umask.
    code = (
        "import os, sys; from pathlib import Path; os.umask(int(sys.argv[1], 8));"
        "from modelmora.paths import write_atomic;"
        "print(oct(write_atomic(Path(sys.argv[2]), ['hello']).stat().st_mode & 0o777))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, oct(umask)[2:], str(tmp_path / "out.txt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == oct(mode)
    assert (tmp_path / "out.txt").read_text() == "hello"


def test_reading_the_umask_does_not_change_it():
    from modelmora.paths import current_umask

    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027  # reading twice: still what was set
    finally:
        os.umask(before)
