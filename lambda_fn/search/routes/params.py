"""The query parameters every search endpoint takes besides its query image, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Query
from pydantic import StringConstraints

from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.pipeline import SearchOptions, check_labels, max_k
from lambda_fn.search.schemas import ErrorCode
from lambda_fn.search.uploads import parse_k
from lambda_fn.vision.engine import Engine

# Labels one request may filter by, and the longest label accepted.
MAX_FILTER_LABELS = 20
MAX_LABEL_LENGTH = 200
# Longest image key accepted (as for `GET /similar?key=`).
MAX_KEY_LENGTH = 1024

K = Annotated[str | None, Query(description="Number of results (default and maximum: `limits` in /health)")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_LENGTH)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH)]


@dataclass(frozen=True)
class Refine:
    """k, offset, label, min_similarity, dedupe, like and dislike from the query string."""

    k: str | None
    offset: int
    labels: tuple[str, ...]
    min_similarity: float | None
    dedupe: bool
    like: tuple[str, ...] = ()
    dislike: tuple[str, ...] = ()

    def options(self, engine: Engine, settings: Settings, body_k: str | None = None) -> SearchOptions:
        """The search options with k checked (the query's, else the body's), offset + k within max_k, every
        label known to ``engine`` and every liked and disliked key looked up: before any fetching or model work."""
        k_value = parse_k(self.k if self.k else body_k, settings)  # an empty ?k= does not hide the body's k
        limit = max_k(engine, settings)
        if self.offset + k_value > limit:
            raise ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"offset + k must be at most {limit} (offset {self.offset}, k {k_value}); "
                "a search returns at most max_k results in all",
            )
        check_labels(engine, self.labels)
        vectors = self.feedback(engine, settings)
        return SearchOptions(
            k_value,
            self.offset,
            self.labels,
            self.min_similarity,
            self.dedupe,
            liked=self.like,
            disliked=self.dislike,
            vectors=vectors,
        )

    def feedback(self, engine: Engine, settings: Settings) -> dict[str, np.ndarray]:
        """The liked and disliked keys' vectors, in one store look-up, after checking there are at most
        ``max_feedback_images`` in all and none both liked and disliked; an unknown key is a 404."""
        count = len(self.like) + len(self.dislike)
        if count > settings.max_feedback_images:
            raise ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"a search may carry at most {settings.max_feedback_images} liked and disliked images in all "
                f"(this one has {count}): keep the most telling ones",
            )
        both = set(self.like) & set(self.dislike)
        if both:
            raise ApiError(
                ErrorCode.INVALID_PARAMETERS,
                f"the image {min(both)[:200]!r} is both liked and disliked: give it as one of them only",
            )
        if not count:
            return {}
        vectors = engine.store.vectors(self.like + self.dislike)
        for role, keys in (("liked", self.like), ("disliked", self.dislike)):
            for key in keys:
                if key not in vectors:
                    raise ApiError(
                        ErrorCode.UNKNOWN_IMAGE, f"no {role} image with key {key!r} in build {engine.build_id}"
                    )
        return vectors


def refine(
    k: K = None,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=2**31 - 1,
            description="Skip this many results (the previous answer's `next_offset`); offset + k <= max_k",
        ),
    ] = 0,
    label: Annotated[
        list[Label] | None,
        Query(
            max_length=MAX_FILTER_LABELS,
            description="Only images with this label; repeat for several (`label=pizza&label=sushi`). "
            "A label the index does not have is a 422 `unknown_label` listing the known ones (/health lists them)",
        ),
    ] = None,
    min_similarity: Annotated[
        float | None,
        Query(
            ge=-1,
            le=1,
            allow_inf_nan=False,
            description="Leave out results whose cosine similarity is below this; `cut_below_similarity` says "
            "how many of the page were cut",
        ),
    ] = None,
    dedupe: Annotated[
        bool,
        Query(
            description="Collapse copies: a result that is the same picture as a higher-ranked one (re-encoded, "
            "resized, slightly cropped: perceptual hash and embedding agree) is left out; `duplicates_collapsed` "
            "counts them. A build without perceptual hashes collapses nothing (/health `dedupe`)"
        ),
    ] = True,
    like: Annotated[
        list[Key] | None,
        Query(
            description="The key of a result to see more like; repeat for several. The search ranks by the query "
            "plus the mean liked image minus the mean disliked one, and leaves them out of the results. With no "
            "query image (`GET /similar` without `key`) the liked images alone are the query. An unknown key is a "
            "404 `unknown_image`; at most `max_feedback_images` liked and disliked keys in all",
        ),
    ] = None,
    dislike: Annotated[
        list[Key] | None,
        Query(
            description="The key of a result to see less like; repeat for several. Disliked images alone are no "
            "query: 422 `no_positive_example`",
        ),
    ] = None,
) -> Refine:
    """The search parameters of the query string, as one dependency of every search endpoint."""
    return Refine(
        k,
        offset,
        tuple(dict.fromkeys(label or ())),
        min_similarity,
        dedupe,
        tuple(dict.fromkeys(like or ())),
        tuple(dict.fromkeys(dislike or ())),
    )
