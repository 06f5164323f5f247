"""Clustering that knows some voices already: enrolled voiceprints as seeds.

Without a speaker library the default engine finds voices by clustering alone, and two people
whose voices CAM++ hears as alike (synthetic voices, often: centroids at cosine 0.72-0.81) end
up as one cluster, which no later naming can split. With a library, each embedded unit (a
local speaker of a chunk, or one long run of it) is first compared with the enrolled voices by
the very rule that names speakers (:func:`modelmora.speech.speakers.match_speakers`: a
calibrated similarity threshold and margin, s-normalised against the other enrolled voices),
and:

1. units the rule names are *claimed* by that person; a person claimed for at least
   :data:`~modelmora.speech.speakers.MIN_SPEAKER_S` of speech is present, one cluster each,
   and two present people never merge;
2. the other units are clustered as without a library (the anonymous voices);
3. an anonymous cluster that the same rule names as a present person (its centroid against
   every enrolled voice) joins that person; the others stay anonymous.

Nothing changes when no unit is claimed, so a library of people who are not in a recording
leaves its diarization as it was. The rule decides what becomes a cluster; the names
themselves are still given afterwards, to the final centroids, by the batch's naming step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelmora.models.diarization.clustering import centroids_of, voice_clusters
from modelmora.speech.speakers import MIN_SPEAKER_S, match_speakers, thresholds_for

__all__ = ["claim_units", "seeded_clusters"]


def claim_units(embeddings: np.ndarray, known: Mapping[str, np.ndarray], model: str) -> np.ndarray:
    """Which enrolled voice each unit embedding is, by the naming rule; -1 for nobody.

    Args:
        embeddings: ``(n, d)`` unit embeddings.
        known: name → enrolled voiceprint centroid, of the same model.
        model: the embedding model's key (``name@version``), for its calibrated thresholds.

    Returns:
        ``n`` indexes into ``list(known)``, or -1.
    """
    names = list(known)
    thresholds = thresholds_for(model)
    claims = np.full(len(embeddings), -1, dtype=int)
    for row, vector in enumerate(embeddings):
        # One unit at a time: units of one recording may be the same person, so the rule's
        # one-to-one assignment across its queries does not apply to them.
        name = match_speakers({0: vector}, known, thresholds)[0].name
        if name is not None:
            claims[row] = names.index(name)
    return claims


def seeded_clusters(
    embeddings: np.ndarray,
    speech_s: np.ndarray,
    known: Mapping[str, np.ndarray],
    model: str,
    min_speakers: int = 1,
    max_speakers: int = 8,
    same_voice: float = 0.7,
) -> np.ndarray | None:
    """Cluster unit embeddings with enrolled voices as seeds (see the module docstring).

    Args:
        embeddings: ``(n, d)`` unit embeddings to cluster.
        speech_s: seconds of speech behind each.
        known: name → enrolled voiceprint centroid, of the same model.
        model: the embedding model's key.
        min_speakers: the fewest anonymous clusters plus present people (when there are
            unclaimed units to split).
        max_speakers: the most speakers in all.
        same_voice: as for :func:`voice_clusters`, among the anonymous units.

    Returns:
        Labels ``0..k-1`` (present people first), or None when nobody enrolled is present
        (cluster as without a library).
    """
    names = list(known)
    claims = claim_units(embeddings, known, model)
    mine = claims >= 0
    claimed_s = np.bincount(claims[mine], weights=speech_s[mine], minlength=len(known))
    present = [j for j in np.argsort(-claimed_s) if claimed_s[j] >= MIN_SPEAKER_S]
    present = present[:max_speakers]
    if not present:
        return None
    labels = np.full(len(embeddings), -1, dtype=int)
    for label, j in enumerate(present):
        labels[claims == j] = label
    rest = np.flatnonzero(labels < 0)
    room = max_speakers - len(present)
    if rest.size and room > 0:
        anonymous = voice_clusters(
            embeddings[rest], None, max(min_speakers - len(present), 1), room, same_voice
        )
        groups = centroids_of(embeddings[rest], anonymous)
        matches = match_speakers(dict(enumerate(groups)), known, thresholds_for(model))
        label_of = {names[j]: label for label, j in enumerate(present)}
        next_label = len(present)
        for group in range(len(groups)):
            joined = label_of.get(matches[group].name or "")
            if joined is None:  # nobody, or an enrolled person none of whose units was claimed
                joined, next_label = next_label, next_label + 1
            labels[rest[anonymous == group]] = joined
    elif rest.size:
        # No room for anyone else: the rest take the nearest present person.
        people = centroids_of(embeddings[labels >= 0], labels[labels >= 0])
        labels[rest] = np.argmax(embeddings[rest] @ people.T, axis=1)
    _, dense = np.unique(labels, return_inverse=True)
    return np.asarray(dense, dtype=int)
