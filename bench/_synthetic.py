"""Synthetic stand-ins for ResNet34 embeddings, exact top-k search and recall, for the ANN benchmark.

The vectors are SYNTHETIC: clustered, L2-normalised float32 points whose nearest-neighbour cosine
similarities (about 0.6-0.95 for the top-1) resemble those of CNN image embeddings. They are not
embeddings of any image.
"""

from __future__ import annotations

import numpy as np


def make_clustered(
    n: int,
    dim: int = 512,
    *,
    cluster_size: int = 100,
    rank: int = 16,
    centre_cos: float = 0.3,
    spread: float = 0.8,
    noise: float = 0.3,
    seed: int = 0,
    chunk: int = 65_536,
) -> np.ndarray:
    """Return `n` unit vectors (float32, shape (n, dim)) drawn from ~n/cluster_size gaussian clusters.

    Centres are random on the sphere but share a common direction, so two centres have cosine about
    `centre_cos` (pooled ReLU features are all non-negative, so real embeddings never sit at 90°).
    Each cluster varies mostly inside its own random `rank`-dimensional subspace (norm ~ `spread`)
    plus an isotropic floor (norm ~ `noise`): isotropic noise alone makes every member of a cluster
    equidistant in 512-d, which real embeddings (low intrinsic dimension) are not. A per-cluster
    log-normal scale gives tight and loose clusters, so near-duplicates and loose matches both occur.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(1, n // cluster_size)
    common = _unit(rng.standard_normal(dim, dtype=np.float32))
    own = _unit(rng.standard_normal((n_clusters, dim), dtype=np.float32))
    centres = _unit(np.sqrt(centre_cos) * common + np.sqrt(1.0 - centre_cos) * own)
    # Columns with N(0, 1/dim) entries are nearly orthonormal in 512-d.
    bases = rng.standard_normal((n_clusters, rank, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    scales = np.exp(rng.normal(0.0, 0.4, n_clusters)).astype(np.float32)
    labels = rng.integers(n_clusters, size=n)

    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        scale = scales[lab, None]
        coeffs = rng.standard_normal((len(lab), rank), dtype=np.float32) * (spread / np.sqrt(rank)) * scale
        x = centres[lab] + (noise / np.sqrt(dim)) * scale * rng.standard_normal((len(lab), dim), dtype=np.float32)
        for r in range(rank):
            x += coeffs[:, r : r + 1] * bases[lab, r]
        out[start : start + chunk] = _unit(x)
    return out


def exact_one(base: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids for one query: the brute-force baseline a single request would run."""
    s = base @ query
    part = np.argpartition(-s, k - 1)[:k]
    return part[np.argsort(-s[part])]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
