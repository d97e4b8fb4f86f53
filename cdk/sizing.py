"""Function sizes for a collection of a given number of images, from what bench/ measured.

One figure, the number of images the collection is expected to reach (``-c collectionImages=...``), sizes
what grows with it: the reindex function's memory (it merges every vector and builds the Annoy index in
memory, after embedding any photos that waited for a model), the search function's ``/tmp`` (a hot swap
holds the old and the new index side by side) and the search function's memory (the mapped index pages a
search touches stay resident). Below the floors, the defaults stand, because they buy CPU (Lambda gives CPU
in proportion to memory), not room. ``capacity`` turns sizes back into images: the stack's CollectionSize
alarm goes off as the collection nears it.

The per-image figures are the fit ``python -m bench.reindex`` wrote to ``bench/results/reindex_fit.json``
(peak RSS and file sizes, measured from 10^4 to 10^6 vectors) and the search process's resident memory with
the CPU-only torch wheel (``python -m bench.memory``, docs/benchmarks.md "Memory"), plus the costliest
request's decode (``python -m bench.request_memory``); the drain's allowance comes from
``python -m bench.ingest`` (``bench/results/ingest.json``) and ``bench/results/reindex.json``.
tests/cdk/test_sizing.py fails when a rerun of the benchmarks moves them past what is written here.
docs/scaling.md explains the limits and what takes over past them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lambda_fn.contract.lambda_costs import (
    LAMBDA_MAX_EPHEMERAL_STORAGE_MB,
    LAMBDA_MAX_MEMORY_MB,
    NEW_ACCOUNT_MEMORY_MB,
)

# Defaults below which the sizes never go: 3,008 MB is 1.70 vCPUs, the most a new account may configure
# before a quota increase; 2,048 MB of /tmp holds Food-101's build twice over.
SEARCH_MEMORY_FLOOR_MB = NEW_ACCOUNT_MEMORY_MB
SEARCH_EPHEMERAL_FLOOR_MB = 2048
REINDEX_MEMORY_FLOOR_MB = NEW_ACCOUNT_MEMORY_MB

# The reindex's peak RSS: a fixed part (runtime and libraries) plus a part per vector (the merged
# collection, the Annoy build, the key map). The incremental run (the larger of the two) from the fit.
REINDEX_BASE_MIB = 651
REINDEX_MIB_PER_IMAGE = 7601 / 1e6
# What draining the photos that waited for a model adds (lambda_fn.collection.pending): the model loaded and one batch
# embedded as ingest does it, beside the live collection; the model stays loaded through the merge that
# follows. The ingest's peak at a drain's batch (fp32, the larger model) less the reindex after its imports,
# since the fit's base already holds torch.
REINDEX_DRAIN_MIB = 700

# One build's files in the search function's /tmp and page cache: the Annoy index (512-d, 16 trees) and
# the key map, per vector; plus the model (fp32 85 MB, int8 21 MB).
INDEX_BYTES_PER_IMAGE = 2716
KEYS_BYTES_PER_IMAGE = 64  # 50 B measured with the bench's keys; real keys run a little longer
MODEL_ALLOWANCE_MIB = 128

# The search process's resident memory with the CPU-only wheel before any index (fp32 model, 240 images).
SEARCH_BASE_MIB = 388
# What one request's decode may add on top: the costliest image the decode limits admit
# (``python -m bench.request_memory``, bench/results/request_memory.json; docs/benchmarks.md "Request memory").
DECODE_ALLOWANCE_MIB = 288

# Margin on every estimate: the fit is linear and measured on one machine.
HEADROOM = 1.10

# Lambda memory settings are whole MB; rounding up to a multiple keeps the figures readable.
ROUND_MB = 64


@dataclass(frozen=True)
class FunctionSizes:
    """Memory and ``/tmp`` for the functions whose needs grow with the collection."""

    images: int
    search_memory_mb: int
    search_ephemeral_storage_mb: int
    reindex_memory_mb: int


def _mib(n_bytes: float) -> float:
    return n_bytes / 2**20


# What each size must hold, as (fixed MiB, MiB per image), before the headroom: one model of each need, which
# ``sizes_for`` solves for a size and ``capacity`` for a number of images.
_BUILD_MIB_PER_IMAGE = _mib(INDEX_BYTES_PER_IMAGE + KEYS_BYTES_PER_IMAGE)
_NEEDS: dict[str, tuple[float, float]] = {
    # One index resident (during a swap the old build's pages are evicted as the new one's are read), and the
    # costliest request's decode beside it.
    "search_memory_mb": (SEARCH_BASE_MIB + DECODE_ALLOWANCE_MIB, _BUILD_MIB_PER_IMAGE),
    # Two builds side by side while a swap holds both, plus the model.
    "search_ephemeral_storage_mb": (MODEL_ALLOWANCE_MIB, 2 * _BUILD_MIB_PER_IMAGE),
    # The merge and the Annoy build, and room to drain the photos that waited for a model first.
    "reindex_memory_mb": (REINDEX_BASE_MIB + REINDEX_DRAIN_MIB, REINDEX_MIB_PER_IMAGE),
}


def _round_up(mb: float) -> int:
    return int(math.ceil(mb / ROUND_MB) * ROUND_MB)


def capacity(*, search_memory_mb: int, search_ephemeral_storage_mb: int, reindex_memory_mb: int) -> int:
    """The most images these sizes hold, whichever runs out first (rounded down to a thousand)."""
    sizes = {
        "search_memory_mb": search_memory_mb,
        "search_ephemeral_storage_mb": search_ephemeral_storage_mb,
        "reindex_memory_mb": reindex_memory_mb,
    }
    images = min(max(0, int((sizes[f] / HEADROOM - base) / per_image)) for f, (base, per_image) in _NEEDS.items())
    return images // 1000 * 1000


def largest_collection() -> int:
    """The most images one reindex function and one search function at Lambda's largest sizes hold."""
    return capacity(
        search_memory_mb=LAMBDA_MAX_MEMORY_MB,
        search_ephemeral_storage_mb=LAMBDA_MAX_EPHEMERAL_STORAGE_MB,
        reindex_memory_mb=LAMBDA_MAX_MEMORY_MB,
    )


