"""The vector-store seam: what serving asks of an index, answered by an Annoy build or by Amazon S3 Vectors.

Serving ranks, filters, pages and looks images up through ``VectorStore`` only, so label filter,
``min_similarity``, dedupe, paging, search by key and the build id mean the same on both:

- ``AnnoyStore``: the build the container loaded (``Engine``): ids 0..count-1 per build, no top-k limit.
- ``S3VectorsStore``: one index per model in a vector bucket; a *build* is that index (its name is the build
  id), ids are not used (look images up by key), and a query returns at most ``MAX_TOP_K`` neighbours.

Results carry the image key, the distance and the metadata stored with the vector (label, source, and what
else ingest recorded, e.g. the model's sha256 or a perceptual hash), so what the ranking needs comes back
with the neighbours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from lambda_fn.contract import metrics
from lambda_fn.contract.vectors import ANNOY, LABEL, MAX_TOP_K, PHASH, S3VECTORS, SOURCE
from lambda_fn.storage.vectors import VectorIndex

if TYPE_CHECKING:
    from lambda_fn.vision.engine import Engine


@dataclass(frozen=True)
class Hit:
    """One indexed image as a store returns it: ``distance`` is angular, sqrt(2 - 2 cos), on both stores."""

    key: str
    distance: float
    label: str | None = None
    source: str | None = None
    id: int | None = None  # the dense per-build id (Annoy only)
    phash: int | None = None  # the picture's perceptual hash, for the dedupe (None: unknown, never collapsed)
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance * self.distance / 2.0


class VectorStore(Protocol):
    kind: str
    build_id: str
    max_top_k: int | None  # the most neighbours one query returns; None: no limit
    dedupe_off: str | None  # why no result can be collapsed (a build without comparable hashes); None: it can

    def search(
        self, vector: np.ndarray, k: int, *, exclude: str | None = None, labels: Collection[str] = ()
    ) -> list[Hit]:
        """Up to k nearest images to ``vector``, nearest first, ``exclude`` (a key) left out, only ``labels``."""

    def vectors(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vector of each key the store holds."""

    def entry(self, key: str) -> tuple[Hit, np.ndarray] | None:
        """The image with this key (distance 0) and its vector, or None."""

    def by_id(self, image_id: int) -> tuple[Hit, np.ndarray] | None:
        """The image with this per-build id and its vector, or None (always None where the store has no ids)."""

    def label_names(self) -> list[str]:
        """The labels a filter may name, most frequent first where the store knows."""


class AnnoyStore:
    """The Annoy build an ``Engine`` loaded, behind the seam; ranking exactly as ``Engine.search`` does."""

    kind = ANNOY
    max_top_k = None

    def __init__(self, engine: Engine):
        self.engine = engine
        self.build_id = engine.build_id

    @property
    def dedupe_off(self) -> str | None:
        return self.engine.dedupe_off

    def _hit(self, image_id: int, distance: float) -> Hit:
        entry = self.engine.keys[image_id]
        return Hit(entry.key, distance, entry.label, entry.source, image_id, self.engine.picture_hashes([image_id])[0])

    def search(self, vector, k, *, exclude=None, labels=()):
        excluded = self.engine.ids.get(exclude) if exclude is not None else None
        return [self._hit(n.id, n.distance) for n in self.engine.search(vector, k, exclude=excluded, labels=labels)]

    def vectors(self, keys):
        ids = self.engine.ids
        return {key: self.engine.vector(ids[key]) for key in keys if key in ids}

    def entry(self, key):
        image_id = self.engine.ids.get(key)
        return None if image_id is None else self.by_id(image_id)

    def by_id(self, image_id):
        if not 0 <= image_id < len(self.engine.keys):
            return None
        return self._hit(image_id, 0.0), self.engine.vector(image_id)

    def label_names(self):
        return self.engine.labels.names


def _hash(value: object) -> int | None:
    """The perceptual hash ingest stored (16 hex digits), or None when there is none or it does not parse."""
    try:
        return int(value, 16) if isinstance(value, str) and len(value) == 16 else None
    except ValueError:
        return None


def _angular(cosine_distance: float) -> float:
    """S3 Vectors' cosine distance (1 - cos) as the angular distance the API reports, sqrt(2 - 2 cos)."""
    return math.sqrt(max(0.0, 2.0 * cosine_distance))


class S3VectorsStore:
    """One model's index in S3 Vectors. ``labels`` lists the labels written to it (kept beside the index by
    ingest, so an unknown label is still a clear 422 and not an empty page)."""

    kind = S3VECTORS
    max_top_k = MAX_TOP_K
    dedupe_off = None  # each vector's hash is in its metadata

    def __init__(self, index: VectorIndex, *, labels: Callable[[], list[str]] = list, labels_ttl_s: float = 60.0):
        """``labels`` is read again once ``labels_ttl_s`` has passed since it was last read."""
        self.index = index
        self.build_id = index.name
        self._labels, self._ttl = labels, labels_ttl_s
        self._label_cache: tuple[float, list[str]] | None = None

    def _hit(self, key: str, distance: float, metadata: dict) -> Hit:
        return Hit(key, distance, metadata.get(LABEL), metadata.get(SOURCE), None, _hash(metadata.get(PHASH)), metadata)

    def search(self, vector, k, *, exclude=None, labels=()):
        top_k = min(k + (1 if exclude is not None else 0), MAX_TOP_K)
        started = time.perf_counter()
        try:
            found = self.index.query(vector, top_k, labels=list(labels))
        except Exception:
            metrics.vector_query(None)
            raise
        metrics.vector_query((time.perf_counter() - started) * 1000)
        hits = [self._hit(f.image_key, _angular(f.distance), f.metadata) for f in found if f.image_key != exclude]
        return hits[:k]

    def vectors(self, keys):
        return {key: vector for key, (vector, _) in self.index.get(keys).items()}

    def entry(self, key):
        got = self.index.get([key]).get(key)
        return None if got is None else (self._hit(key, 0.0, got[1]), got[0])

    def by_id(self, image_id):
        return None

    def label_names(self):
        cached = self._label_cache
        if cached is None or time.monotonic() - cached[0] >= self._ttl:
            cached = self._label_cache = (time.monotonic(), self._labels())
        return cached[1]
