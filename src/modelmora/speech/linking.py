"""Linking anonymous speakers across the files of a batch: one voice, one person number.

Scores (:func:`link_scores`): every pair of speakers of two different files gets its cosine
similarity s-normalised (the adaptive s-norm of :func:`modelmora.speech.speakers.snorm`)
against a cohort of voices known, or very likely, to be neither of the two:

- the other speakers of both files: one person is one speaker of a file, so if speaker ``i`` of
  file A is speaker ``j`` of file B, nobody else in A or B is them (a free impostor cohort);
- the speakers of the batch's other files, except, in each of those files, the one most like
  the voice whose statistics are taken: that one may be the same person heard again, and
  leaving them in would raise the cohort's mean exactly for people heard in many files (a
  weekly meeting), so that they would never link.

Grouping (:func:`link_speakers`): constrained agglomerative clustering, average linkage over
those scores. The two groups with the highest score merge while it clears the model's linking
threshold, the average cosine similarity clears a floor, the lead over the competing
candidates (the groups that could take the same place) clears a margin, and the two groups
share no file: two speakers of one file never become one person. The result does not depend on
the order of the files. With fewer than :data:`~modelmora.speech.speakers.MIN_COHORT` cohort
voices (two files of two speakers) the raw cosine rules apply instead.

Pure numpy, as the rest of the speakers layer (it runs in a light worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelmora.speech.speakers import COHORT_TOP, MIN_COHORT, Thresholds, unit

__all__ = ["LinkScores", "link_scores", "link_speakers"]


@dataclass(frozen=True)
class LinkScores:
    """The pairwise scores of a batch's speakers.

    Attributes:
        keys: (file index, label) of each speaker, the rows and columns of the matrices.
        cosine: cosine similarities, ``(n, n)``.
        score: s-normalised scores of speakers of different files (``-inf`` within a file and
            on the diagonal), or None when the cohort is too small (raw cosines rule then).
        cohort: the smallest cohort any pair was normalised against.
    """

    keys: list[tuple[int, str]]
    cosine: np.ndarray
    score: np.ndarray | None
    cohort: int


def _side_stats(
    cosine: np.ndarray, file_of: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per ordered pair (a, b) of different files: mean and spread of a's cohort scores.

    a's cohort for the pair: everyone but a and b, less the speaker most like a in each file
    other than a's and b's (see the module docstring).
    """
    n = len(file_of)
    files = np.unique(file_of)
    mean = np.zeros((n, n))
    std = np.ones((n, n))
    smallest = n
    # The speaker most like each a in each file (column f: file files[f]).
    closest = np.stack(
        [np.flatnonzero(file_of == f)[np.argmax(cosine[:, file_of == f], axis=1)] for f in files],
        axis=1,
    )
    for a in range(n):
        base = np.ones(n, dtype=bool)
        base[a] = False
        others = files != file_of[a]
        base[closest[a, others]] = False
        for column in np.flatnonzero(others):
            keep = base.copy()
            keep[closest[a, column]] = True  # b's file: all but b are known impostors
            pool = np.flatnonzero(keep)
            order = pool[np.argsort(-cosine[a, pool])][: top + 1]
            smallest = min(smallest, pool.size - 1)
            values = cosine[a, order]
            if values.size == 0:
                continue
            # Most of B's speakers are not among a's closest: one statistic serves them all.
            targets = np.flatnonzero(file_of == files[column])
            mean[a, targets] = values[:top].mean()
            # The 0.02 floor keeps a cohort of near-identical scores from dividing by ~0.
            std[a, targets] = values[:top].std() + 0.02
            for position in np.flatnonzero(file_of[order[:top]] == files[column]):
                b, rest = order[position], np.delete(values, position)[:top]
                if rest.size:
                    mean[a, b], std[a, b] = rest.mean(), rest.std() + 0.02
    return mean, std, smallest


def link_scores(files: Sequence[Mapping[str, Any]], top: int = COHORT_TOP) -> LinkScores:
    """Score every pair of speakers of different files of a batch.

    Args:
        files: per file, label → centroid embedding.
        top: each voice's statistics come from its this many closest cohort voices.

    Returns:
        The :class:`LinkScores`; ``score`` is None with fewer than
        :data:`~modelmora.speech.speakers.MIN_COHORT` cohort voices for some pair.
    """
    keys = [(index, label) for index, speakers in enumerate(files) for label in speakers]
    if not keys:
        return LinkScores([], np.zeros((0, 0)), None, 0)
    vectors = unit([files[f][label] for f, label in keys])
    cosine = vectors @ vectors.T
    file_of = np.array([f for f, _ in keys])
    if len(np.unique(file_of)) < 2:
        return LinkScores(keys, cosine, None, 0)
    mean, std, smallest = _side_stats(cosine, file_of, top)
    if smallest < MIN_COHORT:
        return LinkScores(keys, cosine, None, smallest)
    score = 0.5 * ((cosine - mean) / std + (cosine - mean.T) / std.T)
    score[file_of[:, None] == file_of[None, :]] = -np.inf
    return LinkScores(keys, cosine, score, smallest)


