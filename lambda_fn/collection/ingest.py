"""Embed new collection images and record removed ones, as embedding shards.

``ingest(changes, ...)`` is the work behind the ingest function (S3 events via SQS, and Step Functions
Distributed Map batches; ``ingest_with_settings`` picks its models and limits) and the local
``ops.collection`` tool. It knows nothing of Lambda.

- Each image is decoded with the same ``prepare()`` as queries and indexing, and embedded with the live
  model, and also with the model named in ``models/current.json`` when a new one is waiting to go live.
  The prepared crop's perceptual hash (``lambda_fn.vision.phash``) is recorded with it, for the dedupe.
- A batch whose shard already exists (same events, same model) is recognised and not embedded again, so
  at-least-once delivery and re-run backfills add nothing twice.
- A corrupt, unsupported or oversized image is *skipped* with its reason, recorded in the shard, and never
  retried; a transient failure (S3 throttling, a timeout) is reported per change so only that change is
  delivered again; one bad image never fails its batch.
- With no model published yet, the changes are recorded as *pending* (``lambda_fn.collection.pending``) and the next
  reindex with a model embeds them: a durable record, since SQS redelivery ends in the dead-letter queue
  after a few tries while the first model may come days later.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from botocore.exceptions import BotoCoreError, ClientError

from lambda_fn.collection import pending
from lambda_fn.collection.pending import PendingEvent
from lambda_fn.collection.vectors import VectorWriter
from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import label_from_metadata
from lambda_fn.contract.shards import Added, EventOrder, Removed, Shard, Skipped, events_digest, shard_key
from lambda_fn.storage.store import NotFound, Store
from lambda_fn.storage.vectors import VectorStoreError
from lambda_fn.vision.imaging import ImageError, load_for_model
from lambda_fn.vision.models import LoadedModel, target_models
from lambda_fn.vision.phash import perceptual_hash, to_hex

log = logging.getLogger(__name__)

# Images per forward: large enough to use the CPU well, small enough for 3 GB of memory with two models.
EMBED_BATCH = 32
DOWNLOAD_THREADS = 8


@dataclass(frozen=True)
class Change:
    """One event in the collection. ``item_id`` is what a failure is reported under (an SQS message id,
    or a batch position); ``key`` is relative to the images prefix."""

    item_id: str
    kind: Literal["created", "removed"]
    key: str
    etag: str = ""
    size: int | None = None
    order: EventOrder = field(default_factory=EventOrder)
    label: str | None = None


@dataclass
class IngestReport:
    embedded: int = 0
    removed: int = 0
    reused: int = 0
    pending: int = 0  # changes recorded to wait for a model (none is published yet)
    skipped: list[Skipped] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # item_id -> reason
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "embedded": self.embedded,
            "removed": self.removed,
            "reused": self.reused,
            "pending": self.pending,
            "skipped": [{"key": s.key, "reason": s.reason} for s in self.skipped],
            "failed": [{"item": item, "reason": reason} for item, reason in sorted(self.failed.items())],
            "shards": self.shards,
            "seconds": round(self.seconds, 3),
        }


def label_of(key: str) -> str | None:
    """The collection's label convention: the top folder of the key (``pizza/123.jpg`` -> ``pizza``), unless
    the object's metadata names its label (``lambda_fn.contract.manifest.LABEL_METADATA``)."""
    parts = key.split("/")
    return parts[0] if len(parts) > 1 and parts[0] else None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout")
    return isinstance(exc, BotoCoreError | OSError | TimeoutError)


def _download(images: Store, change: Change, max_bytes: int) -> tuple[bytes, str | None] | Skipped | Exception:
    """The image's bytes and the label its metadata records, a Skipped (permanent problem) or the transient
    exception."""
    if change.size is not None and change.size > max_bytes:
        return Skipped(change.key, change.etag, f"the image is {change.size:,} bytes; the limit is {max_bytes:,}")
    try:
        data, etag, metadata = images.get_with_metadata(change.key)
    except NotFound:
        return Skipped(change.key, change.etag, "the object no longer exists (a removal event follows)")
    except Exception as exc:
        if _is_transient(exc):
            return exc
        return Skipped(change.key, change.etag, f"the object cannot be read: {exc}")
    if change.etag and etag != change.etag:
        return Skipped(change.key, change.etag, "the object was replaced since this event (a newer event follows)")
    if len(data) > max_bytes:
        return Skipped(change.key, change.etag, f"the image is {len(data):,} bytes; the limit is {max_bytes:,}")
    return data, label_from_metadata(metadata)


