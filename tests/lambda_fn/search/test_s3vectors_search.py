"""The search API on the S3 Vectors store: the same routes and meanings as on Annoy (label filter,
min_similarity, dedupe, paging, search by key, build id), with the differences its schema states (no ids, a
top-k limit). Served from moto's S3 Vectors server with the labelled QueryVectors test extension."""

from __future__ import annotations

import time

import pytest

from lambda_fn.contract.manifest import file_sha256
from lambda_fn.contract.vectors import MAX_TOP_K, index_name
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key
from tests.deployment import sqs_event
from tests.helpers import SAMPLE_COUNT, assert_json_error
from tests.lambda_fn.builds import resaved_model
from tests.lambda_fn.collection.test_backfill_batches import map_batch

KEY = "pasta/pasta_0000.jpg"


@pytest.fixture
def served(deployment, vector_bucket, handlers_for, make_client, lambda_context):
    """The deployment backfilled into S3 Vectors and switched live, and the search app configured for it."""
    ingest_fn, _ = handlers_for(deployment.uri, vector_store="s3vectors", vector_bucket=vector_bucket)
    assert ingest_fn.handler(map_batch(deployment), lambda_context)["embedded"] == SAMPLE_COUNT
    assert ingest_fn.handler({"Switch": {}}, lambda_context)["switched"]
    served = make_client(
        artifacts_uri=deployment.uri,
        vector_store="s3vectors",
        vector_bucket=vector_bucket,
        max_k=200,
        manifest_check_s=0.1,  # a warm container checks vectors/live.json this often
    )
    served.ingest = ingest_fn
    return served


def photo(deployment, key: str = KEY) -> bytes:
    return deployment.images.get(key)[0]


def test_health_says_the_store_its_top_k_limit_and_the_index_that_serves(served):
    body = served.get("/health").json()
    assert body["status"] == "ready"
    assert body["index"]["store"] == "s3vectors" and body["index"]["max_top_k"] == MAX_TOP_K
    assert body["limits"]["max_k"] == MAX_TOP_K  # the settings allow 200; the store returns at most 100
    assert body["build"]["id"].startswith("model-") and "pasta" in body["index"]["labels"]


def test_an_uploaded_query_finds_its_own_photo_first(served, deployment):
    body = served.post("/search?k=5&dedupe=false", files={"image": ("q.jpg", photo(deployment))}).json()
    first = body["results"][0]
    assert first["key"] == KEY and first["id"] is None and first["label"] == "pasta"
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4) and len(body["results"]) == 5
    assert body["build_id"] == served.get("/health").json()["build"]["id"]


def test_the_label_filter_min_similarity_and_an_unknown_label(served, deployment):
    body = served.post("/search?k=8&label=salad", files={"image": ("q.jpg", photo(deployment))}).json()
    assert body["results"] and {r["label"] for r in body["results"]} == {"salad"}
    floor = body["results"][2]["similarity"]
    cut = served.post(f"/search?k=8&label=salad&min_similarity={floor}", files={"image": ("q.jpg", photo(deployment))})
    assert all(r["similarity"] >= floor for r in cut.json()["results"]) and cut.json()["cut_below_similarity"] > 0
    assert_json_error(
        served.post("/search?label=nope", files={"image": ("q.jpg", photo(deployment))}), 422, "unknown_label"
    )


def test_paging_runs_up_to_the_top_k_limit(served, deployment):
    files = {"image": ("q.jpg", photo(deployment))}
    first = served.post("/search?k=10&dedupe=false", files=files).json()
    second = served.post(f"/search?k=10&dedupe=false&offset={first['next_offset']}", files=files).json()
    assert first["next_offset"] == 10 and second["offset"] == 10
    assert not {r["key"] for r in first["results"]} & {r["key"] for r in second["results"]}
    last = served.post("/search?k=10&dedupe=false&offset=50", files=files).json()
    assert last["next_offset"] is None and len(last["results"]) == SAMPLE_COUNT - 50  # the collection ends
    too_far = served.post(f"/search?k=10&offset={MAX_TOP_K - 5}", files=files)
    assert f"at most {MAX_TOP_K}" in assert_json_error(too_far, 422, "invalid_parameters")["message"]


