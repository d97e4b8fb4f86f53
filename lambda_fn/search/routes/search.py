"""POST /search: images similar to an uploaded one, or to one behind a link."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from lambda_fn.search.deps import EngineDep, LinkerDep, SettingsDep, StateDep
from lambda_fn.search.errors import ERROR_RESPONSES
from lambda_fn.search.fetch import fetch_image
from lambda_fn.search.pipeline import search_image
from lambda_fn.search.routes.params import Refine, refine
from lambda_fn.search.schemas import ErrorResponse, JsonSearchRequest, SearchResponse
from lambda_fn.search.uploads import ImageLink, read_query

router = APIRouter(tags=["search"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image file, or a data:image/...;base64, URL string",
                        },
                        "k": {"type": "integer", "minimum": 1},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": JsonSearchRequest.model_json_schema()},
        },
    }
}

_URL_NOTE = (
    "; for a `url`: `url_not_allowed` when it is not https or points at a loopback, private, link-local or "
    "metadata address (also after a redirect), `url_unreachable` when it gives no image (DNS, connection, TLS, "
    "timeout, an error status, more than 3 redirects)"
)
_RESPONSES = {
    **ERROR_RESPONSES,
    413: {**ERROR_RESPONSES[413], "description": ERROR_RESPONSES[413]["description"] + ", also a linked image's"},
    415: {**ERROR_RESPONSES[415], "description": ERROR_RESPONSES[415]["description"] + "; a link that is no image/*"},
    422: {**ERROR_RESPONSES[422], "description": ERROR_RESPONSES[422]["description"] + _URL_NOTE},
    404: {"model": ErrorResponse, "description": "A `like=` or `dislike=` key names no image (code: `unknown_image`)"},
}


@router.post("/search", response_model=SearchResponse, responses=_RESPONSES, openapi_extra=_BODY_DOC)
async def search(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    options: Annotated[Refine, Depends(refine)],
) -> SearchResponse:
    """Find the indexed images most similar to the uploaded one, or to the one a JSON `url` links to."""
    data, body_k = await read_query(request, settings)
    chosen = options.options(engine, settings, body_k)
    if isinstance(data, ImageLink):
        data = await run_in_threadpool(fetch_image, data.url, settings)
    return await state.run(search_image, data, chosen, engine, settings, linker)
