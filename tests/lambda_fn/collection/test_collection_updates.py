"""The collection keeps itself indexed: S3 events -> ingest -> shards -> reindex -> a new live build.

Everything runs against the loopback S3 server with the event shapes AWS documents (tests/events/)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lambda_fn.collection.events import changes_from_sqs
from lambda_fn.collection.ingest import ingest
from lambda_fn.collection.reindex import LEASE_FILE, Lease, reindex
from lambda_fn.contract.manifest import Manifest
from lambda_fn.contract.shards import Shard, namespace
from lambda_fn.vision.imaging import load_for_model
from lambda_fn.vision.phash import from_hex, perceptual_hash
from support.hostile_images import flat_jpeg, rle_bmp
from tests.deployment import FlakyStore, embed_bytes, sqs_event, unique_photo
from tests.helpers import SAMPLE_COUNT
from tests.lambda_fn.builds import resaved_model

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 64_000_000}


def _ingest(d, event, images=None):
    changes, _ = changes_from_sqs(event, d.images)
    return ingest(changes, images=images or d.images, artifacts=d.artifacts, models=d.models(), **LIMITS)


def _reindex(d, tmp_path, **kw):
    return reindex(d.artifacts, tmp_path / "work", lease_s=60, n_jobs=1, **kw)


def test_added_photos_become_searchable_and_a_removed_one_goes(deployment, tmp_path):
    d = deployment
    photos = {f"newdish/photo {i}.jpg": unique_photo(i) for i in range(3)}
    objects = [d.put_image(key, data) for key, data in photos.items()]
    report = _ingest(d, sqs_event(*objects, bucket=d.bucket))
    assert (report.embedded, report.failed, report.skipped) == (3, {}, []), report.skipped
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == SAMPLE_COUNT + 3
    engine = d.engine()
    assert engine.manifest.count == SAMPLE_COUNT + 3
    for key, data in photos.items():
        top = engine.search(embed_bytes(engine, data), 1)[0]
        assert engine.keys[top.id].key == key and engine.keys[top.id].label == "newdish"
        assert top.similarity > 0.999

    gone = "newdish/photo 1.jpg"
    d.client.delete_object(Bucket=d.bucket, Key=f"{d.prefix}/images/{gone}")
    _ingest(
        d,
        sqs_event({"key": f"{d.prefix}/images/{gone}"}, removed=True, time="2026-11-29T12:05:00.000Z", bucket=d.bucket),
    )
    assert _reindex(d, tmp_path).count == SAMPLE_COUNT + 2
    assert gone not in {e.key for e in d.engine().keys}


def test_ingest_and_reindex_carry_each_photos_perceptual_hash(deployment, tmp_path):
    d = deployment
    photos = {f"hashed/{i}.jpg": unique_photo(40 + i) for i in range(2)}
    report = _ingest(d, sqs_event(*(d.put_image(k, v) for k, v in photos.items()), bucket=d.bucket))
    meta = d.models()[0].meta
    expected = {k: perceptual_hash(load_for_model(v, meta.resize_size, meta.crop_size)) for k, v in photos.items()}
    shard = Shard.from_bytes(d.artifacts.get(report.shards[0])[0])
    assert {a.key: from_hex(a.phash) for a in shard.added} == expected
    assert _reindex(d, tmp_path).unhashed == 0
    engine = d.engine()
    assert engine.dedupe_off is None and engine.manifest.hashed == engine.hashed == SAMPLE_COUNT + 2
    assert engine.picture_hashes([engine.ids[k] for k in photos]) == list(expected.values())


def test_the_same_message_twice_adds_nothing_twice(deployment, tmp_path):
    d = deployment
    event = sqs_event(d.put_image("dup/one.jpg", unique_photo(7)), bucket=d.bucket)
    first, second = _ingest(d, event), _ingest(d, event)
    assert first.embedded == 1 and len(first.shards) == 1
    assert second.reused == 1 and second.embedded == 0 and second.shards == []  # recognised: not embedded again
    shards = list(d.artifacts.list(namespace(d.models()[0].sha256)))
    assert len(shards) == 1
    assert _reindex(d, tmp_path).count == SAMPLE_COUNT + 1
    keys = [e.key for e in d.engine().keys]
    assert keys.count("dup/one.jpg") == 1


def test_a_corrupt_image_is_skipped_with_its_reason_and_the_batch_succeeds(deployment, tmp_path):
    d = deployment
    good = d.put_image("mixed/good.jpg", unique_photo(11))
    bad = d.put_image("mixed/bad.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg")
    event = sqs_event(good, bad, bucket=d.bucket)
    report = _ingest(d, event)
    assert report.failed == {} and report.embedded == 1
    assert [s.key for s in report.skipped] == ["mixed/bad.jpg"]
    assert "could not be read" in report.skipped[0].reason
    shard = Shard.from_bytes(d.artifacts.get(report.shards[0])[0])
    assert [(s.key, s.etag) for s in shard.skipped] == [("mixed/bad.jpg", bad["eTag"])]
    assert _ingest(d, event).reused == 1  # a skip is final: the batch is not embedded again
    result = _reindex(d, tmp_path)
    assert result.count == SAMPLE_COUNT + 1 and result.skipped == 1


def test_images_too_costly_to_decode_are_skipped_with_the_rule_they_break(deployment):
    # Ingest decodes with the search's rules: each of these cost seconds or hundreds of MiB before they existed.
    d = deployment
    good = d.put_image("costly/good.jpg", unique_photo(12))
    costly = {
        "costly/rle.bmp": (rle_bmp(8000), "RLE8-compressed BMP"),
        "costly/multiscan.jpg": (flat_jpeg(8000, 8000, interleaved=False), "multi-scan JPEG"),
        "costly/cmyk.jpg": (flat_jpeg(6000, 6000, components=4, progressive=True), "progressive JPEG"),
    }
    objects = [d.put_image(key, data) for key, (data, _) in costly.items()]
    report = _ingest(d, sqs_event(good, *objects, bucket=d.bucket))
    assert report.failed == {} and report.embedded == 1
    reasons = {s.key: s.reason for s in report.skipped}
    assert set(reasons) == set(costly)
    for key, (_, says) in costly.items():
        assert says in reasons[key]


def test_a_transient_error_fails_only_its_message(deployment):
    d = deployment
    ok = d.put_image("flaky/ok.jpg", unique_photo(21))
    throttled = d.put_image("flaky/throttled.jpg", unique_photo(22))
    event = sqs_event(ok, throttled, bucket=d.bucket)
    flaky = FlakyStore(d.images, fail_get={"flaky/throttled.jpg"})
    report = _ingest(d, event, images=flaky)
    failed_id = event["Records"][1]["messageId"]
    assert list(report.failed) == [failed_id] and "SlowDown" in report.failed[failed_id]
    assert report.embedded == 1
    # redelivered alone, it goes through and lands in its own shard
    retry = {"Records": [event["Records"][1]]}
    again = _ingest(d, retry)
    assert again.failed == {} and again.embedded == 1


def test_an_interrupted_reindex_leaves_the_live_manifest_and_the_next_run_completes(deployment, tmp_path):
    d = deployment
    _ingest(d, sqs_event(d.put_image("late/a.jpg", unique_photo(31)), bucket=d.bucket))
    before = d.live_manifest_body()
    flaky = FlakyStore(d.artifacts, fail_upload={"keys.json"})
    with pytest.raises(Exception, match="SlowDown"):
        reindex(flaky, tmp_path / "work", lease_s=60, n_jobs=1)
    assert d.live_manifest_body() == before
    assert d.artifacts.head(LEASE_FILE) is None  # released on the way out
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.count == SAMPLE_COUNT + 1
    assert d.live_manifest_body() != before


def test_nothing_new_means_nothing_published(deployment, tmp_path):
    d = deployment
    assert _reindex(d, tmp_path).status == "unchanged"  # the uploaded build has no shards to merge
    _ingest(d, sqs_event(d.put_image("once/a.jpg", unique_photo(41)), bucket=d.bucket))
    assert _reindex(d, tmp_path).status == "published"
    body = d.live_manifest_body()
    assert _reindex(d, tmp_path).status == "unchanged"
    assert d.live_manifest_body() == body


def test_two_reindexes_never_race(deployment, tmp_path):
    d = deployment
    _ingest(d, sqs_event(d.put_image("race/a.jpg", unique_photo(51)), bucket=d.bucket))
    holder = Lease(d.artifacts, 600)
    assert holder.acquire()
    assert _reindex(d, tmp_path).status == "busy"
    assert not Lease(d.artifacts, 600).acquire()
    holder.release()
    # a lease whose holder died is taken over once it expires
    d.artifacts.put(LEASE_FILE, json.dumps({"owner": "dead", "expires_at": 0}).encode())
    assert _reindex(d, tmp_path).status == "published"


def test_an_older_event_never_overrides_a_newer_one(deployment, tmp_path):
    d = deployment
    new = d.put_image("order/x.jpg", unique_photo(61))
    _ingest(d, sqs_event(new, time="2026-11-29T12:10:00.000Z", bucket=d.bucket))
    # the removal happened before the upload but is delivered after it (a retry): the image stays
    _ingest(d, sqs_event({"key": new["key"]}, removed=True, time="2026-11-29T12:00:00.000Z", bucket=d.bucket))
    _reindex(d, tmp_path)
    assert "order/x.jpg" in {e.key for e in d.engine().keys}


def test_a_new_model_goes_live_only_once_the_collection_is_embedded_with_it(deployment, tmp_path, model_path):
    """Uploading a new model starts a new namespace; the live build keeps serving until it covers the
    collection, and ingest embeds new photos with both models meanwhile."""

    from lambda_fn.collection.ingest import Change
    from lambda_fn.contract.manifest import file_sha256
    from lambda_fn.contract.shards import EventOrder
    from lambda_fn.storage.records import model_key
    from ops.upload import announce_model

    d = deployment
    second = resaved_model(model_path, tmp_path / "second.pt")
    sha = announce_model(second, d.bucket, d.prefix, client=d.client).model_sha256
    assert sha == file_sha256(second)
    live_sha = Manifest.model_validate_json(d.live_manifest_body()).model_sha256

    report = _ingest(d, sqs_event(d.put_image("both/new.jpg", unique_photo(71)), bucket=d.bucket))
    assert len(report.shards) == 2  # one per namespace
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.model_sha256 == live_sha
    assert result.pending_model["missing"] == SAMPLE_COUNT  # the old collection is not embedded with it yet

    # the backfill: every image, embedded again (as a Distributed Map batch would)
    changes = [
        Change(str(i), "created", info.key, info.etag, info.size, EventOrder.at(info.last_modified))
        for i, info in enumerate(d.images.list())
    ]
    models = [m for m in d.models() if m.sha256 == sha]
    ingest(changes, images=d.images, artifacts=d.artifacts, models=models, **LIMITS)
    result = _reindex(d, tmp_path)
    assert result.status == "published" and result.model_sha256 == sha and result.pending_model is None
    assert result.count == SAMPLE_COUNT + 1
    live = Manifest.model_validate_json(d.live_manifest_body())
    assert live.model_sha256 == sha and live.model_file == model_key(sha)
    assert np.isfinite(d.engine().vector(0)).all()
