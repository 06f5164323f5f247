"""Speakers known by name: the library, naming and linking math, relabelling (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelmora.bench.speakers import _LINES  # the benchmark's conversation lines
from modelmora.speech.formats import write_outputs
from modelmora.speech.speakers import (
    MIN_COHORT,
    MIN_SPEAKER_S,
    SpeakerLibrary,
    Thresholds,
    match_speakers,
    snorm,
    thresholds_for,
)
from modelmora.speech.transcript import Segment, Transcript, Turn, Word, read_rttm
from modelmora.testing.voiceprints import alike_voice, heard_again, random_voice
from modelmora.workflow.speakers import identify, parse_relabels, relabel_run

MODEL = "campplus_cn_en_common@test"
STRICT = Thresholds(name=0.8, margin=0.05, link=0.8)


def test_match_names_right_voices_and_refuses_strangers() -> None:
    maria, omar, stranger = random_voice(1), random_voice(2), random_voice(3)
    matches = match_speakers(
        {
            "SPEAKER_00": heard_again(omar, 1),
            "SPEAKER_01": heard_again(maria, 2),
            "SPEAKER_02": stranger,
        },
        {"Maria": maria, "Omar": omar},
        STRICT,
    )
    assert matches["SPEAKER_00"].name == "Omar"
    assert matches["SPEAKER_01"].name == "Maria"
    assert matches["SPEAKER_02"].name is None
    assert matches["SPEAKER_00"].similarity is not None and matches["SPEAKER_00"].similarity > 0.8
    assert matches["SPEAKER_02"].to_dict()["similarity"] < 0.8


def test_match_needs_a_margin_between_similar_voices() -> None:
    maria = random_voice(1)
    twin = np.array(heard_again(maria, 7, noise=0.05))  # enrolled, nearly the same voice
    (match,) = match_speakers(
        {"A": heard_again(maria, 3, noise=0.05)}, {"Maria": maria, "Twin": twin}, STRICT
    ).values()
    assert match.name is None  # both clear the threshold, neither by the margin
    assert match.similarity is not None and match.similarity >= STRICT.name
    assert match.runner_up is not None and match.similarity - match.runner_up < STRICT.margin


def test_match_is_one_to_one_within_a_file() -> None:
    maria = random_voice(1)
    matches = match_speakers(
        {"A": heard_again(maria, 1), "B": heard_again(maria, 2)}, {"Maria": maria}, STRICT
    )
    assert sorted(m.name or "-" for m in matches.values()) == ["-", "Maria"]


def _transcript(speakers: dict[str, np.ndarray | list[float]]) -> Transcript:
    turns, segments, t = [], [], 0.0
    for index, label in enumerate(speakers):
        turns.append(Turn(t, t + 5.0, label))
        word = Word(t, t + 5.0, f" word{index}", speaker=label)
        segments.append(Segment(index, t, t + 5.0, f" word{index}", [word], label))
        t += 5.0
    embeddings = {k: [float(x) for x in v] for k, v in speakers.items()}
    return Transcript(
        segments, "en", t, turns, speaker_embeddings=embeddings, embedding_model=MODEL
    )


def test_identify_links_names_and_numbers_across_the_batch(tmp_path: Path) -> None:
    maria, stranger, other = random_voice(1), random_voice(2), random_voice(3)
    library = SpeakerLibrary(tmp_path / "lib")
    library.add("Maria", MODEL, [maria.tolist()], [10.0])
    first = _transcript(
        {"SPEAKER_00": heard_again(stranger, 1), "SPEAKER_01": heard_again(maria, 2)}
    )
    second = _transcript(
        {"SPEAKER_00": heard_again(other, 3), "SPEAKER_01": heard_again(stranger, 4)}
    )
    result = identify([first, second], library, link=True)
    one, two = result.transcripts
    assert one.speakers == ["SPEAKER_00", "Maria"]
    assert two.speakers == ["SPEAKER_01", "SPEAKER_00"]  # the stranger keeps SPEAKER_00
    assert one.speaker_identities["Maria"]["similarity"] > 0.8
    assert one.speaker_identities["SPEAKER_00"]["name"] is None
    assert one.speaker_identities["SPEAKER_00"]["files"] == 2
    assert [w.speaker for s in one.segments for w in s.words] == ["SPEAKER_00", "Maria"]
    unlinked = identify([first, second], None, link=False).transcripts
    assert unlinked[1].speakers == ["SPEAKER_00", "SPEAKER_01"]  # per-file labels kept


def test_snorm_refuses_a_voice_that_resembles_everyone() -> None:
    common = random_voice(99)
    prints = {f"P{k}": alike_voice(k, common, 0.6) for k in range(4)}
    cohort = [alike_voice(50 + k, common, 0.6) for k in range(MIN_COHORT)]
    genuine = np.array(heard_again(prints["P1"], 1, noise=0.5))
    stranger = alike_voice(77, common, 0.75)  # closer to everyone than they are to each other
    thresholds = thresholds_for(MODEL)
    raw = match_speakers({"s": stranger}, prints, Thresholds(0.6, 0.0, 0.6))
    assert raw["s"].similarity is not None and raw["s"].similarity > 0.6  # raw: resembles all
    matches = match_speakers({"g": genuine, "s": stranger}, prints, thresholds, cohort)
    assert matches["g"].name == "P1" and matches["g"].score is not None
    assert matches["s"].name is None
    assert matches["s"].score is not None and matches["s"].score < thresholds.name_norm
    record = matches["g"].to_dict()
    assert record["score"] >= thresholds.name_norm and record["margin"] >= thresholds.margin_norm


def test_snorm_is_zero_mean_against_the_cohort_itself() -> None:
    cohort = np.stack([random_voice(k) for k in range(30)])
    query, prints = cohort[:1], cohort[1:2]
    scores = snorm(query @ prints.T, query, prints, cohort, top=len(cohort))
    # Two cohort voices score like any two: near zero, far below a match.
    assert abs(float(scores[0, 0])) < 1.5


def test_too_small_a_cohort_falls_back_to_raw_similarities() -> None:
    maria = random_voice(1)
    (match,) = match_speakers(
        {"A": heard_again(maria, 1)}, {"Maria": maria}, STRICT, [random_voice(2)]
    ).values()
    assert match.name == "Maria" and match.score is None and "score" not in match.to_dict()


def test_identify_names_one_person_in_every_file_even_unlinked(tmp_path: Path) -> None:
    # Maria sounds different in the two files (too unlike to be linked), like herself in both.
    maria, twist = random_voice(1), random_voice(5)
    library = SpeakerLibrary(tmp_path / "lib")
    library.add("Maria", MODEL, [maria.tolist()], [10.0])
    first = _transcript({"SPEAKER_00": maria + 0.9 * twist, "SPEAKER_01": random_voice(2)})
    second = _transcript({"SPEAKER_00": random_voice(3), "SPEAKER_01": maria - 0.9 * twist})
    one, two = identify([first, second], library, link=True).transcripts
    assert "Maria" in one.speakers and "Maria" in two.speakers
    assert one.speaker_identities["Maria"]["files"] == 2


def test_identify_leaves_a_speaker_with_too_little_speech_alone(tmp_path: Path) -> None:
    maria = random_voice(1)
    library = SpeakerLibrary(tmp_path / "lib")
    library.add("Maria", MODEL, [maria.tolist()], [10.0])
    short = Transcript(
        [],
        "en",
        6.0,
        [Turn(0.0, 5.0, "SPEAKER_00"), Turn(5.0, 5.0 + MIN_SPEAKER_S / 2, "SPEAKER_01")],
        speaker_embeddings={
            "SPEAKER_00": random_voice(2).tolist(),
            "SPEAKER_01": heard_again(maria, 1),
        },
        embedding_model=MODEL,
    )
    other = _transcript({"SPEAKER_00": heard_again(maria, 2)})
    one, two = identify([short, other], library, link=True).transcripts
    assert "Maria" not in one.speakers and "Maria" in two.speakers
    (record,) = [r for r in one.speaker_identities.values() if r.get("too_little_speech")]
    assert record["name"] is None
    assert len(set(one.speakers)) == 2  # still a label of its own


def test_library_add_list_rename_remove(tmp_path: Path) -> None:
    library = SpeakerLibrary(tmp_path / "team")
    path = library.add("María José", MODEL, [random_voice(1).tolist()], [6.0])
    library.add("María José", MODEL, [random_voice(2).tolist()], [4.0])  # a second clip adds
    assert path.parent == tmp_path / "team" and path.suffix == ".json"
    (row,) = library.describe()
    assert row["name"] == "María José" and row["clips"] == 2 and row["speech_s"] == 10.0
    assert "audio" not in path.read_text() and not row["audio_kept"]
    assert set(library.voiceprints(MODEL)) == {"María José"}
    assert library.voiceprints("other-model@1") == {}  # another model's embeddings never compared
    library.rename("María José", "Maria")
    assert library.names() == ["Maria"]
    with pytest.raises(KeyError, match="no speaker 'Nobody'"):
        library.remove("Nobody")
    library.remove("Maria")
    assert library.names() == []


def test_library_refuses_too_little_speech_and_bad_names(tmp_path: Path) -> None:
    library = SpeakerLibrary(tmp_path)
    with pytest.raises(ValueError, match=r"only 1\.2 s of speech; enrollment needs at least 3 s"):
        library.add("Omar", MODEL, [random_voice(1).tolist()], [1.2])
    with pytest.raises(ValueError, match="anonymous label"):
        library.add("SPEAKER_01", MODEL, [random_voice(1).tolist()], [5.0])
    assert library.names() == []


def test_thresholds_are_per_model_family() -> None:
    campplus = thresholds_for("campplus_cn_en_common@3D-Speaker")
    assert campplus.name > 0 and campplus.margin > 0 and campplus.link > 0
    assert thresholds_for("unknown@1").name > 0


def _fake_run(folder: Path) -> None:
    """A finished run's folder: outputs of two files and the report naming them."""
    first = _transcript({"SPEAKER_00": random_voice(1), "SPEAKER_01": random_voice(2)})
    second = _transcript({"SPEAKER_01": random_voice(2)})
    files = []
    for stem, transcript in (("a", first), ("b", second)):
        paths = write_outputs(transcript, folder, stem, "all")
        summary = folder / f"{stem}.summary.md"
        summary.write_text("SPEAKER_01 will fix the bugs; SPEAKER_010 is not a label.\n")
        outputs = [str(p) for p in paths] + [str(summary)]
        files.append({"stem": stem, "outputs": outputs, "speakers": transcript.speakers})
    (folder / "modelmora-report.json").write_text(json.dumps({"files": files}))