def _decode_all(good: list[tuple[Change, bytes]], model: LoadedModel, max_pixels: int) -> list:
    """Each image as the model's input array, or the ImageError that makes it unusable, in order.

    Decoding runs on one thread per CPU (Pillow releases the GIL while it decodes and resizes): at 6 vCPUs the
    forward pass gets faster, a serial decode does not. No torch work happens on these threads.
    """
    workers = min(len(good), len(os.sched_getaffinity(0)))

    def decode(data: bytes) -> np.ndarray | ImageError:
        try:
            return load_for_model(data, model.meta.resize_size, model.meta.crop_size, max_pixels=max_pixels)
        except ImageError as exc:
            return exc

    if workers <= 1:
        return [decode(data) for _, data in good]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(decode, (data for _, data in good)))


@torch.inference_mode()
def _embed(model: LoadedModel, arrays: list[np.ndarray]) -> np.ndarray:
    chunks = []
    for start in range(0, len(arrays), EMBED_BATCH):
        batch = torch.from_numpy(np.stack(arrays[start : start + EMBED_BATCH]))
        chunks.append(model.module(batch).numpy().astype(np.float32, copy=False))
    return np.concatenate(chunks) if chunks else np.zeros((0, model.meta.dim), np.float32)


def ingest(
    changes: Iterable[Change],
    *,
    images: Store,
    artifacts: Store,
    models: list[LoadedModel],
    max_bytes: int,
    max_pixels: int,
    writer: VectorWriter | None = None,
) -> IngestReport:
    """Embed the created images and record the removed ones, one shard per model; see the module doc. With
    ``writer`` (the S3 Vectors store), each model's vectors are written into its index before its shard."""
    started = time.perf_counter()
    changes = list(changes)
    report = IngestReport()
    if not models:
        _wait_for_model(changes, artifacts, report)
        report.seconds = time.perf_counter() - started
        _log_report(report)
        return report
    created = [c for c in changes if c.kind == "created"]
    removed = [c for c in changes if c.kind == "removed"]
    complete = events_digest(
        [(c.key, c.etag, c.order) for c in created], [(c.key, c.order) for c in removed]
    )  # the name this batch's shard has when every change in it was handled
    todo = [m for m in models if artifacts.head(shard_key(m.sha256, complete)) is None]
    report.reused = len(models) - len(todo)
    if not todo:
        log.info("batch already ingested", extra={"shard": complete, "changes": len(changes)})
        report.seconds = time.perf_counter() - started
        return report

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        fetched = list(pool.map(lambda c: _download(images, c, max_bytes), created))
    good: list[tuple[Change, bytes]] = []
    skipped: list[Skipped] = []
    for change, result in zip(created, fetched, strict=True):
        if isinstance(result, Skipped):
            skipped.append(Skipped(result.key, result.etag, result.reason, change.order))
        elif isinstance(result, Exception):
            report.failed[change.item_id] = f"{type(result).__name__}: {result}"
            log.warning("transient failure", extra={"key": change.key, "error": str(result)})
        else:
            data, recorded = result  # the label the object's metadata records, if the change names none
            good.append((replace(change, label=change.label or recorded), data))

    for model in todo:
        arrays, kept, model_skipped = [], [], list(skipped)
        for (change, _), decoded in zip(good, _decode_all(good, model, max_pixels), strict=True):
            if isinstance(decoded, ImageError):
                model_skipped.append(Skipped(change.key, change.etag, str(decoded), change.order))
            else:
                arrays.append(decoded)
                kept.append(change)
        vectors = _embed(model, arrays)
        hashes = [to_hex(perceptual_hash(a)) for a in arrays]
        shard = Shard(
            added=[
                Added(c.key, c.label or label_of(c.key), c.etag, c.order, phash=h)
                for c, h in zip(kept, hashes, strict=True)
            ],
            vectors=vectors,
            removed=[Removed(c.key, c.order) for c in removed],
            skipped=model_skipped,
        )
        if shard.empty:
            continue
        if writer is not None and not _write_vectors(writer, model, shard, changes, report):
            continue
        key = shard_key(model.sha256, shard.digest())
        artifacts.put(key, shard.to_bytes())
        report.shards.append(key)
        if model is todo[0]:
            report.embedded, report.removed, report.skipped = len(kept), len(removed), model_skipped
    report.seconds = time.perf_counter() - started
    _log_report(report)
    return report


