"""POST /search: every accepted upload shape finds the image itself; every unusable one gets its JSON error."""

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from lambda_fn.contract.manifest import read_keys
from tests.helpers import assert_json_error, jpeg_bytes, png_bomb


@pytest.fixture(scope="module")
def indexed(artifacts_dir, sample_dir):
    """(id, key, bytes) of an image that is in the index."""
    keys = read_keys(artifacts_dir / "keys.json")
    i = 13
    return i, keys[i].key, (sample_dir / keys[i].key).read_bytes()


def _png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 200).save(buf, "PNG")
    return buf.getvalue()


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
    assert_json_error(r, 422, "invalid_parameters")


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
    assert_json_error(client.post("/search", **kwargs), status, code)


def test_upload_over_the_limit_is_413(make_client):
    small = make_client(max_upload_bytes=20_000)
    buf = io.BytesIO()
    Image.effect_noise((400, 400), 80).convert("RGB").save(buf, "PNG")
    assert len(buf.getvalue()) > 20_000
    error = assert_json_error(small.post("/search", files={"image": ("q.png", buf.getvalue(), "image/png")}), 413)
    assert "20,000" in error["message"]


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
    good = _png((8, 8))
    payload = {b"iCCP": b"icc\x00\x00", b"zTXt": b"k\x00\x00", b"iTXt": b"k\x00\x01\x00\x00\x00"}[kind]
    payload += b"this is not zlib data"
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    at = good.index(b"IEND") - 4 if after_idat else 33
    r = client.post("/search", content=good[:at] + chunk + good[at:], headers={"Content-Type": "image/png"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert_json_error(r, 400, "not_an_image")


def test_malformed_multipart_is_400(client):
    body = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\nabc'
    r = client.post("/search", content=body, headers={"Content-Type": "multipart/form-data"})
    assert_json_error(r, 400, "bad_multipart")
