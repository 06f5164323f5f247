"""Meeting summaries from a language model, with every item checked against the transcript.

The summary has three sections (what was discussed, decisions, action items); each comes from
one short question to the model, since a 135M-parameter model answers one simple question far
better than it follows a multi-part template. Each answer is cut into items; each item is then

1. checked: every name, number and date it states must be in the transcript
   (:class:`modelmora.speech.facts.FactCheck`); an action item's owner must be named in, or be
   the speaker of, the passage it comes from. An item that fails is left out of the summary and
   counted (``unsupported``), since a small model invents ("the launch on June 15th");
2. pointed to where it was said: the ``[mm:ss]`` of the segment that shares most words with it.

A transcript longer than the context is summarized map-reduce: the questions are asked of each
chunk ("part 1 of 3"), the decisions and action items of the parts are pooled, and the parts'
"discussed" answers are combined by one more question. The same prompts and the same check
serve a local GGUF and an OpenAI-compatible server: the caller passes its ``ask`` function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelmora.speech.facts import FactCheck, normalize

__all__ = ["SECTIONS", "Item", "Summary", "summarize_segments", "transcript_lines"]

#: Section keys and their headings, in the order written.
SECTIONS: dict[str, str] = {
    "discussed": "What was discussed",
    "decisions": "Decisions",
    "actions": "Action items",
}
SYSTEM = "You answer questions about a meeting transcript, using only what was said in it."
QUESTIONS: dict[str, str] = {
    "discussed": "In two or three short sentences, what was this meeting about?",
    "decisions": (
        "List the decisions made in this meeting, one per line starting with '- '. "
        "Write only decisions that were said."
    ),
    "actions": (
        "List the action items of this meeting, one per line as '- who: what, by when'. "
        "Write only tasks that were said."
    ),
}
_ASK = "Transcript:\n{text}\n\n{question}"
_ASK_PART = "This is part {part} of {parts} of a meeting transcript.\n\n" + _ASK
_REDUCE = (
    "These are summaries of consecutive parts of one meeting:\n{text}\n\n"
    "In two or three short sentences, what was the whole meeting about?"
)
_STOP_WORDS = frozenset(
    re.findall(
        r"\S+",
        "a an the and or but to of in on at by for with is are was were be been it this that we "
        "i you they he she will would can could should do did does have has had our their your "
        "not so then also yes no ok okay good sure please let's lets them us me my",
    )
)
_OWNERLESS = {"we", "i", "you", "they", "team", "everyone", "all"}
# a transcript line copied as a decision or action item is one only if it commits to something
_COMMITS = {"will", "decide", "decided", "agree", "agreed", "must", "should"}


def transcript_lines(segments: Sequence[dict[str, Any]], times: bool = False) -> list[str]:
    """One ``SPEAKER: text`` (or bare text) line per segment, consecutive speakers merged.

    Args:
        segments: transcript segment dicts (``text``, ``start`` and, once diarized, ``speaker``).
        times: start each line with its ``[mm:ss]``.
    """
    lines: list[str] = []
    previous: str | None = None
    for segment in segments:
        text = str(segment.get("text", "")).strip()
        if not text:
            continue
        speaker = segment.get("speaker")
        if speaker and speaker == previous and lines:
            lines[-1] += " " + text
        else:
            stamp = f"[{_clock(float(segment.get('start', 0.0)))}] " if times else ""
            lines.append(f"{stamp}{speaker}: {text}" if speaker else f"{stamp}{text}")
        previous = speaker
    return lines


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


@dataclass
class Item:
    """One summary item.

    Attributes:
        section: a key of :data:`SECTIONS`.
        text: the item as the model wrote it (pointer removed).
        at: the start (seconds) of the segment it comes from, or None if none matches.
        unsupported: the facts of the item the transcript does not hold (empty: kept).
    """

    section: str
    text: str
    at: float | None = None
    unsupported: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The markdown bullet."""
        where = f" [{_clock(self.at)}]" if self.at is not None else ""
        return f"- {self.text}{where}"


@dataclass
class Summary:
    """A checked summary: the items kept and those left out."""

    items: list[Item]
    left_out: list[Item]

    def markdown(self) -> str:
        """The sections, each a list of items with their ``[mm:ss]``."""
        parts = []
        for key, title in SECTIONS.items():
            lines = [item.line() for item in self.items if item.section == key]
            parts.append(f"## {title}\n\n" + ("\n".join(lines) or "_None said._"))
        if self.left_out:
            parts.append(
                f"_{len(self.left_out)} item(s) the model wrote were left out: they name facts "
                "the transcript does not contain._"
            )
        return "\n\n".join(parts)

    def report(self) -> dict[str, Any]:
        """What the check did (for the batch report)."""
        return {
            "items": len(self.items),
            "unsupported": len(self.left_out),
            "left_out": [
                {"section": i.section, "text": i.text, "facts": i.unsupported}
                for i in self.left_out
            ],
        }


