"""Annoy vs exact search on SYNTHETIC 512-d unit vectors: recall@k, single-query latency, build and size.

Used to choose the index defaults (`n_trees`, fixed at build time, and `search_k`, chosen per query).

    nice -n 10 .venv/bin/python -m bench.ann                                  # 1e4 and 1e5, full grid
    nice -n 10 .venv/bin/python -m bench.ann --sizes 1000000 --configs 50:20000 \
        --out bench/results/ann_1e6.json                                      # 1e6, chosen config only
"""

from __future__ import annotations

import os

# BLAS sizes its thread pool when numpy is imported, so the pin has to precede the import. One thread
# matches a Lambda function at <= 1769 MB (one vCPU) and keeps the shared machine usable.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from annoy import AnnoyIndex  # noqa: E402

from bench._synthetic import exact_one, make_clustered  # noqa: E402
from bench.harness import percentile, write_result  # noqa: E402
from lambda_fn.vision.indexing import exact_top_k, recall_at_k  # noqa: E402

METRIC = "angular"  # the vectors are unit length, so angular distance ranks like cosine similarity
SEED = 42


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="index sizes, comma-separated (default: %(default)s)")
    p.add_argument("--dim", type=int, default=512, help="vector dimension (default: %(default)s)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries per size (default: %(default)s)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query, the k of recall@k (default: %(default)s)")
    p.add_argument("--n-trees", default="10,25,50,100", help="n_trees grid (default: %(default)s)")
    p.add_argument(
        "--search-k",
        default="-1,1000,2000,5000,10000,20000,50000",
        help="search_k grid; -1 is annoy's default; write --search-k=-1,... (default: %(default)s)",
    )
    p.add_argument(
        "--configs",
        default="",
        help="explicit n_trees:search_k pairs, e.g. 50:20000,100:10000; replaces both grids (default: none)",
    )
    p.add_argument("--n-jobs", type=int, default=1, help="annoy build threads (default: %(default)s)")
    p.add_argument(
        "--exact-queries", type=int, default=100, help="queries timed for the exact baseline (default: %(default)s)"
    )
    p.add_argument("--cluster-size", type=int, default=100, help="mean points per cluster (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="data seed; annoy always uses set_seed(42) (default: %(default)s)"
    )
    p.add_argument("--target-recall", type=float, default=0.98, help="recall@k to meet (default: %(default)s)")
    p.add_argument(
        "--recommend-at", type=int, default=100_000, help="size the recommendation is made at (default: %(default)s)"
    )
    p.add_argument("--tmp-dir", default=None, help="where index files are written (default: a fresh temp dir)")
    p.add_argument("--out", default="bench/results/ann.json", help="JSON results path (default: %(default)s)")
    return p


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_configs(args: argparse.Namespace) -> dict[int, list[int]]:
    """n_trees -> search_k values, from --configs if given, else the cross product of the grids."""
    if not args.configs:
        return {t: ints(args.search_k) for t in ints(args.n_trees)}
    plan: dict[int, list[int]] = {}
    for pair in args.configs.split(","):
        trees, search_k = (int(v) for v in pair.split(":"))
        plan.setdefault(trees, []).append(search_k)
    return plan


