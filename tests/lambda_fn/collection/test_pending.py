"""Photos that arrive before any model is published: recorded as pending, counted, and embedded by the first
reindex once a model exists (regression: they were acknowledged as skipped and never embedded).

Against the loopback S3 server, with the S3 event shapes AWS documents (tests/events/)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from botocore.exceptions import ClientError

from lambda_fn.collection import pending
from lambda_fn.collection.events import changes_from_sqs
from lambda_fn.collection.ingest import ingest, ingest_pending
from lambda_fn.collection.pending import PendingStatus
from lambda_fn.collection.reindex import reindex
from lambda_fn.contract import metrics
from lambda_fn.contract.manifest import PENDING_STATUS_FILE
from lambda_fn.contract.shards import Shard, namespace
from ops.upload import announce_model, upload
from tests.deployment import PREFIX, Deployment, embed_bytes, sqs_event, unique_photo
from tests.helpers import SAMPLE_COUNT

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 64_000_000}
EARLY = [f"early/photo {i}.jpg" for i in range(3)]


@pytest.fixture
def empty(s3, bucket, tmp_path) -> Deployment:
    """A deployment before anything is published: no manifest, no model, no images."""
    return Deployment(s3, bucket, PREFIX, tmp_path / "cache")


def _ingest(d: Deployment, event: dict):
    changes, _ = changes_from_sqs(event, d.images)
    return ingest(changes, images=d.images, artifacts=d.artifacts, models=d.models(), **LIMITS)


def _reindex(d: Deployment, tmp_path, **kw):
    def embed(events):
        return ingest_pending(events, images=d.images, artifacts=d.artifacts, cache_dir=d.cache, **LIMITS)

    return reindex(d.artifacts, tmp_path / "work", lease_s=60, n_jobs=1, embed_pending=embed, **kw)


def _status(d: Deployment) -> PendingStatus:
    return PendingStatus.model_validate_json(d.artifacts.get(PENDING_STATUS_FILE)[0])


def _arrive_before_any_model(d: Deployment) -> tuple[dict[str, bytes], str]:
    """Three new photos, and one uploaded then deleted, all delivered while nothing is published; the
    deletion is delivered first, as SQS may. Returns the photos and the deleted key."""
    photos = {key: unique_photo(100 + i) for i, key in enumerate(EARLY)}
    report = _ingest(d, sqs_event(*(d.put_image(k, v) for k, v in photos.items()), bucket=d.bucket))
    assert (report.pending, report.embedded, report.skipped, report.failed) == (3, 0, [], {})
    gone = d.put_image("early/gone.jpg", unique_photo(199))
    d.client.delete_object(Bucket=d.bucket, Key=gone["key"])
    removal = sqs_event({"key": gone["key"]}, removed=True, time="2026-11-29T12:01:00.000Z", bucket=d.bucket)
    assert _ingest(d, removal).pending == 1
    assert _ingest(d, sqs_event(gone, time="2026-11-29T12:00:30.000Z", bucket=d.bucket)).pending == 1
    return photos, "early/gone.jpg"


def test_photos_before_the_first_build_are_embedded_by_the_first_reindex_after_it(
    empty, tmp_path, artifacts_dir, sample_dir
):
    d = empty
    photos, gone = _arrive_before_any_model(d)
    # a photo of the collection the build is made from arrives too (ops.upload sends the images first)
    sample = sorted(sample_dir.rglob("*.jpg"))[0]
    sample_key = sample.relative_to(sample_dir).as_posix()
    assert _ingest(d, sqs_event(d.put_image(sample_key, sample.read_bytes()), bucket=d.bucket)).pending == 1

    waiting = _reindex(d, tmp_path)
    assert (waiting.status, waiting.pending_images) == ("no_model", 4)  # the deleted photo does not count
    assert _status(d).images == 4
    assert _reindex(d, tmp_path).pending_images == 4  # counted once: the status answers while nothing changes

    upload(artifacts_dir, None, d.bucket, PREFIX, client=d.client)  # the first model and its build
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == SAMPLE_COUNT + 3
    assert (result.drained, result.pending_images) == (5, 0)
    assert _status(d).images == 0 and pending.record_keys(d.artifacts) == []
    engine = d.engine()
    for key, data in photos.items():
        top = engine.search(embed_bytes(engine, data), 1)[0]
        assert engine.keys[top.id].key == key and engine.keys[top.id].label == "early"
        assert top.similarity > 0.999
    assert gone not in {e.key for e in engine.keys}  # the deletion wins, whatever order it came in
    # the photo the build already holds (same ETag) was not embedded again; only the new ones were
    (shard_key,) = [i.key for i in d.artifacts.list(namespace(engine.manifest.model_sha256))]
    shard = Shard.from_bytes(d.artifacts.get(shard_key)[0])
    assert sorted(a.key for a in shard.added) == sorted(photos)
    assert _reindex(d, tmp_path).status == "unchanged"


def test_photos_before_an_announced_first_model_make_its_first_build(empty, tmp_path, model_path):
    d = empty
    photos, gone = _arrive_before_any_model(d)
    announce_model(model_path, d.bucket, PREFIX, client=d.client)  # ops.upload --new-model
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == 3 and result.pending_images == 0
    keys = {e.key for e in d.engine().keys}
    assert keys == set(photos) and gone not in keys


def test_a_removal_before_the_model_wins_over_the_build_that_holds_the_photo(
    empty, tmp_path, artifacts_dir, sample_dir
):
    d = empty
    sample = sorted(sample_dir.rglob("*.jpg"))[0]
    sample_key = sample.relative_to(sample_dir).as_posix()
    # deleted after the build's copy of the file was made
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 1))
    _ingest(d, sqs_event({"key": f"{PREFIX}/images/{sample_key}"}, removed=True, time=now, bucket=d.bucket))
    upload(artifacts_dir, None, d.bucket, PREFIX, client=d.client)
    assert sample_key in {e.key for e in d.engine().keys}
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == SAMPLE_COUNT - 1
    assert sample_key not in {e.key for e in d.engine().keys}


def test_the_latest_event_per_key_wins_and_a_removal_wins_a_tie():
    up = pending.PendingEvent(kind="created", key="a.jpg", etag="e1", time="2026-11-29T12:00:00.000Z")
    down = pending.PendingEvent(kind="removed", key="a.jpg", time="2026-11-29T12:00:00.000Z")
    again = up.model_copy(update={"etag": "e2", "time": "2026-11-29T12:00:01.000Z"})
    assert pending.latest({"r1": [down], "r2": [up]})["a.jpg"] == down
    assert pending.latest({"r1": [up], "r2": [down]})["a.jpg"] == down
    assert pending.latest({"r1": [again, down], "r2": [up]})["a.jpg"] == again
    assert pending.record_key([up, down]) == pending.record_key([down, up])  # named by content, like a shard


def test_a_record_that_cannot_be_written_now_is_delivered_again(empty):
    d = empty

    class Throttled(type(d.artifacts)):
        def put(self, key, data, **kw):
            error = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
            raise ClientError(error, "PutObject")

    artifacts = Throttled(d.bucket, PREFIX, d.client)
    event = sqs_event(d.put_image("early/x.jpg", unique_photo(120)), bucket=d.bucket)
    changes, _ = changes_from_sqs(event, d.images)
    report = ingest(changes, images=d.images, artifacts=artifacts, models=[], **LIMITS)
    assert report.pending == 0 and list(report.failed) == [event["Records"][0]["messageId"]]


@pytest.fixture
def functions(empty, handlers_for):
    """The ingest and reindex functions' handlers, configured for the empty deployment."""
    return handlers_for(empty.uri)