def test_relabel_rewrites_every_format_consistently(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    library = SpeakerLibrary(tmp_path / "lib")
    done = relabel_run(tmp_path, parse_relabels(["SPEAKER_01=Maria"]), library=library)
    assert done["files"] == ["a", "b"] and done["enrolled"] == ["Maria"]
    for stem in ("a", "b"):
        data = json.loads((tmp_path / f"{stem}.json").read_text())
        assert "Maria" in {s["speaker"] for s in data["segments"]}
        assert data["speaker_identities"]["Maria"]["renamed_from"] == "SPEAKER_01"
        assert "Maria" in {t.speaker for t in read_rttm(tmp_path / f"{stem}.rttm")}
        for fmt in ("srt", "vtt", "txt", "tsv", "rttm"):
            text = (tmp_path / f"{stem}.{fmt}").read_text()
            assert "SPEAKER_01" not in text and "Maria" in text, fmt
        cues = [
            line for line in (tmp_path / f"{stem}.srt").read_text().splitlines() if ": " in line
        ]
        assert cues[-1].startswith("Maria: ")
        summary = (tmp_path / f"{stem}.summary.md").read_text()
        assert summary.startswith("Maria will fix") and "SPEAKER_010" in summary
    assert "SPEAKER_00" in (tmp_path / "a.vtt").read_text()  # untouched labels stay
    report = json.loads((tmp_path / "modelmora-report.json").read_text())
    assert report["files"][0]["speakers"] == ["SPEAKER_00", "Maria"]
    assert library.names() == ["Maria"]
    assert not list(tmp_path.glob(".relabel-*"))  # the staging folder is gone


def test_relabel_refuses_unknown_labels_and_bad_pairs(tmp_path: Path) -> None:
    _fake_run(tmp_path)
    before = (tmp_path / "a.srt").read_text()
    with pytest.raises(ValueError, match=r"no transcript .* has any of the labels SPEAKER_09"):
        relabel_run(tmp_path, {"SPEAKER_09": "Maria"})
    assert (tmp_path / "a.srt").read_text() == before
    with pytest.raises(ValueError, match="write OLD=NEW"):
        parse_relabels(["Maria"])
    with pytest.raises(ValueError, match=r"modelmora-report\.json"):
        relabel_run(tmp_path / "lib-missing", {"SPEAKER_01": "Maria"})


# --- end to end: generated voices, real models -------------------------------------------------

_ENROLL_TEXT = (
    "Hello, this is my voice for the speaker library. I am reading a few sentences so the "
    "model can learn how I sound when I talk about the budget, the plan and the launch."
)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Enrollment clips of three people, a too-short clip, and two conversations among them
    and a stranger (needs espeak-ng)."""
    from modelmora.testing.conversation import (
        DEFAULT_VOICES,
        Voice,
        espeak_available,
        make_conversation,
    )

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("people")
    ana, ben, cleo = DEFAULT_VOICES
    stranger = Voice("en-gb-scotland+f4", speed=160, pitch=90)
    files = {
        name: make_conversation(folder / f"{name}.wav", [(0, _ENROLL_TEXT)], [voice]).wav
        for name, voice in (("ana", ana), ("ben", ben), ("cleo", cleo))
    }
    files["short"] = make_conversation(folder / "short.wav", [(0, "Hi there.")], [ana]).wav
    files["first"] = make_conversation(
        folder / "first.wav", [(i % 3, line) for i, line in enumerate(_LINES)], [ana, ben, stranger]
    ).wav
    files["second"] = make_conversation(
        folder / "second.wav",
        [(i % 2, line) for i, line in enumerate(_LINES[:4])],
        [cleo, stranger],
    ).wav
    return files


@pytest.mark.slow
def test_enrolled_voices_named_stranger_linked_then_relabelled(
    people: dict[str, Path], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from modelmora.cli import app
    from modelmora.models import ModelSpec
    from modelmora.runtime.worker import Worker
    from modelmora.workflow.engine import transcribe_files
    from modelmora.workflow.options import TranscribeOptions

    library = tmp_path / "library"
    runner = CliRunner()
    refused = runner.invoke(
        app, ["speakers", "add", "Ana", str(people["short"]), "--library", str(library)]
    )
    assert refused.exit_code == 2
    assert "of speech; enrollment needs at least 3 s" in refused.output
    added = runner.invoke(
        app, ["speakers", "add", "Ana", str(people["ana"]), "--library", str(library)]
    )
    assert added.exit_code == 0, added.output
    shelf = SpeakerLibrary(library)
    with Worker(ModelSpec("voiceprint"), name="voiceprint") as worker:
        outputs = worker.call([{"audio": str(people[p])} for p in ("ben", "cleo")])
    for name, output in zip(("Ben", "Cleo"), outputs, strict=True):
        shelf.add(name, output["model"], [output["embedding"]], [output["speech_s"]])
    assert shelf.names() == ["Ana", "Ben", "Cleo"]

    out = tmp_path / "out"
    # The resemblyzer engine makes no embeddings of its own: the adapter gives each of its
    # speakers a CAM++ centroid, the same model the library's voiceprints come from.
    options = TranscribeOptions(
        diarize=True, diarizer="resemblyzer", language="en", library=str(library), threads=2
    )
    report = transcribe_files([people["first"], people["second"]], options, out)
    assert report.exit_code == 0
    first = json.loads((out / "first.json").read_text())
    second = json.loads((out / "second.json").read_text())
    assert set(first["speaker_identities"]) == {"Ana", "Ben", "SPEAKER_00"}
    assert set(second["speaker_identities"]) == {"Cleo", "SPEAKER_00"}  # one stranger, one label
    assert first["speaker_identities"]["Ana"]["similarity"] > 0
    assert first["speaker_identities"]["SPEAKER_00"]["name"] is None
    assert {t.speaker for t in read_rttm(out / "second.rttm")} == {"Cleo", "SPEAKER_00"}
    assert "Ben: " in (out / "first.srt").read_text()

    relabelled = runner.invoke(
        app, ["relabel", str(out), "SPEAKER_00=Dana", "--enroll", "--library", str(library)]
    )
    assert relabelled.exit_code == 0, relabelled.output
    for stem in ("first", "second"):
        assert "Dana" in {t.speaker for t in read_rttm(out / f"{stem}.rttm")}
        for fmt in ("srt", "vtt", "txt", "tsv"):
            text = (out / f"{stem}.{fmt}").read_text()
            assert "SPEAKER_00" not in text and "Dana" in text, fmt
        data = json.loads((out / f"{stem}.json").read_text())
        assert "Dana" in {s["speaker"] for s in data["segments"]}
        assert "SPEAKER_00" not in {w.get("speaker") for s in data["segments"] for w in s["words"]}
        assert data["speaker_identities"]["Dana"]["renamed_from"] == "SPEAKER_00"
    listed = runner.invoke(app, ["speakers", "list", "--json", "--library", str(library)])
    assert [s["name"] for s in json.loads(listed.stdout)["speakers"]] == [
        "Ana",
        "Ben",
        "Cleo",
        "Dana",
    ]


@pytest.mark.slow
def test_server_enrolls_lists_and_forgets_speakers(people: dict[str, Path], tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from modelmora.serving.config import ServerConfig
    from modelmora.serving.http.app import create_app

    config = ServerConfig(cache_dir=tmp_path, models=[{"name": "d", "adapter": "diarizer"}])
    assert config.model("d").to_spec().params["speakers"] == str(tmp_path / "speakers")
    with TestClient(create_app(config)) as http:
        deadline = time.monotonic() + 60
        while http.get("/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        clip = people["ana"].read_bytes()
        short = people["short"].read_bytes()
        refused = http.post(
            "/api/v1/speakers", data={"name": "Ana"}, files={"file": ("s.wav", short)}
        )
        assert refused.status_code == 422 and "too_little_speech" in refused.text
        created = http.post(
            "/api/v1/speakers", data={"name": "Ana"}, files={"file": ("ana.wav", clip)}
        )
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "Ana" and created.json()["clips"] == 1
        assert [s["name"] for s in http.get("/api/v1/speakers").json()["data"]] == ["Ana"]
        assert http.get("/api/v1/speakers/Ana").json()["speech_s"] >= 3
        assert http.delete("/api/v1/speakers/Ana").json() == {"name": "Ana", "deleted": True}
        assert http.get("/api/v1/speakers/Ana").status_code == 404


def test_the_assignment_is_one_to_one_and_optimal_when_one_pairing_clearly_wins() -> None:
    import numpy as np
    from scipy.optimize import linear_sum_assignment as optimal

    from modelmora.speech.speakers import linear_sum_assignment

    rng = np.random.default_rng(7)
    for shape in [(1, 1), (2, 3), (3, 2), (4, 4), (5, 7)]:
        noise = rng.uniform(0.0, 0.3, size=shape)
        truth = rng.permutation(max(shape))[: min(shape)]
        cost = -noise
        rows = range(min(shape)) if shape[0] <= shape[1] else truth
        cols = truth if shape[0] <= shape[1] else range(min(shape))
        for r, c in zip(rows, cols, strict=True):
            cost[r, c] -= 1.0  # the clear winner of its row and column
        got_rows, got_cols = linear_sum_assignment(cost)
        want_rows, want_cols = optimal(cost)
        assert got_rows.tolist() == want_rows.tolist() and got_cols.tolist() == want_cols.tolist()
        assert len(set(got_cols.tolist())) == len(got_cols) == min(shape)
    empty_rows, empty_cols = linear_sum_assignment(np.zeros((0, 3)))
    assert empty_rows.size == empty_cols.size == 0


def test_bench_counts_merged_strangers_and_short_speakers_apart() -> None:
    from modelmora.bench.speakers import _naming_scores

    reference = [
        Turn(0.0, 8.0, "ana"),
        Turn(8.0, 9.0, "ben"),  # enrolled, but says 1 s here: not measurable
        Turn(9.0, 14.0, "zed"),  # a stranger the diarizer merged into Ana's speaker
        Turn(14.0, 20.0, "yan"),  # a stranger of their own
    ]
    system = [Turn(0.0, 14.0, "Ana"), Turn(14.0, 20.0, "SPEAKER_00")]
    named = Transcript([], "en", 20.0, system)
    named.speaker_identities = {"Ana": {"name": "Ana"}, "SPEAKER_00": {"name": None}}
    scores = _naming_scores([(named, reference, {"ana": "Ana", "ben": "Ben"})])
    assert scores["enrolled_cases"] == 2 and scores["named_right"] == 0.5
    assert scores["measurable"] == {
        "min_talk_s": MIN_SPEAKER_S,
        "named_right": 1.0,
        "enrolled_cases": 1,
    }
    assert scores["strangers_merged_with_enrolled"] == 1
    assert scores["stranger_cases"] == 1 and scores["strangers_named"] == 0.0


def test_known_voices_keep_alike_people_apart_and_leave_strangers_anonymous() -> None:
    from modelmora.models.diarization.clustering import voice_clusters
    from modelmora.models.diarization.seeding import seeded_clusters

    common = random_voice(0)
    ana, ben = alike_voice(1, common, 0.6), alike_voice(2, common, 0.6)
    stranger = random_voice(3)
    assert 0.7 < float(ana @ ben) < 0.9  # one voice, to the clustering alone
    units = np.array(
        [heard_again(v, seed, noise=0.3) for seed, v in enumerate([ana, ben, stranger] * 4)]
    )
    speech = np.full(len(units), 3.0)
    assert len(set(voice_clusters(units).tolist())) == 2  # Ana and Ben merged
    labels = seeded_clusters(units, speech, {"Ana": ana, "Ben": ben}, MODEL)
    assert labels is not None
    assert [len(set(labels[i::3].tolist())) for i in range(3)] == [1, 1, 1]
    assert len(set(labels.tolist())) == 3
    assert {labels[0], labels[1]} == {0, 1}  # the present people first
    # Nobody enrolled is in the recording: the clustering is left as it was.
    assert seeded_clusters(units, speech, {"Zed": random_voice(9)}, MODEL) is None


@pytest.mark.slow
def test_default_engine_takes_enrolled_voices_as_known(
    people: dict[str, Path], tmp_path: Path
) -> None:
    """Two voices CAM++ hears as one (cosine 0.78) stay two speakers once both are enrolled."""
    from modelmora.bench.speakers import _majority
    from modelmora.models.diarization import DiarizerAdapter
    from modelmora.models.voiceprint import model_key
    from modelmora.testing.conversation import DEFAULT_VOICES, Voice, make_conversation

    ana, dev = DEFAULT_VOICES[0], Voice("en+m2", speed=200, pitch=20)
    pair = make_conversation(
        tmp_path / "pair.wav", [(i % 2, line) for i, line in enumerate(_LINES)], [ana, dev]
    ).wav
    dev_clip = make_conversation(tmp_path / "dev.wav", [(0, _ENROLL_TEXT)], [dev]).wav
    reference = read_rttm(pair.with_suffix(".rttm"))
    shelf = SpeakerLibrary(tmp_path / "library")

    def heard(known_voices: str | None) -> dict[str, str]:
        adapter = DiarizerAdapter(known_voices=known_voices)
        adapter.load()
        if known_voices is None:
            embedder = adapter.engine.embedder
            for name, clip in (("Ana", people["ana"]), ("Dev", dev_clip)):
                shelf.add(name, model_key(embedder), [embedder.embed(clip).tolist()], [10.0])
        else:
            assert set(adapter.engine.known) == {"Ana", "Dev"}
        (out,) = adapter.predict([{"audio": str(pair), "segments": []}])
        adapter.close()
        return _majority([Turn(a, b, s) for a, b, s in out["turns"]], reference)

    assert len(set(heard(None).values())) == 1  # merged by the clustering alone
    assert len(set(heard(str(tmp_path / "library")).values())) == 2
