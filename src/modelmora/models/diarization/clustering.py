"""Speaker clustering: how many voices, and which embeddings belong to which.

The count is estimated by spectral clustering with the normalised maximum eigengap (NME-SC;
Park et al., "Auto-Tuning Spectral Clustering for Speaker Diarization Using Normalized Maximum
Eigengap", 2019): the cosine affinity is pruned to each row's ``p`` nearest neighbours, and the
``p`` that makes the graph's block structure clearest (largest eigengap relative to ``p``) wins;
the eigengap's position is the speaker count. On short, far-field recordings NME-SC alone
over-splits (one voice's embeddings vary with distance and loudness), so clusters whose
centroids are as alike as one voice's embeddings (cosine above ``same_voice``, a property of
the embedding model, not of a data set) are then merged, most alike first.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["assign_to_centroids", "centroids_of", "merge_alike", "spectral_clusters"]

logger = logging.getLogger(__name__)


def _laplacian_eigen(affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import eigh

    degree = affinity.sum(axis=1)
    laplacian = np.diag(degree) - affinity
    values, vectors = eigh(laplacian)
    return values, vectors


def _pruned(similarity: np.ndarray, p: int) -> np.ndarray:
    """Keep each row's ``p`` largest similarities as 1, the rest 0; symmetrise."""
    n = len(similarity)
    keep = np.argsort(-similarity, axis=1)[:, :p]
    binary = np.zeros_like(similarity)
    binary[np.repeat(np.arange(n), p), keep.ravel()] = 1.0
    return (binary + binary.T) / 2


def _nme_count(similarity: np.ndarray, min_k: int, max_k: int) -> tuple[int, np.ndarray, float]:
    """Return (count, pruned affinity, NME ratio) of the best ``p``."""
    n = len(similarity)
    best: tuple[float, int, np.ndarray] | None = None
    # Every p up to n/4 on short recordings; at most 30 of them, evenly spread, on long ones
    # (each costs an eigendecomposition of an n x n matrix).
    top_p = max(2, n // 4)
    for p in sorted({int(v) for v in np.linspace(1, top_p, min(top_p, 30))}):
        affinity = _pruned(similarity, p)
        values, _ = _laplacian_eigen(affinity)
        top = values[: max_k + 1]
        gaps = np.diff(top)
        lo = max(min_k, 1) - 1  # gap index k-1 means k clusters
        if lo >= len(gaps):
            continue
        index = lo + int(np.argmax(gaps[lo:]))
        normalised = gaps[index] / (values[-1] + 1e-10)
        ratio = p / (normalised + 1e-10)
        if best is None or ratio < best[0]:
            best = (ratio, index + 1, affinity)
    if best is None:
        return min_k, _pruned(similarity, max(1, n // 4)), 0.0
    return best[1], best[2], best[0]


def spectral_clusters(
    embeddings: np.ndarray,
    num_speakers: int | None = None,
    min_speakers: int = 1,
    max_speakers: int = 8,
    same_voice: float = 0.75,
) -> np.ndarray:
    """Cluster unit embeddings into speakers; one integer label per row.

    Args:
        embeddings: ``(n, d)`` L2-normalised.
        num_speakers: the exact count, or None to estimate it (NME-SC, then merging).
        min_speakers: the fewest speakers the estimate may give.
        max_speakers: the most.
        same_voice: clusters whose centroids' cosine similarity is above this are one
            speaker (when counting).

    Returns:
        Labels ``0..k-1``.
    """
    from sklearn.cluster import KMeans

    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    if num_speakers is not None:
        min_speakers = max_speakers = num_speakers
    max_k = min(max_speakers, n)
    min_k = min(min_speakers, max_k)
    if max_k <= 1 or n < 3:
        return np.zeros(n, dtype=int) if max_k <= 1 or n == 1 else np.arange(n) % max_k
    similarity = embeddings @ embeddings.T
    count, affinity, ratio = _nme_count(similarity, min_k, max_k)
    logger.debug("NME-SC: %d embeddings → %d speakers (ratio %.2f)", n, count, ratio)
    if count == 1:
        return np.zeros(n, dtype=int)
    count = max(count, min_k)
    _, vectors = _laplacian_eigen(affinity)
    spectral = vectors[:, :count]
    spectral /= np.linalg.norm(spectral, axis=1, keepdims=True) + 1e-10
    labels = KMeans(n_clusters=count, n_init=10, random_state=0).fit_predict(spectral)
    labels = np.asarray(labels, dtype=int)
    if num_speakers is None:
        labels = merge_alike(embeddings, labels, same_voice, min_k)
    return labels


def merge_alike(
    embeddings: np.ndarray, labels: np.ndarray, same_voice: float, min_k: int = 1
) -> np.ndarray:
    """Merge the two clusters with the most alike centroids while above ``same_voice``."""
    labels = labels.copy()
    while labels.max() + 1 > min_k:
        centroids = centroids_of(embeddings, labels)
        similarity = centroids @ centroids.T
        np.fill_diagonal(similarity, -1.0)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if similarity[a, b] < same_voice:
            break
        logger.debug("merging clusters %d and %d (centroid cosine %.2f)", a, b, similarity[a, b])
        labels[labels == b] = a
        labels = np.unique(labels, return_inverse=True)[1]
    return labels


def centroids_of(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean embedding of each label ``0..max``: shape ``(k, d)``."""
    k = int(labels.max()) + 1 if labels.size else 0
    centroids = np.stack([embeddings[labels == c].mean(axis=0) for c in range(k)])
    return centroids / (np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-10)


def assign_to_centroids(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Assign the local speakers of one chunk to distinct centroids (Hungarian, cosine).

    Two voices heard in the same chunk are two speakers, so they never share a centroid while
    there are centroids enough; extra local speakers take their nearest centroid.

    Args:
        embeddings: ``(m, d)`` unit embeddings of one chunk's local speakers.
        centroids: ``(k, d)`` unit centroids.

    Returns:
        One centroid index per row.
    """
    from scipy.optimize import linear_sum_assignment

    score = embeddings @ centroids.T
    labels = np.argmax(score, axis=1)
    rows, cols = linear_sum_assignment(-score)
    labels[rows] = cols
    return labels
