"""Every saved collection event in tests/events/ through the handler the Lambda runtime would call, against the
loopback S3 server: the S3 notifications (created, removed, and the test event S3 sends when notifications are
configured), EventBridge's schedule, and a Distributed Map batch. The search events are in
tests/lambda_fn/search/test_handler.py."""

from __future__ import annotations

import pytest

from tests.deployment import sqs_event
from tests.helpers import EVENTS_DIR, load_event

COLLECTION_EVENTS = {"sqs_s3_object_created", "sqs_s3_object_removed", "sqs_s3_test_event", "eventbridge_scheduled"}


@pytest.fixture
def handlers(deployment, handlers_for):
    return handlers_for(deployment.uri)


def test_every_saved_event_has_a_test():
    covered = COLLECTION_EVENTS | {"stepfunctions_map_batch"}  # the batch: test_backfill_batches.py
    search = {p.stem for p in EVENTS_DIR.glob("*.json") if p.stem.startswith(("apigw_", "http_api_", "function_url_"))}
    assert {p.stem for p in EVENTS_DIR.glob("*.json")} == covered | search


def test_s3s_test_event_is_acknowledged_and_embeds_nothing(handlers, lambda_context):
    ingest, _ = handlers
    assert ingest.handler(load_event("sqs_s3_test_event"), lambda_context) == {"batchItemFailures": []}


@pytest.mark.parametrize("removed", [False, True])
def test_s3_notifications_through_sqs_are_handled_without_failures(handlers, deployment, lambda_context, removed):
    ingest, _ = handlers
    key = "images/pasta/pasta_0000.jpg"  # an image of the deployed build
    head = deployment.client.head_object(Bucket=deployment.bucket, Key=f"{deployment.prefix}/{key}")
    change = {"key": f"{deployment.prefix}/{key}", "size": head["ContentLength"], "eTag": head["ETag"].strip('"')}
    event = sqs_event(change, bucket=deployment.bucket, removed=removed)
    assert ingest.handler(event, lambda_context) == {"batchItemFailures": []}


def test_the_scheduled_event_runs_a_reindex(handlers, lambda_context):
    _, reindex = handlers
    report = reindex.handler(load_event("eventbridge_scheduled"), lambda_context)
    assert report["status"] in ("published", "unchanged")
