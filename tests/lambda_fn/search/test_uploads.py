"""Reading the query image out of a request body: base64 and data: URLs, size limits, and k.

Requests are real Starlette ``Request`` objects over an in-memory body; property tests of the same
functions (arbitrary text, arbitrary k) are in tests/reliability/test_properties.py.
"""

import asyncio
import base64
import json
import os

import pytest
from starlette.requests import Request

from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.schemas import ErrorCode
from lambda_fn.search.uploads import decode_base64_image, parse_k, read_query
from support.service import multipart_image
from tests.helpers import jpeg_bytes

LIMITS = Settings(artifacts_uri="unused", default_k=5, max_k=50, max_upload_bytes=2048)
IMAGE = jpeg_bytes((16, 16))
B64 = base64.b64encode(IMAGE).decode()


def _request(body: bytes, content_type: str | None = None, *, content_length: int | None = None) -> Request:
    headers = []
    if content_type:
        headers.append((b"content-type", content_type.encode()))
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/search", "headers": headers}, receive)


def _read(request: Request, settings: Settings = LIMITS) -> tuple[bytes, str | None]:
    return asyncio.run(read_query(request, settings))


def _refused(code: ErrorCode, call, *args) -> ApiError:
    with pytest.raises(ApiError) as raised:
        call(*args)
    assert raised.value.code == code and raised.value.message, raised.value
    return raised.value


@pytest.mark.parametrize(
    "text",
    [
        B64,
        base64.urlsafe_b64encode(IMAGE).decode().rstrip("="),
        "\n ".join(B64[i : i + 60] for i in range(0, len(B64), 60)),
        "data:image/jpeg;base64," + B64,
        "data:application/octet-stream;base64," + B64,
        "data:image/jpeg;name=q.jpg;base64," + B64,
        "data:;base64," + B64,
    ],
    ids=[
        "standard",
        "url-safe unpadded",
        "wrapped",
        "data URL",
        "octet-stream data URL",
        "with a parameter",
        "no type",
    ],
)
def test_base64_and_data_urls_decode_to_the_image(text):
    assert decode_base64_image(text) == IMAGE


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("data:image/jpeg,abcd", ErrorCode.BAD_DATA_URL),
        ("data:image/jpeg;base64", ErrorCode.BAD_DATA_URL),
        ("data:text/plain;base64,aGk=", ErrorCode.UNSUPPORTED_TYPE),
        ("data:image/png;base64,@@@!", ErrorCode.BAD_BASE64),
        ("this is not base64!", ErrorCode.BAD_BASE64),
        ("A", ErrorCode.BAD_BASE64),
        ("  ", ErrorCode.EMPTY_IMAGE),
        ("data:image/png;base64,", ErrorCode.EMPTY_IMAGE),
    ],
)
def test_unusable_base64_gets_its_code(text, code):
    _refused(code, decode_base64_image, text)


def test_a_raw_body_is_the_image_and_carries_no_k():
    assert _read(_request(IMAGE, "image/jpeg")) == (IMAGE, None)
    assert _read(_request(IMAGE, "application/octet-stream")) == (IMAGE, None)


def test_json_and_forms_give_the_image_and_their_k():
    assert _read(_request(json.dumps({"image": B64, "k": 7}).encode(), "application/json")) == (IMAGE, "7")
    form = f"image={B64.replace('+', '%2B').replace('/', '%2F').replace('=', '%3D')}&k=3".encode()
    assert _read(_request(form, "application/x-www-form-urlencoded")) == (IMAGE, "3")


def test_an_image_over_the_limit_is_too_large_and_says_both_sizes():
    big = IMAGE + b"\0" * (LIMITS.max_upload_bytes - len(IMAGE) + 1)
    error = _refused(ErrorCode.TOO_LARGE, _read, _request(big, "image/jpeg"))
    assert f"{len(big):,} bytes" in error.message and "2,048" in error.message


def test_the_limit_applies_to_the_decoded_image_of_a_json_body():
    big = base64.b64encode(b"\xff\xd8" + b"\0" * LIMITS.max_upload_bytes).decode()
    _refused(ErrorCode.TOO_LARGE, _read, _request(json.dumps({"image": big}).encode(), "application/json"))


def test_a_declared_length_over_the_ceiling_is_refused_before_reading_the_body():
    async def never_read():
        raise AssertionError("the body was read")

    request = Request(
        {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-length", b"10000000")]},
        never_read,
    )
    error = _refused(ErrorCode.TOO_LARGE, _read, request)
    assert "10,000,000" in error.message


def test_a_body_over_the_ceiling_without_a_length_is_too_large():
    _refused(ErrorCode.TOO_LARGE, _read, _request(b"\xff\xd8" + b"\0" * 100_000, "image/jpeg"))


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"", "image/jpeg", ErrorCode.EMPTY_BODY),
        (IMAGE, "text/plain", ErrorCode.UNSUPPORTED_TYPE),
        (IMAGE, None, ErrorCode.UNSUPPORTED_TYPE),
        (b'{"k": 3}', "application/json", ErrorCode.INVALID_PARAMETERS),
        (b"k=3", "application/x-www-form-urlencoded", ErrorCode.MISSING_IMAGE),
    ],
)
def test_unusable_bodies_get_their_code(body, content_type, code):
    _refused(code, _read, _request(body, content_type))


@pytest.mark.parametrize(("raw", "k"), [(None, 5), ("", 5), ("7", 7), (7, 7), ("1", 1), ("50", 50)])
def test_parse_k_defaults_and_accepts_whole_numbers_in_range(raw, k):
    assert parse_k(raw, LIMITS) == k


@pytest.mark.parametrize(("raw", "says"), [("0", "between 1 and 50"), ("51", "between 1 and 50"), ("x", "whole")])
def test_parse_k_refuses_the_rest_with_a_422(raw, says):
    error = _refused(ErrorCode.INVALID_PARAMETERS, parse_k, raw, LIMITS)
    assert error.status == 422 and says in error.message


def test_a_file_part_over_a_mebibyte_is_read_whole():
    # Starlette spools a part past 1 MiB to a temporary file; the image must come back from it intact.
    image = os.urandom(3 << 20)  # bytes only: reading the form does not decode them
    body = multipart_image(image, "b0undary")
    settings = Settings(artifacts_uri="unused", max_upload_bytes=4 << 20)
    assert _read(_request(body, "multipart/form-data; boundary=b0undary"), settings) == (image, None)
