"""POST /search: images similar to an uploaded one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from lambda_fn.deps import EngineDep, LinkerDep, SettingsDep, StateDep
from lambda_fn.errors import ERROR_RESPONSES
from lambda_fn.pipeline import search_image
from lambda_fn.schemas import JsonSearchRequest, SearchResponse
from lambda_fn.uploads import parse_k, read_query

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


@router.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES, openapi_extra=_BODY_DOC)
async def search(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    k: Annotated[str | None, Query(description="Number of results (also accepted in the body)")] = None,
) -> SearchResponse:
    """Find the indexed images most similar to the uploaded one."""
    data, body_k = await read_query(request, settings)
    k_value = parse_k(k if k else body_k, settings)  # an empty ?k= does not hide the body's k
    return await state.run(search_image, data, k_value, engine, settings, linker)
