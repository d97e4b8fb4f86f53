"""The query pipeline: decode -> embed -> nearest neighbours -> response, with per-stage timings.

The neighbours are ranked once for every endpoint (``rank``): nearest first, only the wanted labels, copies
of the same picture as a higher-ranked result collapsed (``lambda_fn.vision.phash.same_picture``: perceptual
hash and embedding; a build without hashes collapses nothing), then the page ``offset .. offset+k-1`` of that
ranking with the results below ``min_similarity`` cut off. A search with liked and disliked images ranks by one
vector made from the query and them (``lambda_fn.search.feedback``), and never returns them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.feedback import NoPositiveSignal, rocchio
from lambda_fn.search.schemas import MAX_LISTED_LABELS, ErrorCode, Match, Prediction, SearchResponse, Timings
from lambda_fn.search.urls import ImageLinker
from lambda_fn.vision.engine import Engine
from lambda_fn.vision.imaging import ImageError, ImageTooLarge, UnsupportedImage, load_for_model
from lambda_fn.vision.phash import same_picture
from lambda_fn.vision.vector_store import Hit, VectorStore


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


def to_matches(hits: list[Hit], linker: ImageLinker) -> list[Match]:
    return [
        Match(
            id=h.id,
            key=h.key,
            label=h.label,
            source=h.source,
            distance=round(h.distance, 6),
            similarity=round(h.similarity, 6),
            url=linker.url(h.key),
        )
        for h in hits
    ]


def max_k(engine: Engine, settings: Settings) -> int:
    """The most results a search may rank (offset + k): the settings' max_k, within the store's top-k limit."""
    limit = engine.store.max_top_k
    return settings.max_k if limit is None else min(settings.max_k, limit)


@dataclass(frozen=True)
class SearchOptions:
    """What a search asks for beyond its query image; checked by ``lambda_fn.search.routes.params``."""

    k: int
    offset: int = 0
    labels: tuple[str, ...] = ()
    min_similarity: float | None = None
    dedupe: bool = True
    liked: tuple[str, ...] = ()  # keys, each known to the live build (``Refine.feedback``)
    disliked: tuple[str, ...] = ()
    # each liked and disliked key's stored vector, read in one store look-up by ``Refine.feedback``
    vectors: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Ranked:
    """One page of the ranking and what shaped it."""

    neighbours: list[Hit]
    next_offset: int | None
    cut: int
    collapsed: int

    def fields(self, options: SearchOptions) -> dict:
        """The SearchResponse fields that describe the page."""
        return {
            "liked": list(options.liked),
            "disliked": list(options.disliked),
            "k": options.k,
            "offset": options.offset,
            "next_offset": self.next_offset,
            "labels": list(options.labels),
            "cut_below_similarity": self.cut,
            "duplicates_collapsed": self.collapsed,
        }


def check_labels(engine: Engine, labels: tuple[str, ...]) -> None:
    if not labels:
        return
    names = engine.store.label_names()
    known = set(names)
    unknown = [label for label in labels if label not in known]
    if unknown:
        listed = ", ".join(names[:MAX_LISTED_LABELS]) + (
            f" (and {len(names) - MAX_LISTED_LABELS} more)" if len(names) > MAX_LISTED_LABELS else ""
        )
        raise ApiError(
            ErrorCode.UNKNOWN_LABEL,
            f"no image has the label {unknown[0][:100]!r}; "
            + (f"the {len(names)} labels are: {listed}" if names else "the collection has no labels"),
        )


# A dedupe search asks for this share more neighbours than the page needs, for the ones it will collapse.
_DEDUPE_MARGIN = 0.25
_RANK_TRIES = 4


def query_vector(engine: Engine, query: np.ndarray | None, options: SearchOptions) -> np.ndarray:
    """The vector a search ranks by: the query's own, or with liked and disliked images, Rocchio's combination."""
    if query is not None and not options.liked and not options.disliked:
        return query
    liked = _vectors(options, options.liked)
    disliked = _vectors(options, options.disliked)
    try:
        return rocchio(query, liked, disliked, dim=engine.meta.dim)
    except NoPositiveSignal as exc:
        raise ApiError(
            ErrorCode.NO_POSITIVE_EXAMPLE, f"{exc}: give a query (an image or `key=`) or a `like=` key"
        ) from None


def _vectors(options: SearchOptions, keys: tuple[str, ...]) -> np.ndarray | None:
    """The embeddings of ``keys``, as ``Refine.feedback`` looked them up in the store; None for no keys."""
    return np.stack([options.vectors[key] for key in keys]) if keys else None


def rank(
    store: VectorStore, vector: np.ndarray, options: SearchOptions, settings: Settings, exclude: str | None = None
) -> Ranked:
    """The page of neighbours ``options`` asks for (its labels known: ``check_labels``), leaving out ``exclude``
    and the liked and disliked images; see the module's docstring. A store with a top-k limit returns at most
    that many: the ranking then ends there."""
    end = options.offset + options.k
    dedupe = options.dedupe and store.dedupe_off is None
    n = end + 1 + (int(end * _DEDUPE_MARGIN) + 2 if dedupe else 0)  # one more tells of a next page
    judged = set(options.liked) | set(options.disliked)
    for _ in range(_RANK_TRIES):
        # ask for as many more as could be judged ones: they are left out after the search
        asked_n = n + len(judged) if store.max_top_k is None else min(n + len(judged), store.max_top_k)
        asked = store.search(vector, asked_n, exclude=exclude, labels=options.labels)
        found = [hit for hit in asked if hit.key not in judged][:n]
        kept, collapsed = _collapse(store, found, options.offset, end, settings) if dedupe else (found[: end + 1], 0)
        if len(kept) > end or len(asked) < asked_n or asked_n == store.max_top_k:
            break
        n *= 2  # duplicates took the room: ask for more (bounded tries; a page may come back short)
    page = kept[options.offset : end]
    floor = options.min_similarity
    shown = [nb for nb in page if floor is None or nb.similarity >= floor]
    limit = settings.max_k if store.max_top_k is None else min(settings.max_k, store.max_top_k)
    more = len(kept) > end and end < limit and (floor is None or kept[end].similarity >= floor)
    return Ranked(shown, end if more else None, len(page) - len(shown), collapsed)


def _collapse(store: VectorStore, found: list[Hit], offset: int, end: int, settings: Settings) -> tuple[list[Hit], int]:
    """Up to end+1 of ``found``, nearest first, leaving out each one that is the same picture as a result kept
    before it (``same_picture``); and how many were left out from the page's ranks (offset .. end-1)."""
    # Only results with a hash can be compared, so only their vectors are read (on S3 Vectors: one GetVectors).
    hashed = [nb.key for nb in found if nb.phash is not None]
    got = store.vectors(hashed) if len(hashed) > 1 else {}
    dim = len(next(iter(got.values()))) if got else 1
    none = np.zeros(dim, np.float32)  # no vector read: its hash never matched, or the image is gone
    vectors = np.stack([got.get(nb.key, none) for nb in found]) if found else np.zeros((0, dim), np.float32)
    copy_of = same_picture(
        [nb.phash for nb in found],
        vectors,
        max_distance=settings.dedupe_max_distance,
        min_similarity=settings.dedupe_similarity,
    )
    kept: list[Hit] = []
    collapsed = 0
    for nb, original in zip(found, copy_of, strict=True):
        if original is not None:
            if offset <= len(kept) < end:
                collapsed += 1
            continue
        kept.append(nb)
        if len(kept) > end:
            break
    return kept, collapsed


