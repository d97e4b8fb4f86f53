"""Filtering by label: the oversampling search over a real Annoy index against exact filtered search, its
exact-scan fallback, and the ``label`` parameter of the three search endpoints."""

from __future__ import annotations

import numpy as np
import pytest
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import KeyEntry, read_keys
from lambda_fn.vision import labels as label_search
from lambda_fn.vision.labels import LabelIndex, item_vectors
from tests.helpers import SAMPLE_CLASSES, SAMPLE_PER_CLASS, assert_json_error, jpeg_bytes

DIM, TREES = 32, 10
# shares of a 3,000-image collection: common, middling, rare (20 images), and a label of one image
SHARES = {"common": 2400, "middle": 579, "rare": 20, "single": 1}


class CountingIndex:
    """An Annoy index that counts the searches it answers (a LabelIndex uses these two methods only)."""

    def __init__(self, index: AnnoyIndex):
        self.index, self.searches = index, []

    def get_nns_by_vector(self, vector, n, **kwargs):
        self.searches.append(n)
        return self.index.get_nns_by_vector(vector, n, **kwargs)

    def get_item_vector(self, i):
        return self.index.get_item_vector(i)


@pytest.fixture(scope="module")
def collection():
    """Unit vectors in clusters, labels independent of the clusters (the hard case for oversampling)."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, DIM))
    vectors = centres[rng.integers(30, size=3000)] + 0.6 * rng.standard_normal((3000, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    names = np.repeat(list(SHARES), list(SHARES.values()))
    rng.shuffle(names)
    index = AnnoyIndex(DIM, "angular")
    index.set_seed(42)
    for i, v in enumerate(vectors):
        index.add_item(i, v.tolist())
    index.build(TREES)
    keys = [KeyEntry(f"{name}/{i}.jpg", str(name)) for i, name in enumerate(names)]
    return vectors, names, keys, index


@pytest.fixture
def labelled(collection):
    vectors, names, keys, index = collection
    counting = CountingIndex(index)
    return vectors, names, LabelIndex(keys, counting, TREES), counting


def exact(vectors, names, query, wanted, k, exclude=None):
    s = vectors @ query
    s[~np.isin(names, list(wanted))] = -np.inf
    if exclude is not None:
        s[exclude] = -np.inf
    order = np.argsort(-s, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(s[i])]


def test_labels_are_listed_most_frequent_first_and_unknown_ones_named(labelled):
    _, _, index, _ = labelled
    assert index.names == list(SHARES)
    assert index.unknown(["rare", "nope", "Common"]) == ["nope", "Common"]


@pytest.mark.parametrize("wanted", [("common",), ("middle",), ("common", "rare")])
def test_oversampling_returns_k_of_the_label_close_to_exact(labelled, wanted, monkeypatch):
    vectors, names, index, counting = labelled
    monkeypatch.setattr(label_search, "SCAN_MAX_IMAGES", 0)  # Annoy, even for labels small enough to scan
    recalls = []
    for q in range(0, 3000, 150):
        found = index.search(vectors[q], 10, wanted, exclude=q, search_k=2000)
        ids = [i for i, _ in found]
        assert len(ids) == 10 and q not in ids and set(names[ids]) <= set(wanted)
        distances = [d for _, d in found]
        assert distances == sorted(distances)
        recalls.append(len(set(ids) & set(exact(vectors, names, vectors[q], wanted, 10, exclude=q))) / 10)
    assert counting.searches and np.mean(recalls) >= 0.9, recalls


@pytest.mark.parametrize("wanted", [("middle",), ("rare",), ("middle", "single")])
def test_a_label_with_few_images_is_scanned_exactly_without_asking_annoy(labelled, wanted):
    vectors, names, index, counting = labelled
    for q in (7, 1500):
        found = index.search(vectors[q], 10, wanted, exclude=q, search_k=2000)
        assert [i for i, _ in found] == exact(vectors, names, vectors[q], wanted, 10, exclude=q)
        cosines = vectors[[i for i, _ in found]] @ vectors[q]
        np.testing.assert_allclose([d for _, d in found], np.sqrt(2 - 2 * cosines), atol=1e-5)
    assert counting.searches == []


def test_a_label_too_rare_to_oversample_is_scanned(labelled, monkeypatch):
    vectors, names, index, counting = labelled
    monkeypatch.setattr(label_search, "SCAN_MAX_IMAGES", 0)
    # 20 of 3,000: 10 results would need ~3,000 neighbours from Annoy, over MAX_CANDIDATES
    found = index.search(vectors[7], 10, ["rare"], search_k=2000)
    assert counting.searches == []
    assert [i for i, _ in found] == exact(vectors, names, vectors[7], ["rare"], 10)


def test_a_label_smaller_than_k_gives_all_its_images(labelled):
    vectors, names, index, _ = labelled
    (only,) = np.flatnonzero(names == "single")
    assert [i for i, _ in index.search(vectors[0], 10, ["single"])] == [only]
    assert index.search(vectors[only], 10, ["single"], exclude=only) == []
    assert len(index.search(vectors[0], 50, ["rare", "single"])) == 21


def test_tries_that_come_back_short_end_in_an_exact_scan(labelled, monkeypatch):
    vectors, names, index, counting = labelled
    monkeypatch.setattr(label_search, "SCAN_MAX_IMAGES", 0)
    monkeypatch.setattr(label_search, "OVERSAMPLE", 0.001)  # every try asks Annoy for far too few
    found = index.search(vectors[3], 10, ["middle"])
    assert len(counting.searches) == label_search.TRIES
    assert counting.searches == sorted(counting.searches) and counting.searches[1] == 4 * counting.searches[0]
    assert [i for i, _ in found] == exact(vectors, names, vectors[3], ["middle"], 10)


def test_scanned_vectors_are_cached_within_a_byte_budget(labelled, monkeypatch):
    vectors, _, index, _ = labelled
    index.search(vectors[0], 10, ["rare"])
    assert list(index._vectors) == ["rare"]
    monkeypatch.setattr(label_search, "CACHE_BYTES", 21 * DIM * 4)  # room for "rare" and "single", no more
    index.scan(vectors[0], 5, {"single"})
    index.scan(vectors[0], 5, {"middle"})  # too big to keep
    assert list(index._vectors) == ["rare", "single"]


def test_item_vectors_read_the_index_file_in_place(collection, tmp_path):
    vectors, _, keys, index = collection
    path = tmp_path / "index.ann"
    index.save(str(path))
    loaded = AnnoyIndex(DIM, "angular")
    loaded.load(str(path))
    view = item_vectors(path, loaded, DIM)
    assert view.shape == (3000, DIM) and not view.flags.writeable
    np.testing.assert_array_equal(view[[5, 2999]], [loaded.get_item_vector(5), loaded.get_item_vector(2999)])
    in_place = LabelIndex(keys, loaded, TREES, vectors=view)
    cached = LabelIndex(keys, loaded, TREES)
    for wanted in ({"rare"}, {"middle", "single"}):
        a, b = in_place.scan(vectors[9], 10, wanted), cached.scan(vectors[9], 10, wanted)
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([d for _, d in a], [d for _, d in b], atol=1e-6)
    assert in_place._vectors == {}  # nothing copied out of Annoy


def test_item_vectors_refuse_a_file_they_do_not_understand(collection, tmp_path):
    _, _, _, index = collection
    path = tmp_path / "index.ann"
    index.save(str(path))
    assert item_vectors(path, index, DIM + 1) is None  # another layout: the check against Annoy fails
    (tmp_path / "short.ann").write_bytes(b"\0" * 64)
    assert item_vectors(tmp_path / "short.ann", index, DIM) is None
    assert item_vectors(tmp_path / "missing.ann", index, DIM) is None


@pytest.fixture(scope="module")
def keys(artifacts_dir) -> list[KeyEntry]:
    return read_keys(artifacts_dir / "keys.json")


@pytest.fixture(scope="module")
def embeddings(artifacts_dir) -> np.ndarray:
    return np.load(artifacts_dir / "embeddings.npy")


def test_similar_with_a_label_gives_k_images_of_that_label_in_exact_order(client, keys, embeddings):
    label = keys[13].label
    other = next(e.label for e in keys if e.label != label)
    r = client.get("/images/13/similar", params={"label": other, "k": 5, "dedupe": "false"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == [other] and len(body["results"]) == 5
    assert {m["label"] for m in body["results"]} == {other}
    names = np.array([e.label for e in keys])
    assert [m["id"] for m in body["results"]] == exact(embeddings, names, embeddings[13], [other], 5)


def test_several_labels_and_every_endpoint(client, keys, sample_dir):
    wanted = sorted({e.label for e in keys})[:2]
    by_id = client.get("/images/3/similar", params={"label": wanted, "k": 12}).json()
    by_key = client.get("/similar", params={"key": keys[3].key, "label": wanted, "k": 12}).json()
    assert by_id["results"] == by_key["results"] and len(by_id["results"]) == 12
    assert {m["label"] for m in by_id["results"]} == set(wanted)
    photo = (sample_dir / keys[20].key).read_bytes()
    upload = client.post("/search", params={"label": wanted[0], "k": 4}, files={"image": ("q.jpg", photo)})
    assert upload.status_code == 200, upload.text
    assert [m["label"] for m in upload.json()["results"]] == [wanted[0]] * 4


def test_a_label_with_fewer_images_than_k_gives_them_all_and_no_next_page(client, keys):
    label = keys[13].label
    body = client.get("/images/13/similar", params={"label": label, "k": 50, "dedupe": "false"}).json()
    ids = [m["id"] for m in body["results"]]
    assert len(ids) == SAMPLE_PER_CLASS - 1 and 13 not in ids and body["next_offset"] is None


def test_an_unknown_label_is_422_listing_the_known_ones(client, keys):
    error = assert_json_error(client.get("/images/1/similar", params={"label": "pizzza"}), 422, "unknown_label")
    assert "'pizzza'" in error["message"] and f"the {SAMPLE_CLASSES} labels are" in error["message"]
    assert all(e.label in error["message"] for e in keys)
    r = client.post("/search?label=nope", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert_json_error(r, 422, "unknown_label")


@pytest.mark.parametrize(
    "query",
    ["label=", "label=" + "x" * 201, "&".join(["label=pizza"] * 21)],
    ids=["empty", "too long", "21 labels"],
)
def test_malformed_label_filters_are_invalid_parameters(client, query):
    assert_json_error(client.get(f"/images/1/similar?{query}"), 422, "invalid_parameters")


def test_health_lists_the_labels(client, keys):
    index = client.get("/health").json()["index"]
    assert index["label_count"] == SAMPLE_CLASSES and sorted(index["labels"]) == sorted({e.label for e in keys})
