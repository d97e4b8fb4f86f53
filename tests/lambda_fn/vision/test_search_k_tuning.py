"""A build measures the search_k its collection needs: the smallest step that reaches the recall target."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_fn.contract.manifest import KeyEntry, Manifest
from lambda_fn.vision.indexing import build_annoy, exact_top_k, recall_at_k, tune_search_k, write_build

DIM = 32


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 40 loose clusters: neighbours are close calls, as with real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    v = centres[rng.integers(0, 40, n)] + 0.9 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def few_trees(tmp_path_factory):
    """An index with too few trees for a small search_k to find the true neighbours."""
    vectors = clustered(4000)
    path = tmp_path_factory.mktemp("index") / "index.ann"
    build_annoy(vectors, path, n_trees=2, seed=1)
    return path, vectors


def recall_at(path, vectors, search_k: int) -> float:
    from annoy import AnnoyIndex

    index = AnnoyIndex(DIM, "angular")
    index.load(str(path))
    picked = np.sort(np.random.default_rng(42).choice(len(vectors), size=200, replace=False))
    exact = exact_top_k(vectors, vectors[picked], 10, picked.tolist())
    found = [[j for j in index.get_nns_by_item(int(i), 11, search_k=search_k) if j != i][:10] for i in picked]
    index.unload()
    return recall_at_k(found, exact, 10)


def test_the_smallest_step_that_reaches_the_target_is_chosen(few_trees):
    path, vectors = few_trees
    ladder = (100, 400, 1600, 6400)
    search_k, recall = tune_search_k(path, vectors, floor=20, target=0.9, ladder=ladder, seed=42)
    assert recall >= 0.9 and search_k in ladder
    below = [20, *ladder][[20, *ladder].index(search_k) - 1]
    assert recall_at(path, vectors, below) < 0.9  # the step before it did not reach the target
    assert recall == pytest.approx(recall_at(path, vectors, search_k))


def test_the_floor_stands_when_it_already_reaches_the_target(few_trees):
    path, vectors = few_trees
    search_k, recall = tune_search_k(path, vectors, floor=20_000, target=0.9, ladder=(100, 400), seed=42)
    assert (search_k, recall) == (20_000, 1.0)  # 20,000 nodes of 4,000 vectors: exact


def test_the_top_of_the_ladder_when_nothing_reaches_the_target(few_trees):
    path, vectors = few_trees
    search_k, recall = tune_search_k(path, vectors, floor=10, target=0.999, ladder=(20, 40), seed=42)
    assert search_k == 40 and recall < 0.999


def test_a_tuned_build_records_the_measured_search_k_in_its_manifest(tmp_path):
    vectors = clustered(3000, seed=3)
    entries = [KeyEntry(f"images/c/{i}.jpg", "c") for i in range(len(vectors))]
    (tmp_path / "model.pt").write_bytes(b"model")
    tuned = write_build(
        tmp_path / "tuned", entries, vectors, model=tmp_path / "model.pt", n_trees=2, search_k=10, tune_recall=True
    )
    plain = write_build(tmp_path / "plain", entries, vectors, model=tmp_path / "model.pt", n_trees=2, search_k=10)
    assert plain.search_k == 10
    assert tuned.search_k > 10
    assert Manifest.read(tmp_path / "tuned" / "manifest.json").search_k == tuned.search_k
    assert recall_at(tmp_path / "tuned" / "index.ann", vectors, tuned.search_k) >= 0.9
