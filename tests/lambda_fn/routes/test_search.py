import base64
import io

import pytest
from PIL import Image

from lambda_fn.manifest import read_keys
from tests.helpers import jpeg_bytes, png_bomb
from tests.lambda_fn.conftest import make_client


@pytest.fixture(scope="module")
def indexed(artifacts_dir, sample_dir):
    """(id, key, bytes) of an image that is in the index."""
    keys = read_keys(artifacts_dir / "keys.json")
    i = 13
    return i, keys[i].key, (sample_dir / keys[i].key).read_bytes()


def _assert_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_multipart_file_upload_finds_the_image_itself(client, indexed):
    i, key, data = indexed
    r = client.post("/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": "5"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5 and len(body["results"]) == 5
    top = body["results"][0]
    assert (top["id"], top["key"]) == (i, key) and top["distance"] < 1e-3 and top["similarity"] > 0.999
    assert top["label"] == key.split("/")[0] and top["url"] == f"/files/{key}"
    assert [r["distance"] for r in body["results"]] == sorted(r["distance"] for r in body["results"])
    assert len(body["predictions"]) == 3 and 0 <= body["predictions"][0]["probability"] <= 1
    assert set(body["timings"]) == {"decode_ms", "embed_ms", "search_ms", "total_ms"}


def test_raw_image_body(client, indexed):
    i, _, data = indexed
    r = client.post("/search?k=2", content=data, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == i and len(r.json()["results"]) == 2


@pytest.mark.parametrize("as_data_url", [False, True])
def test_json_base64_and_data_url(client, indexed, as_data_url):
    i, _, data = indexed
    b64 = base64.b64encode(data).decode()
    image = f"data:image/jpeg;base64,{b64}" if as_data_url else b64
    r = client.post("/search", json={"image": image, "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == i and r.json()["k"] == 3


@pytest.mark.parametrize("multipart", [True, False])
def test_original_client_shape_form_string_data_url(client, indexed, multipart):
    i, _, data = indexed
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    if multipart:  # a multipart part without a filename is a string field
        r = client.post("/search", files={"image": (None, url)})
    else:
        r = client.post("/search", data={"image": url})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == i and r.json()["k"] == 12  # the default k


def test_base64_with_whitespace_and_no_padding(client, indexed):
    i, _, data = indexed
    b64 = base64.b64encode(data).decode().rstrip("=")
    wrapped = "\n".join(b64[j : j + 76] for j in range(0, len(b64), 76))
    r = client.post("/search", json={"image": wrapped})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == i


@pytest.mark.parametrize("k", ["0", "-1", "101", "abc", "1.5"])
def test_bad_k_is_422(client, k):
    r = client.post(f"/search?k={k}", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    _assert_error(r, 422, "invalid_parameters")


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty_body"),
        ({"content": b"just some text", "headers": {"Content-Type": "image/jpeg"}}, 400, "not_an_image"),
        (
            {"content": b"%PDF-1.7 ...", "headers": {"Content-Type": "application/octet-stream"}},
            415,
            "unsupported_type",
        ),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_type"),
        ({"json": {"image": "!!!not base64!!!"}}, 400, "bad_base64"),
        ({"json": {"image": "data:image/png,abc"}}, 400, "bad_data_url"),
        ({"json": {"image": 5}}, 422, "invalid_parameters"),
        ({"json": {"picture": "abc"}}, 422, "invalid_parameters"),
        ({"files": {"photo": ("q.jpg", b"123", "image/jpeg")}}, 422, "missing_image"),
        ({"content": png_bomb(), "headers": {"Content-Type": "image/png"}}, 413, "too_large"),
    ],
)
def test_bad_input_gets_a_json_error(client, kwargs, status, code):
    _assert_error(client.post("/search", **kwargs), status, code)


def test_upload_over_the_limit_is_413(artifacts_dir, sample_dir):
    small = make_client(artifacts_uri=str(artifacts_dir), images_uri=str(sample_dir), max_upload_bytes=20_000)
    buf = io.BytesIO()
    Image.effect_noise((400, 400), 80).convert("RGB").save(buf, "PNG")
    assert len(buf.getvalue()) > 20_000
    error = _assert_error(small.post("/search", files={"image": ("q.png", buf.getvalue(), "image/png")}), 413)
    assert "20,000" in error["message"]


def test_similar_excludes_the_image_itself(client):
    r = client.get("/images/7/similar?k=4")
    assert r.status_code == 200
    body = r.json()
    assert body["query_id"] == 7 and len(body["results"]) == 4 and 7 not in [m["id"] for m in body["results"]]
    assert body["query"]["id"] == 7 and body["query"]["distance"] == 0.0 and body["query"]["url"].startswith("/files/")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/images/60/similar", 404),
        ("/images/99999999999/similar", 422),
        ("/images/abc/similar", 422),
        ("/images/-1/similar", 422),
        ("/images/%F0%9F%8D%95/similar", 422),
        ("/images/" + "9" * 5000 + "/similar", 422),
        ("/images/1/similar?k=0", 422),
        ("/nope", 404),
    ],
)
def test_similar_errors(client, path, status):
    _assert_error(client.get(path), status)


def test_health_reports_identity(client, artifacts_dir):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["error"] is None
    assert body["index"]["count"] == 60 and body["index"]["dim"] == body["model"]["dim"] == 512
    assert body["model"]["resize_size"] == 72 and body["model"]["classes"] == 6
    assert body["limits"]["max_upload_bytes"] == 4_500_000 and "torch" in body["versions"]


def test_not_ready_is_503_and_recovers_without_restart(tmp_path, artifacts_dir):
    import shutil

    broken = tmp_path / "artifacts"
    broken.mkdir()
    client = make_client(artifacts_uri=str(broken), num_threads=1)
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert "manifest.json does not exist" in r.json()["error"]["message"]
    error = _assert_error(client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"}), 503)
    assert "Retry" in error["message"]
    for f in artifacts_dir.iterdir():
        shutil.copy(f, broken / f.name)
    assert client.get("/health").status_code == 200  # the next request retried and loaded


def test_cors_allows_only_the_configured_origin(client):
    ok = client.options("/search", headers={"Origin": "https://site.example", "Access-Control-Request-Method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == "https://site.example"
    bad = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/health", "/images/{image_id}/similar"} <= set(spec["paths"])
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(content)
    assert "413" in spec["paths"]["/search"]["post"]["responses"]
    assert client.get("/docs").status_code == 200


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 200).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [(10000, 1), (1, 10000), (10000, 10), (1, 1)])
def test_extreme_shapes_are_answered_without_huge_intermediates(client, size):
    # 10000x1 naively resized to a 256 shorter side would be 2,560,000 x 256 pixels (~2.6 GB)
    r = client.post("/search?k=3", content=_png(size), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("kind", [b"iCCP", b"zTXt", b"iTXt"])
@pytest.mark.parametrize("after_idat", [False, True])
def test_png_with_a_corrupt_compressed_chunk_is_never_a_5xx(client, kind, after_idat):
    # Pillow inflates these chunks with zlib; garbage raises zlib.error/ValueError in some versions and
    # is ignored in others. Either way the answer is a 200 (chunk ignored) or a 400 JSON error, never a 500.
    import struct
    import zlib

    good = _png((8, 8))
    payload = {b"iCCP": b"icc\x00\x00", b"zTXt": b"k\x00\x00", b"iTXt": b"k\x00\x01\x00\x00\x00"}[kind]
    payload += b"this is not zlib data"
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    at = good.index(b"IEND") - 4 if after_idat else 33
    r = client.post("/search", content=good[:at] + chunk + good[at:], headers={"Content-Type": "image/png"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "not_an_image"


def test_malformed_multipart_is_400(client):
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\nabc'
    r = client.post("/search", content=body, headers={"Content-Type": "multipart/form-data"})
    _assert_error(r, 400, "bad_multipart")


def test_unexpected_errors_are_json_500_with_cors(artifacts_dir):
    from fastapi.testclient import TestClient

    from lambda_fn.app import create_app
    from lambda_fn.config import Settings

    app = create_app(Settings(artifacts_uri=str(artifacts_dir), cors_origins="https://site.example"))

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/boom", headers={"Origin": "https://site.example"})
    error = _assert_error(r, 500, "internal_error")
    assert "secret" not in error["message"]
    assert r.headers.get("access-control-allow-origin") == "https://site.example"


def test_default_k_above_max_k_is_refused_at_start(artifacts_dir):
    from pydantic import ValidationError

    from lambda_fn.config import Settings

    with pytest.raises(ValidationError, match="must not exceed max_k"):
        Settings(artifacts_uri=str(artifacts_dir), default_k=20, max_k=10)