def _write_vectors(
    writer: VectorWriter, model: LoadedModel, shard: Shard, changes: list[Change], report: IngestReport
) -> bool:
    """Write the shard's vectors and removals into the model's index; False (and every change of the batch
    failed, so it is delivered again; no shard is written) when the store failed for a reason that may pass."""
    try:
        writer.write(model.sha256, model.meta.dim, shard.added, shard.vectors, [r.key for r in shard.removed])
    except Exception as exc:
        if not (_is_transient(exc) or isinstance(exc, VectorStoreError)):
            raise
        report.failed |= {c.item_id: f"vector index: {type(exc).__name__}: {exc}" for c in changes}
        log.warning("vectors not written", extra={"model_sha256": model.sha256, "error": str(exc)})
        return False
    return True


def ingest_for_targets(
    changes: Iterable[Change],
    *,
    images: Store,
    artifacts: Store,
    cache_dir: Path,
    max_bytes: int,
    max_pixels: int,
    trusted_model_sha256: str | None = None,
    model_signing_key: str | None = None,
    newest_model_only: bool = False,
    writer: VectorWriter | None = None,
) -> IngestReport:
    """``ingest`` with the models new embeddings are made with now (``target_models``): the live one and an
    announced one, or with ``newest_model_only`` (a backfill) only the model that is to go live."""
    models = target_models(
        artifacts,
        cache_dir,
        trusted_model_sha256=trusted_model_sha256,
        model_signing_key=model_signing_key,
        newest_only=newest_model_only,
    )
    return ingest(
        changes,
        images=images,
        artifacts=artifacts,
        models=models,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        writer=writer,
    )


def ingest_with_settings(
    changes: Iterable[Change],
    *,
    images: Store,
    artifacts: Store,
    settings: Settings,
    newest_model_only: bool = False,
    writer: VectorWriter | None = None,
) -> IngestReport:
    """``ingest_for_targets`` with the cache and limits ``settings`` gives: the ingest function's work, and what
    the benchmark times."""
    return ingest_for_targets(
        changes,
        images=images,
        artifacts=artifacts,
        cache_dir=settings.cache_dir,
        max_bytes=settings.max_ingest_bytes,
        max_pixels=settings.max_image_pixels,
        trusted_model_sha256=settings.trusted_model_sha256,
        model_signing_key=settings.model_signing_key,
        newest_model_only=newest_model_only,
        writer=writer,
    )


def _log_report(report: IngestReport) -> None:
    log.info(
        "ingested",
        extra={
            "embedded": report.embedded,
            "removed": report.removed,
            "pending": report.pending,
            "skipped": len(report.skipped),
            "failed": len(report.failed),
            "shards": report.shards,
            "seconds": round(report.seconds, 3),
        },
    )


def _wait_for_model(changes: list[Change], artifacts: Store, report: IngestReport) -> None:
    """Record the changes under ``pending/`` for the first reindex with a model; a transient failure to
    write fails every change, so they are delivered again."""
    if not changes:
        return
    events = [
        PendingEvent(
            kind=c.kind,
            key=c.key,
            etag=c.etag,
            size=c.size,
            time=c.order.time,
            sequencer=c.order.sequencer,
            label=c.label,
        )
        for c in changes
    ]
    try:
        key = pending.record(artifacts, events)
    except Exception as exc:
        if not _is_transient(exc):
            raise
        report.failed = {c.item_id: f"{type(exc).__name__}: {exc}" for c in changes}
        log.warning("pending changes not recorded", extra={"changes": len(changes), "error": str(exc)})
        return
    report.pending = len(changes)
    log.warning(
        "no model is published yet: changes recorded as pending", extra={"pending": len(changes), "record": key}
    )


def ingest_pending(
    events: list[PendingEvent],
    *,
    images: Store,
    artifacts: Store,
    cache_dir: Path,
    max_bytes: int,
    max_pixels: int,
    trusted_model_sha256: str | None = None,
    model_signing_key: str | None = None,
) -> set[str]:
    """Changes that waited for a model (``lambda_fn.collection.pending.drain``), ingested with the models new
    events get now; returns the keys that failed for a reason that may pass."""
    changes = [Change(e.key, e.kind, e.key, e.etag, e.size, e.order, e.label) for e in events]
    report = ingest_for_targets(
        changes,
        images=images,
        artifacts=artifacts,
        cache_dir=cache_dir,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        trusted_model_sha256=trusted_model_sha256,
        model_signing_key=model_signing_key,
    )
    return set(report.failed)