def machine_info(args: argparse.Namespace) -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "annoy_n_jobs": args.n_jobs,
        "niceness": os.nice(0),
        "annoy": version("annoy"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def time_queries(index: AnnoyIndex, queries: list[list[float]], k: int, search_k: int) -> tuple[list, np.ndarray]:
    """One get_nns_by_vector call per query, each timed alone; returns (results, latencies in ms)."""
    results, lat = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        results.append(index.get_nns_by_vector(q, k, search_k=search_k))
        lat[i] = time.perf_counter() - t0
    return results, lat * 1e3


def bench_size(n: int, args: argparse.Namespace, plan: dict[int, list[int]], tmp: Path) -> dict:
    t0 = time.perf_counter()
    data = make_clustered(n + args.queries, args.dim, cluster_size=args.cluster_size, seed=args.seed)
    queries, base = data[: args.queries], data[args.queries :]
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    truth, sims = exact_top_k(base, queries, args.k, with_similarities=True)
    truth_s = time.perf_counter() - t0
    exact_lat = []
    for q in queries[: args.exact_queries]:
        t0 = time.perf_counter()
        exact_one(base, q, args.k)
        exact_lat.append((time.perf_counter() - t0) * 1e3)
    out = {
        "n": n,
        "generate_s": gen_s,
        "ground_truth_s": truth_s,
        "nn_cosine": {f"top{r}_p{q}": percentile(sims[:, r - 1], q) for r in (1, args.k) for q in (5, 50, 95)},
        "exact": {
            "p50_ms": percentile(exact_lat, 50),
            "p95_ms": percentile(exact_lat, 95),
            "timed_queries": len(exact_lat),
        },
        "builds": [],
    }
    print(
        f"\n== n={n:,} (synthetic) | exact single query p50 {out['exact']['p50_ms']:.2f} ms, "
        f"p95 {out['exact']['p95_ms']:.2f} ms | NN cosine top1 p5/p50/p95 "
        f"{percentile(sims[:, 0], 5):.2f}/{percentile(sims[:, 0], 50):.2f}/{percentile(sims[:, 0], 95):.2f}, "
        f"top{args.k} p50 {percentile(sims[:, -1], 50):.2f}",
        flush=True,
    )
    qlists = queries.tolist()  # annoy converts its argument element by element; a list is the cheap form
    for n_trees, search_ks in plan.items():
        out["builds"].append(bench_index(base, qlists, truth, n_trees, search_ks, args, tmp))
    return out


def bench_index(base, qlists, truth, n_trees: int, search_ks: list[int], args, tmp: Path) -> dict:
    n, k = len(base), args.k
    path = tmp / f"{n}_{n_trees}.ann"
    index = AnnoyIndex(args.dim, METRIC)
    index.set_seed(SEED)
    t0 = time.perf_counter()
    for i, row in enumerate(base):
        index.add_item(i, row.tolist())
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.build(n_trees, n_jobs=args.n_jobs)
    build_s = time.perf_counter() - t0
    index.save(str(path))
    index.unload()
    size = path.stat().st_size

    index = AnnoyIndex(args.dim, METRIC)
    t0 = time.perf_counter()
    index.load(str(path))  # mmap, so this is cheap; pages fault in on the first queries
    load_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    index.get_nns_by_vector(qlists[0], k)
    first_query_ms = (time.perf_counter() - t0) * 1e3
    for q in qlists[:50]:  # warm the page cache before timing
        index.get_nns_by_vector(q, k, search_k=max(search_ks))

    rec = {
        "n_trees": n_trees,
        "add_s": add_s,
        "build_s": build_s,
        "index_bytes": size,
        "bytes_per_vector": size / n,
        "load_ms": load_ms,
        "first_query_ms": first_query_ms,
        "queries": [],
    }
    print(
        f"-- n_trees={n_trees}: add {add_s:.1f} s, build {build_s:.1f} s (n_jobs={args.n_jobs}), "
        f"file {size / 2**20:.0f} MiB ({size / n:.0f} B/vector), load {load_ms:.2f} ms",
        flush=True,
    )
    print(f"   {'search_k':>12} {'/(k*trees)':>10} {'recall@' + str(k):>10} {'p50 ms':>8} {'p95 ms':>8}")
    for search_k in search_ks:
        results, lat = time_queries(index, qlists, k, search_k)
        row = {
            "search_k": search_k,
            "effective_search_k": k * n_trees if search_k == -1 else search_k,
            "recall": recall_at_k(results, truth),
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
        }
        rec["queries"].append(row)
        label = f"-1 (={row['effective_search_k']})" if search_k == -1 else str(search_k)
        print(
            f"   {label:>12} {row['effective_search_k'] / (k * n_trees):>10.1f} {row['recall']:>10.3f} "
            f"{row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f}",
            flush=True,
        )
        if search_k == -1:
            row["default_check"] = check = default_check(index, qlists, results, k, n_trees)
            print(
                f"   search_k=-1 vs explicit, identical top-{k} lists over {check['queries']} queries: "
                f"k*n_trees {check['identical_to_k_times_n_trees']}, "
                f"n_items*n_trees {check['identical_to_n_items_times_n_trees']}"
            )
    index.unload()
    path.unlink()
    return rec


def default_check(index: AnnoyIndex, qlists, default_results, k: int, n_trees: int) -> dict:
    """What search_k=-1 means, measured: compare it with explicit k*n_trees and n_items*n_trees."""
    n_items = index.get_n_items()
    sample = qlists[:200]
    as_k = [index.get_nns_by_vector(q, k, search_k=k * n_trees) for q in sample]
    as_n = [index.get_nns_by_vector(q, k, search_k=n_items * n_trees) for q in sample]
    return {
        "queries": len(sample),
        "identical_to_k_times_n_trees": sum(a == b for a, b in zip(default_results, as_k, strict=False)),
        "identical_to_n_items_times_n_trees": sum(a == b for a, b in zip(default_results, as_n, strict=False)),
    }


def recommend(sizes: list[dict], args: argparse.Namespace) -> dict | None:
    """Per n_trees, the smallest search_k meeting the target at --recommend-at; then the fastest of those."""
    at = next((s for s in sizes if s["n"] == args.recommend_at), None)
    if at is None:
        return None
    options = []
    for build in at["builds"]:
        ok = [q for q in build["queries"] if q["recall"] >= args.target_recall]
        if ok:
            best = min(ok, key=lambda q: q["effective_search_k"])
            options.append(
                {
                    "n_trees": build["n_trees"],
                    "search_k": best["effective_search_k"],
                    "search_k_over_k_n_trees": best["effective_search_k"] / (args.k * build["n_trees"]),
                    "recall": best["recall"],
                    "p50_ms": best["p50_ms"],
                    "p95_ms": best["p95_ms"],
                    "bytes_per_vector": build["bytes_per_vector"],
                }
            )
    chosen = min(options, key=lambda o: (o["p50_ms"], o["n_trees"])) if options else None
    return {"at_n": args.recommend_at, "target_recall": args.target_recall, "options": options, "chosen": chosen}


def print_recommendation(rec: dict | None) -> None:
    if rec is None:
        return
    print(f"\n== cheapest search_k with recall@k >= {rec['target_recall']} at n={rec['at_n']:,} (synthetic)")
    print(
        f"   {'n_trees':>7} {'search_k':>9} {'/(k*trees)':>10} {'recall':>7} {'p50 ms':>7} {'p95 ms':>7} {'B/vec':>6}"
    )
    for o in rec["options"]:
        print(
            f"   {o['n_trees']:>7} {o['search_k']:>9} {o['search_k_over_k_n_trees']:>10.1f} {o['recall']:>7.3f} "
            f"{o['p50_ms']:>7.3f} {o['p95_ms']:>7.3f} {o['bytes_per_vector']:>6.0f}"
        )
    if rec["chosen"]:
        c = rec["chosen"]
        print(f"   fastest: n_trees={c['n_trees']}, search_k={c['search_k']} (p50 {c['p50_ms']:.3f} ms)")
    else:
        print("   no configuration met the target")


def main(args: argparse.Namespace) -> dict:
    info = machine_info(args)
    print(
        f"SYNTHETIC clustered {args.dim}-d unit vectors | {info['cpu_model']} | threads {info['threads']} | "
        f"annoy {info['annoy']} n_jobs={args.n_jobs} | metric {METRIC}, set_seed({SEED}) | nice {info['niceness']}",
        flush=True,
    )
    plan = parse_configs(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        sizes = [bench_size(n, args, plan, Path(tmp)) for n in ints(args.sizes)]
    rec = recommend(sizes, args)
    print_recommendation(rec)
    report = {
        "data": "SYNTHETIC clustered unit vectors (bench/_synthetic.py make_clustered), not image embeddings",
        "args": vars(args),
        "machine": info,
        "metric": METRIC,
        "annoy_seed": SEED,
        "sizes": sizes,
        "recommendation": rec,
        "wall_s": time.perf_counter() - started,
    }
    print(f"\nwall {report['wall_s']:.0f} s")
    write_result(report, args.out)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
