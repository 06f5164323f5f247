"""Speakers known by name: the voiceprint library, naming by voice, and linking across files.

A **voiceprint** is what a speaker embedding model makes of someone's voice: one L2-normalised
embedding per enrollment clip, stored with the model's name and version (embeddings of two
models cannot be compared). A :class:`SpeakerLibrary` is a plain folder of one JSON file per
person, so a team can share it (a network folder, a git repository)::

    speakers/
      maria.json          {"name": "Maria", "voiceprints": {"<model>@<version>": {...}}, ...}
      maria.clips/        the enrollment audio, only when it was asked to be kept

Naming (:func:`match_speakers`) compares a diarized speaker's centroid embedding with every
enrolled voiceprint of the same model (cosine similarity) and assigns names one-to-one
(Hungarian assignment, so two speakers of one file never both become Maria). When a cohort of
other voices is at hand (the other enrolled voices and the speakers of the batch's other files,
at least :data:`MIN_COHORT` of them), the similarities are score-normalised against it
(adaptive s-norm, :func:`snorm`): how far a similarity stands out from what each of the two
voices scores against people it is not. A voice that resembles everyone (as synthetic voices
from one synthesizer do) then no longer clears the threshold by resemblance alone. A name is
given only when the (normalised) score clears the model's calibrated threshold **and** beats
the runner-up name by a margin, so two enrolled people with similar voices are not confused
silently.

Linking (:func:`modelmora.speech.linking.link_speakers`) gives the same unknown person the
same label in every file of a batch, with the same kind of normalised score.

Pure numpy: no ML framework and no scipy is imported here (it runs in a light worker).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from modelmora.paths import default_cache_dir, write_atomic

__all__ = [
    "COHORT_TOP",
    "MIN_COHORT",
    "MIN_ENROLL_SPEECH_S",
    "MIN_SPEAKER_S",
    "SpeakerLibrary",
    "SpeakerMatch",
    "Thresholds",
    "Voiceprint",
    "check_name",
    "default_library_dir",
    "match_speakers",
    "thresholds_for",
    "unit",
]

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: Enrollment refuses clips holding less speech than this (seconds): too little for a voiceprint.
MIN_ENROLL_SPEECH_S = 3.0
#: A diarized speaker with less talk than this in a file (seconds) is neither named nor linked:
#: an embedding of so little speech says little about the voice (on the AMI excerpts the same
#: person scored 0.0 to 0.3 against themselves from under 2 s, 0.57 to 0.78 from more).
MIN_SPEAKER_S = 2.0
#: Score normalisation needs at least this many cohort voices (else raw cosine similarities
#: and the raw thresholds are used).
MIN_COHORT = 6
#: Adaptive s-norm: the mean and spread of a voice's scores over its this many closest
#: cohort voices.
COHORT_TOP = 10


@dataclass(frozen=True)
class Thresholds:
    """When a similarity is a match, for one embedding model.

    Attributes:
        name: naming needs at least this cosine similarity to the enrolled voiceprint.
        margin: and this much more than the runner-up name's similarity (without a cohort).
        link: linking two files' speakers needs at least this similarity.
        link_margin: and this much more than the next most similar person's.
        name_norm: with a cohort, naming needs at least this s-normalised score instead of
            ``margin`` (the cosine similarity must still reach ``name_floor``).
        margin_norm: and this much more than the runner-up's s-normalised score.
        name_floor: with a cohort, the cosine similarity naming needs at the least.
        link_norm: with a cohort, linking needs at least this s-normalised score instead of
            ``link`` (:mod:`modelmora.speech.linking`).
        link_floor: and at least this cosine similarity.
        link_margin_norm: and this much more than the competing candidates' scores.
    """

    name: float
    margin: float
    link: float
    link_margin: float = 0.0
    name_norm: float = 1.0
    margin_norm: float = 0.4
    name_floor: float = 0.45
    link_norm: float = 1.25
    link_floor: float = 0.5
    link_margin_norm: float = 0.0


#: Calibrated per model family (see docs/speakers.md for how); unknown models get the default.
_THRESHOLDS: dict[str, Thresholds] = {
    "campplus": Thresholds(
        name=0.60,
        margin=0.15,
        link=0.60,
        link_margin=0.05,
        name_norm=1.0,
        margin_norm=0.4,
        name_floor=0.45,
        link_norm=1.25,
        link_floor=0.5,
        link_margin_norm=0.0,
    ),
}
_DEFAULT_THRESHOLDS = Thresholds(name=0.6, margin=0.15, link=0.6, link_margin=0.05)


def thresholds_for(model: str) -> Thresholds:
    """The calibrated thresholds of a model key (``campplus_cn_en_common@...``)."""
    family = model.split("@", 1)[0].lower()
    for prefix, values in _THRESHOLDS.items():
        if family.startswith(prefix):
            return values
    return _DEFAULT_THRESHOLDS


def default_library_dir() -> Path:
    """The default speaker library: ``<cache dir>/speakers`` (``$MODELMORA_SPEAKERS`` wins)."""
    env = os.environ.get("MODELMORA_SPEAKERS")
    return Path(env).expanduser() if env else default_cache_dir() / "speakers"


def unit(vector: Any) -> np.ndarray:
    """``vector`` (or each row of a matrix) scaled to length 1, in float64."""
    array = np.asarray(vector, dtype=np.float64)
    return array / (np.linalg.norm(array, axis=-1, keepdims=True) + 1e-12)


@dataclass
class Voiceprint:
    """One person's voice as one model embeds it: one embedding per clip.

    Attributes:
        model: the model key, ``name@version``.
        embeddings: L2-normalised embeddings, one per clip.
        speech_s: the seconds of speech each clip held.
    """

    model: str
    embeddings: list[list[float]] = field(default_factory=list)
    speech_s: list[float] = field(default_factory=list)

    @property
    def centroid(self) -> np.ndarray:
        """The speech-weighted mean embedding, re-normalised."""
        weights = np.asarray(self.speech_s or [1.0] * len(self.embeddings), dtype=np.float64)
        return unit(weights @ unit(self.embeddings))

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (embeddings rounded to 6 decimals)."""
        return {
            "embeddings": [[round(float(x), 6) for x in row] for row in self.embeddings],
            "speech_s": [round(s, 2) for s in self.speech_s],
        }


