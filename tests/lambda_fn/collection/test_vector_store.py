"""The collection on the S3 Vectors store: the same ingest handler and saved events as the Annoy path, against
moto's S3 Vectors server (QueryVectors from the labelled test extension ``tests.s3vectors_server``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lambda_fn.collection.ingest import Change, ingest
from lambda_fn.collection.vectors import VectorWriter, switch
from lambda_fn.contract.manifest import file_sha256
from lambda_fn.contract.shards import namespace
from lambda_fn.contract.vectors import index_name
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key, read_live_index
from lambda_fn.storage.vectors import MAX_ATTEMPTS, VectorIndex
from tests.deployment import embed_bytes, sqs_event, unique_photo
from tests.helpers import SAMPLE_COUNT
from tests.lambda_fn.builds import resaved_model
from tests.lambda_fn.collection.test_backfill_batches import map_batch
from tests.s3vectors_server import THROTTLE


@pytest.fixture
def live(deployment, vector_bucket, handlers_for, lambda_context):
    """The deployment on S3 Vectors, backfilled with the uploaded build's model and switched live: the ingest
    handler module, configured as CDK configures it with ``-c vectorStore=s3vectors``."""
    ingest_fn, _ = handlers_for(deployment.uri, vector_store="s3vectors", vector_bucket=vector_bucket)
    report = ingest_fn.handler(map_batch(deployment), lambda_context)
    assert report["embedded"] == SAMPLE_COUNT and not report["failed"]
    assert ingest_fn.handler({"Switch": {}}, lambda_context)["switched"]
    yield ingest_fn
    THROTTLE.clear()


def index_of(d, s3vectors, vector_bucket, sha: str | None = None) -> VectorIndex:
    sha = sha or d.models()[0].sha256
    return VectorIndex(s3vectors, vector_bucket, index_name(sha))


def test_the_backfill_fills_the_index_and_the_switch_makes_it_live(live, deployment, s3vectors, vector_bucket):
    record, _ = read_live_index(deployment.artifacts)
    index = index_of(deployment, s3vectors, vector_bucket)
    assert record.index == index.name and record.count == SAMPLE_COUNT
    assert len(set(index.keys())) == SAMPLE_COUNT
    vector, metadata = index.get(["pasta/pasta_0000.jpg"])["pasta/pasta_0000.jpg"]
    assert metadata["label"] == "pasta" and index.query(vector, 1)[0].image_key == "pasta/pasta_0000.jpg"


def test_an_uploaded_photo_is_searchable_after_its_batch_and_a_removal_deletes_it(
    live, deployment, s3vectors, vector_bucket, lambda_context
):
    d = deployment
    data = unique_photo(7)
    change = d.put_image("newdish/mine.jpg", data)
    event = sqs_event(change, bucket=d.bucket)
    assert live.handler(event, lambda_context) == {"batchItemFailures": []}
    assert live.handler(event, lambda_context) == {"batchItemFailures": []}  # SQS delivers it again: no harm
    index = index_of(d, s3vectors, vector_bucket)
    query = embed_bytes(d.engine(), data)
    top = index.query(query, 2)
    assert top[0].image_key == "newdish/mine.jpg" and top[0].metadata["label"] == "newdish"
    assert top[0].similarity == pytest.approx(1.0, abs=1e-4) and top[1].image_key != "newdish/mine.jpg"
    assert top[0].metadata["model_sha256"] == d.models()[0].sha256

    d.client.delete_object(Bucket=d.bucket, Key=change["key"])
    removed = sqs_event({"key": change["key"]}, bucket=d.bucket, removed=True, time="2026-11-29T12:00:01.000Z")
    assert live.handler(removed, lambda_context) == {"batchItemFailures": []}
    assert "newdish/mine.jpg" not in {f.image_key for f in index.query(query, 10)}


def test_a_late_removal_of_a_key_uploaded_again_keeps_its_vector(
    live, deployment, s3vectors, vector_bucket, lambda_context
):
    d = deployment
    change = d.put_image("newdish/again.jpg", unique_photo(8))
    assert live.handler(sqs_event(change, bucket=d.bucket), lambda_context) == {"batchItemFailures": []}
    removed = sqs_event({"key": change["key"]}, bucket=d.bucket, removed=True)  # the object still exists
    assert live.handler(removed, lambda_context) == {"batchItemFailures": []}
    assert list(index_of(d, s3vectors, vector_bucket).get(["newdish/again.jpg"])) == ["newdish/again.jpg"]


def test_throttled_puts_are_retried_within_the_batch(live, deployment, s3vectors, vector_bucket, lambda_context):
    d = deployment
    change = d.put_image("newdish/busy.jpg", unique_photo(9))
    THROTTLE["put_vectors"] = 2
    assert live.handler(sqs_event(change, bucket=d.bucket), lambda_context) == {"batchItemFailures": []}
    assert THROTTLE["put_vectors"] == 0
    assert list(index_of(d, s3vectors, vector_bucket).get(["newdish/busy.jpg"])) == ["newdish/busy.jpg"]


def test_a_batch_the_index_keeps_refusing_is_failed_whole_and_written_on_redelivery(
    live, deployment, s3vectors, vector_bucket
):
    d = deployment
    change = d.put_image("newdish/later.jpg", unique_photo(10))
    changes = [Change("m1", "created", "newdish/later.jpg", change["eTag"], change["size"])]
    writer = VectorWriter(s3vectors, vector_bucket, d.artifacts, d.images, sleep=lambda s: None)
    shards_before = sorted(o.key for o in d.artifacts.list(namespace(d.models()[0].sha256)))
    THROTTLE["put_vectors"] = MAX_ATTEMPTS
    args = {"images": d.images, "artifacts": d.artifacts, "max_bytes": 10**8, "max_pixels": 10**8}
    report = ingest(changes, models=d.models(), writer=writer, **args)
    assert set(report.failed) == {"m1"} and "vector index" in report.failed["m1"]
    assert sorted(o.key for o in d.artifacts.list(namespace(d.models()[0].sha256))) == shards_before  # no shard
    report = ingest(changes, models=d.models(), writer=writer, **args)
    assert not report.failed and report.embedded == 1
    assert list(index_of(d, s3vectors, vector_bucket).get(["newdish/later.jpg"])) == ["newdish/later.jpg"]


def test_a_new_model_gets_its_own_index_goes_live_once_it_covers_the_live_one_and_the_old_is_deleted_later(
    live, deployment, s3vectors, vector_bucket, lambda_context, model_path, tmp_path
):
    d = deployment
    old = read_live_index(d.artifacts)[0]
    second = resaved_model(model_path, tmp_path / "second.pt")
    sha = file_sha256(second)
    d.artifacts.upload_file(second, model_key(sha))
    d.artifacts.put(POINTER_FILE, ModelPointer(model_file=model_key(sha), model_sha256=sha).model_dump_json().encode())
    new_index = index_of(d, s3vectors, vector_bucket, sha)

    change = d.put_image("newdish/both.jpg", unique_photo(11))  # while the new index fills: written to both
    assert live.handler(sqs_event(change, bucket=d.bucket), lambda_context) == {"batchItemFailures": []}
    old_index = VectorIndex(s3vectors, vector_bucket, old.index)
    assert (
        list(new_index.get(["newdish/both.jpg"])) == list(old_index.get(["newdish/both.jpg"])) == ["newdish/both.jpg"]
    )
    not_yet = live.handler({"Switch": {}}, lambda_context)
    assert not not_yet["switched"] and not_yet["missing"] == SAMPLE_COUNT and not_yet["live"] == old.index

    half = map_batch(d)["Items"][: SAMPLE_COUNT // 2]
    assert live.handler({"Items": half}, lambda_context)["embedded"] == len(half)
    assert live.handler({"Switch": {}}, lambda_context)["missing"] == SAMPLE_COUNT + 1 - len(half)
    assert live.handler(map_batch(d), lambda_context)["embedded"] == SAMPLE_COUNT + 1  # the whole backfill
    done = live.handler({"Switch": {}}, lambda_context)
    assert done == {"live": new_index.name, "switched": True, "missing": 0, "deleted": []}
    record = read_live_index(d.artifacts)[0]
    assert record.model_sha256 == sha and [r.index for r in record.retired] == [old.index]

    kept = switch(d.artifacts, s3vectors, vector_bucket)  # within the grace period: the old index stays
    assert kept.deleted == [] and VectorIndex(s3vectors, vector_bucket, old.index).info() is not None
    later = datetime.fromisoformat(record.retired[0].delete_after) + timedelta(seconds=1)
    gone = switch(d.artifacts, s3vectors, vector_bucket, now=later.astimezone(UTC))
    assert gone.deleted == [old.index] and VectorIndex(s3vectors, vector_bucket, old.index).info() is None
    assert read_live_index(d.artifacts)[0].retired == [] and read_live_index(d.artifacts)[0].index == new_index.name
