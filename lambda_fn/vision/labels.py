"""Nearest neighbours restricted to some labels, on an Annoy index that knows nothing of labels.

Annoy cannot filter while it searches, so a filtered search oversamples: it asks for about
``need / share * OVERSAMPLE`` neighbours (``share``: the labels' fraction of the collection), keeps those
with a wanted label, and asks again ``GROWTH`` times as many when too few survived, at most ``TRIES``
times. Rare labels are searched exactly instead: those with at most ``SCAN_MAX_IMAGES`` images, and those
for which oversampling would ask for more than ``MAX_CANDIDATES`` neighbours. The same exact scan ends a
search whose tries all came back short. An exact scan is the dot product with each of the labels' vectors,
read straight from the memory-mapped index file (``item_vectors``); where that view is not available they
are read out of Annoy on a label's first scan (~70 µs a vector) and kept, up to ``CACHE_BYTES``. The
constants come from ``bench/filter.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import KeyEntry

OVERSAMPLE = 2.0
GROWTH = 4
TRIES = 3
MAX_CANDIDATES = 2000
SCAN_MAX_IMAGES = 10_000
CACHE_BYTES = 64 << 20
# Annoy 1.17 stores an angular index's item i as a node of n_descendants and two child slots (3 x 4 bytes),
# then the vector, at i * node size from the start of the file.
_ANGULAR_NODE_HEADER = 3


def item_vectors(path: Path, index: AnnoyIndex, dim: int) -> np.ndarray | None:
    """The item vectors of an angular Annoy index as a read-only (count, dim) float32 view of its file, or None.

    ``get_item_vector`` builds a Python list per call (~70 µs at 512-d); the view reads the memory map in
    place. The node layout is Annoy's, not a documented API, so the view is checked against
    ``get_item_vector`` first, and None (use ``get_item_vector``) is the answer when it does not match.
    """
    count, stride = index.get_n_items(), _ANGULAR_NODE_HEADER + dim
    try:
        raw = np.memmap(path, dtype=np.float32, mode="r")
    except (OSError, ValueError):
        return None
    if count == 0 or raw.size < count * stride:
        return None
    view = raw[: count * stride].reshape(count, stride)[:, _ANGULAR_NODE_HEADER:]
    for i in {0, count // 2, count - 1}:
        if not np.array_equal(view[i], np.asarray(index.get_item_vector(i), dtype=np.float32)):
            return None
    return view


class LabelIndex:
    """Label -> ids of one build, built once when the build loads, and the filtered search over it."""

    def __init__(self, keys: Sequence[KeyEntry], index: AnnoyIndex, n_trees: int, *, vectors: np.ndarray | None = None):
        """``vectors``: every item's vector by id (``item_vectors``), when the index file can be read in place."""
        self.index, self.n_trees, self.count, self.vectors = index, n_trees, len(keys), vectors
        counts = Counter(e.label for e in keys if e.label)
        self.names = [name for name, _ in counts.most_common()]  # most frequent first
        self.number = {name: i for i, name in enumerate(self.names)}
        # label number per id (-1: no label); a filter is a boolean mask over label numbers
        self.of = np.array([self.number[e.label] if e.label else -1 for e in keys], dtype=np.int32)
        order = np.argsort(self.of, kind="stable")
        bounds = np.searchsorted(self.of[order], np.arange(len(self.names) + 1))
        self.ids = {name: order[bounds[i] : bounds[i + 1]] for i, name in enumerate(self.names)}
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def unknown(self, labels: Collection[str]) -> list[str]:
        """The labels of ``labels`` no image of this build has."""
        return [label for label in labels if label not in self.ids]

    def search(
        self, vector: np.ndarray, k: int, labels: Collection[str], *, exclude: int | None = None, search_k: int = -1
    ) -> list[tuple[int, float]]:
        """Up to k (id, angular distance) with one of ``labels``, nearest first, ``exclude`` left out."""
        wanted = np.zeros(len(self.names) + 1, dtype=bool)  # the last slot is -1, "no label"
        for label in labels:
            wanted[self.number[label]] = True
        total = sum(len(self.ids[label]) for label in set(labels))
        excluded = exclude is not None and bool(wanted[self.of[exclude]])
        need = min(k, total - excluded)
        if need <= 0:
            return []
        if total <= SCAN_MAX_IMAGES:
            return self.scan(vector, k, set(labels), exclude=exclude)
        n = math.ceil((need + excluded) / (total / self.count) * OVERSAMPLE)
        # Annoy visits search_k nodes whatever n is (n * n_trees when larger): up to search_k / n_trees
        # neighbours cost no more to ask for, and more of them make the label's nearest likelier to be there
        n = max(n, search_k // self.n_trees)
        for _ in range(TRIES):
            if n > MAX_CANDIDATES:
                break
            n = min(n, self.count)
            ids, dists = self.index.get_nns_by_vector(
                vector.tolist(), n, search_k=max(search_k, n * self.n_trees), include_distances=True
            )
            found = [(i, d) for i, d in zip(ids, dists, strict=True) if wanted[self.of[i]] and i != exclude]
            if len(found) >= need:
                return found[:k]
            if n == self.count:
                break
            n *= GROWTH
        return self.scan(vector, k, set(labels), exclude=exclude)

    def scan(
        self, vector: np.ndarray, k: int, labels: set[str], *, exclude: int | None = None
    ) -> list[tuple[int, float]]:
        """Exact search over the labels' images: every one of their vectors against ``vector``."""
        names = sorted(labels)
        query = np.asarray(vector, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        ids = self.ids[names[0]] if len(names) == 1 else np.concatenate([self.ids[label] for label in names])
        if self.vectors is not None:
            vectors = self.vectors[ids]
            cos = (vectors @ query) / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
        else:
            parts = [self._vectors_of(label) for label in names]
            cos = (parts[0] if len(parts) == 1 else np.concatenate(parts)) @ query
        if exclude is not None:
            cos[ids == exclude] = -np.inf
        top = min(k, int(np.isfinite(cos).sum()))
        if top <= 0:
            return []
        part = np.argpartition(-cos, top - 1)[:top]
        part = part[np.argsort(-cos[part], kind="stable")]
        # Annoy's angular distance, sqrt(2 - 2 cos), so both paths rank and report alike
        return [(int(ids[p]), math.sqrt(max(0.0, 2.0 - 2.0 * float(cos[p])))) for p in part]

    def _vectors_of(self, label: str) -> np.ndarray:
        with self._lock:
            cached = self._vectors.get(label)
            if cached is not None:
                self._vectors.move_to_end(label)
                return cached
        vectors = np.array([self.index.get_item_vector(int(i)) for i in self.ids[label]], dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # unit: a dot is the cosine
        if vectors.nbytes <= CACHE_BYTES:
            with self._lock:
                if label not in self._vectors:
                    self._vectors[label] = vectors
                    self._cached_bytes += vectors.nbytes
                while self._cached_bytes > CACHE_BYTES:
                    _, dropped = self._vectors.popitem(last=False)
                    self._cached_bytes -= dropped.nbytes
        return vectors