def _file_stem(name: str) -> str:
    """A file name for a person's name: readable, safe, and distinct for distinct names."""
    slug = re.sub(r"[^\w.-]+", "-", name.strip().lower(), flags=re.UNICODE).strip(".-") or "x"
    if slug != name:
        slug = f"{slug}-{sum(ord(c) * 31**i for i, c in enumerate(name)) % 0xFFFFFF:06x}"
    return slug


def check_name(name: str) -> str:
    """Return ``name`` stripped, or a ValueError saying what a speaker name may be."""
    clean = name.strip()
    if not clean or len(clean) > 100 or any(c in clean for c in "\n\r\t=/\\"):
        raise ValueError(
            f"bad speaker name {name!r}: give 1-100 characters without tabs, newlines, '=' or "
            "slashes"
        )
    if re.fullmatch(r"SPEAKER_\d+", clean):
        raise ValueError(f"{clean!r} looks like an anonymous label: give the person's name")
    return clean


class SpeakerLibrary:
    """A folder of enrolled speakers (one JSON file each), safe to share between users.

    Args:
        folder: the library folder (created on the first enrollment); None for
            :func:`default_library_dir`.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_library_dir()

    def __repr__(self) -> str:
        return f"SpeakerLibrary({str(self.folder)!r})"

    def _records(self) -> dict[str, tuple[Path, dict[str, Any]]]:
        records: dict[str, tuple[Path, dict[str, Any]]] = {}
        if not self.folder.is_dir():
            return records
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                records[str(data["name"])] = (path, data)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("%s: not a speaker record, skipped (%s)", path, exc)
        return records

    def names(self) -> list[str]:
        """The enrolled names, sorted."""
        return sorted(self._records(), key=str.lower)

    def describe(self) -> list[dict[str, Any]]:
        """One summary per speaker: name, models, clip count, seconds of speech, kept audio."""
        rows = []
        records = self._records()
        for name in sorted(records, key=str.lower):
            path, data = records[name]
            prints = data.get("voiceprints", {})
            rows.append(
                {
                    "name": name,
                    "models": sorted(prints),
                    "clips": max(
                        (len(p.get("embeddings", [])) for p in prints.values()), default=0
                    ),
                    "speech_s": round(
                        max((sum(p.get("speech_s", [])) for p in prints.values()), default=0.0), 1
                    ),
                    "audio_kept": path.with_suffix(".clips").is_dir(),
                    "file": str(path),
                }
            )
        return rows

    def voiceprints(self, model: str) -> dict[str, Voiceprint]:
        """Every enrolled speaker's voiceprint for ``model`` (speakers without one are left out).

        Speakers enrolled only with another model are logged: re-enroll them with this one.
        """
        found: dict[str, Voiceprint] = {}
        for name, (_, data) in self._records().items():
            record = data.get("voiceprints", {}).get(model)
            if record and record.get("embeddings"):
                found[name] = Voiceprint(model, record["embeddings"], record.get("speech_s", []))
            else:
                logger.warning(
                    "speaker %r has no voiceprint of %s: re-enroll them (modelmora speakers add)",
                    name,
                    model,
                )
        return found

    def add(
        self,
        name: str,
        model: str,
        embeddings: Sequence[Sequence[float]],
        speech_s: Sequence[float],
        keep_audio: Iterable[str | os.PathLike[str]] = (),
    ) -> Path:
        """Enroll clips of ``name`` (adding to their voiceprint if they are already enrolled).

        Args:
            name: the person's name.
            model: the embedding model key (``name@version``).
            embeddings: one embedding per clip.
            speech_s: the seconds of speech in each clip.
            keep_audio: clip files to copy into the library (none: only embeddings are kept).

        Returns:
            The speaker's JSON file.

        Raises:
            ValueError: a bad name, no embeddings, or a clip with too little speech.
        """
        name = check_name(name)
        if not embeddings or len(embeddings) != len(speech_s):
            raise ValueError("give one embedding and one speech duration per clip")
        short = [s for s in speech_s if s < MIN_ENROLL_SPEECH_S]
        if short:
            raise ValueError(
                f"a clip holds only {min(short):.1f} s of speech; enrollment needs at least "
                f"{MIN_ENROLL_SPEECH_S:.0f} s per clip: give a longer clip"
            )
        existing = self._records().get(name)
        path = existing[0] if existing else self.folder / f"{_file_stem(name)}.json"
        data: dict[str, Any] = (
            existing[1] if existing else {"name": name, "created": _now(), "voiceprints": {}}
        )
        record = data["voiceprints"].setdefault(model, {"embeddings": [], "speech_s": []})
        voiceprint = Voiceprint(
            model,
            [*record["embeddings"], *(unit(e).tolist() for e in embeddings)],
            [*record.get("speech_s", []), *(float(s) for s in speech_s)],
        )
        data["voiceprints"][model] = voiceprint.to_dict()
        data["updated"] = _now()
        self.folder.mkdir(parents=True, exist_ok=True)
        clips = list(keep_audio)
        if clips:
            kept = path.with_suffix(".clips")
            kept.mkdir(exist_ok=True)
            for clip in clips:
                shutil.copy2(clip, kept / Path(clip).name)
        write_atomic(path, [json.dumps(data, ensure_ascii=False, indent=1), "\n"])
        logger.info("enrolled %s (%d clip(s), %s) in %s", name, len(embeddings), model, path)
        return path

    def remove(self, name: str) -> None:
        """Forget ``name`` (and their kept audio).

        Raises:
            KeyError: nobody of that name is enrolled.
        """
        path, _ = self._get(name)
        shutil.rmtree(path.with_suffix(".clips"), ignore_errors=True)
        path.unlink()

    def rename(self, old: str, new: str) -> Path:
        """Rename an enrolled speaker.

        Raises:
            KeyError: ``old`` is not enrolled.
            ValueError: ``new`` is a bad name or already enrolled.
        """
        new = check_name(new)
        path, data = self._get(old)
        if new != old and new in self._records():
            raise ValueError(f"{new!r} is already enrolled: remove them first or pick a name")
        data["name"] = new
        data["updated"] = _now()
        target = self.folder / f"{_file_stem(new)}.json"
        write_atomic(target, [json.dumps(data, ensure_ascii=False, indent=1), "\n"])
        if target != path:
            if path.with_suffix(".clips").is_dir():
                path.with_suffix(".clips").rename(target.with_suffix(".clips"))
            path.unlink()
        return target

    def _get(self, name: str) -> tuple[Path, dict[str, Any]]:
        records = self._records()
        if name not in records:
            known = ", ".join(sorted(records)) or "nobody yet"
            raise KeyError(f"no speaker {name!r} in {self.folder} (enrolled: {known})")
        return records[name]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class SpeakerMatch:
    """The naming decision for one speaker.

    Attributes:
        name: the enrolled name, or None when nobody matched well enough.
        similarity: cosine similarity to the best-matching enrolled voiceprint (None: nobody
            is enrolled for this model).
        best: the enrolled name that resembled most (named or not).
        runner_up: the second best similarity (None with fewer than two enrolled).
        score: the s-normalised score the decision was taken on (None: raw similarities,
            the cohort being too small).
        margin: that score's lead over the runner-up's (None as for ``score``).
    """

    name: str | None
    similarity: float | None
    best: str | None = None
    runner_up: float | None = None
    score: float | None = None
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of this naming."""

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        record = {
            "name": self.name,
            "similarity": rounded(self.similarity),
            "closest": self.best,
            "runner_up_similarity": rounded(self.runner_up),
        }
        if self.score is not None:
            record["score"] = round(self.score, 3)
            record["margin"] = None if self.margin is None else round(self.margin, 3)
        return record


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (row, column) pairs of lowest total ``cost``, best pair first (greedy).

    Linking and naming run in a light worker where scipy's solver would cost 40 MB of
    imports. For the handful of speakers in a recording the greedy choice is the optimal one
    whenever one pairing clearly wins, which is what the naming margin asks for anyway.

    Returns:
        The rows (ascending) and their columns, as scipy's function of that name does.
    """
    left = np.array(cost, dtype=float, copy=True)
    pairs: list[tuple[int, int]] = []
    for _ in range(min(left.shape) if left.ndim == 2 else 0):
        row, col = np.unravel_index(int(np.argmin(left)), left.shape)
        pairs.append((int(row), int(col)))
        left[row, :] = np.inf
        left[:, col] = np.inf
    pairs.sort()
    return np.array([r for r, _ in pairs], dtype=int), np.array([c for _, c in pairs], dtype=int)


def snorm(
    similarity: np.ndarray,
    queries: np.ndarray,
    prints: np.ndarray,
    cohort: np.ndarray,
    top: int = COHORT_TOP,
) -> np.ndarray:
    """Adaptive s-norm of a ``(queries, prints)`` cosine similarity matrix against a cohort.

    Each score is set against the scores of both of its voices with the cohort (people known
    to be neither of them, or mostly so): ``((s - mean_q) / std_q + (s - mean_p) / std_p) / 2``
    over each voice's ``top`` closest cohort voices. A cohort voice that is the very print
    (or query) being scored is left out of its statistics.

    Args:
        similarity: ``queries @ prints.T``.
        queries: unit query embeddings ``(q, d)``.
        prints: unit enrolled embeddings ``(p, d)``.
        cohort: unit embeddings of other voices ``(c, d)``.
        top: how many of each voice's closest cohort voices give its statistics.

    Returns:
        The normalised scores, shape of ``similarity``.
    """

    def stats(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = vectors @ cohort.T
        scores = np.where(scores > 1.0 - 1e-6, -np.inf, scores)  # itself, if in the cohort
        best = -np.sort(-scores, axis=1)[:, : max(1, top)]
        kept = np.isfinite(best)
        count = np.maximum(kept.sum(axis=1), 1)
        mean = np.where(kept, best, 0.0).sum(axis=1) / count
        spread = np.where(kept, best - mean[:, None], 0.0)
        # The 0.02 floor keeps a cohort of near-identical scores from dividing by ~0.
        return mean, np.sqrt((spread**2).sum(axis=1) / count) + 0.02

    mean_q, std_q = stats(queries)
    mean_p, std_p = stats(prints)
    return 0.5 * (
        (similarity - mean_q[:, None]) / std_q[:, None] + (similarity - mean_p[None]) / std_p[None]
    )


def _trial_snorm(
    similarity: np.ndarray, queries: np.ndarray, prints: np.ndarray, others: np.ndarray
) -> np.ndarray:
    """S-norm of each (speaker, print) score against the voices known to be neither.

    For speaker ``i`` of a file and print ``p`` the cohort is the file's other speakers, the
    other enrolled voices and ``others``: if ``i`` is ``p``'s person, none of them is (one
    person is one speaker of a file, one voiceprint of a library), so a genuine score is never
    set against the same person heard elsewhere (the speakers of other files may be).
    """
    score = np.empty_like(similarity)
    for i in range(len(queries)):
        for p in range(len(prints)):
            cohort = np.concatenate(
                [np.delete(queries, i, axis=0), np.delete(prints, p, axis=0), others]
            )
            score[i, p] = snorm(
                similarity[i : i + 1, p : p + 1], queries[i : i + 1], prints[p : p + 1], cohort
            )[0, 0]
    return score


def match_speakers(
    speakers: Mapping[K, Any],
    enrolled: Mapping[str, Voiceprint | Any],
    thresholds: Thresholds,
    cohort: Sequence[Any] = (),
) -> dict[K, SpeakerMatch]:
    """Name speakers by voice, one-to-one, with a threshold and a margin.

    Args:
        speakers: label → centroid embedding of the speakers to name (of one file, or of
            linked groups that are known to be different people).
        enrolled: name → :class:`Voiceprint` (or an embedding) of the same model.
        thresholds: the model's calibrated thresholds.
        cohort: embeddings of other voices, known to be none of ``speakers``: with the
            other speakers and the other enrolled voices, at least :data:`MIN_COHORT` of them
            turn on score normalisation (:func:`snorm`; each score against the voices known
            to be neither of its two) and the ``name_norm``/``margin_norm``/``name_floor``
            thresholds.

    Returns:
        label → :class:`SpeakerMatch` for every label.
    """
    labels, names = list(speakers), list(enrolled)
    if not labels or not names:
        return {label: SpeakerMatch(None, None) for label in labels}
    queries = unit([speakers[label] for label in labels])
    prints = unit(
        [v.centroid if isinstance(v, Voiceprint) else v for v in (enrolled[n] for n in names)]
    )
    similarity = queries @ prints.T
    others = unit(list(cohort)) if len(cohort) else np.zeros((0, prints.shape[1]))
    normalised = len(labels) + len(names) - 2 + len(others) >= MIN_COHORT
    if normalised:
        score = _trial_snorm(similarity, queries, prints, others)
        floor, margin = thresholds.name_norm, thresholds.margin_norm
        raw_floor = thresholds.name_floor
    else:
        score, floor, margin = similarity, thresholds.name, thresholds.margin
        raw_floor = thresholds.name
    rows, cols = linear_sum_assignment(-score)
    assigned = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    matches = {}
    for row, label in enumerate(labels):
        order = np.argsort(score[row])[::-1]
        runner = float(similarity[row, order[1]]) if len(names) > 1 else None
        col = assigned.get(row, int(order[0]))
        rest = np.delete(score[row], col)
        second = float(rest.max()) if rest.size else -np.inf
        name = None
        if (
            row in assigned
            and score[row, col] >= floor
            and score[row, col] - second >= margin
            and similarity[row, col] >= raw_floor
        ):
            name = names[col]
        matches[label] = SpeakerMatch(
            name,
            float(similarity[row, col]),
            names[col],
            runner,
            float(score[row, col]) if normalised else None,
            (float(score[row, col]) - second) if normalised and rest.size else None,
        )
    return matches
