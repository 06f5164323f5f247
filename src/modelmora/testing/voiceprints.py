"""Synthetic voiceprints for the naming and linking tests: unit vectors, no model."""

from __future__ import annotations

import numpy as np

__all__ = ["alike_voice", "heard_again", "random_voice"]


def random_voice(seed: int, dim: int = 32) -> np.ndarray:
    """A voice: a random unit vector, the same for the same ``seed``."""
    vector = np.random.default_rng(seed).normal(size=dim)
    return vector / np.linalg.norm(vector)


def heard_again(vector: np.ndarray, seed: int, noise: float = 0.15) -> list[float]:
    """The same voice heard again: a small random change, re-normalised."""
    other = vector + noise * np.random.default_rng(1000 + seed).normal(size=vector.size) / 5
    return (other / np.linalg.norm(other)).tolist()


def alike_voice(seed: int, common: np.ndarray, share: float) -> np.ndarray:
    """A voice sharing ``share`` of its direction with ``common`` (one synthesizer's voices)."""
    vector = share * common + (1 - share) * random_voice(seed)
    return vector / np.linalg.norm(vector)
