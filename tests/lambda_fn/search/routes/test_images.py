"""GET /images/{id}/similar: neighbours of an indexed image, without the image itself."""

import pytest

from tests.helpers import SAMPLE_COUNT, assert_json_error


def test_similar_excludes_the_image_itself(client):
    r = client.get("/images/7/similar?k=4")
    assert r.status_code == 200
    body = r.json()
    assert body["query_id"] == 7 and len(body["results"]) == 4 and 7 not in [m["id"] for m in body["results"]]
    assert body["query"]["id"] == 7 and body["query"]["distance"] == 0.0 and body["query"]["url"].startswith("/files/")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/images/{SAMPLE_COUNT}/similar", 404),
        ("/images/99999999999/similar", 422),
        ("/images/abc/similar", 422),
        ("/images/-1/similar", 422),
        ("/images/%F0%9F%8D%95/similar", 422),
        ("/images/" + "9" * 5000 + "/similar", 422),
        ("/images/1/similar?k=0", 422),
    ],
)
def test_similar_errors(client, path, status):
    assert_json_error(client.get(path), status)
