"""Collection changes out of the events that announce them: S3 notifications delivered through SQS, and
Step Functions Distributed Map batches of an S3 listing (the shapes AWS documents; tests/events/ has each)."""

from __future__ import annotations

import json
import logging
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event, SQSEvent

from lambda_fn.collection.ingest import Change
from lambda_fn.contract.shards import EventOrder
from lambda_fn.storage.store import Store

log = logging.getLogger(__name__)


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
            obj = s3_record.s3.get_object
            full_key = unquote_plus(obj.key)  # S3 notifications URL-encode keys (a space arrives as "+")
            key = images.relative_key(full_key)
            if not key or key.endswith("/"):
                log.warning("event outside the images prefix", extra={"key": full_key})
                continue
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
