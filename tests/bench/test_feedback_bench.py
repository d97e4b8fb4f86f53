"""bench/feedback.py: the simulated person, the exclusion of judged images and P@10 per round."""

from __future__ import annotations

import numpy as np

from bench.feedback import BEST_SCORE, judge, rocchio_strategy, simulate, top_results


def test_top_results_leave_out_the_excluded_and_keep_the_order():
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.7])
    assert top_results(scores, {1}, k=3) == [3, 4, 2]


def test_the_person_likes_the_first_same_label_and_dislikes_the_first_other_label_once_each():
    labels = np.array(["a", "a", "b", "a", "b"])
    assert judge([2, 1, 4, 3], labels, "a", [], []) == (1, 2)
    assert judge([2, 1, 4, 3], labels, "a", [1], [2]) == (3, 4)
    assert judge([1, 3], labels, "a", [1, 3], []) == (None, None)


def clusters() -> tuple[np.ndarray, np.ndarray]:
    """Two labels whose members sit on a line: the query's nearest neighbours straddle the boundary, so feedback
    has something to fix (label a around x=+1, label b around x=-1, and a shared nuisance axis y)."""
    rng = np.random.default_rng(0)
    a = np.c_[rng.normal(0.3, 0.3, 40), rng.normal(0, 1, 40), rng.normal(0, 0.05, 40)]
    b = np.c_[rng.normal(-0.3, 0.3, 40), rng.normal(0, 1, 40), rng.normal(0, 0.05, 40)]
    x = np.vstack([a, b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.array(["a"] * 40 + ["b"] * 40)


def test_feedback_raises_precision_where_the_labels_overlap_and_round_zero_is_the_plain_search():
    x, labels = clusters()
    queries = list(range(0, 80, 4))
    plain, _ = simulate(x, labels, rocchio_strategy(0.0, 0.0), queries, rounds=1)
    steered, idle = simulate(x, labels, rocchio_strategy(1.0, 1.0), queries, rounds=2)
    best, _ = simulate(x, labels, BEST_SCORE, queries, rounds=2)
    by_hand = np.mean([np.mean(labels[top_results(x @ x[q], {q})] == labels[q]) for q in queries])
    assert plain[0] == steered[0] == best[0] == round(float(by_hand), 4)
    assert plain[1] <= plain[0] + 0.05  # weights of zero change nothing but the left-out judged images
    assert steered[1] > steered[0] + 0.05 and steered[2] > steered[0]
    assert idle == 0
