"""The query pipeline: decode -> embed -> nearest neighbours -> response, with per-stage timings."""

from __future__ import annotations

import time

from lambda_fn.config import Settings
from lambda_fn.engine import Engine, Neighbour
from lambda_fn.errors import ApiError
from lambda_fn.imaging import ImageError, ImageTooLarge, UnsupportedImage, load_for_model
from lambda_fn.schemas import ErrorCode, Match, Prediction, SearchResponse, Timings
from lambda_fn.urls import ImageLinker


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def decode(data: bytes, engine: Engine, settings: Settings):
    meta = engine.meta
    try:
        return load_for_model(data, meta.resize_size, meta.crop_size, max_pixels=settings.max_image_pixels)
    except ImageTooLarge as exc:
        raise ApiError(ErrorCode.TOO_LARGE, str(exc)) from exc
    except UnsupportedImage as exc:
        raise ApiError(ErrorCode.UNSUPPORTED_TYPE, str(exc)) from exc
    except ImageError as exc:
        raise ApiError(ErrorCode.NOT_AN_IMAGE, str(exc)) from exc


def to_matches(engine: Engine, neighbours: list[Neighbour], linker: ImageLinker) -> list[Match]:
    out = []
    for n in neighbours:
        entry = engine.keys[n.id]
        out.append(
            Match(
                id=n.id,
                key=entry.key,
                label=entry.label,
                source=entry.source,
                distance=round(n.distance, 6),
                similarity=round(n.similarity, 6),
                url=linker.url(entry.key),
            )
        )
    return out


def search_image(data: bytes, k: int, engine: Engine, settings: Settings, linker: ImageLinker) -> SearchResponse:
    t0 = time.perf_counter()
    pixels = decode(data, engine, settings)
    t1 = time.perf_counter()
    vectors, probs = engine.embed(pixels[None])
    t2 = time.perf_counter()
    neighbours = engine.search(vectors[0], k)
    t3 = time.perf_counter()
    predictions = (
        [Prediction(label=label, probability=round(p, 6)) for label, p in engine.predictions(probs[0])]
        if probs is not None
        else []
    )
    matches = to_matches(engine, neighbours, linker)
    return SearchResponse(
        k=k,
        build_id=engine.build_id,
        results=matches,
        predictions=predictions,
        timings=Timings(
            decode_ms=_ms(t1 - t0),
            embed_ms=_ms(t2 - t1),
            search_ms=_ms(t3 - t2),
            total_ms=_ms(time.perf_counter() - t0),
        ),
    )


def check_build(engine: Engine, build: str | None) -> None:
    """A client that names the build its ids came from gets 409 once another build serves."""
    if build is not None and build != engine.build_id:
        raise ApiError(
            ErrorCode.STALE_BUILD,
            f"image ids from build {build!r} do not name the same images in the live build {engine.build_id} "
            "(the index was rebuilt): search again, or look the image up by its key with GET /similar?key=<key>",
        )


def image_id_of(key: str, engine: Engine) -> int:
    try:
        return engine.ids[key]
    except KeyError:
        raise ApiError(ErrorCode.UNKNOWN_IMAGE, f"no image with key {key!r} in build {engine.build_id}") from None


def search_similar(image_id: int, k: int, engine: Engine, linker: ImageLinker) -> SearchResponse:
    if not 0 <= image_id < engine.manifest.count:
        raise ApiError(
            ErrorCode.UNKNOWN_IMAGE, f"no image with id {image_id}; ids run from 0 to {engine.manifest.count - 1}"
        )
    t0 = time.perf_counter()
    neighbours = engine.search(engine.vector(image_id), k, exclude=image_id)
    t1 = time.perf_counter()
    return SearchResponse(
        k=k,
        build_id=engine.build_id,
        results=to_matches(engine, neighbours, linker),
        predictions=[],
        query_id=image_id,
        query=to_matches(engine, [Neighbour(image_id, 0.0)], linker)[0],
        timings=Timings(decode_ms=0.0, embed_ms=0.0, search_ms=_ms(t1 - t0), total_ms=_ms(time.perf_counter() - t0)),
    )