def search_image(
    data: bytes, options: SearchOptions, engine: Engine, settings: Settings, linker: ImageLinker
) -> SearchResponse:
    t0 = time.perf_counter()
    pixels = decode(data, engine, settings)
    t1 = time.perf_counter()
    vectors, probs = engine.embed(pixels[None])
    t2 = time.perf_counter()
    ranked = rank(engine.store, query_vector(engine, vectors[0], options), options, settings)
    t3 = time.perf_counter()
    predictions = (
        [Prediction(label=label, probability=round(p, 6)) for label, p in engine.predictions(probs[0])]
        if probs is not None
        else []
    )
    matches = to_matches(ranked.neighbours, linker)
    return SearchResponse(
        **ranked.fields(options),
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


def image_by_id(image_id: int, engine: Engine) -> tuple[Hit, np.ndarray]:
    """The image a per-build id names (a store without ids, S3 Vectors, names none: look up by key)."""
    found = engine.store.by_id(image_id)
    if found is not None:
        return found
    if engine.store.max_top_k is not None:
        raise ApiError(
            ErrorCode.UNKNOWN_IMAGE,
            f"no image with id {image_id}: this index names images by key only; use GET /similar?key=<key>",
        )
    last = engine.manifest.count - 1
    raise ApiError(ErrorCode.UNKNOWN_IMAGE, f"no image with id {image_id}; ids run from 0 to {last}")


def image_by_key(key: str, engine: Engine) -> tuple[Hit, np.ndarray]:
    found = engine.store.entry(key)
    if found is None:
        raise ApiError(ErrorCode.UNKNOWN_IMAGE, f"no image with key {key!r} in build {engine.build_id}")
    return found


def search_similar(
    image: tuple[Hit, np.ndarray] | None,
    options: SearchOptions,
    engine: Engine,
    settings: Settings,
    linker: ImageLinker,
) -> SearchResponse:
    """Neighbours of an indexed image (``image_by_id``, ``image_by_key``), the image itself left out; or with
    ``image`` None, of the liked images alone."""
    hit, vector = image if image is not None else (None, None)
    t0 = time.perf_counter()
    query = query_vector(engine, vector, options)
    ranked = rank(engine.store, query, options, settings, exclude=hit.key if hit is not None else None)
    t1 = time.perf_counter()
    return SearchResponse(
        **ranked.fields(options),
        build_id=engine.build_id,
        results=to_matches(ranked.neighbours, linker),
        predictions=[],
        query_id=hit.id if hit is not None else None,
        query=to_matches([hit], linker)[0] if hit is not None else None,
        timings=Timings(decode_ms=0.0, embed_ms=0.0, search_ms=_ms(t1 - t0), total_ms=_ms(time.perf_counter() - t0)),
    )
