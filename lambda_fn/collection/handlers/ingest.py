"""Ingest function entry point (``CMD ["lambda_fn.collection.handlers.ingest.handler"]``).

Two triggers, one embedding path (``lambda_fn.collection.ingest.ingest``):
- SQS messages carrying S3 event notifications (``ObjectCreated:*``, ``ObjectRemoved:*``) for objects under
  ``<prefix>/images/``. Transient failures are answered per message (``batchItemFailures``, with
  ``ReportBatchItemFailures`` on the event source mapping), so only those messages come back.
- Step Functions Distributed Map batches, ``{"Items": [{"Key", "Etag", "Size", "LastModified"}, ...]}`` as
  an S3 ItemReader lists them and an ItemBatcher groups them. A transient failure fails the invocation,
  so the map's retry policy runs the batch again; the shards of batches that finished are re-used.
- ``{"Switch": {}}`` (the S3 Vectors store only: the backfill's last step and a daily schedule): make a new
  model's index live once it covers the live one, and delete retired indexes (``lambda_fn.collection.vectors``).

With ``DEEPFOOD_VECTOR_STORE=s3vectors`` each batch's vectors are written into its model's index as well, so a
photo is searchable once its batch is processed.

Before any model is published, the changes are recorded as pending (``lambda_fn.collection.pending``) and
acknowledged; the first reindex with a model embeds them (on S3 Vectors, the first backfill, which lists every
image). ``ChangesPending`` counts them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SQSEvent

from lambda_fn.collection.events import changes_from_batch, changes_from_sqs
from lambda_fn.collection.ingest import Change, IngestReport, ingest_with_settings
from lambda_fn.collection.vectors import VectorWriter, switch
from lambda_fn.contract import metrics
from lambda_fn.contract.config import env_name, get_settings
from lambda_fn.contract.logs import configure, logger
from lambda_fn.contract.vectors import S3VECTORS
from lambda_fn.storage.store import open_store
from lambda_fn.storage.vectors import s3vectors_client

log = logging.getLogger(__name__)

settings = get_settings()
configure(settings.log_level, metrics.INGEST_SERVICE)
torch.set_num_threads(settings.threads)
images = open_store(settings.resolved_images_uri)
artifacts = open_store(settings.artifacts_uri)
vector_client = s3vectors_client() if settings.vector_store == S3VECTORS else None
writer = VectorWriter(vector_client, settings.vector_bucket, artifacts, images) if vector_client else None


class BatchFailed(RuntimeError):
    """Some images of a Distributed Map batch failed transiently; the state machine retries the batch."""


def _run(changes: list[Change], *, newest_model_only: bool = False) -> IngestReport:
    return ingest_with_settings(
        changes,
        images=images,
        artifacts=artifacts,
        settings=settings,
        newest_model_only=newest_model_only,
        writer=writer,
    )


def oldest_message_age_s(event: dict, now_ms: float | None = None) -> float | None:
    """Seconds since SQS received the batch's oldest message (its ``SentTimestamp``); None without one."""
    sent = [int(r.attributes.sent_timestamp) for r in SQSEvent(event).records if r.attributes.sent_timestamp]
    if not sent:
        return None
    return ((time.time() * 1000 if now_ms is None else now_ms) - min(sent)) / 1000


def _record(report: IngestReport, oldest_age_s: float | None) -> None:
    metrics.ingested(
        embedded=report.embedded,
        skipped=len(report.skipped),
        failed=len(report.failed),
        seconds=report.seconds,
        oldest_age_s=oldest_age_s,
    )
    if report.pending:
        metrics.ingest.add_metric(name=metrics.CHANGES_PENDING, unit=MetricUnit.Count, value=report.pending)


@metrics.ingest.log_metrics
@logger.inject_lambda_context(clear_state=True)
def invoke(event: dict, context: Any) -> dict:
    if "Switch" in event:
        if vector_client is None:  # nothing to switch: the Annoy store's reindex publishes new models
            log.error(
                "Switch event on the Annoy store ignored", extra={"needs": f"{env_name('vector_store')}={S3VECTORS}"}
            )
            return {"switched": False, "error": f"a Switch needs {env_name('vector_store')}={S3VECTORS}"}
        retire_after_s = settings.vector_retire_after_s
        return switch(artifacts, vector_client, settings.vector_bucket, retire_after_s=retire_after_s).as_dict()
    if "Items" in event:
        report = _run(changes_from_batch(event, images), newest_model_only=True)
        _record(report, None)
        if report.failed:
            raise BatchFailed(f"{len(report.failed)} images failed transiently: {report.as_dict()['failed'][:5]}")
        return report.as_dict()
    oldest_age_s = oldest_message_age_s(event)
    changes, _ = changes_from_sqs(event, images)
    report = _run(changes)
    _record(report, oldest_age_s)
    return {"batchItemFailures": [{"itemIdentifier": item} for item in sorted(report.failed)]}


handler = metrics.traced(invoke, service=metrics.INGEST_SERVICE, enabled=settings.tracing)
