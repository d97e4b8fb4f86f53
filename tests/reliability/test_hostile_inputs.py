"""A corpus of hostile and odd requests, generated here: each gets its documented status and JSON error.

Valid-but-odd images (16-bit, CMYK, palette with transparency, animated, 1x1, strips, every EXIF
orientation, WebP) answer 200; everything else gets the specific 4xx of the contract (400 not an image /
corrupt / bad base64, 413 too large, 415 unsupported, 422 bad parameters, unknown label or a refused or
unreachable image link, 404 unknown id) with ``{"error": {"code", "message"}}``. No input may produce a 5xx,
and a normal query must succeed right after each one.

The corpus runs offline: host names do not resolve (as without a DNS server) and no image link may open a
connection, so every link case is answered by the checks before any network.
"""

from __future__ import annotations

import base64
import io
import socket
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from lambda_fn.contract.config import DEFAULT_MAX_UPLOAD_BYTES
from lambda_fn.search import fetch
from lambda_fn.search.schemas import STATUS, ErrorCode
from support.hostile_images import flat_jpeg, rle_bmp
from tests.helpers import SAMPLE_COUNT, assert_json_error, jpeg_bytes, png_bomb


@dataclass
class Case:
    name: str
    status: int
    code: str | None = None
    method: str = "POST"
    url: str = "/search"
    kwargs: dict = field(default_factory=dict)


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _photo(size=(96, 72), seed=0) -> Image.Image:
    """Noisy RGB picture: compresses badly, so truncating it really cuts into the entropy-coded data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _raw(data: bytes, ctype: str = "image/jpeg") -> dict:
    return {"content": data, "headers": {"Content-Type": ctype}}


def _corrupt_huffman(jpeg: bytes) -> bytes:
    # DHT segment: FFC4, length (2), class/id (1), then 16 code-length counts; 0xFF each is a bogus table.
    at = jpeg.index(b"\xff\xc4") + 5
    return jpeg[:at] + b"\xff" * 16 + jpeg[at + 16 :]


def _exif_jpeg(orientation: int) -> bytes:
    img = _photo((48, 32), seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(img, "JPEG", exif=exif.tobytes())


def _png16() -> bytes:
    arr = np.linspace(0, 65535, 40 * 30, dtype=np.uint16).reshape(30, 40)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    return _save(img, "PNG")


def _palette_transparent() -> bytes:
    img = Image.new("P", (40, 30), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (10, 10, 30, 20))
    return _save(img, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c).convert("P") for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
SVG_XML = b'<?xml version="1.0" encoding="UTF-8"?>\n' + SVG
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
OVER_CEILING = DEFAULT_MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024 + 1


def _corpus() -> list[Case]:
    jpeg = jpeg_bytes((96, 72))
    b64 = base64.b64encode(jpeg).decode()
    # bytes after a JPEG's end marker are ignored; one more makes sure the base64 needs padding
    padded = base64.b64encode(jpeg + b"\0" * (len(jpeg) % 3 == 0)).decode()
    assert padded.endswith("=")
    unpadded = padded.rstrip("=")
    photo_jpeg = _save(_photo((160, 120)), "JPEG", quality=95)
    png = _save(_photo((40, 30)), "PNG")
    cases = [
        Case("empty body, image/jpeg", 400, "empty_body", kwargs=_raw(b"")),
        Case("empty body, no content type", 400, "empty_body"),
        Case("multipart without the image field", 422, "missing_image", kwargs={"data": {"k": "3"}, "files": {}}),
        Case("multipart, only a k field", 422, "missing_image", kwargs={"files": {"k": (None, "3")}}),
        Case("multipart, wrong field name", 422, "missing_image", kwargs={"files": {"file": ("a.jpg", jpeg)}}),
        Case("json without image", 422, "invalid_parameters", kwargs={"json": {"k": 3}}),
        Case("json, wrong field name", 422, "invalid_parameters", kwargs={"json": {"img": b64}}),
        Case("text file named .jpg", 400, "not_an_image", kwargs={"files": {"image": ("a.jpg", b"hello world\n")}}),
        Case("text as raw image/jpeg", 400, "not_an_image", kwargs=_raw(b"just some text, not a picture")),
        Case("truncated JPEG", 400, "not_an_image", kwargs=_raw(photo_jpeg[: len(photo_jpeg) // 2])),
        Case("JPEG, only its header", 400, "not_an_image", kwargs=_raw(photo_jpeg[:200])),
        Case("JPEG, corrupt Huffman table", 400, "not_an_image", kwargs=_raw(_corrupt_huffman(photo_jpeg))),
        Case("PNG bomb 30000x30000", 413, "too_large", kwargs=_raw(png_bomb(), "image/png")),
        Case("PNG bomb 100000x1000", 413, "too_large", kwargs=_raw(png_bomb(100000, 1000), "image/png")),
        Case("PNG, truncated", 400, "not_an_image", kwargs=_raw(png[: len(png) // 2], "image/png")),
        Case("16-bit PNG", 200, kwargs=_raw(_png16(), "image/png")),
        Case("CMYK JPEG", 200, kwargs=_raw(_save(Image.new("CMYK", (40, 30), (0, 200, 100, 20)), "JPEG"))),
        Case("palette PNG with transparency", 200, kwargs=_raw(_palette_transparent(), "image/png")),
        Case("animated GIF", 200, kwargs=_raw(_animated_gif(), "image/gif")),
        Case("1x1 PNG", 200, kwargs=_raw(_save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "image/png")),
        Case("1x1 JPEG", 200, kwargs=_raw(jpeg_bytes((1, 1)))),
        Case("10000x10 strip", 200, kwargs=_raw(_save(Image.new("RGB", (10000, 10), (1, 2, 3)), "PNG"), "image/png")),
        Case("10x10000 strip", 200, kwargs=_raw(_save(Image.new("L", (10, 10000), 7), "PNG"), "image/png")),
        Case("greyscale+alpha PNG", 200, kwargs=_raw(_save(Image.new("LA", (20, 20), (9, 100)), "PNG"), "image/png")),
        Case("BMP", 200, kwargs=_raw(_save(Image.new("RGB", (20, 20), (9, 9, 9)), "BMP"), "image/bmp")),
        Case("BMP, 1 bit", 200, kwargs=_raw(_save(Image.new("1", (40, 30), 1), "BMP"), "image/bmp")),
        Case("RLE8 BMP 8000x8000, 33 kB", 415, "unsupported_type", kwargs=_raw(rle_bmp(8000), "image/bmp")),
        Case("RLE4 BMP 8000x8000, 32 kB", 415, "unsupported_type", kwargs=_raw(rle_bmp(8000, 4), "image/bmp")),
        Case(
            "progressive 4:4:4 JPEG 8000x8000", 413, "too_large", kwargs=_raw(flat_jpeg(8000, 8000, progressive=True))
        ),
        Case(
            "progressive CMYK JPEG 6000x6000",
            413,
            "too_large",
            kwargs=_raw(flat_jpeg(6000, 6000, components=4, progressive=True)),
        ),
        Case("multi-scan JPEG 8000x8000", 413, "too_large", kwargs=_raw(flat_jpeg(8000, 8000, interleaved=False))),
        Case("progressive 4:2:0 JPEG", 200, kwargs=_raw(flat_jpeg(160, 120, sampling=(2, 2), progressive=True))),
        Case("multi-scan JPEG", 200, kwargs=_raw(flat_jpeg(160, 120, interleaved=False))),
        Case("WebP", 200, kwargs=_raw(_save(_photo((40, 30)), "WEBP"), "image/webp")),
        Case("WebP with alpha", 200, kwargs=_raw(_save(Image.new("RGBA", (40, 30), (9, 9, 9, 90)), "WEBP"))),
        Case("JPEG as octet-stream", 200, kwargs=_raw(jpeg, "application/octet-stream")),
        Case("PNG sent as image/jpeg", 200, kwargs=_raw(png, "image/jpeg")),
        Case("SVG as image/svg+xml", 415, "unsupported_type", kwargs=_raw(SVG, "image/svg+xml")),
        Case("SVG with XML prolog", 415, "unsupported_type", kwargs=_raw(SVG_XML, "image/svg+xml")),
        Case("SVG as a file named .jpg", 415, "unsupported_type", kwargs={"files": {"image": ("x.jpg", SVG)}}),
        Case("PDF as application/pdf", 415, "unsupported_type", kwargs=_raw(PDF, "application/pdf")),
        Case("PDF as image/jpeg", 415, "unsupported_type", kwargs=_raw(PDF)),
        Case("PDF as a multipart file", 415, "unsupported_type", kwargs={"files": {"image": ("a.pdf", PDF)}}),
        Case("HEIC bytes", 415, "unsupported_type", kwargs=_raw(HEIC, "image/heic")),
        Case("TIFF", 415, "unsupported_type", kwargs=_raw(_save(Image.new("RGB", (8, 8)), "TIFF"), "image/tiff")),
        Case("ICO", 415, "unsupported_type", kwargs=_raw(_save(Image.new("RGB", (16, 16)), "ICO"), "image/x-icon")),
        Case(
            "base64 with whitespace",
            200,
            kwargs={"json": {"image": "\n ".join(b64[i : i + 60] for i in range(0, len(b64), 60))}},
        ),
        Case(
            "base64 without padding",
            200,
            kwargs={"json": {"image": unpadded}},
        ),
        Case("URL-safe base64", 200, kwargs={"json": {"image": base64.urlsafe_b64encode(jpeg).decode().rstrip("=")}}),
        Case("data URL in JSON", 200, kwargs={"json": {"image": "data:image/jpeg;base64," + b64, "k": 4}}),
        Case("data URL in a form string field", 200, kwargs={"data": {"image": "data:image/jpeg;base64," + b64}}),
        Case("data URL, not base64", 400, "bad_data_url", kwargs={"json": {"image": "data:image/jpeg,abcd"}}),
        Case("data URL, no comma", 400, "bad_data_url", kwargs={"json": {"image": "data:image/jpeg;base64"}}),
        Case("data URL, bare 'data:'", 400, "bad_data_url", kwargs={"json": {"image": "data:"}}),
        Case(
            "data URL, text/plain", 415, "unsupported_type", kwargs={"json": {"image": "data:text/plain;base64,aGk="}}
        ),
        Case("data URL, bad base64", 400, "bad_base64", kwargs={"json": {"image": "data:image/png;base64,@@@!"}}),
        Case("data URL, empty payload", 400, "empty_image", kwargs={"json": {"image": "data:image/png;base64,"}}),
        Case("base64 of text", 400, "not_an_image", kwargs={"json": {"image": base64.b64encode(b"hi there").decode()}}),
        Case("not base64", 400, "bad_base64", kwargs={"json": {"image": "this is not base64!"}}),
        Case("base64, one stray char", 400, "bad_base64", kwargs={"json": {"image": "A"}}),
        Case("JSON image is a number", 422, "invalid_parameters", kwargs={"json": {"image": 123}}),
        Case("JSON image is null", 422, "invalid_parameters", kwargs={"json": {"image": None}}),
        Case("JSON image is a list", 422, "invalid_parameters", kwargs={"json": {"image": [b64]}}),
        Case("JSON image is an object", 422, "invalid_parameters", kwargs={"json": {"image": {"data": b64}}}),
        Case("JSON body is a list", 422, "invalid_parameters", kwargs={"json": [b64]}),
        Case("JSON body is a string", 422, "invalid_parameters", kwargs={"json": b64}),
        Case("JSON body is null", 422, "invalid_parameters", kwargs=_raw(b"null", "application/json")),
        Case("JSON body is not JSON", 422, "invalid_parameters", kwargs=_raw(b'{"image": ', "application/json")),
        Case("JSON k is text", 422, "invalid_parameters", kwargs={"json": {"image": b64, "k": "abc"}}),
        Case("JSON k is fractional", 422, "invalid_parameters", kwargs={"json": {"image": b64, "k": 2.5}}),
        Case("JSON k is a list", 422, "invalid_parameters", kwargs={"json": {"image": b64, "k": [3]}}),
        Case("JSON k = 0", 422, "invalid_parameters", kwargs={"json": {"image": b64, "k": 0}}),
        Case("JSON k = 10**30", 422, "invalid_parameters", kwargs={"json": {"image": b64, "k": 10**30}}),
        Case("JSON k as numeric string", 200, kwargs={"json": {"image": b64, "k": "5"}}),
        Case("form k = -1", 422, "invalid_parameters", kwargs={"files": {"image": ("a.jpg", jpeg), "k": (None, "-1")}}),
        Case(
            "form k non-numeric",
            422,
            "invalid_parameters",
            kwargs={"files": {"image": ("a.jpg", jpeg), "k": (None, "x")}},
        ),
        Case("too many multipart files", 400, "bad_multipart", kwargs={"files": [("image", ("a.jpg", jpeg))] * 3}),
        Case("multipart without boundary", 400, "bad_multipart", kwargs=_raw(b"--x\r\n\r\nabc", "multipart/form-data")),
        Case("urlencoded form without image", 422, "missing_image", kwargs={"data": {"picture": "x"}}),
        Case("body over the limit", 413, "too_large", kwargs=_raw(b"\xff\xd8" + b"\x00" * OVER_CEILING)),
        Case("image over the limit", 413, "too_large", kwargs=_raw(b"\xff\xd8" + b"\x00" * DEFAULT_MAX_UPLOAD_BYTES)),
        Case(
            "multipart file over the limit",
            413,
            "too_large",
            kwargs={"files": {"image": ("a.jpg", b"\x00" * (DEFAULT_MAX_UPLOAD_BYTES + 1))}},
        ),
        Case("wrong content type text/plain", 415, "unsupported_type", kwargs=_raw(jpeg, "text/plain")),
        Case("wrong content type application/xml", 415, "unsupported_type", kwargs=_raw(jpeg, "application/xml")),
        Case("body with no content type", 415, "unsupported_type", kwargs={"content": jpeg}),
        Case("GET /search", 405, "method_not_allowed", method="GET"),
        Case("unknown route", 404, "not_found", method="GET", url="/nope"),
    ]
    for k in ("0", "-1", "101", str(10**30), "abc", "1e3", "3.0", "%F0%9F%92%A5"):
        cases.append(Case(f"query k={k}", 422, "invalid_parameters", url=f"/search?k={k}", kwargs=_raw(jpeg)))
    cases.append(Case("query k empty (default k)", 200, url="/search?k=", kwargs=_raw(jpeg)))
    cases.append(Case("query k=100 (max)", 200, url="/search?k=100", kwargs=_raw(jpeg)))
    for orientation in range(1, 9):
        cases.append(Case(f"EXIF orientation {orientation}", 200, kwargs=_raw(_exif_jpeg(orientation))))
    similar = {
        "0": 200,
        str(SAMPLE_COUNT - 1): 200,
        str(SAMPLE_COUNT): 404,
        "2147483647": 404,
        "2147483648": 422,
        "-1": 422,
        "1.5": 422,
        "0x1": 422,
        "%C3%A9": 422,
        "%F0%9F%92%A5": 422,
        "%D9%A3": 422,
        "%EF%BC%91": 422,
        "1" * 5000: 422,
        "%C3%A9" * 2000: 422,
        "%00": 422,
        "null": 422,
        "%20%201": 200,  # pydantic strips surrounding whitespace from a numeric path parameter
    }
    for image_id, status in similar.items():
        code = {200: None, 404: "unknown_image", 422: "invalid_parameters"}[status]
        short = image_id if len(image_id) < 20 else f"{image_id[:12]}... ({len(image_id)} chars)"
        cases.append(Case(f"similar id {short}", status, code, method="GET", url=f"/images/{image_id}/similar?k=3"))
    for k in ("0", "abc", "101"):
        cases.append(Case(f"similar k={k}", 422, "invalid_parameters", method="GET", url=f"/images/1/similar?k={k}"))
    cases.append(
        Case("similar id from another build", 409, "stale_build", method="GET", url="/images/1/similar?build=old")
    )
    links = {
        "http link": ("http://photos.example/a.jpg", "url_not_allowed"),
        "loopback link": ("https://127.0.0.1/a.jpg", "url_not_allowed"),
        "loopback link, one number": ("https://2130706433/a.jpg", "url_not_allowed"),
        "IPv6 loopback link": ("https://[::1]:8443/a.jpg", "url_not_allowed"),
        "IPv4-mapped loopback link": ("https://[::ffff:127.0.0.1]/a.jpg", "url_not_allowed"),
        "private address link": ("https://10.0.0.8/a.jpg", "url_not_allowed"),
        "metadata link": ("https://169.254.169.254/latest/meta-data/iam/", "url_not_allowed"),
        "IPv6 metadata link": ("https://[fd00:ec2::254]/latest/meta-data/", "url_not_allowed"),
        "link with a password": ("https://user:secret@photos.example/a.jpg", "url_not_allowed"),
        "file link": ("file:///etc/passwd", "url_not_allowed"),
        "javascript link": ("javascript:alert(1)", "url_not_allowed"),
        "gopher link": ("gopher://127.0.0.1:6379/_FLUSHALL", "url_not_allowed"),
        "link to a host that does not resolve": ("https://photos.example.invalid/a.jpg", "url_unreachable"),
        "relative link": ("/images/a.jpg", "invalid_parameters"),
        "empty link": ("", "invalid_parameters"),
        "link with a bad port": ("https://photos.example:70000/a.jpg", "invalid_parameters"),
        "link over 2048 characters": ("https://photos.example/" + "a" * 2048, "invalid_parameters"),
    }
    for name, (link, code) in links.items():
        cases.append(Case(name, 422, code, kwargs={"json": {"url": link}}))
    cases += [
        Case("link is a number", 422, "invalid_parameters", kwargs={"json": {"url": 5}}),
        Case("link and image both", 422, "invalid_parameters", kwargs={"json": {"url": "https://a.b/c", "image": b64}}),
        Case("link is null, no image", 422, "invalid_parameters", kwargs={"json": {"url": None}}),
    ]
    for query, status, code in (
        ("label=no-such-dish", 422, "unknown_label"),
        ("label=", 422, "invalid_parameters"),
        ("label=" + "x" * 201, 422, "invalid_parameters"),
        ("&".join(["label=soup"] * 21), 422, "invalid_parameters"),
        ("label=%00", 422, "unknown_label"),
        ("label=%F0%9F%8D%95", 422, "unknown_label"),
        ("offset=-1", 422, "invalid_parameters"),
        ("offset=abc", 422, "invalid_parameters"),
        ("offset=99&k=2", 422, "invalid_parameters"),
        (f"offset={2**31}", 422, "invalid_parameters"),
        ("offset=1e3", 422, "invalid_parameters"),
        ("min_similarity=1.5", 422, "invalid_parameters"),
        ("min_similarity=-1.01", 422, "invalid_parameters"),
        ("min_similarity=nan", 422, "invalid_parameters"),
        ("min_similarity=-inf", 422, "invalid_parameters"),
        ("min_similarity=abc", 422, "invalid_parameters"),
        ("dedupe=maybe", 422, "invalid_parameters"),
        ("dedupe=", 422, "invalid_parameters"),
        ("min_similarity=-1&dedupe=false&offset=5", 200, None),
        ("min_similarity=1", 200, None),
        ("like=soup/not-in-the-collection.jpg", 404, "unknown_image"),
        ("dislike=../../etc/passwd", 404, "unknown_image"),
        ("like=", 422, "invalid_parameters"),
        ("dislike=" + "x" * 1025, 422, "invalid_parameters"),
        ("&".join(f"like=soup/{i}.jpg" for i in range(21)), 422, "invalid_parameters"),
        ("like=pizza/pizza_0001.jpg&dislike=pizza/pizza_0001.jpg", 422, "invalid_parameters"),
        ("like=pizza/pizza_0001.jpg&dislike=soup/soup_0000.jpg&label=soup", 200, None),
    ):
        cases.append(Case(f"search {query[:40]}", status, code, url=f"/search?{query}", kwargs=_raw(jpeg)))
        cases.append(Case(f"similar {query[:40]}", status, code, method="GET", url=f"/images/1/similar?{query}"))
    cases += [
        Case("similar with only a disliked key", 422, "no_positive_example", method="GET",
             url="/similar?dislike=pizza/pizza_0001.jpg"),
        Case("similar with nothing", 422, "no_positive_example", method="GET", url="/similar"),
    ]  # fmt: skip
    return cases


CORPUS = _corpus()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Host names do not resolve (numbers still parse), and opening a connection fails the test."""
    real = socket.getaddrinfo

    def numbers_only(host, port, family=0, type=0, proto=0, flags=0):
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    def no_connection(address, port, timeout):
        pytest.fail(f"an image link opened a connection to {address}:{port}")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", numbers_only)
    monkeypatch.setattr(fetch, "open_socket", no_connection)


