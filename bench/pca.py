"""PCA of the 512-d embeddings to 128/256 dimensions: effect on retrieval precision (demo model and set),
index size and Annoy query time (SYNTHETIC 10^5 vectors generated at each dimension).

    python -m bench.pca --artifacts artifacts --images data/sample
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._setup import RESULTS
from bench._synthetic import make_clustered
from bench.harness import percentile, write_result
from lambda_fn.vision.indexing import exact_top_k, recall_at_k
from training.evaluate import precision_at_k


def pca_project(x: np.ndarray, dim: int) -> np.ndarray:
    """Centre, project on the top ``dim`` principal axes, re-normalise (what a baked-in layer would do)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    y = centred @ vt[:dim].T
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def demo_precision(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    top = exact_top_k(vectors, vectors, k, list(range(len(vectors))))
    return precision_at_k(labels[top] == labels[:, None], k)


def annoy_at(dim: int, n: int, queries: int, search_k: int, n_trees: int = 50) -> dict:
    from annoy import AnnoyIndex

    data = make_clustered(n + queries, dim, seed=1)
    base, q = data[:n], data[n:]
    truth = exact_top_k(base, q, 10)
    index = AnnoyIndex(dim, "angular")
    index.set_seed(42)
    for i, v in enumerate(base):
        index.add_item(i, v.tolist())
    index.build(n_trees, n_jobs=-1)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(f"{tmp}/i.ann")
        size = Path(f"{tmp}/i.ann").stat().st_size
    found, times = [], []
    for v in q:
        t0 = time.perf_counter()
        found.append(index.get_nns_by_vector(v.tolist(), 10, search_k=search_k))
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "dim": dim,
        "recall@10": recall_at_k(found, truth),
        "p50_ms": percentile(times, 50),
        "bytes_per_vector": size / n,
    }


def main(args: argparse.Namespace) -> dict:
    from lambda_fn.contract.manifest import read_keys

    vectors = np.load(args.artifacts / "embeddings.npy")
    labels = np.array([e.label or "" for e in read_keys(args.artifacts / "keys.json")])
    report = {"demo_precision@10": {"512": demo_precision(vectors, labels)}, "annoy_synthetic": []}
    for dim in (256, 128):
        report["demo_precision@10"][str(dim)] = demo_precision(pca_project(vectors, dim), labels)
    for dim in (512, 256, 128):
        report["annoy_synthetic"].append(annoy_at(dim, args.n, args.queries, args.search_k))
    print(
        f"precision@10 on the demo set ({len(vectors)} images): "
        + ", ".join(f"{d}-d {p:.3f}" for d, p in report["demo_precision@10"].items())
    )
    print(f"Annoy, {args.n:,} SYNTHETIC vectors, 50 trees, search_k {args.search_k}:")
    for row in report["annoy_synthetic"]:
        print(
            f"  {row['dim']:>3}-d: recall@10 {row['recall@10']:.3f}, p50 {row['p50_ms']:.2f} ms, "
            f"{row['bytes_per_vector']:.0f} B/vector"
        )
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="a build with embeddings.npy")
    p.add_argument("--n", type=int, default=100_000, help="synthetic vectors per dimension (default: 1e5)")
    p.add_argument("--queries", type=int, default=300, help="held-out queries (default: 300)")
    p.add_argument("--search-k", type=int, default=20_000, help="search_k (default: 20000)")
    p.add_argument("--out", type=Path, default=RESULTS / "pca.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
