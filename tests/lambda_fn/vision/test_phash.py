"""The perceptual hash and the collapse rule: the same picture collapses, another photo of the same thing does not."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from lambda_fn.contract.config import DEFAULT_DEDUPE_MAX_DISTANCE
from lambda_fn.vision.imaging import load_for_model
from lambda_fn.vision.phash import distance, from_hex, perceptual_hash, same_picture, to_hex
from training.sample_data import render


def _photo(seed: int) -> Image.Image:
    return render("pizza", random.Random(seed), 320, 240)


def _hash(img: Image.Image, quality: int = 90) -> int:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return perceptual_hash(load_for_model(buf.getvalue(), 256, 224))


def test_the_hash_is_64_bits_half_set_and_stored_as_16_hex_digits():
    h = _hash(_photo(0))
    assert 0 <= h < 2**64 and bin(h).count("1") == 32  # one bit per coefficient above the median
    assert len(to_hex(h)) == 16 and from_hex(to_hex(h)) == h and to_hex(None) is None and from_hex(None) is None
    assert distance(h, h) == 0 and distance(h, h ^ 0b1011) == 3


def test_grey_and_rgb_of_one_picture_hash_alike():
    rgb = np.asarray(_photo(1))
    grey = np.asarray(_photo(1).convert("L"))
    assert distance(perceptual_hash(rgb), perceptual_hash(grey)) <= 2


@pytest.mark.parametrize(
    "edit",
    [
        lambda im: im,
        lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC),
        lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.BICUBIC),
        lambda im: im.crop((8, 6, im.width - 8, im.height - 6)),  # 5%
    ],
    ids=["re-encoded", "half", "quarter", "cropped-5%"],
)
def test_copies_of_a_picture_are_within_the_default_distance(edit):
    photo = _photo(2)
    assert distance(_hash(photo, 95), _hash(edit(photo), 50)) <= DEFAULT_DEDUPE_MAX_DISTANCE


def test_different_photos_of_the_same_dish_are_far_apart():
    hashes = [_hash(_photo(seed)) for seed in range(12)]
    closest = min(distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :])
    assert closest > DEFAULT_DEDUPE_MAX_DISTANCE


def test_a_result_collapses_only_into_a_kept_one_with_a_close_hash_and_embedding():
    v = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [1.0, 0.02], [1.0, 0.0]], dtype=np.float32)
    h = [0b0, 0b111, 0b1, 2**40 - 1, None]
    # 1: 3 bits from 0, same direction -> copy of 0; 2: 1 bit from 0 but orthogonal -> kept (guard);
    # 3: same direction, 40 bits away -> kept (the embedding alone never collapses); 4: no hash -> kept
    assert same_picture(h, v, max_distance=3, min_similarity=0.9) == [None, 0, None, None, None]
    assert same_picture(h, v, max_distance=2, min_similarity=0.9) == [None, None, None, None, None]
    assert same_picture(h, v, max_distance=3, min_similarity=-1.0) == [None, 0, 0, None, None]


def test_a_copy_of_a_collapsed_result_is_judged_against_the_kept_ones():
    v = np.ones((3, 4), dtype=np.float32)
    # 1 is a copy of 0; 2 is 2 bits from 1 but 4 from 0: it is kept, since 1 is not shown
    assert same_picture([0b0, 0b11, 0b1111], v, max_distance=2) == [None, 0, None]
    assert same_picture([], np.zeros((0, 4))) == []
