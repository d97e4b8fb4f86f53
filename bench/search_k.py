"""What a build's own search_k measurement (``lambda_fn.vision.indexing.tune_search_k``, run by every reindex) picks
and costs as the collection grows, on SYNTHETIC clustered 512-d vectors indexed as a build indexes them.

    python -m bench.search_k [--sizes 100000,1000000]

Per size: the Annoy build (default trees and seed), then the measurement from the default search_k up the
ladder, timed; then, as a check the measurement does not see, recall@10 and query time of the chosen
search_k on held-out queries (vectors not in the index, like a user's photo).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench._setup import RESULTS
from bench._synthetic import make_clustered
from bench.harness import percentile, write_result
from lambda_fn.vision.indexing import (
    DEFAULT_N_TREES,
    DEFAULT_SEARCH_K,
    DEFAULT_SEED,
    METRIC,
    RECALL_TARGET,
    build_annoy,
    exact_top_k,
    recall_at_k,
    tune_search_k,
)

HELD_OUT = 200


def measure(n: int, work: Path) -> dict:
    from annoy import AnnoyIndex

    data = make_clustered(n + HELD_OUT, 512, seed=0)
    base, held_out = data[:n], data[n:]
    path = work / f"index-{n}.ann"
    t0 = time.perf_counter()
    build_annoy(base, path, n_trees=DEFAULT_N_TREES, seed=DEFAULT_SEED)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    search_k, recall = tune_search_k(path, base, floor=DEFAULT_SEARCH_K)
    tune_s = time.perf_counter() - t0

    truth = exact_top_k(base, held_out, 10)
    index = AnnoyIndex(base.shape[1], METRIC)
    index.load(str(path))
    check = {}
    for k in sorted({DEFAULT_SEARCH_K, search_k}):
        found, times = [], []
        for q in held_out:
            t0 = time.perf_counter()
            found.append(index.get_nns_by_vector(q.tolist(), 10, search_k=k))
            times.append((time.perf_counter() - t0) * 1000)
        check[str(k)] = {"recall@10": recall_at_k(found, truth), "p50_ms": percentile(times, 50)}
    index.unload()
    path.unlink()
    row = {
        "n": n,
        "build_s": round(build_s, 1),
        "tune_s": round(tune_s, 2),
        "chosen_search_k": search_k,
        "measured_recall@10": round(recall, 4),
        "held_out": check,
    }
    print(
        f"{n:>9,}: build {build_s:.0f} s; measurement {tune_s:.1f} s picks search_k {search_k:,} "
        f"(recall@10 {recall:.3f} on sampled members); held-out: "
        + ", ".join(f"{k}: recall {v['recall@10']:.3f} p50 {v['p50_ms']:.1f} ms" for k, v in check.items())
    )
    return row


def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="search-k-", dir=args.work))
    try:
        rows = [measure(int(n), work) for n in args.sizes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "what": "lambda_fn.vision.indexing.tune_search_k on SYNTHETIC clustered 512-d vectors (bench/_synthetic.py)",
        "target_recall@10": RECALL_TARGET,
        "sizes": rows,
    }
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="vectors, comma-separated (default: 1e5,1e6)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for the index (default: the system's)")
    p.add_argument("--out", type=Path, default=RESULTS / "search_k.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
