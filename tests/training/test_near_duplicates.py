"""training.evaluate's near-duplicate section: groups of indexed images the service's dedupe treats as one picture."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import KeyEntry
from training.evaluate import near_duplicates


def _engine(vectors: np.ndarray, hashes: list[int | None], dedupe_off: str | None = None) -> SimpleNamespace:
    index = AnnoyIndex(vectors.shape[1], "angular")
    for i, v in enumerate(vectors):
        index.add_item(i, v.tolist())
    index.build(10)
    return SimpleNamespace(
        manifest=SimpleNamespace(count=len(vectors)),
        index=index,
        keys=[KeyEntry(f"dish/{i}.jpg", "dish") for i in range(len(vectors))],
        dedupe_off=dedupe_off,
        picture_hashes=lambda ids: [hashes[i] for i in ids],
        vector=lambda i: vectors[i].astype(np.float32),
    )


def test_groups_join_the_same_picture_and_not_lookalikes(capsys):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 16))
    hashes = [int(h) for h in rng.integers(0, 2**63, size=40)]
    # two copies of image 3 and one of 17 (hash 2 bits off), then a lookalike of 5: same embedding, other picture
    near = [base[3] + 0.01 * rng.standard_normal(16), base[3] + 0.01 * rng.standard_normal(16)]
    vectors = np.vstack([base, *near, base[17] + 0.01 * rng.standard_normal(16), base[5] + 1e-4])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes += [hashes[3] ^ 0b11, hashes[3] ^ 0b101, hashes[17] ^ 0b110, hashes[5] ^ (2**40 - 1)]
    engine = _engine(vectors, hashes)

    report = near_duplicates(engine, Settings(artifacts_uri="unused"))

    assert report["enabled"] and report["groups"] == 2 and report["images"] == 5
    assert [row["keys"] for row in report["largest"]] == [
        ["dish/3.jpg", "dish/40.jpg", "dish/41.jpg"],
        ["dish/17.jpg", "dish/42.jpg"],
    ]
    printed = capsys.readouterr().out
    assert "perceptual hash within 8 bits" in printed and "2 groups, 5 images" in printed
    assert near_duplicates(engine, Settings(artifacts_uri="unused", dedupe_max_distance=1))["groups"] == 0


def test_a_build_without_hashes_reports_dedupe_off(capsys):
    vectors = np.eye(4, dtype=np.float32)
    report = near_duplicates(
        _engine(vectors, [None] * 4, "the build has no perceptual hashes"), Settings(artifacts_uri="x")
    )
    assert report == {
        "enabled": False,
        "reason": "the build has no perceptual hashes",
        "groups": 0,
        "images": 0,
        "largest": [],
    }
    assert "collapses none (the build has no perceptual hashes)" in capsys.readouterr().out