def _metrics(text: str) -> dict:
    """Metric name -> values over the EMF lines written."""
    found = {}
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            doc = json.loads(line)
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    found[metric["Name"]] = doc[metric["Name"]]
    return found


def test_the_functions_acknowledge_pending_photos_and_report_them(empty, functions, lambda_context, capsys):
    d, (ingest_fn, reindex_fn) = empty, functions
    event = sqs_event(*(d.put_image(key, unique_photo(130 + i)) for i, key in enumerate(EARLY)), bucket=d.bucket)
    capsys.readouterr()
    assert ingest_fn.handler(event, lambda_context) == {"batchItemFailures": []}  # recorded: not redelivered
    assert _metrics(capsys.readouterr().out)[metrics.CHANGES_PENDING] == [3]
    assert reindex_fn.handler({}, lambda_context)["pending_images"] == 3
    assert _metrics(capsys.readouterr().out)[metrics.PENDING_IMAGES] == [3]


def _health_until(client, predicate) -> dict:
    deadline = time.monotonic() + 30
    while True:
        body = client.get("/health").json()
        if predicate(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_health_shows_the_photos_waiting(tmp_path, artifacts_dir, make_client):
    """/health reads the number the last reindex counted (one small GET per manifest check, no listing),
    until it reads none: with a build live, no new photo waits."""
    art = tmp_path / "art"
    shutil.copytree(artifacts_dir, art)
    status = art / PENDING_STATUS_FILE
    status.parent.mkdir(parents=True)
    status.write_text(PendingStatus(images=7).model_dump_json())
    with make_client(artifacts_uri=str(art), manifest_check_s=0.1) as client:
        body = _health_until(client, lambda b: b["updates"]["pending_images"] is not None)
        assert body["updates"]["pending_images"] == 7 and body["status"] == "ready"
        status.write_text(PendingStatus(images=0).model_dump_json())  # the reindex embedded them
        assert _health_until(client, lambda b: b["updates"]["pending_images"] == 0)["updates"]["pending_images"] == 0
        status.write_text(PendingStatus(images=5).model_dump_json())
        checked = client.get("/health").json()["updates"]["checked_at"]
        body = _health_until(client, lambda b: b["updates"]["checked_at"] != checked)
        assert body["updates"]["pending_images"] == 0  # not read again
