"""More like this, less like that: liked and disliked keys move the ranking and never come back as results."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_fn.contract.manifest import read_keys
from lambda_fn.search.feedback import ALPHA, BETA, NoPositiveSignal, best_score, rocchio
from tests.helpers import assert_json_error, jpeg_bytes

E = np.eye(4, dtype=np.float32)


def test_rocchio_adds_the_mean_liked_and_takes_the_mean_disliked_then_renormalises():
    v = rocchio(E[0], np.stack([E[1], E[2]]), E[3:4], dim=4, alpha=1.0, beta=0.5)
    want = np.array([1.0, 0.5, 0.5, -0.5])
    np.testing.assert_allclose(v, want / np.linalg.norm(want), rtol=1e-6)
    assert v.dtype == np.float32


def test_rocchio_normalises_its_inputs_first():
    a = rocchio(E[0] * 7, E[1:2] * 0.1, None, dim=4, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(a, np.array([1, 1, 0, 0]) / np.sqrt(2), rtol=1e-6)


def test_rocchio_without_a_query_searches_from_the_liked_images():
    np.testing.assert_allclose(rocchio(None, E[2:3], E[3:4], dim=4, beta=0.0), E[2], atol=1e-7)


@pytest.mark.parametrize(
    ("query", "liked", "disliked"),
    [(None, None, None), (None, None, E[1:2]), (E[0], E[1:2], None)],
    ids=["nothing", "only-disliked", "cancelled"],
)
def test_rocchio_refuses_no_positive_signal(query, liked, disliked):
    if query is not None:  # a query cancelled exactly by an opposite liked image: no direction left
        liked = -query[None]
    with pytest.raises(NoPositiveSignal):
        rocchio(query, liked, disliked, dim=4, alpha=1.0)


def test_best_score_takes_the_best_positive_unless_a_negative_is_closer():
    candidates = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    positives = np.array([[1, 0]], dtype=np.float32)
    negatives = np.array([[0, 1]], dtype=np.float32)
    np.testing.assert_allclose(best_score(candidates, positives, negatives), [1.0, -1.0, -0.64], rtol=1e-6)
    np.testing.assert_allclose(best_score(candidates, positives, None), [1.0, 0.0, 0.6], atol=1e-7)


@pytest.fixture(scope="module")
def collection(artifacts_dir):
    """Keys, labels and unit embeddings of the session build, in id order."""
    keys = read_keys(artifacts_dir / "keys.json")
    x = np.load(artifacts_dir / "embeddings.npy").astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return [e.key for e in keys], [e.label for e in keys], x


def exact(x: np.ndarray, vector: np.ndarray, left_out: set[int], k: int) -> list[int]:
    order = np.argsort(-(x @ vector), kind="stable")
    return [int(i) for i in order if int(i) not in left_out][:k]


def test_similar_with_feedback_ranks_by_the_rocchio_vector_and_leaves_the_judged_out(client, collection):
    keys, _, x = collection
    q, liked, disliked = 3, [17, 25], [40]
    r = client.get(
        "/similar",
        params={"key": keys[q], "like": [keys[i] for i in liked], "dislike": keys[40], "k": 10, "dedupe": "false"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    v = x[q] + ALPHA * x[liked].mean(axis=0) - BETA * x[disliked].mean(axis=0)
    v /= np.linalg.norm(v)
    ids = [m["id"] for m in body["results"]]
    assert ids == exact(x, v, {q, *liked, *disliked}, 10)
    assert ids != exact(x, x[q], {q}, 10)  # the feedback did move the ranking
    assert body["liked"] == [keys[i] for i in liked] and body["disliked"] == [keys[40]]
    assert body["query"]["key"] == keys[q]
    np.testing.assert_allclose([m["similarity"] for m in body["results"]], np.sort(x[ids] @ v)[::-1], atol=2e-5)


def test_liked_images_alone_are_the_query(client, collection):
    keys, _, x = collection
    body = client.get("/similar", params=[("like", keys[8]), ("like", keys[9]), ("k", 5)]).json()
    v = (x[8] + x[9]) / np.linalg.norm(x[8] + x[9])
    assert [m["id"] for m in body["results"]] == exact(x, v, {8, 9}, 5)
    assert body["query"] is None and body["query_id"] is None and body["liked"] == [keys[8], keys[9]]


def test_an_upload_with_feedback_leaves_the_judged_out(client):
    plain = client.post("/search?k=6", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"}).json()
    top = [m["key"] for m in plain["results"]]
    r = client.post(
        "/search",
        params=[("k", 6), ("like", top[0]), ("dislike", top[1])],
        content=jpeg_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    shown = [m["key"] for m in body["results"]]
    assert len(shown) == 6 and top[0] not in shown and top[1] not in shown
    assert body["liked"] == [top[0]] and body["disliked"] == [top[1]] and body["predictions"]


def test_filters_paging_and_min_similarity_keep_working_with_feedback(client, collection):
    keys = collection[0]
    like = {"like": keys[12], "dislike": keys[50], "key": keys[2], "dedupe": "false"}
    soup = client.get("/similar", params={**like, "label": "soup", "k": 4}).json()
    assert {m["label"] for m in soup["results"]} == {"soup"} and len(soup["results"]) == 4

    whole = [m["id"] for m in client.get("/similar", params={**like, "k": 12}).json()["results"]]
    first = client.get("/similar", params={**like, "k": 6}).json()
    second = client.get("/similar", params={**like, "k": 6, "offset": first["next_offset"]}).json()
    assert [m["id"] for m in first["results"] + second["results"]] == whole
    assert not {2, 12, 50} & set(whole)

    floor = sorted(m["similarity"] for m in first["results"])[3]
    cut = client.get("/similar", params={**like, "k": 6, "min_similarity": floor}).json()
    assert len(cut["results"]) == 3 and cut["cut_below_similarity"] == 3


def test_the_paging_of_a_liked_search_runs_to_the_end_of_a_label(client, collection):
    _, labels, _ = collection
    soup = [i for i, label in enumerate(labels) if label == "soup"]
    keys = collection[0]
    body = client.get("/similar", params={"like": keys[soup[0]], "label": "soup", "k": 50, "dedupe": "false"}).json()
    assert sorted(m["id"] for m in body["results"]) == soup[1:] and body["next_offset"] is None


def test_too_many_liked_and_disliked_images_is_a_422_naming_the_cap(make_client, collection):
    keys = collection[0]
    with make_client(max_feedback_images=2) as capped:
        r = capped.get(
            "/similar", params=[("key", keys[0]), ("like", keys[1]), ("like", keys[2]), ("dislike", keys[3])]
        )
        error = assert_json_error(r, 422, "invalid_parameters")
        assert "at most 2" in error["message"] and "has 3" in error["message"]
        assert capped.get("/similar", params=[("like", keys[1]), ("dislike", keys[3])]).status_code == 200


def test_feedback_errors_say_which_key(client, collection):
    keys = collection[0]
    error = assert_json_error(client.get("/similar", params={"like": "soup/nope.jpg"}), 404, "unknown_image")
    assert "liked image" in error["message"] and "soup/nope.jpg" in error["message"]
    error = assert_json_error(client.get("/similar", params={"dislike": keys[4]}), 422, "no_positive_example")
    assert "like=" in error["message"]
    both = client.get("/images/1/similar", params={"like": keys[4], "dislike": keys[4]})
    assert keys[4] in assert_json_error(both, 422, "invalid_parameters")["message"]


def test_openapi_documents_feedback_on_every_search(client):
    spec = client.get("/openapi.json").json()
    for path, method in (("/search", "post"), ("/similar", "get"), ("/images/{image_id}/similar", "get")):
        operation = spec["paths"][path][method]
        names = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
        assert {"like", "dislike"} <= set(names), path
        assert "unknown_image" in operation["responses"]["404"]["description"], path
    assert "no_positive_example" in spec["components"]["schemas"]["ErrorCode"]["enum"]
    assert {"liked", "disliked"} <= set(spec["components"]["schemas"]["SearchResponse"]["properties"])
