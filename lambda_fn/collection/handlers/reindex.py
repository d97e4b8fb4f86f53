"""Reindex function entry point (``CMD ["lambda_fn.collection.handlers.reindex.handler"]``).

Invoked by the schedule (an EventBridge event, ignored) and as the step after a backfill's map; answers
the run's report (``published``, ``unchanged``, ``busy``, ...), which the state machine records.

A run that does something (or fails) also reports its outcome and the live build it leaves behind
(``lambda_fn.contract.metrics``): age, size, and whether embedding shards still wait to be merged, which is what the
stale-build alarm watches. A run that finds nothing to do reports nothing (``QUIET_STATUSES``), unless
photos wait for a model (``lambda_fn.collection.pending``): then it reports ``PendingImages`` too, and the
first run with a model embeds them with the ingest's own code and limits.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from lambda_fn.collection.pending import PendingEvent
from lambda_fn.collection.reindex import reindex
from lambda_fn.contract import metrics
from lambda_fn.contract.config import get_settings
from lambda_fn.contract.logs import configure, logger
from lambda_fn.storage.records import read_manifest
from lambda_fn.storage.store import Store, open_store

log = logging.getLogger(__name__)

settings = get_settings()
configure(settings.log_level, metrics.REINDEX_SERVICE)
artifacts = open_store(settings.artifacts_uri)


@functools.cache
def _images() -> Store:
    return open_store(settings.resolved_images_uri)


def embed_pending(events: list[PendingEvent]) -> set[str]:
    """Ingest photos that waited for a model, as the ingest function would have."""
    from lambda_fn.collection.ingest import ingest_pending  # torch: imported only by a run that has photos to embed

    return ingest_pending(
        events,
        images=_images(),
        artifacts=artifacts,
        cache_dir=settings.cache_dir,
        max_bytes=settings.max_ingest_bytes,
        max_pixels=settings.max_image_pixels,
        trusted_model_sha256=settings.trusted_model_sha256,
        model_signing_key=settings.model_signing_key,
    )


def record_live_build(store: Store, *, pending: bool) -> None:
    """The live build's metrics: one GET of the manifest and one HEAD of its index per run. Never raises:
    a run's outcome, or the error it ends with, matters more than these."""
    try:
        published = read_manifest(store, missing_ok=True)
        if published is None:
            return
        manifest, _ = published
        built_at = datetime.fromisoformat(manifest.built_at)
        built_at = built_at if built_at.tzinfo else built_at.replace(tzinfo=UTC)
        index = store.head(manifest.index_file)
        metrics.live_build(
            age_s=(datetime.now(UTC) - built_at).total_seconds(),
            vectors=manifest.count,
            index_bytes=index.size if index is not None else None,
            pending=pending,
        )
    except Exception:
        log.warning("live build metrics not recorded", exc_info=True)


@metrics.flushed(metrics.reindex)  # log_metrics, minus its warning on the quiet runs that record nothing
@logger.inject_lambda_context(clear_state=True)
def invoke(event: dict, context: Any) -> dict:
    started = time.perf_counter()
    try:
        report = reindex(
            artifacts,
            Path(settings.cache_dir) / "reindex",
            lease_s=settings.reindex_lease_s,
            embed_pending=embed_pending,
        )
    except Exception:
        metrics.reindexed(metrics.REINDEX_FAILED, time.perf_counter() - started)
        record_live_build(artifacts, pending=True)
        raise
    waiting = report.pending_images > 0
    if waiting:
        metrics.reindex.add_metric(name=metrics.PENDING_IMAGES, unit=MetricUnit.Count, value=report.pending_images)
    if report.status not in metrics.QUIET_STATUSES or waiting:
        metrics.reindexed(report.status, report.seconds)
        record_live_build(artifacts, pending=waiting or report.status not in metrics.SETTLED_STATUSES)
    return report.as_dict()


handler = metrics.traced(invoke, service=metrics.REINDEX_SERVICE, enabled=settings.tracing)
