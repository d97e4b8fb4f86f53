"""Filtered search (``label=``) on SYNTHETIC 512-d vectors: recall@k against exact filtered search, and the
cost per query, for labels from common to rare, by the service's policy and by each strategy alone.

    nice -n 10 .venv/bin/python -m bench.filter                  # 10^5 vectors, ~10 minutes here

Labels take shares from 30% to 0.03% of the collection, assigned two ways: **independent** of the vectors
(a label is spread over the whole space) and **regional** (a label is one region of the space, as real
classes are; most queries come from elsewhere, the hard case for oversampling). The strategies:

- ``policy``: what ``lambda_fn.vision.labels.LabelIndex.search`` does (oversample, retry, scan when rare);
- ``oversample``: the same without the scan shortcuts for rare labels (oversampling up to the whole index);
- ``scan``: always the exact scan over the label's vectors, read in place from the memory-mapped index
  file as the service does (``first``: the first query, whose pages are not yet in memory).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy: one thread, like one request

import argparse  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402
from annoy import AnnoyIndex  # noqa: E402

from bench._setup import RESULTS  # noqa: E402
from bench._synthetic import make_clustered  # noqa: E402
from bench.harness import percentile, write_result  # noqa: E402
from lambda_fn.contract.manifest import KeyEntry  # noqa: E402
from lambda_fn.vision import labels as label_search  # noqa: E402
from lambda_fn.vision.labels import LabelIndex, item_vectors  # noqa: E402

SHARES = (0.30, 0.10, 0.03, 0.01, 0.003, 0.001, 0.0003)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="collection size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=512, help="vector dimension (default: %(default)s)")
    p.add_argument("--queries", type=int, default=50, help="held-out queries per label (default: %(default)s)")
    p.add_argument(
        "--slow-queries", type=int, default=20, help="queries for the slow 'oversample' strategy (default: %(default)s)"
    )
    p.add_argument("--k", type=int, default=10, help="results per query (default: %(default)s)")
    p.add_argument("--n-trees", type=int, default=50, help="Annoy trees, the service default (default: %(default)s)")
    p.add_argument("--search-k", type=int, default=20_000, help="the service's search_k (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS / "filter.json"), help="JSON results (default: %(default)s)")
    return p


def assign(vectors: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    """A label per vector: ``l<share>`` for each share in SHARES, ``rest`` for the remainder."""
    n = len(vectors)
    names = np.array(["rest"] * n, dtype=object)
    # regional: slices along a random direction, so each label is one region of the space
    direction = rng.standard_normal(vectors.shape[1])
    order = rng.permutation(n) if how == "independent" else np.argsort(vectors @ direction)
    start = 0
    for share in SHARES:
        size = max(1, round(share * n))
        names[order[start : start + size]] = f"l{share:g}"
        start += size
    return names


@contextmanager
def strategy(name: str):
    saved = label_search.MAX_CANDIDATES, label_search.SCAN_MAX_IMAGES
    if name == "oversample":
        label_search.MAX_CANDIDATES, label_search.SCAN_MAX_IMAGES = math.inf, 0
    elif name == "scan":
        label_search.MAX_CANDIDATES, label_search.SCAN_MAX_IMAGES = -1, math.inf
    try:
        yield
    finally:
        label_search.MAX_CANDIDATES, label_search.SCAN_MAX_IMAGES = saved


class Counting:
    """The Annoy index, counting get_nns_by_vector calls and the neighbours asked for."""

    def __init__(self, index: AnnoyIndex):
        self.index, self.calls, self.asked = index, 0, 0

    def get_nns_by_vector(self, vector, n, **kwargs):
        self.calls += 1
        self.asked += n
        return self.index.get_nns_by_vector(vector, n, **kwargs)

    def get_item_vector(self, i):
        return self.index.get_item_vector(i)


def run(base, queries, names, index, vectors, label, how, args) -> list[dict]:
    ids = np.flatnonzero(names == label)
    sub = base[ids]
    rows = []
    truth = []
    exact_ms = []
    for q in queries:
        t0 = time.perf_counter()
        s = sub @ q
        top = np.argpartition(-s, min(args.k, len(s)) - 1)[: args.k]
        truth.append(set(ids[top].tolist()))
        exact_ms.append((time.perf_counter() - t0) * 1000)
    for name in ("policy", "oversample", "scan"):
        counting = Counting(index)
        keys = [KeyEntry(str(i), lab) for i, lab in enumerate(names)]
        labelled = LabelIndex(keys, counting, args.n_trees, vectors=vectors)
        times, recalls = [], []
        asked = queries if name != "oversample" else queries[: args.slow_queries]
        with strategy(name):
            for q, want in zip(asked, truth, strict=False):
                t0 = time.perf_counter()
                found = labelled.search(q, args.k, [label], search_k=args.search_k)
                times.append((time.perf_counter() - t0) * 1000)
                recalls.append(len({i for i, _ in found} & want) / min(args.k, len(ids)))
        rows.append(
            {
                "labels": how,
                "label": label,
                "share": float(len(ids) / len(base)),
                "images": len(ids),
                "strategy": name,
                "recall@k": float(np.mean(recalls)),
                "first_ms": times[0],
                "p50_ms": percentile(times[1:], 50),
                "p95_ms": percentile(times[1:], 95),
                "queries": len(asked),
                "annoy_calls_per_query": counting.calls / len(asked),
                "neighbours_asked_per_query": counting.asked / len(asked),
                "exact_numpy_p50_ms": percentile(exact_ms, 50),
            }
        )
        r = rows[-1]
        print(
            f"  {how:<11} {label:<8} {len(ids):>6} {name:<10} recall {r['recall@k']:.3f}  "
            f"p50 {r['p50_ms']:7.2f} ms  p95 {r['p95_ms']:7.2f} ms  first {r['first_ms']:7.1f} ms  "
            f"annoy calls {r['annoy_calls_per_query']:.2f}, asked {r['neighbours_asked_per_query']:.0f}",
            flush=True,
        )
    return rows


def main(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    data = make_clustered(args.n + args.queries, args.dim, seed=args.seed)
    queries, base = data[: args.queries], data[args.queries :]
    t0 = time.perf_counter()
    index = AnnoyIndex(args.dim, "angular")
    index.set_seed(42)
    for i, v in enumerate(base):
        index.add_item(i, v.tolist())
    index.build(args.n_trees, n_jobs=1)
    print(f"{args.n:,} synthetic vectors, {args.n_trees} trees built in {time.perf_counter() - t0:.0f} s", flush=True)
    tmp = tempfile.TemporaryDirectory()
    path = f"{tmp.name}/index.ann"
    index.save(path)  # loaded back memory-mapped, as the service has it
    index = AnnoyIndex(args.dim, "angular")
    index.load(path)
    vectors = item_vectors(path, index, args.dim)
    assert vectors is not None, "the index file's layout was not recognised"
    plain = []
    for q in queries:
        t0 = time.perf_counter()
        index.get_nns_by_vector(q.tolist(), args.k, search_k=args.search_k)
        plain.append((time.perf_counter() - t0) * 1000)
    print(f"unfiltered search p50 {percentile(plain, 50):.2f} ms", flush=True)
    rows = []
    for how in ("independent", "regional"):
        names = assign(base, how, rng)
        for share in SHARES:
            rows += run(base, queries, names, index, vectors, f"l{share:g}", how, args)
    report = {
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "n_trees": args.n_trees,
        "search_k": args.search_k,
        "policy": {
            "OVERSAMPLE": label_search.OVERSAMPLE,
            "GROWTH": label_search.GROWTH,
            "TRIES": label_search.TRIES,
            "MAX_CANDIDATES": label_search.MAX_CANDIDATES,
            "SCAN_MAX_IMAGES": label_search.SCAN_MAX_IMAGES,
            "CACHE_BYTES": label_search.CACHE_BYTES,
        },
        "unfiltered_p50_ms": percentile(plain, 50),
        "rows": rows,
    }
    write_result(report, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
