"""Perceptual hashes: whether two results are the same picture, not two pictures of the same thing.

``perceptual_hash`` is a 64-bit DCT hash (pHash) of the prepared crop the model sees (``imaging.prepare``): grey,
box-reduced to 32x32, a 2-D DCT, one bit per coefficient of the lowest 8x8 frequencies, set when it is above
their median. Re-encoding, resizing and recompressing change fine detail, not those low frequencies, so copies
of a picture differ in a few bits and different photos in about half. Hashing the crop needs no second decode,
and ingest, index builds and queries all hash the same pixels (docs/benchmarks.md compares the whole picture).

``same_picture`` is the collapse rule the search applies; any store that can give each result's hash and
embedding (keys.json here, vector metadata elsewhere) feeds it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lambda_fn.contract.config import DEFAULT_DEDUPE_MAX_DISTANCE, DEFAULT_DEDUPE_SIMILARITY

# Names the hash a build's keys carry (``Manifest.perceptual_hash``): a build with another one is not compared.
HASH_NAME = "dct64-crop"
HASH_BITS = 64

_SIZE, _LOW = 32, 8
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _dct_rows(n: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the (unnormalised) DCT-II matrix of size n."""
    k, i = np.arange(rows)[:, None], np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_rows(_SIZE, _LOW)


def perceptual_hash(pixels: np.ndarray) -> int:
    """A uint8 (H, W, 3) RGB or (H, W) grey picture -> its 64-bit DCT hash (see the module docstring)."""
    arr = np.asarray(pixels)
    grey = arr.astype(np.float32) @ _LUMA if arr.ndim == 3 else arr.astype(np.float32)
    small = np.asarray(Image.fromarray(grey, mode="F").resize((_SIZE, _SIZE), Image.Resampling.BOX), np.float64)
    low = (_DCT @ small @ _DCT.T).ravel()
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def to_hex(value: int | None) -> str | None:
    """How a hash is stored (16 hex digits): JSON readers and vector metadata keep 64-bit integers poorly."""
    return None if value is None else f"{value:016x}"


def from_hex(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def distance(a: int, b: int) -> int:
    """Hamming distance of two hashes: the bits that differ, 0..64."""
    return (a ^ b).bit_count()


def same_picture(
    hashes: Sequence[int | None],
    vectors: np.ndarray,
    *,
    max_distance: int = DEFAULT_DEDUPE_MAX_DISTANCE,
    min_similarity: float = DEFAULT_DEDUPE_SIMILARITY,
) -> list[int | None]:
    """For results in rank order: the position of the kept result each one is a copy of, or None (kept).

    ``hashes[i]`` is result i's ``perceptual_hash`` (None where unknown: never collapsed, never collapses another)
    and ``vectors[i]`` its embedding, shape (len(hashes), dim). Walking nearest first, result i is a copy of
    the first kept result j < i whose hash differs in at most ``max_distance`` bits and whose cosine with it is
    at least ``min_similarity``; a result that is no copy is kept.
    """
    n = len(hashes)
    if not n:
        return []
    values = np.array([h or 0 for h in hashes], dtype=np.uint64)
    units = np.asarray(vectors, dtype=np.float32).reshape(n, -1)
    units = units / np.maximum(np.linalg.norm(units, axis=1, keepdims=True), 1e-12)
    out: list[int | None] = []
    hashed_kept = np.zeros(n, dtype=np.int64)  # positions of the kept results that have a hash
    count = 0
    for i, h in enumerate(hashes):
        match = None
        if h is not None and count:
            candidates = hashed_kept[:count]
            near = candidates[np.bitwise_count(values[candidates] ^ values[i]) <= max_distance]
            for j in near:  # the cosine only for the few whose hash is close
                if float(units[i] @ units[j]) >= min_similarity:
                    match = int(j)
                    break
        out.append(match)
        if match is None and h is not None:
            hashed_kept[count] = i
            count += 1
    return out