def test_corpus_reaches_every_client_error_code():
    # A code the app can answer with but no hostile case provokes is a gap in the corpus. bad_request is the
    # answer to a 400 raised by Starlette or FastAPI themselves, which these routes never leave to them (the
    # app parses every body itself); tests/lambda_fn/search/test_schemas.py raises one to check it.
    client_errors = {code.value for code, status in STATUS.items() if 400 <= status < 500}
    assert client_errors - {case.code for case in CORPUS} == {ErrorCode.BAD_REQUEST.value}


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_hostile_input_gets_its_documented_answer(hardened, assert_still_serves, tally, case):
    response = hardened.request(case.method, case.url, **case.kwargs)
    tally["hostile inputs tried"] += 1
    tally["5xx seen"] += response.status_code >= 500
    if case.status == 200:
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        assert all(0 <= r["id"] < SAMPLE_COUNT for r in body["results"])
        assert body["results"] or body["cut_below_similarity"] > 0
    else:
        assert_json_error(response, case.status, case.code)
    assert_still_serves()


def test_405_lists_the_allowed_methods(hardened):
    # Regression (found by schemathesis): the JSON error handler dropped Starlette's `Allow` header from 405s.
    r = hardened.get("/search")
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow") == "POST"


def test_an_empty_query_k_does_not_hide_the_body_k(hardened):
    # Regression (found by schemathesis): with `?k=` in the URL, a form or JSON k was silently ignored.
    image = ("a.jpg", jpeg_bytes())
    assert len(hardened.post("/search?k=", files={"image": image, "k": (None, "4")}).json()["results"]) == 4
    assert_json_error(hardened.post("/search?k=", files={"image": image, "k": (None, "0")}), 422, "invalid_parameters")
    body = {"image": base64.b64encode(jpeg_bytes()).decode(), "k": 2}
    assert len(hardened.post("/search?k=", json=body).json()["results"]) == 2
    assert len(hardened.post("/search?k=5", json=body).json()["results"]) == 5  # the query still wins
