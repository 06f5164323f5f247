"""Checking a summary against its transcript: every name, number and date must be in it.

Small language models invent ("the launch on June 15th", "Maria will deliver the review"), so a
summary item is kept only when each fact it states is found in the transcript. Facts are found
in a normalised text where spelled numbers are digits and dates have one form::

    >>> normalize("Then we launch on the first of June, with twenty-five testers.")
    'then we launch on june 1 with 25 testers'
    >>> normalize("launch on June 1st")
    'launch on june 1'

A fact is a number (``25``), a date (``june 1``, a month, a weekday) or a name (a capitalised
word that does not start a sentence, or the owner before ``:`` / ``will`` at the start of an
item). A number or date is supported when the transcript has it; a name when the transcript
has the word at all.

Pure Python: importing it costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FactCheck", "find_facts", "normalize", "repeated_ngrams"]


def _words(text: str) -> list[str]:
    return text.split()


_UNITS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
)
_TENS = _words("twenty thirty forty fifty sixty seventy eighty ninety")
_ORDINALS = _words(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
)
_TENS_ORD = _words("twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth")
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
MONTHS = _words(
    "january february march april may june july august september october november december"
)
WEEKDAYS = _words("monday tuesday wednesday thursday friday saturday sunday")

_WORD_VALUES: dict[str, tuple[int, bool]] = {w: (i, False) for i, w in enumerate(_UNITS)}
_WORD_VALUES.update({w: (20 + 10 * i, False) for i, w in enumerate(_TENS)})
_WORD_VALUES.update({w: (i, True) for i, w in enumerate(_ORDINALS)})
_WORD_VALUES.update({w: (20 + 10 * i, True) for i, w in enumerate(_TENS_ORD)})
# "a second", "may", "one of them" are words more often than facts: kept as words
_AMBIGUOUS = {"second", "one", "zero"}
_MONTH = "|".join(MONTHS)
_DATE_FORMS = (
    (re.compile(rf"\b(?:the )?(\d{{1,2}})(?:st|nd|rd|th)? of ({_MONTH})\b"), (2, 1)),
    (re.compile(rf"\b({_MONTH}) (?:the )?(\d{{1,2}})(?:st|nd|rd|th)?\b"), (1, 2)),
    (re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th) ({_MONTH})\b"), (2, 1)),
)
_TIMESTAMP = re.compile(r"\[\s*\d{1,2}:\d{2}(?::\d{2})?\s*\]")
_NOT_NAMES = {
    "i", "we", "you", "they", "he", "she", "it", "the", "a", "an", "and", "or", "ok", "okay",
    "speaker", "none", "action", "items", "decisions", "discussed", "summary", "owner", "due",
    "tbd", "n/a", "am", "pm", *MONTHS, *WEEKDAYS,
}  # fmt: skip


def _words_to_digits(words: list[str]) -> list[str]:
    """Replace runs of spelled numbers by their digits (``twenty five`` → ``25``)."""
    out: list[str] = []
    total = current = 0
    last = ""  # kind of the previous number word: "", "unit", "tens", "scale"
    ordinal = False

    def flush() -> None:
        nonlocal total, current, last, ordinal
        if last:
            out.append(f"{total + current}{'th' if ordinal else ''}")
        total, current, last, ordinal = 0, 0, "", False

    for index, word in enumerate(words):
        parts = word.split("-")
        following = words[index + 1] if index + 1 < len(words) else ""
        # "one" is a number in "twenty one" and "one hundred", a word in "one of them"
        counted = last == "tens" or following in _SCALES
        spelled = all(p in _WORD_VALUES or p in _SCALES for p in parts)
        if (word in _AMBIGUOUS and not counted) or not spelled:
            flush()
            out.append(word)
            continue
        for part in parts:
            if ordinal:
                flush()
            if part in _SCALES:
                scale = _SCALES[part]
                current = max(current, 1) * scale
                if scale >= 1000:
                    total, current = total + current, 0
                last = "scale"
                continue
            value, ordinal = _WORD_VALUES[part]
            joins = (last == "tens" and value < 10) or (last == "scale" and value < 100)
            if last and not joins:
                flush()
                ordinal = _WORD_VALUES[part][1]
            current += value
            last = "tens" if value >= 20 else "unit"
    flush()
    return out


def normalize(text: str) -> str:
    """Lower-case words, spelled numbers as digits, every date as ``month day``.

    Args:
        text: any English text.

    Returns:
        The normalised text (words separated by single spaces; ``$`` and ``%`` kept).
    """
    text = _TIMESTAMP.sub(" ", text.lower())
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 5,000 → 5000
    text = re.sub(r"[^\w$%.\-' ]+", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # sentence dots, not decimal points
    words = [w.strip("-'") for w in text.split()]
    words = _words_to_digits([w for w in words if w])
    text = " ".join(words)
    for pattern, (month, day) in _DATE_FORMS:
        text = pattern.sub(_date_as(month, day), text)
    return re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", text)


def _date_as(month: int, day: int) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return f"{match.group(month)} {int(match.group(day))}"

    return replace


@dataclass(frozen=True)
class Facts:
    """The facts found in a text: numbers, dates (``june 1``, months, weekdays) and names."""

    numbers: frozenset[str] = frozenset()
    dates: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()

    def all(self) -> list[str]:
        """Every fact, as text, sorted."""
        return sorted(self.numbers | self.dates | self.names)


def _names(text: str) -> set[str]:
    """Capitalised words that do not start a sentence, and an item's leading owner."""
    names: set[str] = set()
    plain = _TIMESTAMP.sub(" ", text)
    owner = re.match(r"\s*(?:[-*•]|\d+[.)])?\s*\**([A-Z][\w'-]*)\**\s*(?::|will\b|to\b|-)", plain)
    if owner:
        names.add(owner.group(1))
    for sentence in re.split(r"(?<=[.!?:;])\s+|\n+", plain):
        tokens = re.findall(r"[A-Za-z][\w'-]*", sentence)
        names.update(t for t in tokens[1:] if t[0].isupper())
    return {n.lower().removesuffix("'s") for n in names} - _NOT_NAMES