def test_search_by_key_leaves_the_image_out_and_ids_point_to_keys(served):
    body = served.get(f"/similar?key={KEY}&k=5").json()
    assert body["query"]["key"] == KEY and body["query_id"] is None
    assert KEY not in {r["key"] for r in body["results"]} and len(body["results"]) == 5
    assert_json_error(served.get("/similar?key=pasta/none.jpg"), 404, "unknown_image")
    by_id = assert_json_error(served.get("/images/3/similar"), 404, "unknown_image")
    assert "key" in by_id["message"]
    assert_json_error(served.get("/images/3/similar?build=an-old-index"), 409, "stale_build")


def test_a_duplicate_upload_is_collapsed_and_searchable_at_once(served, deployment, lambda_context):
    d = deployment
    change = d.put_image("pasta/copy_of_0000.jpg", photo(deployment))
    assert served.ingest.handler(sqs_event(change, bucket=d.bucket), lambda_context) == {"batchItemFailures": []}
    files = {"image": ("q.jpg", photo(deployment))}
    both = [r["key"] for r in served.post("/search?k=3&dedupe=false", files=files).json()["results"][:2]]
    assert sorted(both) == sorted([KEY, "pasta/copy_of_0000.jpg"])  # no reindex: searchable after its batch
    deduped = served.post("/search?k=3", files=files).json()
    assert (
        deduped["duplicates_collapsed"] >= 1
        and len({KEY, "pasta/copy_of_0000.jpg"} & {r["key"] for r in deduped["results"]}) == 1
    )


def test_a_warm_service_swaps_to_a_new_models_index_once_it_goes_live(
    served, deployment, model_path, tmp_path, lambda_context
):
    d = deployment
    before = served.get("/health").json()
    second = resaved_model(model_path, tmp_path / "second.pt")
    sha = file_sha256(second)
    d.artifacts.upload_file(second, model_key(sha))
    d.artifacts.put(POINTER_FILE, ModelPointer(model_file=model_key(sha), model_sha256=sha).model_dump_json().encode())
    assert served.ingest.handler(map_batch(d), lambda_context)["embedded"] == SAMPLE_COUNT
    assert served.ingest.handler({"Switch": {}}, lambda_context)["live"] == index_name(sha)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = served.get("/health").json()
        if body["build"]["id"] != before["build"]["id"]:
            break
        time.sleep(0.1)
    assert body["build"]["id"] == index_name(sha) and body["model"]["sha256"] == sha, body["updates"]
    assert body["updates"]["error"] is None and body["updates"]["pending_model"] is None
    result = served.post("/search?k=3", files={"image": ("q.jpg", photo(d))}).json()
    assert result["build_id"] == index_name(sha) and result["results"][0]["key"] == KEY


def test_liked_and_disliked_keys_steer_a_search_on_the_store(served, deployment):
    liked, disliked = "salad/salad_0000.jpg", "pasta/pasta_0001.jpg"
    files = {"image": ("q.jpg", photo(deployment))}
    body = served.post(f"/search?k=10&dedupe=false&like={liked}&dislike={disliked}", files=files).json()
    keys = [r["key"] for r in body["results"]]
    assert len(keys) == 10 and not {liked, disliked} & set(keys)  # the judged never come back
    plain = served.post("/search?k=12&dedupe=false", files=files).json()
    assert keys != [r["key"] for r in plain["results"] if r["key"] not in (liked, disliked)][:10]  # it steered
    # one liked image and no query ranks by that image's own vector: the same page as a search by its key
    alone = served.get(f"/similar?like={liked}&k=5&dedupe=false").json()
    by_key = served.get(f"/similar?key={liked}&k=5&dedupe=false").json()
    assert [r["key"] for r in alone["results"]] == [r["key"] for r in by_key["results"]]
    assert liked not in {r["key"] for r in alone["results"]}
    assert_json_error(served.get("/similar?like=salad/none.jpg"), 404, "unknown_image")
    assert_json_error(served.get(f"/similar?dislike={disliked}"), 422, "no_positive_example")
