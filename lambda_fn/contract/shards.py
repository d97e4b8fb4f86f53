"""Embedding shards: what ingest writes and reindex merges.

A shard is one ``.npz`` object under ``embeddings/<model sha256>/`` holding, for a batch of collection events:
- ``added``: key, label, source ETag, event time, perceptual hash (``lambda_fn.vision.phash``; None in shards
  written before hashes), and one L2-normalised float32 vector each;
- ``removed``: key and event time of deleted images;
- ``skipped``: key, ETag and the reason an image could not be embedded (corrupt, unsupported, too large).

Its name is a digest of what it records, so delivering the same event twice writes the same object again
instead of adding a second one, and re-running a batch that completed finds its shard already there.
Merging keeps the latest event per key (event time, then S3's per-key sequencer), so a late retry of an old
upload never overrides a newer photo or a deletion.

The merged collection of a build is stored the same way (``collection.npz`` next to its index), so the
next reindex starts from it and reads only the shards written since.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from lambda_fn.contract.manifest import EMBEDDINGS_PREFIX, KeyEntry

SHARD_SUFFIX = ".npz"
FORMAT_VERSION = 1


@dataclass(frozen=True, order=True)
class EventOrder:
    """When an event happened: ISO-8601 UTC time, then S3's hex sequencer for events on the same key."""

    time: str = ""
    sequencer: str = ""

    def key(self) -> tuple[str, str]:
        # S3 sequencers are hex strings that compare correctly only at equal length
        return self.time, self.sequencer.rjust(32, "0")

    @classmethod
    def at(cls, when: datetime | float | int | str, sequencer: str = "") -> EventOrder:
        """From a datetime, epoch seconds or an ISO-8601 string (S3's ``eventTime``), normalised to UTC with
        milliseconds so that times from every source compare correctly as strings."""
        if isinstance(when, str):
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        elif isinstance(when, int | float):
            when = datetime.fromtimestamp(when, UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(when.astimezone(UTC).isoformat(timespec="milliseconds"), sequencer)


@dataclass(frozen=True)
class Added:
    key: str
    label: str | None
    etag: str
    order: EventOrder
    source: str | None = None  # the dataset of a collection built from several (KeyEntry.source)
    phash: str | None = None  # the picture's perceptual hash, 16 hex digits (lambda_fn.vision.phash.to_hex)


@dataclass(frozen=True)
class Removed:
    key: str
    order: EventOrder


@dataclass(frozen=True)
class Skipped:
    key: str
    etag: str
    reason: str
    order: EventOrder = EventOrder()


@dataclass
class Shard:
    added: list[Added] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    removed: list[Removed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    merged_shards: list[str] = field(default_factory=list)  # set on a build's collection: the shards it holds

    def __post_init__(self):
        if len(self.added) != len(self.vectors):
            raise ValueError(f"shard has {len(self.added)} added keys but {len(self.vectors)} vectors")

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.skipped)

    def digest(self) -> str:
        """Content name: the same events give the same name, whatever order they arrived in. An image counts
        by its event whether it was embedded or skipped, so the name of a complete shard can be computed
        from its events before any work (``events_digest``) and a finished batch is recognised."""
        created = [(a.key, a.etag, a.order) for a in self.added] + [(s.key, s.etag, s.order) for s in self.skipped]
        return events_digest(created, [(r.key, r.order) for r in self.removed])

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self._save(buf)
        return buf.getvalue()

    def write(self, path) -> None:
        """Straight into a file: a build's collection of 10^6 images is 2 GB, not to be copied in memory."""
        with open(path, "wb") as f:
            self._save(f)

    def _save(self, fileobj) -> None:
        meta = {
            "format": FORMAT_VERSION,
            "added": [[a.key, a.label, a.etag, a.order.time, a.order.sequencer, a.source, a.phash] for a in self.added],
            "removed": [[r.key, r.order.time, r.order.sequencer] for r in self.removed],
            "skipped": [[s.key, s.etag, s.reason, s.order.time, s.order.sequencer] for s in self.skipped],
            "merged_shards": self.merged_shards,
        }
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        np.savez(fileobj, vectors=vectors, meta=np.array(json.dumps(meta, ensure_ascii=False)))

    @classmethod
    def from_bytes(cls, data: bytes) -> Shard:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                vectors = np.asarray(npz["vectors"], dtype=np.float32)
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"not an embedding shard: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"embedding shard format {meta.get('format')!r}; this code reads {FORMAT_VERSION}")
        return cls(
            added=[Added(k, label, etag, EventOrder(t, s), *rest) for k, label, etag, t, s, *rest in meta["added"]],
            vectors=vectors,
            removed=[Removed(k, EventOrder(t, s)) for k, t, s in meta["removed"]],
            skipped=[Skipped(k, etag, reason, EventOrder(t, s)) for k, etag, reason, t, s in meta["skipped"]],
            merged_shards=list(meta.get("merged_shards", [])),
        )


def events_digest(created: Iterable[tuple[str, str, EventOrder]], removed: Iterable[tuple[str, EventOrder]]) -> str:
    lines = sorted(
        [f"+\t{key}\t{etag}\t{order.time}\t{order.sequencer}" for key, etag, order in created]
        + [f"-\t{key}\t{order.time}\t{order.sequencer}" for key, order in removed]
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def listing_digest(keys: Iterable[str]) -> str:
    """Digest of a set of object names (order-free): what a manifest or status records to know it saw them."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def namespace(model_sha256: str) -> str:
    """Folder of the shards made with one model: a new model starts a new namespace."""
    return f"{EMBEDDINGS_PREFIX}{model_sha256}/"


def shard_key(model_sha256: str, digest: str) -> str:
    return f"{namespace(model_sha256)}{digest}{SHARD_SUFFIX}"


@dataclass(frozen=True)
class _Latest:
    """The latest event seen for one key: an image with its vector, a removal, or a skipped image."""

    order: EventOrder
    added: Added | None = None
    vector: np.ndarray | None = None
    skipped: Skipped | None = None


@dataclass
class Collection:
    """The merged state: the latest event per key. An image whose latest version could not be embedded is
    not searchable (its old vector shows a picture that is gone) and is listed as skipped with the reason."""

    latest: dict[str, _Latest] = field(default_factory=dict)

    def apply(self, shard: Shard) -> None:
        for added, vector in zip(shard.added, shard.vectors, strict=True):
            self._offer(added.key, _Latest(added.order, added=added, vector=vector))
        for removed in shard.removed:
            self._offer(removed.key, _Latest(removed.order))
        for skipped in shard.skipped:
            self._offer(skipped.key, _Latest(skipped.order, skipped=skipped))

    def _offer(self, key: str, event: _Latest) -> None:
        current = self.latest.get(key)
        if current is None or event.order.key() >= current.order.key():
            self.latest[key] = event

    def live(self) -> list[tuple[Added, np.ndarray]]:
        """Searchable images in key order (ids of a build are dense in this order)."""
        return [(e.added, e.vector) for _, e in sorted(self.latest.items()) if e.added is not None]

    @property
    def skipped(self) -> list[Skipped]:
        return [e.skipped for _, e in sorted(self.latest.items()) if e.skipped is not None]

    def knows(self, key: str) -> bool:
        """Whether any event (image, removal or skip) was recorded for ``key``."""
        return key in self.latest

    def reflects(self, key: str, order: EventOrder, *, etag: str | None) -> bool:
        """Whether an event needs nothing more: the upload of ``etag`` (None: the removal) at ``order`` is
        already embedded or skipped here, or already removed, or a later event decided the key."""
        current = self.latest.get(key)
        if current is None:
            return etag is None  # nothing to remove
        if current.order.key() > order.key():
            return True
        if etag is None:
            return current.added is None and current.skipped is None
        seen = current.added or current.skipped
        return seen is not None and seen.etag == etag

    def stacked(self) -> tuple[list[Added], np.ndarray]:
        """The searchable images in key order and their vectors as one (n, dim) float32 array."""
        live = self.live()
        dim = len(live[0][1]) if live else 0
        vectors = (
            np.stack([v for _, v in live]).astype(np.float32, copy=False) if live else np.zeros((0, dim), np.float32)
        )
        return [a for a, _ in live], vectors

    def to_shard(self, merged_shards: Iterable[str], *, stacked: tuple[list[Added], np.ndarray] | None = None) -> Shard:
        """The whole collection as one shard (removals kept, so an old upload retried late stays removed).
        ``stacked`` re-uses what ``stacked()`` returned, so the vectors are not copied a second time."""
        added, vectors = stacked or self.stacked()
        return Shard(
            added=added,
            vectors=vectors,
            removed=[
                Removed(key, e.order) for key, e in sorted(self.latest.items()) if e.added is None and e.skipped is None
            ],
            skipped=self.skipped,
            merged_shards=sorted(merged_shards),
        )

    def key_entries(self, stacked: tuple[list[Added], np.ndarray] | None = None) -> tuple[list[KeyEntry], np.ndarray]:
        added, vectors = stacked or self.stacked()
        return [KeyEntry(a.key, a.label, a.source) for a in added], vectors

    def hashes(self, stacked: tuple[list[Added], np.ndarray] | None = None) -> list[str | None]:
        """The perceptual hash of each searchable image, in ``key_entries`` order."""
        added, _ = stacked or self.stacked()
        return [a.phash for a in added]
