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

import json
import logging
from typing import Any

import torch
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSEvent

from lambda_fn.config import get_settings
from lambda_fn.ingest import Change, IngestReport, ingest
from lambda_fn.logs import configure, logger
from lambda_fn.models import target_models
from lambda_fn.shards import EventOrder
from lambda_fn.store import Store, open_store

log = logging.getLogger(__name__)

settings = get_settings()
configure(settings.log_level)
torch.set_num_threads(settings.threads)
images = open_store(settings.resolved_images_uri)
artifacts = open_store(settings.artifacts_uri)


class BatchFailed(RuntimeError):
    """Some images of a Distributed Map batch failed transiently; the state machine retries the batch."""


def changes_from_sqs(event: dict, images: Store) -> tuple[list[Change], list[str]]:
    """The collection changes in an SQS batch of S3 notifications, and the ids of messages that carry none
    (S3's test event, keys outside the images prefix, unparseable bodies: logged, acknowledged)."""
    changes, ignored = [], []
    for record in SQSEvent(event).records:
        try:
            body = json.loads(record.body)
        except ValueError:
            log.error("SQS message is not JSON; dropped", extra={"message_id": record.message_id})
            ignored.append(record.message_id)
            continue
        if body.get("Event") == "s3:TestEvent" or "Records" not in body:
            ignored.append(record.message_id)
            continue
        found = False
        for s3_record in S3Event(body).records:
            key = images.relative_key(s3_record.s3.get_object.key)
            if not key or key.endswith("/"):
                log.warning("event outside the images prefix", extra={"key": s3_record.s3.get_object.key})
                continue
            obj = s3_record.s3.get_object
            kind = "removed" if s3_record.event_name.startswith("ObjectRemoved") else "created"
            changes.append(
                Change(
                    item_id=record.message_id,
                    kind=kind,
                    key=key,
                    etag=(obj.etag or "").strip('"') if kind == "created" else "",
                    size=obj.size if kind == "created" else None,
                    order=EventOrder.at(s3_record.event_time, obj.sequencer or ""),
                )
            )
            found = True
        if not found:
            ignored.append(record.message_id)
    return changes, ignored


def changes_from_batch(event: dict, images: Store) -> list[Change]:
    """The images of a Distributed Map batch (``Items`` from an S3 listing of the images prefix)."""
    changes = []
    for position, item in enumerate(event.get("Items", [])):
        key = images.relative_key(item["Key"])
        if not key or key.endswith("/"):
            continue
        changes.append(
            Change(
                item_id=str(position),
                kind="created",
                key=key,
                etag=str(item.get("Etag", "")).strip('"'),
                size=item.get("Size"),
                order=EventOrder.at(item["LastModified"]),
            )
        )
    return changes


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
