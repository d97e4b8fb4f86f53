"""GET /images/{id}/similar: neighbours of an image already in the index."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from lambda_fn.deps import EngineDep, LinkerDep, SettingsDep
from lambda_fn.errors import ERROR_RESPONSES
from lambda_fn.pipeline import search_similar
from lambda_fn.schemas import ErrorResponse, SearchResponse
from lambda_fn.uploads import parse_k

router = APIRouter(tags=["images"])


@router.get(
    "/images/{image_id}/similar",
    response_model=SearchResponse,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "Unknown image id"}},
)
async def similar(
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    image_id: Annotated[int, Path(ge=0, le=2**31 - 1, description="Image id from a previous result")],
    k: Annotated[str | None, Query(description="Number of results")] = None,
) -> SearchResponse:
    """Find the images most similar to an indexed image, leaving the image itself out."""
    return await run_in_threadpool(search_similar, image_id, parse_k(k, settings), engine, linker)