def split_items(section: str, answer: str) -> list[str]:
    """The items of one answer: its bullet lines, or its sentences for ``discussed``."""
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in answer.splitlines()]
    lines = [line.strip("* ") for line in lines if line and not line.startswith("#")]
    lines = [line for line in lines if not line.endswith(":")]  # "The decisions are:"
    if section == "discussed":
        text = " ".join(lines)
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    seen: set[str] = set()
    items = []
    for line in lines:
        key = normalize(line)
        if len(key.split()) >= 2 and key not in seen:
            seen.add(key)
            items.append(line)
    return items


def _content(text: str) -> set[str]:
    return {w for w in normalize(text).split() if w not in _STOP_WORDS}


def _source(text: str, segments: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The segment sharing most content words with ``text`` (None when none shares any)."""
    words = _content(text)
    best, score = None, 0
    for segment in segments:
        shared = len(words & _content(str(segment.get("text", ""))))
        if shared > score:
            best, score = segment, shared
    return best


def _owner_missing(item: str, source: dict[str, Any] | None) -> list[str]:
    """An action item's owner who is neither named in its passage nor its speaker."""
    match = re.match(r"\s*([A-Za-z][\w'-]*(?: [A-Z][\w'-]*)?)\s*(?::|\bwill\b)", item)
    if match is None or source is None:
        return []
    owner = match.group(1).lower()
    if owner in _OWNERLESS or owner == str(source.get("speaker") or "").lower():
        return []
    return [] if owner in normalize(str(source.get("text", ""))).split() else [f"owner {owner}"]


def check_items(
    answers: dict[str, list[str]], segments: Sequence[dict[str, Any]], lines: list[str]
) -> Summary:
    """Check and point each item (see the module docstring).

    Items with fewer than two content words, and transcript lines copied whole that commit to
    nothing, are not summary items: they are dropped (not counted as unsupported).
    """
    checker = FactCheck("\n".join(lines))
    spoken = {normalize(str(s.get("text", ""))) for s in segments}
    kept: list[Item] = []
    left_out: list[Item] = []
    for section, texts in answers.items():
        for text in texts:
            said = normalize(re.sub(r"^\s*\w+\s*:\s*", "", text))
            copied = said in spoken or normalize(text) in spoken
            if len(_content(text)) < 2 or (
                copied and (section == "discussed" or not _COMMITS & set(said.split()))
            ):
                continue
            source = _source(text, segments)
            item = Item(section, _strip_pointer(text))
            item.at = None if source is None else float(source.get("start", 0.0))
            item.unsupported = checker.unsupported(item.text)
            if section == "actions":
                item.unsupported += _owner_missing(item.text, source)
            (left_out if item.unsupported else kept).append(item)
    return Summary(kept, left_out)


def _strip_pointer(text: str) -> str:
    return re.sub(r"\s*\[\s*\d{1,2}:\d{2}(?::\d{2})?\s*\]", "", text).strip()


def summarize_segments(
    segments: Sequence[dict[str, Any]],
    ask: Callable[[str], str],
    chunk: Callable[[list[str]], list[str]],
) -> Summary:
    """Ask the model the three questions (map-reduce over chunks), then check every item.

    Args:
        segments: transcript segment dicts.
        ask: sends one user prompt (with :data:`SYSTEM`) and returns the answer.
        chunk: packs transcript lines into pieces that fit the model's context.

    Returns:
        The checked summary (empty when the segments hold no text).
    """
    lines = transcript_lines(segments)
    if not lines:
        return Summary([], [])
    pieces = chunk(lines)
    answers: dict[str, list[str]] = {key: [] for key in SECTIONS}
    partials: list[str] = []
    for index, piece in enumerate(pieces, 1):
        for key, question in QUESTIONS.items():
            if len(pieces) == 1:
                prompt = _ASK.format(text=piece, question=question)
            else:
                prompt = _ASK_PART.format(
                    part=index, parts=len(pieces), text=piece, question=question
                )
            answer = ask(prompt)
            if key == "discussed" and len(pieces) > 1:
                partials.append(answer)
            else:
                answers[key] += split_items(key, answer)
    if partials:
        combined = chunk([p for p in partials if p] or ["(nothing said)"])[0]
        answers["discussed"] = split_items("discussed", ask(_REDUCE.format(text=combined)))
    for key in answers:  # the same item from two parts once
        answers[key] = list(dict.fromkeys(answers[key]))
    return check_items(answers, segments, transcript_lines(segments))
