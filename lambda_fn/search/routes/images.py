"""Neighbours of an image already in the index: by id (from a result of the same build) or by key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from lambda_fn.search.deps import EngineDep, LinkerDep, SettingsDep
from lambda_fn.search.errors import ERROR_RESPONSES
from lambda_fn.search.pipeline import check_build, image_by_id, image_by_key, search_similar
from lambda_fn.search.routes.params import MAX_KEY_LENGTH, Refine, refine
from lambda_fn.search.schemas import ErrorResponse, SearchResponse

router = APIRouter(tags=["images"])


@router.get(
    "/images/{image_id}/similar",
    response_model=SearchResponse,
    responses={
        **ERROR_RESPONSES,
        404: {
            "model": ErrorResponse,
            "description": "Unknown image id, or a `like=` / `dislike=` key naming no image (code: `unknown_image`)",
        },
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
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown key, liked or disliked key (code: `unknown_image`)"},
    },
)
async def similar_by_key(
    *,
    engine: EngineDep,
    settings: SettingsDep,
    linker: LinkerDep,
    key: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            description="The image's `key` in the collection; valid in every build. Without it, the `like=` "
            "images are the query (422 `no_positive_example` without either)",
        ),
    ] = None,
    options: Annotated[Refine, Depends(refine)],
) -> SearchResponse:
    """Find the images most similar to an indexed image named by its key, leaving the image itself out; or to the
    liked images, away from the disliked ones."""
    image = await run_in_threadpool(image_by_key, key, engine) if key is not None else None
    chosen = options.options(engine, settings)
    return await run_in_threadpool(search_similar, image, chosen, engine, settings, linker)
