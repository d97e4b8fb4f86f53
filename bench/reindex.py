"""Reindex wall time, peak RSS and peak scratch disk at 10^4 and 10^5 vectors (10^6 when asked), and from their
scaling the largest collection one reindex handles inside Lambda's limits (15 minutes, 10,240 MB of memory,
10,240 MB of /tmp) at 2 and 6 vCPUs.

    python -m bench.reindex [--quick] [--sizes 10000,100000] [--n-jobs 1,2]

Per size, a FolderStore deployment: the demo build published, then SYNTHETIC clustered 512-d unit vectors
(bench/_synthetic.py) written as embedding shards of 64 images, as ingest writes them. Two real
``lambda_fn.collection.reindex.reindex()`` runs follow, each in a fresh process whose VmHWM is its peak RSS:
- backfill: every shard is new (what follows a Distributed Map over the whole collection);
- incremental: the build the backfill published, plus one new shard (the scheduled run's usual case).
While a run works, its scratch folder is measured every 0.2 s (the peak is what /tmp must hold).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench._setup import RESULTS, WORK, artifacts
from bench.harness import (
    add_max_wait_argument,
    describe_machine,
    machine_busy_s,
    machine_info,
    process_cpu_s,
    wait_for_quiet,
    write_result,
)
from lambda_fn.contract.lambda_costs import (
    LAMBDA_CONFIGS,
    LAMBDA_MAX_EPHEMERAL_STORAGE_MB,
    LAMBDA_MAX_MEMORY_MB,
    LAMBDA_MAX_TIMEOUT_S,
    amdahl_serial_fraction,
    amdahl_time,
    lambda_cpus,
)
from support.service import REPO_ROOT, proc_status_kib

SHARD_IMAGES = 64
BASE_TIME = 1_800_000_000  # event times of the synthetic shards (epoch seconds)
DEMO_IMAGES = 240  # the demo build every deployment starts from
# ASSUMED S3 rates for what a FolderStore run does not pay (docs/scaling.md says why these values):
S3_REQUEST_S = 0.05  # one small GET from Lambda
S3_MB_S = 100.0  # one large transfer (boto3 managed, a few parts in parallel)


def fit_nlogn(ns: list[float], ts: list[float]) -> float:
    """Least-squares ``c`` of t = c * n * log2(n) (a tree build: n items, log n levels)."""
    x = np.array([n * math.log2(n) for n in ns])
    return float(x @ np.array(ts) / (x @ x))


def fit_linear(ns: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b * n; with one point, the line through it and the origin."""
    if len(ns) == 1:
        return 0.0, ys[0] / ns[0]
    b, a = np.polyfit(np.array(ns, float), np.array(ys, float), 1)
    return float(a), float(b)


def largest_n(predict, limit: float, lo: int = 1_000, hi: int = 10**9) -> int:
    """The largest n (to 3 significant digits) with ``predict(n) <= limit``; ``predict`` must grow with n."""
    if predict(lo) > limit:
        return 0
    if predict(hi) <= limit:
        return hi
    while hi / lo > 1.001:
        mid = int(math.sqrt(lo * hi))
        lo, hi = (mid, hi) if predict(mid) <= limit else (lo, mid)
    return int(float(f"{lo:.3g}"))


