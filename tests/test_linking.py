"""Linking anonymous speakers across a batch's files: scores, cohort, constraints (no model)."""

from __future__ import annotations

import numpy as np

from modelmora.speech.linking import link_scores, link_speakers
from modelmora.speech.speakers import Thresholds, thresholds_for
from modelmora.speech.transcript import Transcript, Turn
from modelmora.testing.voiceprints import alike_voice, heard_again, random_voice

RAW = Thresholds(name=0.8, margin=0.05, link=0.8)
CAMPPLUS = thresholds_for("campplus_cn_en_common@test")
#: These synthetic voices' impostor scores spread less than real ones: a threshold of their own.
SYNTH = Thresholds(name=0.6, margin=0.15, link=0.6, link_norm=3.0, link_floor=0.4)


def _partition(links: list[dict[str, int]]) -> set[frozenset[tuple[int, str]]]:
    people: dict[int, set[tuple[int, str]]] = {}
    for index, link in enumerate(links):
        for label, person in link.items():
            people.setdefault(person, set()).add((index, label))
    return {frozenset(members) for members in people.values()}


def test_small_batch_links_by_raw_cosine_never_within_one_file() -> None:
    a, b, c = random_voice(1), random_voice(2), random_voice(3)
    files = [
        {"SPEAKER_00": heard_again(a, 1), "SPEAKER_01": heard_again(b, 2)},
        {"SPEAKER_00": heard_again(b, 3), "SPEAKER_01": heard_again(c, 4)},
        {
            "SPEAKER_00": heard_again(a, 5),
            "SPEAKER_01": heard_again(a, 6),
        },  # a split in two by mistake
    ]
    assert link_scores(files).score is None  # 3 cohort voices at most: too few to normalise
    links, people = link_speakers(files, RAW)
    assert links[0] == {"SPEAKER_00": 0, "SPEAKER_01": 1}
    assert links[1] == {"SPEAKER_00": 1, "SPEAKER_01": 2}
    assert links[2]["SPEAKER_00"] != links[2]["SPEAKER_01"]  # one file: two different labels
    assert 0 in links[2].values()
    assert len(people) == 4
    assert all(abs(float(np.linalg.norm(p)) - 1.0) < 1e-9 for p in people)


def _alike_batch() -> tuple[list[dict[str, list[float]]], dict[tuple[int, str], int]]:
    """Eight files of three voices that all resemble each other; voices 0-5 recur."""
    common = random_voice(99)
    voices = [alike_voice(k, common, 0.55) for k in range(14)]
    cast = [[0, 1, 6], [2, 3, 7], [4, 5, 8], [0, 2, 9], [1, 4, 10], [3, 5, 11], [0, 5, 12]]
    cast.append([1, 3, 13])
    files, truth = [], {}
    for index, people in enumerate(cast):
        files.append(
            {f"S{k}": heard_again(voices[p], 10 * index + k) for k, p in enumerate(people)}
        )
        truth.update({(index, f"S{k}"): p for k, p in enumerate(people)})
    return files, truth


def test_normalised_scores_link_the_same_voices_and_keep_look_alikes_apart() -> None:
    files, truth = _alike_batch()
    scores = link_scores(files)
    assert scores.score is not None and scores.cohort >= 6
    same = [
        scores.score[i, j]
        for i, a in enumerate(scores.keys)
        for j, b in enumerate(scores.keys)
        if a[0] != b[0] and truth[a] == truth[b]
    ]
    different = [
        (scores.cosine[i, j], scores.score[i, j])
        for i, a in enumerate(scores.keys)
        for j, b in enumerate(scores.keys)
        if a[0] != b[0] and truth[a] != truth[b]
    ]
    # Raw cosines of different voices clear the raw threshold; their scores do not.
    assert max(c for c, _ in different) > SYNTH.link
    assert max(s for _, s in different) < SYNTH.link_norm < min(same)
    links, _ = link_speakers(files, SYNTH)
    want: dict[int, set[tuple[int, str]]] = {}
    for key, person in truth.items():
        want.setdefault(person, set()).add(key)
    assert _partition(links) == {frozenset(m) for m in want.values()}


def test_linking_does_not_depend_on_the_order_of_the_files() -> None:
    files, _ = _alike_batch()
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    forward = _partition(link_speakers(files, SYNTH)[0])
    assert len(forward) == 14
    shuffled = link_speakers([files[k] for k in order], SYNTH)[0]
    back = {frozenset((order[i], label) for i, label in m) for m in _partition(shuffled)}
    assert back == forward


def test_someone_heard_in_every_file_still_links() -> None:
    # A weekly meeting: the same chair in ten files, with two different guests each time. The
    # chair's other appearances are left out of the chair's cohort, so the scores stay high.
    chair, dim = random_voice(1, 192), 192
    files = [
        {
            "chair": heard_again(chair, k),
            "g1": random_voice(100 + 2 * k, dim).tolist(),
            "g2": random_voice(101 + 2 * k, dim).tolist(),
        }
        for k in range(10)
    ]
    scores = link_scores(files)
    assert scores.score is not None
    links, people = link_speakers(files, SYNTH)
    assert len({link["chair"] for link in links}) == 1
    assert len(people) == 1 + 2 * len(files)


def test_an_ambiguous_link_is_refused() -> None:
    # File 1 holds two speakers almost equally like file 0's first speaker: a margin refuses
    # to guess which is them; with no margin the closer one is linked.
    a = random_voice(1)
    files = [
        {"A": heard_again(a, 1), "B": random_voice(2).tolist(), "C": random_voice(3).tolist()},
        {
            "X": heard_again(a, 2, noise=0.05),
            "Y": heard_again(a, 3, noise=0.05),
            "Z": random_voice(4).tolist(),
        },
        {
            "P": random_voice(5).tolist(),
            "Q": random_voice(6).tolist(),
            "R": random_voice(7).tolist(),
        },
    ]
    strict = Thresholds(name=0.8, margin=0.05, link=0.8, link_norm=1.0, link_margin_norm=1.0)
    loose = Thresholds(name=0.8, margin=0.05, link=0.8, link_norm=1.0, link_margin_norm=0.0)
    assert link_scores(files).score is not None
    linked, _ = link_speakers(files, loose)
    assert linked[0]["A"] in (linked[1]["X"], linked[1]["Y"])
    refused, _ = link_speakers(files, strict)
    assert refused[0]["A"] not in (refused[1]["X"], refused[1]["Y"])


def test_empty_and_single_file_batches() -> None:
    assert link_speakers([], CAMPPLUS) == ([], [])
    links, people = link_speakers([{}, {"S": random_voice(1).tolist()}], CAMPPLUS)
    assert links == [{}, {"S": 0}] and len(people) == 1


def test_bench_finds_reference_speakers_before_relabelling() -> None:
    from modelmora.bench.speakers import _linked_majority

    # Ben talks inside Ana's turn: a tie, which goes to the speaker's own label; after
    # relabelling no label is anyone's own, so the tie must be broken before.
    reference = [Turn(0.0, 10.0, "ana"), Turn(2.0, 4.0, "ben"), Turn(10.0, 12.0, "ben")]
    before = Transcript([], "en", 12.0, [Turn(0.0, 10.0, "ana"), Turn(2.0, 4.0, "ben")])
    linked = before.relabel({"ana": "SPEAKER_01", "ben": "SPEAKER_00"})
    want = {"ana": "SPEAKER_01", "ben": "SPEAKER_00"}
    assert _linked_majority(before, linked, reference) == want
