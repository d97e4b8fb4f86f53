"""The S3 Vectors index client against moto's S3 Vectors server (QueryVectors and throttling from the labelled
test extension ``tests.s3vectors_server``); every request is validated by botocore against the real model."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_fn.contract.vectors import MAX_PUT_BATCH, MAX_TOP_K, index_name, vector_key
from lambda_fn.storage.vectors import MAX_ATTEMPTS, VectorIndex, VectorRecord, VectorStoreError
from tests import s3vectors_server
from tests.s3vectors_server import CALLS, THROTTLE, matches

DIM = 8


def unit(rng, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def index(s3vectors, vector_bucket):
    waits: list[float] = []
    idx = VectorIndex(s3vectors, vector_bucket, index_name("ab" * 32), sleep=waits.append)
    idx.waits = waits
    assert idx.ensure(DIM) and not idx.ensure(DIM)  # created once, then found
    yield idx
    THROTTLE.clear()


def test_writes_go_in_batches_of_at_most_500_and_queries_are_exact(index):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 2 * MAX_PUT_BATCH + 1)
    records = [VectorRecord(f"l{i % 3}/{i}.jpg", v, {"label": f"l{i % 3}"}) for i, v in enumerate(vectors)]
    before = CALLS.get("put_vectors", 0)
    assert index.put(records) == 3
    assert CALLS["put_vectors"] - before == 3
    assert len(set(index.keys())) == len(records)
    found = index.query(vectors[7], 5)
    exact = np.argsort(-(vectors @ vectors[7]), kind="stable")[:5]
    assert [f.image_key for f in found] == [records[i].image_key for i in exact]
    assert found[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert found[0].metadata["label"] == "l1" and found[0].metadata["key"] == "l1/7.jpg"


def test_the_label_filter_keeps_only_those_labels(index):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 30)
    index.put([VectorRecord(f"l{i % 3}/{i}.jpg", v, {"label": f"l{i % 3}"}) for i, v in enumerate(vectors)])
    assert {f.metadata["label"] for f in index.query(vectors[0], 30, labels=["l2"])} == {"l2"}
    two = index.query(vectors[0], 30, labels=["l1", "l2"])
    assert len(two) == 20 and {f.metadata["label"] for f in two} == {"l1", "l2"}


def test_a_put_again_replaces_and_a_delete_removes(index):
    rng = np.random.default_rng(2)
    a, b = unit(rng, 2)
    index.put([VectorRecord("x/1.jpg", a, {"label": "x"})])
    index.put([VectorRecord("x/1.jpg", b, {"label": "y"})])  # a re-delivered or newer event: same key
    got = index.get(["x/1.jpg", "missing.jpg"])
    assert list(got) == ["x/1.jpg"] and np.allclose(got["x/1.jpg"][0], b) and got["x/1.jpg"][1]["label"] == "y"
    index.delete(["x/1.jpg", "missing.jpg"])  # a missing key is no error
    index.delete(["x/1.jpg"])
    assert index.get(["x/1.jpg"]) == {} and index.query(b, 3) == []


def test_throttled_writes_are_retried_with_growing_waits(index):
    rng = np.random.default_rng(3)
    THROTTLE["put_vectors"] = 3
    index.put([VectorRecord("t/1.jpg", unit(rng, 1)[0])])
    assert len(index.waits) == 3 and index.waits[0] < index.waits[2]
    assert list(index.keys()) == ["t/1.jpg"]


def test_throttling_past_every_retry_is_an_error(index):
    THROTTLE["put_vectors"] = MAX_ATTEMPTS
    with pytest.raises(VectorStoreError, match="throttled"):
        index.put([VectorRecord("t/1.jpg", np.ones(DIM, np.float32))])
    assert len(index.waits) == MAX_ATTEMPTS - 1


def test_an_index_of_another_width_is_refused(index):
    with pytest.raises(VectorStoreError, match="new index"):
        index.ensure(DIM * 2)


def test_top_k_is_limited_as_the_service_limits_it(index):
    with pytest.raises(ValueError, match=str(MAX_TOP_K)):
        index.query(np.ones(DIM, np.float32), MAX_TOP_K + 1)


def test_a_key_too_long_for_s3_vectors_becomes_its_digest_and_comes_back_whole(index):
    long_key = "deep/" + "x" * 1100 + ".jpg"
    assert vector_key(long_key).startswith("sha256:") and vector_key("a/b.jpg") == "a/b.jpg"
    v = np.ones(DIM, np.float32)
    index.put([VectorRecord(long_key, v)])
    assert [f.image_key for f in index.query(v, 1)] == [long_key]
    assert list(index.get([long_key])) == [long_key]


def test_the_test_extension_filters_as_documented():
    meta = {"label": "ramen", "source": "ifood"}
    assert matches(meta, {"label": "ramen"}) and matches(meta, {"label": {"$in": ["pho", "ramen"]}})
    assert matches(meta, {"$and": [{"label": {"$eq": "ramen"}}, {"source": {"$ne": "food101"}}]})
    assert not matches(meta, {"$and": [{"label": "ramen"}, {"source": "food101"}]})
    assert matches(meta, {"$or": [{"label": "pho"}, {"source": {"$exists": True}}]})
    assert not matches(meta, {"label": {"$nin": ["ramen"]}})
    with pytest.raises(ValueError, match="not supported"):
        matches(meta, {"label": {"$regex": "r"}})
    assert s3vectors_server._installed  # the session's server carries the extension