def deployment(n: int, seed: int = 0) -> Path:
    """A fresh FolderStore deployment: the demo build, then ``n`` synthetic vectors as shards of 64."""
    from bench._synthetic import make_clustered
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
    from lambda_fn.contract.shards import EventOrder, shard_key
    from lambda_fn.storage.publish import publish_build
    from lambda_fn.storage.store import FolderStore

    root = WORK / f"reindex-{n}"
    shutil.rmtree(root, ignore_errors=True)
    store = FolderStore(root / "store")
    build = artifacts()
    manifest = Manifest.read(build / MANIFEST_FILE)
    publish_build(store, build, manifest)
    vectors = make_clustered(n, manifest.dim, seed=seed)
    for start in range(0, n, SHARD_IMAGES):
        shard = new_shard(vectors[start : start + SHARD_IMAGES], start, EventOrder.at(BASE_TIME + start // 64))
        store.put(shard_key(manifest.model_sha256, shard.digest()), shard.to_bytes())
    del vectors
    return root


def new_shard(vectors: np.ndarray, first: int, order):
    from lambda_fn.contract.shards import Added, Shard

    added = [Added(f"synthetic/{first + i:08d}.jpg", None, f"{first + i:032x}", order) for i in range(len(vectors))]
    return Shard(added=added, vectors=vectors)


def add_one_shard(root: Path, n: int, seed: int = 1) -> None:
    """One more ingest batch after the backfill's build: the incremental reindex merges only this."""
    from bench._synthetic import make_clustered
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
    from lambda_fn.contract.shards import EventOrder, shard_key
    from lambda_fn.storage.store import FolderStore

    store = FolderStore(root / "store")
    manifest = Manifest.model_validate_json(store.get(MANIFEST_FILE)[0])
    shard = new_shard(make_clustered(SHARD_IMAGES, manifest.dim, seed=seed), n, EventOrder.at(BASE_TIME + 10**7))
    store.put(shard_key(manifest.model_sha256, shard.digest()), shard.to_bytes())


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temporary file renamed meanwhile
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def run_child(root: Path, n_jobs: int) -> dict:
    """One reindex in a fresh process; its report, wall time, peak RSS and the scratch folder's peak size."""
    work = root / "work"
    work.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "bench.reindex", "--child", str(root), "--n-jobs", str(n_jobs)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    peak_disk, stop, timeline = [0], threading.Event(), []
    started = time.perf_counter()

    def watch():
        while not stop.wait(0.2):
            disk = folder_bytes(work)
            peak_disk[0] = max(peak_disk[0], disk)
            with contextlib.suppress(OSError, KeyError):  # the child may just have ended
                rss = proc_status_kib(proc.pid)["VmRSS"]
                timeline.append((round(time.perf_counter() - started, 1), rss // 1024, disk // 2**20))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"reindex child failed with exit {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_scratch_mib"] = peak_disk[0] / 2**20
    # (seconds since start, RSS MiB, scratch MiB), one sample a second: where in the run the peaks fall
    result["timeline"] = timeline[::5]
    if timeline:
        result["peak_rss_sampled_at_s"] = max(timeline, key=lambda x: x[1])[0]
    return result


def run_reindex_child(root: Path, n_jobs: int) -> int:
    """The child (``--child``): import, reindex once, print one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from lambda_fn.collection.reindex import reindex
    from lambda_fn.storage.store import FolderStore

    rss_imported = proc_status_kib()["VmRSS"] / 1024
    busy0, cpu0 = machine_busy_s(), process_cpu_s()
    t0 = time.perf_counter()
    report = reindex(FolderStore(root / "store"), root / "work", lease_s=LAMBDA_MAX_TIMEOUT_S, n_jobs=n_jobs)
    wall = time.perf_counter() - t0
    own_cpu = process_cpu_s() - cpu0
    others = max(0.0, machine_busy_s() - busy0 - own_cpu) / wall
    status = proc_status_kib()
    assert report.status == "published", report.as_dict()
    out = {
        "report": report.as_dict(),
        "wall_s": wall,
        "rss_after_imports_mib": rss_imported,
        "peak_rss_mib": status["VmHWM"] / 1024,
        "own_cpu_s": own_cpu,
        "others_cpus": others,  # CPUs the rest of the machine used meanwhile: the contention this run met
    }
    print(json.dumps(out), flush=True)
    return 0


def build_files(root: Path) -> dict[str, int]:
    """Sizes of the live build's own files (index, keys, collection; the model is the live one's) in bytes."""
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest

    manifest = Manifest.model_validate_json((root / "store" / MANIFEST_FILE).read_bytes())
    files = manifest.files(with_collection=True)
    return {role: (root / "store" / name).stat().st_size for role, name, _ in files if role != "model"}


def phases(result: dict) -> dict[str, float]:
    timings = result["report"]["timings"]
    out = {k: timings.get(k, 0.0) for k in ("merge_s", "build_s", "publish_s")}
    out["other_s"] = result["wall_s"] - sum(out.values())
    out["wall_s"] = result["wall_s"]
    return out


def bench_size(n: int, jobs: list[int], scenarios: list[str], max_wait: float) -> dict:
    t0 = time.perf_counter()
    root = deployment(n)
    setup_s = time.perf_counter() - t0
    runs: dict[str, dict] = {}
    for j in jobs:  # the backfill publishes the build the incremental run starts from
        if j != jobs[0]:
            root = deployment(n)
        gate = wait_for_quiet(max_wait_s=max_wait)
        runs[f"backfill/j{j}"] = {**run_child(root, j), "loadavg_before": os.getloadavg(), "quiet_gate": gate}
        if "incremental" in scenarios:
            add_one_shard(root, n)
            gate = wait_for_quiet(max_wait_s=max_wait)
            runs[f"incremental/j{j}"] = {**run_child(root, j), "loadavg_before": os.getloadavg(), "quiet_gate": gate}
    files = build_files(root)
    shutil.rmtree(root, ignore_errors=True)
    for name, r in runs.items():
        p = phases(r)
        print(
            f"  n={n:>9,} {name:<15} wall {p['wall_s']:7.1f} s (merge {p['merge_s']:6.1f}, build {p['build_s']:6.1f}, "
            f"publish {p['publish_s']:5.1f}, other {p['other_s']:5.1f}) peak RSS {r['peak_rss_mib']:7.0f} MiB "
            f"(after imports {r['rss_after_imports_mib']:.0f}), scratch {r['peak_scratch_mib']:6.0f} MiB, "
            f"others used {r['others_cpus']:.2f} CPUs",
            flush=True,
        )
    return {"n": n, "setup_s": setup_s, "build_files_bytes": files, "runs": runs}


def s3_seconds(n: float, scenario: str, bytes_per_vector: dict[str, float]) -> float:
    """What this FolderStore run did not pay and S3 would: shard GETs (backfill: n / 64 of them on
    SHARD_DOWNLOADS threads; incremental: one, plus the live collection) and uploading the build.
    ASSUMED rates (not measured here): S3_REQUEST_S per small GET, S3_MB_S per large transfer."""
    from lambda_fn.collection.reindex import SHARD_DOWNLOADS

    collection_mb = n * bytes_per_vector["collection"] / 2**20
    upload_mb = n * sum(bytes_per_vector.values()) / 2**20
    if scenario == "backfill":
        gets = math.ceil(n / SHARD_IMAGES / SHARD_DOWNLOADS) * S3_REQUEST_S
    else:
        gets = S3_REQUEST_S + collection_mb / S3_MB_S
    return gets + upload_mb / S3_MB_S


def predict_reindex_s(fit: dict, n: float, cpus: float, *, with_s3: bool = True) -> float:
    """Reindex wall time at ``n`` vectors and ``cpus`` CPUs from a ``scaling()`` fit: the build by n log n on
    this machine, scaled by Amdahl's law when a serial fraction was measured; the rest linear in n."""
    t_here = fit["build_s_per_nlog2n"] * n * math.log2(n)  # at fit["threads"] threads on this machine
    serial = fit["build_serial_fraction"]
    if serial is None:
        build = t_here
    else:
        t1 = t_here / (serial + (1 - serial) / fit["threads"])
        build = amdahl_time(t1, serial, cpus)
    total = build + fit["rest_s"]["a"] + fit["rest_s"]["b_per_vector"] * n
    if with_s3:
        total += s3_seconds(n, fit["scenario"], fit["build_file_bytes_per_vector"])
    return total


def scaling(sizes: list[dict], scenario: str, jobs: list[int]) -> dict | None:
    """Fits over the measured sizes (build ~ n log n, the rest ~ n) and the largest n within Lambda's limits."""
    j_hi = max(jobs)
    points = [
        (s["n"] + DEMO_IMAGES, s["runs"][f"{scenario}/j{j_hi}"]) for s in sizes if f"{scenario}/j{j_hi}" in s["runs"]
    ]
    if not points:
        return None
    ns = [n for n, _ in points]
    rest = fit_linear(ns, [phases(r)["wall_s"] - phases(r)["build_s"] for _, r in points])
    rss = fit_linear(ns, [r["peak_rss_mib"] for _, r in points])
    disk = fit_linear(ns, [r["peak_scratch_mib"] for _, r in points])
    serial = None
    pairs = [
        (phases(s["runs"][f"{scenario}/j1"])["build_s"], phases(s["runs"][f"{scenario}/j2"])["build_s"])
        for s in sizes
        if f"{scenario}/j1" in s["runs"] and f"{scenario}/j2" in s["runs"]
    ]
    if pairs and j_hi == 2:
        t1, t2 = pairs[-1]  # the largest size: the least noise from fixed costs
        serial = amdahl_serial_fraction(t1, t2)
    largest = sizes[-1]
    fit = {
        "scenario": scenario,
        "fitted_on": ns,
        "threads": j_hi,
        "build_s_per_nlog2n": fit_nlogn(ns, [phases(r)["build_s"] for _, r in points]),
        "rest_s": {"a": rest[0], "b_per_vector": rest[1]},
        "peak_rss_mib": {"a": rss[0], "b_per_vector": rss[1]},
        "peak_scratch_mib": {"a": disk[0], "b_per_vector": disk[1]},
        "build_serial_fraction": serial,
        "build_file_bytes_per_vector": {
            k: v / (largest["n"] + DEMO_IMAGES) for k, v in largest["build_files_bytes"].items()
        },
        "assumed_s3": {"request_s": S3_REQUEST_S, "mb_per_s": S3_MB_S},
        "largest_n": {},
    }
    by_disk = largest_n(lambda n: disk[0] + disk[1] * n, LAMBDA_MAX_EPHEMERAL_STORAGE_MB)
    for memory_mb, threads in LAMBDA_CONFIGS.items():
        cpus = lambda_cpus(memory_mb, threads)
        fit["largest_n"][str(memory_mb)] = limits = {
            "cpus": cpus,
            "by_time_here": largest_n(
                lambda n, c=cpus: predict_reindex_s(fit, n, c, with_s3=False), LAMBDA_MAX_TIMEOUT_S
            ),
            "by_time_with_s3": largest_n(lambda n, c=cpus: predict_reindex_s(fit, n, c), LAMBDA_MAX_TIMEOUT_S),
            "by_memory": largest_n(lambda n: rss[0] + rss[1] * n, memory_mb),
            "by_tmp": by_disk,
        }
        limits["limit"] = min(limits["by_time_with_s3"], limits["by_memory"], limits["by_tmp"])
    for n in (10**6, 10**7):
        fit[f"predicted_{n:.0e}"] = {
            str(m): {
                "wall_s_here": predict_reindex_s(fit, n, lambda_cpus(m, t), with_s3=False),
                "wall_s_with_s3": predict_reindex_s(fit, n, lambda_cpus(m, t)),
                "peak_rss_mib": rss[0] + rss[1] * n,
                "peak_scratch_mib": disk[0] + disk[1] * n,
            }
            for m, t in LAMBDA_CONFIGS.items()
        }
    return fit


def main(args: argparse.Namespace) -> dict:
    if args.quick:
        args.sizes, args.n_jobs, args.scenarios, args.max_wait = "2000,10000", "2", "backfill", 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    jobs = [int(j) for j in args.n_jobs.split(",")]
    scenarios = args.scenarios.split(",")
    info = machine_info()
    print(f"{describe_machine(info)}; SYNTHETIC 512-d vectors")
    started = time.perf_counter()
    if args.fit:  # measure nothing: fit over the sizes earlier runs measured
        results = sorted((s for path in args.fit for s in json.loads(path.read_text())["sizes"]), key=lambda s: s["n"])
        jobs = sorted({int(k.split("/j")[1]) for s in results for k in s["runs"]})
        scenarios = sorted({k.split("/")[0] for s in results for k in s["runs"]})
        info["fitted_from"] = [str(p) for p in args.fit]
    else:
        results = [bench_size(n, jobs, scenarios, args.max_wait) for n in sizes]
    fits = {s: scaling(results, s, jobs) for s in scenarios}
    print_fits(fits)
    report = {
        "what": "lambda_fn.collection.reindex.reindex() over a FolderStore: demo build + SYNTHETIC vectors, "
        "in shards of 64",
        "machine": info,
        "loadavg_after": os.getloadavg(),
        "shard_images": SHARD_IMAGES,
        "sizes": results,
        "scaling": fits,
        "limits": {
            "timeout_s": LAMBDA_MAX_TIMEOUT_S,
            "memory_mb": LAMBDA_MAX_MEMORY_MB,
            "tmp_mb": LAMBDA_MAX_EPHEMERAL_STORAGE_MB,
        },
        "wall_s": time.perf_counter() - started,
    }
    write_result(report, args.out)
    return report


def print_fits(fits: dict) -> None:
    for s, fit in fits.items():
        if fit is None:
            continue
        print(
            f"\n{s}: build {fit['build_s_per_nlog2n']:.3g} s * n log2 n; peak RSS {fit['peak_rss_mib']['a']:.0f} + "
            f"{fit['peak_rss_mib']['b_per_vector'] * 1e6:.0f} MiB per 10^6; scratch "
            f"{fit['peak_scratch_mib']['b_per_vector'] * 1e6:.0f} MiB per 10^6"
        )
        for m, lim in fit["largest_n"].items():
            print(
                f"  {m} MB ({lim['cpus']:.2f} CPUs): largest n {lim['limit']:,} (time {lim['by_time_with_s3']:,} "
                f"with S3 assumed, {lim['by_time_here']:,} without; memory {lim['by_memory']:,}; "
                f"/tmp {lim['by_tmp']:,})"
            )


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="synthetic vectors, comma-separated (default: %(default)s)")
    p.add_argument("--n-jobs", default="1,2", help="Annoy build threads to compare (default: %(default)s)")
    p.add_argument("--scenarios", default="backfill,incremental", help="runs per size (default: %(default)s)")
    add_max_wait_argument(p, "each run")
    p.add_argument("--quick", action="store_true", help="smoke run: 2,000 and 10^4, 2 threads, backfill only")
    p.add_argument(
        "--fit",
        type=Path,
        nargs="+",
        help="measure nothing: fit over the sizes in these result files (e.g. reindex.json reindex_1e6.json)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "reindex.json", help="JSON results")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    cli = get_args_parser().parse_args()
    if cli.child:
        sys.exit(run_reindex_child(cli.child, int(cli.n_jobs)))
    main(cli)
