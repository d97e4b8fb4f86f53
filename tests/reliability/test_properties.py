"""Property-based tests: whatever bytes, form shapes or JSON values arrive, the answer is never a 5xx.

The client re-raises server exceptions, so an unhandled exception fails the test as well as a 500 would.
About 150 generated requests in all; ``deadline=None`` because a decode plus a forward varies on a shared box.
"""

from __future__ import annotations

import base64
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.uploads import decode_base64_image, parse_k
from tests.helpers import assert_json_error

DOCUMENTED = {200, 400, 404, 405, 413, 415, 422}
PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)

# Real format headers followed by garbage reach deeper into each decoder than uniformly random bytes do.
MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["image", "k", "file", "img", ""]) | st.text(string.ascii_letters, min_size=1, max_size=8)


def _check(response, tally) -> None:
    tally["generated requests"] += 1
    tally["5xx seen"] += response.status_code >= 500
    assert response.status_code in DOCUMENTED, f"{response.status_code}: {response.text[:300]}"
    if response.status_code != 200:
        assert_json_error(response, response.status_code)


@PROPERTY
@given(
    head=st.sampled_from(MAGIC),
    tail=st.binary(max_size=600),
    ctype=st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp", "application/octet-stream"]),
)
def test_arbitrary_bytes_as_an_image_body(hardened, tally, head, tail, ctype):
    _check(hardened.post("/search?k=2", content=head + tail, headers={"Content-Type": ctype}), tally)


@PROPERTY
@given(
    fields=st.lists(
        st.tuples(field_names, st.one_of(st.text(max_size=40), st.binary(max_size=200)), st.booleans()),
        max_size=4,
    ),
    urlencoded=st.booleans(),
)
def test_arbitrary_form_shapes(hardened, tally, fields, urlencoded):
    if urlencoded:
        data = {name: (value if isinstance(value, str) else value.decode("latin-1")) for name, value, _ in fields}
        response = hardened.post("/search", data=data) if data else hardened.post("/search", data={"x": ""})
    else:
        files = [
            (name, ("f.jpg", value) if as_file else (None, value if isinstance(value, str) else value.hex()))
            for name, value, as_file in fields
        ] or [("image", ("f.jpg", b""))]
        response = hardened.post("/search", files=files)
    _check(response, tally)


@PROPERTY
@given(body=json_values | st.fixed_dictionaries({"image": json_values}, optional={"k": json_values}))
def test_arbitrary_json_values(hardened, tally, body):
    _check(hardened.post("/search", json=body), tally)


@PROPERTY
@given(image_id=st.text(min_size=1, max_size=30), k=st.none() | st.text(max_size=12))
def test_arbitrary_similar_ids_and_k(hardened, tally, image_id, k):
    url = f"/images/{quote(image_id, safe='')}/similar"
    _check(hardened.get(url, params=None if k is None else {"k": k}), tally)


@settings(max_examples=30, deadline=None, database=None)
@given(text=st.text(max_size=80) | st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()))
def test_base64_decoding_raises_only_api_errors(text):
    for candidate in (text, "data:image/png;base64," + text, "data:" + text):
        try:
            data = decode_base64_image(candidate)
        except ApiError as exc:
            assert exc.status in (400, 415) and exc.message
        else:
            assert isinstance(data, bytes) and data


@pytest.fixture(scope="module")
def limits() -> Settings:
    return Settings(artifacts_uri="unused", default_k=5, max_k=50)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(raw=st.none() | st.text(max_size=30) | st.integers().map(str))
def test_parse_k_is_in_range_or_a_422(limits, raw):
    try:
        k = parse_k(raw, limits)
    except ApiError as exc:
        assert exc.status == 422 and len(exc.message) < 200
    else:
        assert 1 <= k <= limits.max_k
