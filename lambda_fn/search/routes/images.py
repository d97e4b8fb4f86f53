"""Neighbours of an image already in the index: by id (from a result of the same build) or by key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from lambda_fn.search.deps import EngineDep, LinkerDep, SettingsDep
from lambda_fn.search.errors import ERROR_RESPONSES
from lambda_fn.search.pipeline import check_build, image_by_id, image_by_key, search_similar
from lambda_fn.search.routes.params import Refine, refine
from lambda_fn.search.schemas import ErrorResponse, SearchResponse

router = APIRouter(tags=["images"])


@router.get(
    "/images/{image_id}/similar",
    response_model=SearchResponse,
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown image id (code: `unknown_image`)"},
        409: {
            "model": ErrorResponse,
            "description": "`build` is not the live build: the id may name another image now (code: `stale_build`)",
        },
    },
)
async def similar(
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    image_id: Annotated[int, Path(ge=0, le=2**31 - 1, description="Image id from a previous result")],
    options: Annotated[Refine, Depends(refine)],
    build: Annotated[
        str | None,
        Query(
            max_length=64,
            description="The `build_id` of the response the id came from; 409 when another build serves now",
        ),
    ] = None,
) -> SearchResponse:
    """Find the images most similar to an indexed image, leaving the image itself out."""
    check_build(engine, build)
    chosen = options.options(engine, settings)
    image = await run_in_threadpool(image_by_id, image_id, engine)
    return await run_in_threadpool(search_similar, image, chosen, engine, settings, linker)


@router.get(
    "/similar",
    response_model=SearchResponse,
    responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "Unknown key (code: `unknown_image`)"}},
)
async def similar_by_key(
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    key: Annotated[
        str,
        Query(min_length=1, max_length=1024, description="The image's `key` in the collection; valid in every build"),
    ],
    options: Annotated[Refine, Depends(refine)],
) -> SearchResponse:
    """Find the images most similar to an indexed image named by its key, leaving the image itself out."""
    image = await run_in_threadpool(image_by_key, key, engine)
    chosen = options.options(engine, settings)
    return await run_in_threadpool(search_similar, image, chosen, engine, settings, linker)
