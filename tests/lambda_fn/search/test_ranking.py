"""What shapes a page of results: the similarity cut-off, collapsing copies of one picture, and offset paging."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from lambda_fn.contract.manifest import (
    KEYS_FILE,
    MANIFEST_FILE,
    Manifest,
    file_sha256,
    read_keys,
    read_keys_and_hashes,
    write_keys,
)
from tests.helpers import assert_json_error, build_index, with_copy


@pytest.fixture(scope="module")
def embeddings(artifacts_dir) -> np.ndarray:
    return np.load(artifacts_dir / "embeddings.npy")


def similar(client, image_id: int = 13, **params) -> dict:
    r = client.get(f"/images/{image_id}/similar", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> list[int]:
    return [m["id"] for m in body["results"]]


def test_min_similarity_cuts_the_tail_and_says_how_many(client):
    full = similar(client, k=10, dedupe="false")
    sims = [m["similarity"] for m in full["results"]]
    floor = sims[6]
    cut = similar(client, k=10, dedupe="false", min_similarity=floor)
    assert ids(cut) == ids(full)[: sum(s >= floor for s in sims)]
    assert cut["cut_below_similarity"] == 10 - len(cut["results"]) > 0 and cut["next_offset"] is None
    assert similar(client, k=10, min_similarity=-1)["cut_below_similarity"] == 0
    none = similar(client, k=10, min_similarity=1)
    assert none["results"] == [] and none["cut_below_similarity"] == 10


@pytest.mark.parametrize("value", ["1.01", "-1.5", "nan", "inf", "abc", ""])
def test_min_similarity_outside_minus_one_to_one_is_422(client, value):
    assert_json_error(client.get(f"/images/1/similar?min_similarity={value}"), 422, "invalid_parameters")


def greedy(embeddings: np.ndarray, hashes: list[str | None], order: list[int], bits: int, cosine: float) -> list[int]:
    """The collapse rule written out: keep a result unless its hash is within ``bits`` of a kept one's and their
    cosine is at least ``cosine``."""
    kept: list[int] = []
    for i in order:
        if hashes[i] is None or not any(
            hashes[j] is not None
            and bin(int(hashes[i], 16) ^ int(hashes[j], 16)).count("1") <= bits
            and float(embeddings[i] @ embeddings[j]) >= cosine
            for j in kept
        ):
            kept.append(i)
    return kept


@pytest.fixture(scope="module")
def hashes(artifacts_dir) -> list[str | None]:
    return read_keys_and_hashes(artifacts_dir / "keys.json")[1]


def test_a_build_without_true_duplicates_loses_nothing_to_dedupe(client, hashes):
    assert all(hashes)  # training.build_index hashed every image
    for image_id in (3, 13, 41):
        raw, deduped = similar(client, image_id, k=20, dedupe="false"), similar(client, image_id, k=20)
        assert ids(deduped) == ids(raw) and deduped["duplicates_collapsed"] == 0


@pytest.mark.parametrize("bits", [24, 28])
def test_dedupe_leaves_out_results_whose_picture_matches_a_higher_ranked_one(
    client, make_client, embeddings, hashes, bits
):
    raw = similar(client, k=59, dedupe="false")  # every other image, nearest first
    # looser than the default, so the synthetic set (no true duplicates) has pairs to collapse
    with make_client(dedupe_max_distance=bits, dedupe_similarity=0.0) as loose:
        body = similar(loose, k=8)
    kept = greedy(embeddings, hashes, ids(raw), bits, 0.0)
    assert ids(body) == kept[:8]
    within = ids(raw)[: ids(raw).index(kept[7]) + 1]
    assert body["duplicates_collapsed"] == len(within) - 8 > 0
    with make_client(dedupe_max_distance=bits, dedupe_similarity=1.0) as guarded:  # the embeddings must agree too
        assert ids(similar(guarded, k=8)) == ids(raw)[:8]


def test_dedupe_false_keeps_near_duplicates(copy_client):
    client, photo, key, copy_key = copy_client
    body = client.post("/search?k=3&dedupe=false", files={"image": ("q.jpg", photo)}).json()
    assert body["duplicates_collapsed"] == 0 and {key, copy_key} <= {m["key"] for m in body["results"]}


@pytest.fixture(scope="module")
def copy_build(model_path, sample_dir, tmp_path_factory) -> tuple[Path, Path, str, str]:
    images = tmp_path_factory.mktemp("with-copy")
    key, copy_key = with_copy(sample_dir, images)
    out = build_index(images, model_path, tmp_path_factory.mktemp("with-copy-build"), "--n-trees", "4")
    return out, images, key, copy_key


@pytest.fixture(scope="module")
def copy_client(make_client, copy_build):
    """The service, default settings, on a build of eight sample photos and a copy of the first."""
    out, images, key, copy_key = copy_build
    with make_client(artifacts_uri=str(out), images_uri=str(images)) as client:
        yield client, (images / key).read_bytes(), key, copy_key


def test_an_upload_finds_the_photo_once_not_also_its_copy(copy_client):
    client, photo, key, copy_key = copy_client
    both = client.post("/search?k=3&dedupe=false", files={"image": ("q.jpg", photo)}).json()
    assert [m["key"] for m in both["results"][:2]] == [key, copy_key]
    once = client.post("/search?k=3", files={"image": ("q.jpg", photo)}).json()
    found = [m["key"] for m in once["results"]]
    assert found[0] == key and copy_key not in found
    assert once["duplicates_collapsed"] == 1 and len(once["results"]) == 3
    dedupe = client.get("/health").json()["dedupe"]
    assert dedupe["enabled"] and dedupe["hashed_images"] == 9 and dedupe["reason"] is None


def test_a_build_made_before_hashes_collapses_nothing_and_health_says_so(make_client, copy_build, tmp_path):
    out, images, key, copy_key = copy_build
    old = tmp_path / "old"
    shutil.copytree(out, old)
    entries = read_keys(old / KEYS_FILE)
    write_keys(old / KEYS_FILE, entries)  # the key map as builds wrote it before hashes
    manifest = Manifest.read(old / MANIFEST_FILE).model_dump()
    for field in ("perceptual_hash", "hashed"):
        manifest.pop(field)
    manifest["keys_sha256"] = file_sha256(old / KEYS_FILE)
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    with make_client(artifacts_uri=str(old), images_uri=str(images)) as client:
        body = client.post("/search?k=3", files={"image": ("q.jpg", (images / key).read_bytes())}).json()
        assert [m["key"] for m in body["results"][:2]] == [key, copy_key] and body["duplicates_collapsed"] == 0
        dedupe = client.get("/health").json()["dedupe"]
    assert not dedupe["enabled"] and dedupe["hashed_images"] == 0 and dedupe["perceptual_hash"] is None
    assert "no perceptual hashes" in dedupe["reason"]


@pytest.mark.parametrize("dedupe", ["false", "true"])
def test_pages_put_together_are_the_whole_ranking(client, dedupe):
    whole = similar(client, k=15, dedupe=dedupe)
    pages, offset = [], 0
    while offset is not None and offset < 15:
        page = similar(client, k=5, offset=offset, dedupe=dedupe)
        assert page["offset"] == offset and page["k"] == 5
        pages += ids(page)
        offset = page["next_offset"]
    assert pages == ids(whole) and offset == 15


def test_the_last_page_has_no_next_offset(client, artifacts_dir):
    label = read_keys(artifacts_dir / "keys.json")[13].label
    last = similar(client, k=5, offset=5, label=label, dedupe="false")
    assert len(last["results"]) == 4 and last["next_offset"] is None  # 9 others with the label
    beyond = similar(client, k=5, offset=20, label=label, dedupe="false")
    assert beyond["results"] == [] and beyond["next_offset"] is None


def test_offset_and_k_stay_within_max_k(client, make_client):
    with make_client(default_k=5, max_k=20) as small:
        assert similar(small, k=5, offset=10)["next_offset"] == 15
        assert similar(small, k=5, offset=15)["next_offset"] is None  # max_k results in all, though more exist
        error = assert_json_error(small.get("/images/1/similar?k=5&offset=16"), 422, "invalid_parameters")
        assert "offset + k must be at most 20" in error["message"]
    assert_json_error(client.get("/images/1/similar?offset=-1"), 422, "invalid_parameters")
    assert_json_error(client.get(f"/images/1/similar?offset={2**31}"), 422, "invalid_parameters")


def test_a_json_body_k_counts_against_max_k_with_the_offset(client):
    body = {"image": "data:image/png;base64,iVBORw0KGgo=", "k": 60}
    assert_json_error(client.post("/search?offset=50", json=body), 422, "invalid_parameters")


def test_every_answer_describes_its_page(client):
    body = similar(client, k=3)
    assert {"offset", "next_offset", "labels", "cut_below_similarity", "duplicates_collapsed"} <= set(body)
    assert body["offset"] == 0 and body["next_offset"] == 3 and body["labels"] == []
    assert math.isclose(body["query"]["similarity"], 1.0)
