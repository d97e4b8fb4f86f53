"""Relevance feedback: turn a query and the results a person liked and disliked into one ranking.

Two ways from the literature, both pure functions of unit vectors:

- ``rocchio``: one new query vector, q + alpha * mean(liked) - beta * mean(disliked), renormalised, then a plain
  nearest-neighbour search (Rocchio, 1971; Qdrant's ``average_vector`` strategy is the same with weights 1, 1, 1).
- ``best_score``: Qdrant's ``best_score`` strategy. Every candidate is scored by its best cosine to a positive
  (the query and the liked images) against its best cosine to a negative: the positive one when it is higher,
  else minus the negative one squared, so anything nearer a disliked image than every liked one sinks.

The service uses ``rocchio`` with ``ALPHA`` and ``BETA``: bench/feedback.py measured both on labelled sets and
docs/benchmarks.md ("Relevance feedback") has the numbers behind that choice.
"""

from __future__ import annotations

import numpy as np

# Weights of the mean liked and the mean disliked vector against the query's weight of 1 (measured).
ALPHA = 1.0
BETA = 1.0


class NoPositiveSignal(ValueError):
    """Nothing to search towards: no query image and no liked image (or they cancel out)."""


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _rows(vectors: np.ndarray | None, dim: int) -> np.ndarray:
    if vectors is None:
        return np.empty((0, dim), dtype=np.float32)
    rows = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def rocchio(
    query: np.ndarray | None,
    liked: np.ndarray | None,
    disliked: np.ndarray | None,
    *,
    dim: int,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> np.ndarray:
    """The unit vector q + alpha * mean(liked) - beta * mean(disliked) (each input normalised first).

    ``query`` may be None (a search from liked images only); ``liked`` and ``disliked`` are (n, dim) arrays or None.
    Raises ``NoPositiveSignal`` without a query and a liked image, or when the result has no direction.
    """
    pos, neg = _rows(liked, dim), _rows(disliked, dim)
    if query is None and len(pos) == 0:
        raise NoPositiveSignal("a search needs a query image or at least one liked image")
    v = np.zeros(dim, dtype=np.float32) if query is None else _unit(np.asarray(query, dtype=np.float32).reshape(dim))
    if len(pos):
        v = v + np.float32(alpha) * pos.mean(axis=0)
    if len(neg):
        v = v - np.float32(beta) * neg.mean(axis=0)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise NoPositiveSignal("the liked and disliked images cancel out: like another image")
    return (v / norm).astype(np.float32)


def best_score(candidates: np.ndarray, positives: np.ndarray, negatives: np.ndarray | None) -> np.ndarray:
    """Qdrant's best-score of each candidate row: its best cosine to a positive row when that beats its best
    cosine to a negative row, else minus that negative cosine squared. All rows are unit vectors."""
    if len(positives) == 0:
        raise NoPositiveSignal("a search needs a query image or at least one liked image")
    best_pos = (candidates @ positives.T).max(axis=1)
    if negatives is None or len(negatives) == 0:
        return best_pos
    best_neg = (candidates @ negatives.T).max(axis=1)
    return np.where(best_pos > best_neg, best_pos, -(best_neg * best_neg))
