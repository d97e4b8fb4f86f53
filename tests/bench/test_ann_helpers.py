"""The helpers behind bench/ann.py (synthetic data, exact top-k, recall) and bench/search_k.py."""

from __future__ import annotations

import json

import numpy as np

from bench._synthetic import exact_one, make_clustered
from lambda_fn.vision.indexing import exact_top_k, recall_at_k


def test_make_clustered_is_unit_float32_and_seeded():
    a = make_clustered(500, 64, cluster_size=50, rank=4, seed=3, chunk=128)
    b = make_clustered(500, 64, cluster_size=50, rank=4, seed=3, chunk=128)
    assert a.shape == (500, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)


def test_make_clustered_neighbours_are_closer_than_strangers():
    x = make_clustered(2000, 512, seed=0)
    sims = x[:100] @ x[100:].T
    top1 = sims.max(axis=1)
    assert 0.5 < np.median(top1) < 0.97
    assert np.median(sims) < 0.4


def test_exact_topk_matches_full_sort_across_blocks():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    # A block budget of 3 queries forces several blocks.
    ids, sims = exact_top_k(base, queries, 5, with_similarities=True, max_block_bytes=3 * 4 * len(base))
    expected = np.argsort(-(queries @ base.T), axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    assert np.all(np.diff(sims, axis=1) <= 0)
    np.testing.assert_array_equal(exact_one(base, queries[2], 5), expected[2])


def test_recall_at_k_counts_overlap_regardless_of_order():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k([[4, 3, 2, 1], [5, 6, 0, 0]], exact) == 0.75
    assert recall_at_k([[9, 9, 9, 9], [8, 7, 6, 5]], exact) == 0.5


def test_search_k_bench_reports_the_choice_and_checks_it_on_held_out_queries(tmp_path):
    from bench import search_k

    out = tmp_path / "search_k.json"
    report = search_k.main(
        search_k.get_args_parser().parse_args(["--sizes", "3000", "--work", str(tmp_path), "--out", str(out)])
    )
    (row,) = report["sizes"]
    assert row["n"] == 3000 and row["chosen_search_k"] == 20_000  # 20,000 nodes of 3,000 vectors: exact
    assert row["measured_recall@10"] == 1.0
    assert row["held_out"]["20000"]["recall@10"] > 0.99
    assert json.loads(out.read_text())["sizes"][0]["n"] == 3000
    assert [p.name for p in tmp_path.iterdir()] == ["search_k.json"]  # the scratch index is gone
