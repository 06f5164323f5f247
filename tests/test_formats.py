"""Output formats: subtitle shaping, the readable txt, the HTML page, DOCX, the HTTP route."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest

from modelmora.speech.formats import RenderOptions, render, write_outputs
from modelmora.speech.formats.subtitles import build_cues
from modelmora.speech.transcript import Segment, Transcript, Word, format_timestamp
from modelmora.testing.transcripts import synthetic_meeting

A, B = "SPEAKER_00", "SPEAKER_01"


def _two_voices_in_one_segment() -> Transcript:
    words = [
        Word(0.0, 0.4, " Are", 0.9, A),
        Word(0.5, 0.9, " you", 0.9, A),
        Word(1.0, 1.4, " done?", 0.2, A),
        Word(1.6, 2.0, " Yes.", 0.9, B),
    ]
    return Transcript([Segment(0, 0.0, 2.0, " Are you done? Yes.", words, A)], "en", 2.5)


def _srt(text: str) -> list:
    import pysrt

    return list(pysrt.from_string(text))


def _vtt(text: str) -> list:
    import webvtt

    return list(webvtt.from_buffer(io.StringIO(text)))


@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(max_line_width=42, max_line_count=2),
        RenderOptions(max_line_width=32, max_line_count=1, max_duration=4.0),
        RenderOptions(max_duration=2.5),
        RenderOptions(max_line_width=24),
    ],
    ids=["42x2", "32x1-4s", "2.5s", "24-wide"],
)
def test_shaped_cues_keep_every_limit_and_every_word(options: RenderOptions) -> None:
    transcript = synthetic_meeting(hours=0.05, speakers=3, seed=1)
    words = [w for s in transcript.segments for w in s.words]
    speaker = {id(w): w.speaker for w in words}
    for kind, parse in (("srt", _srt), ("vtt", _vtt)):
        text = render(transcript, kind, options)
        assert isinstance(text, str)
        parsed = parse(text)
        cues = build_cues(transcript, options, label_width=kind == "srt")  # SRT: label in text
        assert len(parsed) == len(cues) > len(transcript.segments) // 2
        for cue, sub in zip(cues, parsed, strict=True):
            lines = sub.text.splitlines()
            if options.max_line_width:
                assert max(len(line) for line in lines) <= options.max_line_width, sub.text
            if options.max_line_count:
                assert len(lines) <= options.max_line_count
            if options.max_duration:
                assert cue.end - cue.start <= options.max_duration + 1e-9
            # A cue starts at its first word and ends at its last, and holds one speaker.
            assert cue.start == cue.words[0].start and cue.end == cue.words[-1].end
            assert {speaker[id(w)] for w in cue.words} == {cue.speaker}
            if kind == "srt":
                assert sub.start.ordinal == round(cue.start * 1000)
                assert sub.end.ordinal == round(cue.end * 1000)
                assert sub.text.startswith(f"{cue.speaker}: ")
            else:
                assert (sub.start, sub.end) == (
                    format_timestamp(cue.start),
                    format_timestamp(cue.end),
                )
                assert sub.voice == cue.speaker
        assert [w for cue in cues for w in cue.words] == words  # nothing lost or repeated
    captions = _vtt(str(render(transcript, "vtt", options)))
    assert " ".join(c.text.replace("\n", " ") for c in captions) == transcript.text


@pytest.mark.parametrize("options", [RenderOptions(), RenderOptions(max_line_width=40)])
def test_a_cue_never_holds_two_speakers(options: RenderOptions) -> None:
    transcript = _two_voices_in_one_segment()
    captions = _vtt(str(render(transcript, "vtt", options)))
    assert [(c.voice, c.text) for c in captions] == [(A, "Are you done?"), (B, "Yes.")]
    subs = _srt(str(render(transcript, "srt", options)))
    assert [s.text for s in subs] == [f"{A}: Are you done?", f"{B}: Yes."]
    assert (subs[1].start.ordinal, subs[1].end.ordinal) == (1600, 2000)


def test_min_duration_lengthens_short_cues_but_not_into_the_next() -> None:
    transcript = _two_voices_in_one_segment()
    options = RenderOptions(max_line_width=8, max_line_count=1, min_duration=1.0)
    cues = build_cues(transcript, options, label_width=False)
    assert [c.start for c in cues] == [0.0, 1.0, 1.6]
    assert [round(c.end, 3) for c in cues] == [1.0, 1.6, 2.5]  # last: up to the audio's end


def test_highlight_words_writes_one_underlined_cue_per_word() -> None:
    transcript = _two_voices_in_one_segment()
    captions = _vtt(str(render(transcript, "vtt", RenderOptions(highlight_words=True))))
    underlined = [c for c in captions if "<u>" in c.raw_text]
    assert [c.start for c in underlined] == [
        "00:00:00.000",
        "00:00:00.500",
        "00:00:01.000",
        "00:00:01.600",
    ]
    assert underlined[1].raw_text.endswith("Are <u>you</u> done?")
    gaps = [c for c in captions if "<u>" not in c.raw_text]
    assert [c.start for c in gaps] == ["00:00:00.400", "00:00:00.900"]
    subs = _srt(str(render(transcript, "srt", RenderOptions(highlight_words=True))))
    assert subs[-1].text == f"{B}: <u>Yes.</u>"


def test_bad_subtitle_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_line_width must be at least 1"):
        RenderOptions(max_line_width=0)
    with pytest.raises(ValueError, match="longer than max_duration"):
        RenderOptions(max_duration=1.0, min_duration=2.0)


def test_txt_is_one_paragraph_per_turn_with_optional_stamps() -> None:
    segments = [
        Segment(0, 1.0, 2.0, " Hello.", [], A),
        Segment(1, 2.5, 3.0, " How are you?", [], A),
        Segment(2, 3661.0, 3662.0, " Fine.", [], B),
    ]
    transcript = Transcript(segments, "en", 3663.0)
    assert render(transcript, "txt") == f"[{A}]: Hello. How are you?\n\n[{B}]: Fine.\n\n"
    stamped = render(transcript, "txt", RenderOptions(txt_timestamps=True))
    assert stamped == f"[00:00:01] {A}: Hello. How are you?\n\n[01:01:01] {B}: Fine.\n\n"
    for segment in segments:
        segment.speaker = None
    plain = render(transcript, "txt", RenderOptions(txt_timestamps=True))
    assert plain.splitlines() == [
        "[00:00:01] Hello.",
        "[00:00:02] How are you?",
        "[01:01:01] Fine.",
    ]


def test_speaker_names_are_rendered_as_the_segments_carry_them() -> None:
    transcript = _two_voices_in_one_segment()
    for word in transcript.segments[0].words:
        word.speaker = {A: "Maria", B: "Peter Smith"}[str(word.speaker)]
    transcript.segments[0].speaker = "Maria"
    assert [c.voice for c in _vtt(str(render(transcript, "vtt")))] == ["Maria", "Peter Smith"]
    assert str(render(transcript, "tsv")).splitlines()[1].split("\t")[2] == "Maria"
    data = json.loads(str(render(transcript, "json")))
    assert data["segments"][0]["words"][3]["speaker"] == "Peter Smith"


def test_html_is_self_contained_and_safe(tmp_path: Path) -> None:
    transcript = _two_voices_in_one_segment()
    transcript.segments[0].words[0].word = " </script><b>x"
    audio = tmp_path / "rec ording.wav"
    audio.write_bytes(b"RIFF0000WAVE")
    options = RenderOptions(audio=str(audio), summary="# Summary of x\n\nWe agreed.\n\n- Ship it")
    (page,) = write_outputs(transcript, tmp_path / "out", "talk", ["html"], options)
    html = page.read_text()
    assert html.count("</script>") == 2  # the data's and the viewer's, none from the text
    assert 'src="../rec%20ording.wav"' in html  # relative to the page, URL-quoted
    assert "<li>Ship it</li>" in html and "Summary of x" not in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network
    data = json.loads(html.split('type="application/json">')[1].split("</script>")[0])
    assert data["speakers"] == [A, B] and data["segments"][0][4][0][2] == " </script><b>x"
    embedded = render(transcript, "html", RenderOptions(audio=str(audio), embed_audio=True))
    assert 'src="data:audio/x-wav;base64,UklGRjAwMDBXQVZF"' in str(embedded)


def _docx_turns(blob: bytes) -> list[tuple[str, str, str]]:
    import docx

    document = docx.Document(io.BytesIO(blob))
    turns = []
    for paragraph in document.paragraphs:
        runs = paragraph.runs
        if len(runs) > 3 and runs[0].bold and runs[2].text.startswith("["):
            text = "".join(r.text for r in runs[4:])
            turns.append((runs[0].text, runs[2].text, text))
    return turns


def test_docx_has_the_summary_then_bold_speakers_with_times() -> None:
    import docx

    transcript = synthetic_meeting(hours=0.02, speakers=2, seed=3)
    blob = render(transcript, "docx", RenderOptions(summary="We met.\n\n- Maria fixes it"), "talk")
    assert isinstance(blob, bytes)
    document = docx.Document(io.BytesIO(blob))
    texts = [p.text for p in document.paragraphs]
    assert texts.index("Summary") < texts.index("We met.") < texts.index("Transcript")
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:  # no time of writing: reproducible
        assert {entry.date_time for entry in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    turns = _docx_turns(blob)
    expected = [
        (s.speaker, s.start, s.text.strip())
        for s in transcript.segments
        if s is transcript.segments[0] or s.speaker != transcript.segments[s.id - 1].speaker
    ]
    assert [(who, stamp) for who, stamp, _ in turns] == [
        (who, f"[{int(t) // 3600:02d}:{int(t) % 3600 // 60:02d}:{int(t) % 60:02d}]")
        for who, t, _ in expected
    ]
    assert turns[0][2].startswith(expected[0][2])


@pytest.mark.slow
def test_docx_converts_to_pdf_with_libreoffice(tmp_path: Path) -> None:
    office = shutil.which("libreoffice") or shutil.which("soffice")
    if office is None or shutil.which("pdftotext") is None:
        pytest.skip("needs libreoffice and poppler-utils (scripts/setup.sh installs them)")
    transcript = _two_voices_in_one_segment()
    (path,) = write_outputs(transcript, tmp_path, "meeting", ["docx"], RenderOptions(summary="Hi."))
    profile = Path(tempfile.mkdtemp(dir=tmp_path)).as_uri()
    command = [office, f"-env:UserInstallation={profile}", "--headless", "--convert-to", "pdf"]
    subprocess.run(
        [*command, "--outdir", str(tmp_path), str(path)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    pdf = tmp_path / "meeting.pdf"
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert text.index("Summary") < text.index(A) < text.index(B)
    assert "Are you done?" in text and "[00:00:01]" in text


def test_the_http_route_renders_subtitles_without_a_temporary_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modelmora.serving.http import openai

    def no_temp(*args: object, **kwargs: object) -> None:
        raise AssertionError("subtitles must be rendered in memory")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp)
    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    transcript = _two_voices_in_one_segment()
    response = openai.transcription(transcript.to_dict(), "vtt", [], 0.0)
    body = bytes(response.body).decode()
    assert body == render(transcript, "vtt")
    assert [c.voice for c in _vtt(body)] == [A, B]


def test_the_options_reach_the_renderers_from_yaml_and_flags(tmp_path: Path) -> None:
    from modelmora.workflow.options import load_options

    config = tmp_path / "modelmora.yaml"
    config.write_text("max_line_width: 42\nmax-line-count: 2\nhighlight_words: true\n")
    options = load_options(config, max_line_count=1, txt_timestamps=True)
    render_options = options.render_options("/data/a.wav", "Summary.")
    assert (render_options.max_line_width, render_options.max_line_count) == (42, 1)
    assert render_options.highlight_words and render_options.txt_timestamps
    assert (render_options.audio, render_options.summary) == ("/data/a.wav", "Summary.")
    with pytest.raises(ValueError, match="max_duration must be positive"):
        load_options(None, max_duration=0)


def test_undiarized_text_is_cut_into_paragraphs() -> None:
    from modelmora.speech.formats import speaker_turns

    segments = [Segment(i, 1.0 * i, 1.0 * i + 0.9, f" Sentence {i}.", [], None) for i in range(8)]
    segments += [Segment(8, 20.0, 21.0, " After a pause.", [], None)]
    paragraphs = [[s.id for s in turn.segments] for turn in speaker_turns(Transcript(segments))]
    assert paragraphs == [[0, 1, 2, 3, 4, 5], [6, 7], [8]]