def _best_merge(
    score: np.ndarray,
    cosine: np.ndarray,
    shares: np.ndarray,
    alive: np.ndarray,
    blocked: np.ndarray,
    rules: tuple[float, float, float],
) -> tuple[int, int] | None:
    """The admissible pair of groups to merge next, or None (see :func:`link_speakers`)."""
    threshold, floor, margin = rules
    conflict = shares | ~alive[:, None] | ~alive[None, :]
    candidates = np.where(conflict | blocked, -np.inf, score)
    while True:
        flat = int(np.argmax(candidates))
        g, h = divmod(flat, candidates.shape[1])
        best = candidates[g, h]
        if not np.isfinite(best) or best < threshold:
            return None
        # The competitors: groups that could take g's place beside h (they share a file with
        # g), or h's place beside g. A lead too small over them is a guess, not a link.
        rivals_g = shares[g] & alive
        rivals_g[g] = False
        rivals_h = shares[h] & alive
        rivals_h[h] = False
        runner = max(
            (score[rivals_g & ~conflict[h], h].max(initial=-np.inf)),
            (score[g, rivals_h & ~conflict[g]].max(initial=-np.inf)),
        )
        if cosine[g, h] >= floor and best - runner >= margin:
            return g, h
        blocked[g, h] = blocked[h, g] = True
        candidates[g, h] = candidates[h, g] = -np.inf


def link_speakers(
    files: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
    weights: Sequence[Mapping[str, float]] | None = None,
) -> tuple[list[dict[str, int]], list[np.ndarray]]:
    """Link the per-file speakers of a batch: the same voice gets the same person number.

    Args:
        files: per file, label → centroid embedding (leave out speakers with too little
            speech: their embeddings say little about the voice).
        thresholds: the model's calibrated thresholds (``link_norm``, ``link_floor``,
            ``link_margin_norm`` with a cohort; ``link`` and ``link_margin`` without).
        weights: per file, label → seconds of speech (weights each person's centroid).

    Returns:
        Per file, label → person number (0, 1... by first appearance in file order), and each
        person's centroid (speech-weighted, re-normalised).
    """
    scores = link_scores(files)
    n = len(scores.keys)
    file_of = np.array([f for f, _ in scores.keys], dtype=int)
    if scores.score is None:
        pair = scores.cosine.copy()
        pair[file_of[:, None] == file_of[None, :]] = -np.inf
        rules = (thresholds.link, -1.0, thresholds.link_margin)
    else:
        pair = scores.score
        rules = (thresholds.link_norm, thresholds.link_floor, thresholds.link_margin_norm)
    # Average linkage, kept as sums over members: group scores are sums / (size × size).
    sums, cos_sums = pair.copy(), scores.cosine.copy()
    sizes = np.ones(n)
    members = [[i] for i in range(n)]
    in_files = np.zeros((n, len(files)), dtype=bool)
    in_files[np.arange(n), file_of] = True
    alive = np.ones(n, dtype=bool)
    blocked = np.zeros((n, n), dtype=bool)
    while alive.sum() > 1:
        cells = np.outer(sizes, sizes)
        shares = (in_files.astype(int) @ in_files.T.astype(int)) > 0
        found = _best_merge(sums / cells, cos_sums / cells, shares, alive, blocked, rules)
        if found is None:
            break
        g, h = found
        sums[g] += sums[h]
        sums[:, g] += sums[:, h]
        cos_sums[g] += cos_sums[h]
        cos_sums[:, g] += cos_sums[:, h]
        sizes[g] += sizes[h]
        in_files[g] |= in_files[h]
        members[g] += members[h]
        blocked[g] = blocked[g] | blocked[h]
        blocked[:, g] = blocked[g]
        alive[h] = False
        sizes[h] = 1.0
    person_of: dict[int, int] = {}
    links: list[dict[str, int]] = [{} for _ in files]
    centroids: list[np.ndarray] = []
    group_of = {i: int(g) for g in np.flatnonzero(alive) for i in members[g]}
    for i, (f, label) in enumerate(scores.keys):
        group = group_of[i]
        if group not in person_of:
            person_of[group] = len(person_of)
            centroids.append(np.zeros(len(files[f][label])))
        weight = (weights[f].get(label, 1.0) if weights else 1.0) or 1.0
        centroids[person_of[group]] = centroids[person_of[group]] + weight * unit(files[f][label])
        links[f][label] = person_of[group]
    return links, [unit(c) for c in centroids]
