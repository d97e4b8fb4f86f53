"""training.evaluate's near-duplicate section: groups of indexed images the service's dedupe would collapse."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import KeyEntry
from training.evaluate import near_duplicates


def test_groups_join_images_above_the_threshold_and_nothing_else(capsys):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # 40 unrelated images, then two near-copies of image 3 and one of image 17
    vectors = np.vstack([base, base[3] + 0.01 * rng.standard_normal(16), base[3] + 0.01 * rng.standard_normal(16)])
    vectors = np.vstack([vectors, base[17] + 0.01 * rng.standard_normal(16)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = AnnoyIndex(16, "angular")
    for i, v in enumerate(vectors):
        index.add_item(i, v.tolist())
    index.build(10)
    keys = [KeyEntry(f"dish/{i}.jpg", "dish") for i in range(len(vectors))]
    engine = SimpleNamespace(manifest=SimpleNamespace(count=len(vectors)), index=index, keys=keys)

    report = near_duplicates(engine, threshold=0.99)

    assert report["groups"] == 2 and report["images"] == 5
    assert [row["keys"] for row in report["largest"]] == [
        ["dish/3.jpg", "dish/40.jpg", "dish/41.jpg"],
        ["dish/17.jpg", "dish/42.jpg"],
    ]
    assert all(0.99 < row["max_similarity"] <= 1 for row in report["largest"])
    printed = capsys.readouterr().out
    assert "near-duplicates (cosine > 0.99" in printed and "2 groups, 5 images" in printed
    assert near_duplicates(engine, threshold=0.99999)["groups"] == 0
