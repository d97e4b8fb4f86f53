"""Reading the uploaded query image out of a request body, in every shape the API accepts.

- ``multipart/form-data`` with a file field ``image``, or a form (multipart or url-encoded) whose string
  field ``image`` holds a ``data:image/...;base64,`` URL, as the original DeepFood client sends;
- a raw ``image/*`` (or ``application/octet-stream``) body;
- JSON ``{"image": "<base64 or data: URL>", "k": 10}``, or ``{"url": "https://...", "k": 10}``: a link the
  service fetches itself (``lambda_fn.search.fetch``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.schemas import ErrorCode, JsonSearchRequest

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.IGNORECASE
)
# base64 inflates by 4/3; multipart/JSON framing adds a little more.
_ENVELOPE_ALLOWANCE = 64 * 1024


def decode_base64_image(text: str) -> bytes:
    """Base64 (standard or URL-safe, padding optional, whitespace ignored) or a base64 data: URL -> bytes."""
    text = text.strip()
    if text.startswith("data:"):
        match = _DATA_URL.match(text)
        if not match or not match.group("b64"):
            raise ApiError(ErrorCode.BAD_DATA_URL, "the data: URL must look like data:image/jpeg;base64,<data>")
        mime = (match.group("mime") or "").lower()
        if mime and not (mime.startswith("image/") or mime == "application/octet-stream"):
            raise ApiError(ErrorCode.UNSUPPORTED_TYPE, f"data: URL of type {mime}; send an image")
        text = text[match.end() :]
    compact = re.sub(r"\s+", "", text).translate(str.maketrans("-_", "+/"))
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(ErrorCode.BAD_BASE64, "the image field is not valid base64") from exc
    if not data:
        raise ApiError(ErrorCode.EMPTY_IMAGE, "the image is empty")
    return data


def _check_size(data: bytes, settings: Settings) -> bytes:
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            ErrorCode.TOO_LARGE,
            f"the image is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,}. "
            "Resize it (the web page does this for you) and try again.",
        )
    if not data:
        raise ApiError(ErrorCode.EMPTY_IMAGE, "the request carries no image data")
    return data


async def _from_form(request: Request, settings: Settings) -> tuple[bytes, str | None]:
    try:
        form = await request.form(max_files=2, max_fields=20, max_part_size=2 * settings.max_upload_bytes)
    except (MultiPartException, StarletteHTTPException) as exc:  # Starlette wraps parser errors in a 400
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ApiError(ErrorCode.BAD_MULTIPART, f"the multipart body could not be parsed: {detail}") from exc
    field = form.get("image")
    k = form.get("k")
    if field is None:
        names = ", ".join(sorted(form.keys())) or "none"
        raise ApiError(ErrorCode.MISSING_IMAGE, f"the form has no 'image' field (fields sent: {names})")
    if isinstance(field, UploadFile):
        data = await field.read()
    else:
        data = decode_base64_image(field)
    return data, (k if isinstance(k, str) else None)


def _body_too_large(size: int, settings: Settings) -> ApiError:
    return ApiError(
        ErrorCode.TOO_LARGE,
        f"the request body is {size:,} bytes; the image limit is {settings.max_upload_bytes:,}. "
        "Resize it and try again.",
    )


@dataclass(frozen=True)
class ImageLink:
    """A link to the query image, which the service fetches itself (``lambda_fn.search.fetch``)."""

    url: str


_JSON_SHAPE = 'JSON body must be {"image": "<base64>", "k": <int>} or {"url": "https://...", "k": <int>}'


def _from_json(body: bytes) -> tuple[bytes | ImageLink, str | None]:
    try:
        parsed = JsonSearchRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(
            ErrorCode.INVALID_PARAMETERS,
            f"{_JSON_SHAPE}: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
        ) from exc
    if (parsed.image is None) == (parsed.url is None):
        raise ApiError(ErrorCode.INVALID_PARAMETERS, f"{_JSON_SHAPE}: give exactly one of image and url")
    k = str(parsed.k) if parsed.k is not None else None
    if parsed.url is not None:
        return ImageLink(parsed.url), k
    return decode_base64_image(parsed.image), k


async def read_query(request: Request, settings: Settings) -> tuple[bytes | ImageLink, str | None]:
    """The uploaded image bytes (or the link to them) and the k the body gave (if any); raises ApiError for
    anything unusable."""
    declared = request.headers.get("content-length")
    ceiling = settings.max_upload_bytes * 4 // 3 + _ENVELOPE_ALLOWANCE
    if declared and declared.isdigit() and int(declared) > ceiling:
        raise _body_too_large(int(declared), settings)  # refused before reading the body
    body = await request.body()
    if len(body) > ceiling:
        raise _body_too_large(len(body), settings)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise ApiError(ErrorCode.EMPTY_BODY, "the request has no body; send an image (see /docs)")
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        data, k = await _from_form(request, settings)
    elif ctype == "application/json":
        data, k = _from_json(body)
        if isinstance(data, ImageLink):
            return data, k
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data, k = body, None
    else:
        raise ApiError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"content type {ctype or '(none)'} is not accepted; send multipart/form-data with an "
            '\'image\' file, a raw image/* body, or JSON {"image": "<base64>"}',
        )
    return _check_size(data, settings), k


def parse_k(raw: str | int | None, settings: Settings) -> int:
    if raw is None or raw == "":
        return settings.default_k
    try:
        k = int(raw)
    except (TypeError, ValueError) as exc:
        raise ApiError(ErrorCode.INVALID_PARAMETERS, f"k must be a whole number, got {str(raw)[:40]!r}") from exc
    if not 1 <= k <= settings.max_k:
        raise ApiError(ErrorCode.INVALID_PARAMETERS, f"k must be between 1 and {settings.max_k}, got {k}")
    return k
