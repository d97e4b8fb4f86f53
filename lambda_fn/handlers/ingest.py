"""Ingest function entry point (``CMD ["lambda_fn.handlers.ingest.handler"]``).

Two triggers, one embedding path (``lambda_fn.ingest.ingest``):
- SQS messages carrying S3 event notifications (``ObjectCreated:*``, ``ObjectRemoved:*``) for objects under
  ``<prefix>/images/``. Transient failures are answered per message (``batchItemFailures``, with
  ``ReportBatchItemFailures`` on the event source mapping), so only those messages come back.
- Step Functions Distributed Map batches, ``{"Items": [{"Key", "Etag", "Size", "LastModified"}, ...]}`` as
  an S3 ItemReader lists them and an ItemBatcher groups them. A transient failure fails the invocation,
  so the map's retry policy runs the batch again; the shards of batches that finished are re-used.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lambda_fn.config import get_settings
from lambda_fn.events import changes_from_batch, changes_from_sqs
from lambda_fn.ingest import Change, IngestReport, ingest
from lambda_fn.logs import configure, logger
from lambda_fn.models import target_models
from lambda_fn.store import open_store

log = logging.getLogger(__name__)

settings = get_settings()
configure(settings.log_level)
torch.set_num_threads(settings.threads)
images = open_store(settings.resolved_images_uri)
artifacts = open_store(settings.artifacts_uri)


class BatchFailed(RuntimeError):
    """Some images of a Distributed Map batch failed transiently; the state machine retries the batch."""


def _run(changes: list[Change]) -> IngestReport:
    return ingest(
        changes,
        images=images,
        artifacts=artifacts,
        models=target_models(artifacts, settings.cache_dir),
        max_bytes=settings.max_ingest_bytes,
        max_pixels=settings.max_image_pixels,
    )


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict, context: Any) -> dict:
    if "Items" in event:
        report = _run(changes_from_batch(event, images))
        if report.failed:
            raise BatchFailed(f"{len(report.failed)} images failed transiently: {report.as_dict()['failed'][:5]}")
        return report.as_dict()
    changes, _ = changes_from_sqs(event, images)
    report = _run(changes)
    return {"batchItemFailures": [{"itemIdentifier": item} for item in sorted(report.failed)]}
