"""The collection in Amazon S3 Vectors: ingest writes each batch's vectors into its model's index, and a new
model's index goes live once it covers the live one.

- One index per model (``lambda_fn.contract.vectors.index_name``): ingest writes into the live model's index
  and, while a new model is announced (``models/current.json``), into the new model's too; the backfill fills
  the new model's only. A photo is searchable as soon as its batch is written; there is no reindex.
- Writes are idempotent by key (a put replaces, a delete of a missing key is no error), so re-delivered
  events and re-run backfill batches leave the same index. A removal whose image exists again (a newer
  upload of the same key) deletes nothing.
- ``switch``: once every key of the live index is in the new model's index, ``vectors/live.json`` is rewritten
  to name it (one conditional PUT: readers see the old index or the new one). The old index is kept for
  ``retire_after_s`` (a rollback is a record edit) and deleted by the first switch check after that.
- Labels written to an index are kept beside it (``vectors/<index>/labels/<label>``, empty objects), so
  search can refuse an unknown label with the list of known ones without scanning the index.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from lambda_fn.contract.shards import Added
from lambda_fn.contract.vectors import DEFAULT_RETIRE_AFTER_S, LABEL, MODEL, PHASH, SOURCE, index_name
from lambda_fn.storage import records
from lambda_fn.storage.records import LiveIndex, RetiredIndex
from lambda_fn.storage.store import Store
from lambda_fn.storage.vectors import VectorIndex, VectorRecord, labels_prefix

log = logging.getLogger(__name__)


class VectorWriter:
    """Writes ingest's results into the S3 Vectors index of each model, in the vector bucket ``bucket``."""

    def __init__(self, client, bucket: str, artifacts: Store, images: Store, *, sleep=time.sleep):
        self.client, self.bucket, self.artifacts, self.images = client, bucket, artifacts, images
        self._sleep = sleep  # between throttled attempts
        self._ready: set[str] = set()  # indexes known to exist, for the container's life
        self._labels: set[tuple[str, str]] = set()

    def index(self, model_sha256: str) -> VectorIndex:
        return VectorIndex(self.client, self.bucket, index_name(model_sha256), sleep=self._sleep)

    def write(
        self, model_sha256: str, dim: int, added: Sequence[Added], vectors: np.ndarray, removed: Sequence[str]
    ) -> None:
        """Put ``added`` (row i of ``vectors`` is added[i]) and delete ``removed`` in the model's index."""
        index = self.index(model_sha256)
        if index.name not in self._ready:
            index.ensure(dim)
            self._ready.add(index.name)
        if len(added):
            index.put(
                [
                    VectorRecord(a.key, v, {LABEL: a.label, SOURCE: a.source, MODEL: model_sha256, PHASH: a.phash})
                    for a, v in zip(added, vectors, strict=True)
                ]
            )
            for label in sorted({a.label for a in added if a.label and (index.name, a.label) not in self._labels}):
                self.artifacts.put(labels_prefix(index.name) + urllib.parse.quote(label, safe=""), b"")
                self._labels.add((index.name, label))
        gone = [key for key in removed if self.images.head(key) is None]
        if gone:
            index.delete(gone)


@dataclass
class SwitchReport:
    live: str | None = None  # the index serving after this check
    switched: bool = False
    missing: int = 0  # keys of the live index the new one lacks
    deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"live": self.live, "switched": self.switched, "missing": self.missing, "deleted": self.deleted}


def _now() -> datetime:
    return datetime.now(UTC)


def switch(
    artifacts: Store,
    client,
    bucket: str,
    *,
    retire_after_s: int = DEFAULT_RETIRE_AFTER_S,
    now: datetime | None = None,
) -> SwitchReport:
    """Make the announced model's index live once it covers the live index, and delete retired indexes whose
    grace period is over; see the module's docstring."""
    now = now or _now()
    report = SwitchReport()
    current = records.read_live_index(artifacts)
    live, etag = current if current is not None else (None, None)
    report.live = live.index if live else None
    pointer = records.read_pointer(artifacts)
    if pointer is None and live is None:  # the first index: the model of the build uploaded, if any
        manifest = records.read_manifest(artifacts, missing_ok=True)
        pointer = manifest[0] if manifest is not None else None
    changed = False
    retired = list(live.retired) if live else []
    for old in [r for r in retired if datetime.fromisoformat(r.delete_after) <= now]:
        VectorIndex(client, bucket, old.index).drop()
        retired.remove(old)
        report.deleted.append(old.index)
        changed = True
    new = None
    if pointer is not None and (live is None or pointer.model_sha256 != live.model_sha256):
        candidate = VectorIndex(client, bucket, index_name(pointer.model_sha256))
        info = candidate.info()
        if info is not None:
            have = set(candidate.keys())
            if live is not None:
                report.missing = sum(k not in have for k in VectorIndex(client, bucket, live.index).keys())  # noqa: SIM118
            if report.missing == 0 and have:
                new = LiveIndex(
                    index=candidate.name,
                    model_file=pointer.model_file,
                    model_sha256=pointer.model_sha256,
                    dim=int(info["dimension"]),
                    count=len(have),
                    switched_at=now.isoformat(timespec="seconds"),
                )
                if live is not None:
                    until = (now + timedelta(seconds=retire_after_s)).isoformat(timespec="seconds")
                    retired.append(RetiredIndex(index=live.index, model_sha256=live.model_sha256, delete_after=until))
    if new is not None:
        new.retired = retired
        records.write_live_index(artifacts, new, previous_etag=etag)
        report.live, report.switched = new.index, True
        log.info("vector index switched", extra=report.as_dict() | {"previous": live.index if live else None})
    elif changed and live is not None:
        records.write_live_index(artifacts, live.model_copy(update={"retired": retired}), previous_etag=etag)
    if report.missing:
        log.info("new model's index does not cover the live one yet", extra=report.as_dict())
    return report
