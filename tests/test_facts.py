"""The summary fact check and the summary's items: pure text, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelmora.models.summary import check_items, split_items, transcript_lines
from modelmora.speech.facts import FactCheck, find_facts, normalize, repeated_ngrams

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Then we launch on the first of June.", "then we launch on june 1"),
        ("launch on June 1st", "launch on june 1"),
        ("the 3rd of May", "may 3"),
        ("twenty-five testers and two bugs", "25 testers and 2 bugs"),
        ("five thousand dollars, or $5,000", "5000 dollars or $5000"),
        ("one of them, twenty one", "one of them 21"),
        ("see you at [01:05] the twentieth of March", "see you at march 20"),
    ],
)
def test_normalize_numbers_and_dates(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_find_facts() -> None:
    facts = find_facts("Maria will fix the two login bugs by Wednesday, before June 1st.")
    assert facts.names == {"maria"}
    assert facts.numbers == {"2"}
    assert {"wednesday", "june 1"} <= facts.dates


def test_fact_check_against_the_example_transcript() -> None:
    check = FactCheck((REPO / "examples" / "conversation.txt").read_text())
    assert check.unsupported("Maria will fix the two login bugs by Wednesday [00:12]") == []
    assert check.unsupported("We launch on June 1st.") == []
    assert check.unsupported("The launch is on June 15th.") == ["june 15"]
    assert check.unsupported("John will write the release notes") == ["john"]
    assert check.unsupported("The budget is 5000 dollars.") == ["5000"]
    assert check.unsupported("Book the room for the review on Tuesday.") == ["tuesday"]


def _segments() -> list[dict[str, object]]:
    lines = (REPO / "examples" / "conversation.txt").read_text().splitlines()
    return [
        {"start": 4.5 * i, "end": 4.5 * i + 4, "text": text, "speaker": speaker}
        for i, (speaker, _, text) in enumerate(line.partition(": ") for line in lines)
    ]


def test_check_items_keeps_supported_points_them_and_counts_the_rest() -> None:
    segments = _segments()
    answers = {
        "discussed": split_items("discussed", "The meeting reviewed the app launch plan. Ok."),
        "decisions": split_items(
            "decisions", "The decisions are:\n- Launch on the first of June\n- Launch June 15th"
        ),
        "actions": split_items(
            "actions",
            "- Maria: fix the login bugs, by Wednesday\n- Maria: write the release notes\n"
            "- spk0: Good morning. Let's review the launch plan for the new mobile app.",
        ),
    }
    summary = check_items(answers, segments, transcript_lines(segments))
    kept = {(i.section, i.text, i.at) for i in summary.items}
    assert ("decisions", "Launch on the first of June", 18.0) in kept
    assert ("actions", "Maria: fix the login bugs, by Wednesday", 13.5) in kept
    left = {i.text: i.unsupported for i in summary.left_out}
    assert left == {
        "Launch June 15th": ["june 15"],
        "Maria: write the release notes": ["owner maria"],
    }
    text = summary.markdown()
    assert (
        text.index("## What was discussed") < text.index("## Decisions") < text.index("## Action")
    )
    assert "[00:18]" in text and "June 15" not in text and "Good morning" not in text
    assert summary.report()["unsupported"] == 2


def test_repeated_ngrams_finds_loops() -> None:
    assert repeated_ngrams("ask not what your country can do for you, ask what you can do") == 0
    assert repeated_ngrams("thank you for watching. " * 6, n=4) > 10