def sizes_for(images: int, *, search_ephemeral_floor_mb: int = SEARCH_EPHEMERAL_FLOOR_MB) -> FunctionSizes:
    """Sizes for a collection that will reach ``images`` images; ValueError past what one index can hold.

    ``search_ephemeral_floor_mb``: the least ``/tmp`` to give search (lower under SnapStart, which caps it).
    """
    if images < 1:
        raise ValueError(f"collectionImages must be a positive number of images, not {images}")
    largest = largest_collection()
    if images > largest:
        raise ValueError(
            f"collectionImages={images:,} is more than one Annoy index in Lambda holds ({largest:,} images: the "
            "reindex's memory runs out first). Deploy with -c vectorStore=s3vectors to keep the vectors in "
            "Amazon S3 Vectors instead (docs/scaling.md, 'What takes over beyond it')."
        )
    floors = {
        "search_memory_mb": SEARCH_MEMORY_FLOOR_MB,
        "search_ephemeral_storage_mb": search_ephemeral_floor_mb,
        "reindex_memory_mb": REINDEX_MEMORY_FLOOR_MB,
    }
    return FunctionSizes(
        images=images,
        **{
            f: max(floors[f], _round_up((base + per_image * images) * HEADROOM))
            for f, (base, per_image) in _NEEDS.items()
        },
    )


def check_memory_quota(function: str, memory_mb: int, *, quota_mb: int, collection_images: int | None = None) -> None:
    """ValueError when ``function``'s memory is above the account's quota (``quota_mb``), saying what to ask for;
    ``collection_images``: the collection its size was computed for, if it was. A new account may configure at
    most ``NEW_ACCOUNT_MEMORY_MB``, and CloudFormation would fail the deploy only after building the image."""
    if not NEW_ACCOUNT_MEMORY_MB <= quota_mb <= LAMBDA_MAX_MEMORY_MB:
        raise ValueError(
            f"memoryQuotaMb={quota_mb} must be between {NEW_ACCOUNT_MEMORY_MB} (a new account's) and "
            f"{LAMBDA_MAX_MEMORY_MB} (Lambda's largest size)"
        )
    if memory_mb <= quota_mb:
        return
    cause = f" for collectionImages={collection_images:,}" if collection_images is not None else ""
    raise ValueError(
        f"the {function} function is sized at {memory_mb:,} MB{cause}, above the {quota_mb:,} MB of memory the "
        f"account may configure (-c memoryQuotaMb; a new account's maximum is {NEW_ACCOUNT_MEMORY_MB:,} MB), so the "
        "deploy would fail. Ask AWS Support to raise the Lambda quota 'Function memory allocation' (the function "
        f"memory maximum) to at least {memory_mb:,} MB, then deploy with -c memoryQuotaMb=<the raised maximum, at "
        f"most {LAMBDA_MAX_MEMORY_MB}>"
    )
