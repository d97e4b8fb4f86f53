"""Results stay true across builds: every answer names its build, ids from another build are refused, and
an image can be looked up by its key, which means the same image in every build."""

from datetime import datetime

import pytest

from lambda_fn.contract.manifest import Manifest, read_keys
from tests.helpers import jpeg_bytes


@pytest.fixture(scope="module")
def build_id(client) -> str:
    return client.get("/health").json()["build"]["id"]


def test_health_names_the_live_build_and_the_last_check(client, artifacts_dir, build_id):
    manifest = Manifest.read(artifacts_dir / "manifest.json")
    body = client.get("/health").json()
    assert body["build"] == {"id": manifest.build_id, "built_at": manifest.built_at}
    updates = body["updates"]
    assert updates["check_interval_s"] == 60 and updates["swapping"] is False and updates["error"] is None
    assert datetime.fromisoformat(updates["checked_at"]).tzinfo is not None


def test_every_search_response_names_its_build(client, build_id):
    r = client.post("/search?k=2", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["build_id"] == build_id
    r = client.get("/images/3/similar?k=2")
    assert r.status_code == 200 and r.json()["build_id"] == build_id


def test_similar_by_key_answers_like_the_id_route(client, artifacts_dir, build_id):
    keys = read_keys(artifacts_dir / "keys.json")
    by_key = client.get("/similar", params={"key": keys[13].key, "k": 4})
    assert by_key.status_code == 200, by_key.text
    by_id = client.get(f"/images/13/similar?k=4&build={build_id}")
    assert by_id.status_code == 200, by_id.text
    a, b = by_key.json(), by_id.json()
    assert a["query_id"] == 13 and a["query"]["key"] == keys[13].key and a["build_id"] == build_id
    assert [m["id"] for m in a["results"]] == [m["id"] for m in b["results"]] and len(a["results"]) == 4
    assert {k: v for k, v in a.items() if k != "timings"} == {k: v for k, v in b.items() if k != "timings"}


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"key": "soup/not-in-the-collection.jpg"}, 404, "unknown_image"),
        ({"key": "../../etc/passwd"}, 404, "unknown_image"),
        ({"key": ""}, 422, "invalid_parameters"),
        ({}, 422, "no_positive_example"),  # neither a key nor a liked image
        ({"key": "x" * 1025}, 422, "invalid_parameters"),
    ],
)
def test_similar_by_key_errors(client, params, status, code):
    r = client.get("/similar", params=params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_an_id_from_another_build_is_409_stale_build(client, build_id):
    r = client.get("/images/3/similar", params={"build": "0123456789abcdef"})
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "stale_build"
    assert build_id in error["message"] and "GET /similar?key=" in error["message"]
    assert client.get("/images/3/similar", params={"build": build_id}).status_code == 200
    assert client.get("/images/3/similar", params={"build": "x" * 65}).status_code == 422


def test_openapi_documents_builds_and_key_look_ups(client):
    spec = client.get("/openapi.json").json()
    by_key = spec["paths"]["/similar"]["get"]
    assert [(p["name"], p["required"]) for p in by_key["parameters"] if p["in"] == "query"] == [
        ("key", False),  # without it, the liked images are the query
        ("k", False),
        ("offset", False),
        ("label", False),
        ("min_similarity", False),
        ("dedupe", False),
        ("like", False),
        ("dislike", False),
    ]
    assert {"200", "404", "422"} <= set(by_key["responses"])
    by_id = spec["paths"]["/images/{image_id}/similar"]["get"]
    assert "build" in [p["name"] for p in by_id["parameters"]]
    assert "stale_build" in by_id["responses"]["409"]["description"]
    assert "stale_build" in spec["components"]["schemas"]["ErrorCode"]["enum"]
    assert "build_id" in spec["components"]["schemas"]["SearchResponse"]["required"]
    assert {"build", "updates"} <= set(spec["components"]["schemas"]["HealthResponse"]["properties"])