def find_facts(text: str) -> Facts:
    """The names, numbers and dates ``text`` states (see the module docstring)."""
    norm = normalize(text)
    dates = {f"{m.group(1)} {m.group(2)}" for m in re.finditer(rf"\b({_MONTH}) (\d+)\b", norm)}
    day_numbers = {d.split()[1] for d in dates}
    words = set(norm.split())
    dates |= words & set(WEEKDAYS)
    # "may" is a month only in a date ("may 3"); other months count alone
    dates |= words & (set(MONTHS) - {"may"})
    numbers = set(re.findall(r"\$?\d+(?:\.\d+)?%?", norm)) - day_numbers
    numbers = {n.strip("$%") for n in numbers}
    return Facts(frozenset(numbers), frozenset(dates), frozenset(_names(text)))


@dataclass
class FactCheck:
    """Checks summary items against one transcript.

    Args:
        transcript: the transcript's text (speaker labels included, so owners named by label
            are found).
    """

    transcript: str
    _words: set[str] = field(init=False, repr=False)
    _facts: Facts = field(init=False, repr=False)

    def __post_init__(self) -> None:
        norm = normalize(self.transcript)
        self._words = set(norm.split()) | {w.removesuffix("'s") for w in norm.split()}
        self._facts = find_facts(self.transcript)

    def unsupported(self, item: str) -> list[str]:
        """The facts of ``item`` the transcript does not contain (empty: the item holds).

        A date is supported by the same date, or by its day and month both said; a month or
        weekday by the word; a number by the same number; a name by the word anywhere.
        """
        facts = find_facts(item)
        missing = [n for n in sorted(facts.numbers) if n not in self._facts.numbers]
        missing = [n for n in missing if n not in self._words]
        for date in sorted(facts.dates):
            if date in self._facts.dates:
                continue
            month, _, day = date.partition(" ")
            if not day or not ({month, day} <= self._words):
                missing.append(date)
        missing += [n for n in sorted(facts.names) if n not in self._words]
        return missing


def repeated_ngrams(text: str, n: int = 8) -> int:
    """How many times an ``n``-word sequence repeats a sequence already seen (0: no loop).

    Whisper's failure on long audio is a phrase decoded over and over; in real speech an
    8-word sequence rarely recurs.
    """
    words = normalize(text).split()
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats
