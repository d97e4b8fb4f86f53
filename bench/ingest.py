"""Ingest throughput per function invocation: the real ``lambda_fn.collection.ingest.ingest()`` over a FolderStore of
512x384 JPEGs, the demo model in fp32 and int8, batches (changes per invocation) of 32 and 64, torch at 1 and
2 threads, interleaved in one run. Reports images/s per invocation, the split download / decode / embed /
write, and the peak RSS of each invocation; then estimates 6 threads (a 10,240 MB function) from the 1- and
2-thread embed times (Amdahl's law), and what a Step Functions Distributed Map backfill costs from that.

    python -m bench.ingest [--quick] [--rounds 3]

Each model runs in its own worker process (``--worker``), loaded the way the ingest function loads it
(``lambda_fn.vision.models.target_models`` from a published build), so one model's memory never counts for the
other. The parent sends one invocation at a time to each worker in turn.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench._setup import RESULTS, WORK, artifacts
from bench.harness import (
    add_max_wait_argument,
    describe_machine,
    machine_busy_s,
    machine_info,
    percentile,
    process_cpu_s,
    wait_for_quiet,
    write_result,
)
from bench.reindex import predict_reindex_s
from lambda_fn.contract.lambda_costs import (
    LAMBDA_CONFIGS,
    LAMBDA_MAX_MEMORY_MB,
    LAMBDA_MAX_TIMEOUT_S,
    Prices,
    amdahl_serial_fraction,
    amdahl_time,
    backfill_estimate,
    lambda_cpus,
)
from support.service import REPO_ROOT, proc_status_kib

PHOTO_SIZE = (512, 384)  # Food-101's photos are rescaled to a longest side of 512 px
PHOTOS = 128
# An invocation counts as quiet when the rest of this shared machine used less than this many CPUs meanwhile.
QUIET_CPUS = 0.3
PROBE_BATCH = 16  # images per probe forward: short enough to fit between other jobs' bursts


def photos(count: int = PHOTOS) -> Path:
    """``count`` synthetic dish photos at PHOTO_SIZE as JPEGs (quality 90) under ``<label>/<n>.jpg``."""
    from training.sample_data import DISHES, render

    root = WORK / f"ingest-photos-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-{count}"
    done = root / ".complete"
    if done.is_file():
        return root
    dishes = list(DISHES)
    for i in range(count):
        dish = dishes[i % len(dishes)]
        buf = io.BytesIO()
        render(dish, random.Random(1000 + i), *PHOTO_SIZE).save(buf, "JPEG", quality=90)
        path = root / dish / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    done.touch()
    return root


def deployment(kind: str) -> Path:
    """A FolderStore deployment with the demo build of ``kind`` (fp32 or int8) published in it."""
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
    from lambda_fn.storage.publish import publish_build
    from lambda_fn.storage.store import FolderStore

    build = artifacts(int8=kind == "int8")
    root = WORK / f"ingest-deploy-{build.name}"  # a new export version gets a new deployment
    if not (root / MANIFEST_FILE).is_file():
        publish_build(FolderStore(root), build, Manifest.read(build / MANIFEST_FILE))
    return root


class Worker:
    """The ingest function's container: loads its model once, then runs one invocation per request line."""

    def __init__(self, kind: str, photos_root: Path):
        self.kind = kind
        cmd = [sys.executable, "-m", "bench.ingest", "--worker", kind, "--photos", str(photos_root)]
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker ended (exit {self.proc.wait()})")
        return json.loads(line)

    def invoke(self, batch: int, threads: int, seq: int) -> dict:
        self.proc.stdin.write(json.dumps({"batch": batch, "threads": threads, "seq": seq}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def probe(self, threads: int, batch: int) -> dict:
        self.proc.stdin.write(json.dumps({"probe": True, "threads": threads, "batch": batch}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_worker(kind: str, photos_root: Path) -> int:
    """The worker's loop (``--worker``): JSON requests on stdin, one JSON line per invocation on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    import lambda_fn.collection.ingest as ingest_module
    from lambda_fn.collection.ingest import Change, ingest_with_settings
    from lambda_fn.contract.config import Settings
    from lambda_fn.contract.shards import EventOrder
    from lambda_fn.storage.store import FolderStore
    from lambda_fn.vision.models import target_models

    torch.set_num_interop_threads(1)
    settings = Settings(artifacts_uri=str(deployment(kind)), cache_dir=WORK / f"ingest-cache-{kind}")
    timer = PhaseTimer()
    images = TimedStore(FolderStore(photos_root), timer, "download")
    store = TimedStore(FolderStore(deployment(kind)), timer, "write")
    t0 = time.perf_counter()
    models = target_models(store, settings.cache_dir)  # loaded once, as in a warm container
    load_s = time.perf_counter() - t0
    keys = sorted(p.relative_to(photos_root).as_posix() for p in photos_root.glob("*/*.jpg"))
    # Instrument the two CPU phases where ingest calls them; the calls themselves are unchanged.
    ingest_module._decode_all = timer.wrap("decode", ingest_module._decode_all, cpu=True)
    ingest_module._embed = timer.wrap("embed", ingest_module._embed, cpu=True)
    print(json.dumps({"model_load_s": load_s, "rss_mib": proc_status_kib()["VmRSS"] / 1024}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        torch.set_num_threads(req["threads"])
        if req.get("probe"):
            print(json.dumps(probe_forward(models[0], req["batch"])), flush=True)
            continue
        start = (req["seq"] * req["batch"]) % len(keys)
        chosen = [keys[(start + i) % len(keys)] for i in range(req["batch"])]
        # A new event time per invocation: a new shard name, so nothing is recognised as done already.
        when = EventOrder.at(1_800_000_000 + req["seq"])
        changes = [Change(str(i), "created", key, order=when) for i, key in enumerate(chosen)]
        timer.reset()
        busy0, cpu0 = machine_busy_s(), process_cpu_s()
        rss_before = proc_status_kib()["VmRSS"]
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) at the current RSS
        t0 = time.perf_counter()
        report = ingest_with_settings(changes, images=images, artifacts=store, settings=settings)
        total = time.perf_counter() - t0
        own_cpu, busy = process_cpu_s() - cpu0, machine_busy_s() - busy0
        status = proc_status_kib()
        assert report.embedded == len(chosen) and not report.failed, report.as_dict()
        phases = timer.summary()
        phases["other_s"] = total - sum(phases[k] for k in ("download_s", "decode_s", "embed_s", "write_s"))
        print(
            json.dumps(
                {
                    "images": report.embedded,
                    "seconds": total,
                    **phases,
                    "threads": torch.get_num_threads(),
                    "own_cpu_s": own_cpu,
                    # CPUs the rest of the machine used meanwhile: the contention this invocation met
                    "others_cpus": max(0.0, busy - own_cpu) / total,
                    "rss_before_mib": rss_before / 1024,
                    "peak_rss_mib": status["VmHWM"] / 1024,
                }
            ),
            flush=True,
        )
        for key in report.shards:
            store.inner.delete(key)
    return 0


def probe_forward(model, batch: int) -> dict:
    """One forward of ``batch`` ready images through the model's module, as ingest's ``_embed`` calls it:
    wall time, this process's CPU time, and the CPUs the rest of the machine used meanwhile."""
    import torch

    size = model.meta.crop_size
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    busy0, cpu0 = machine_busy_s(), process_cpu_s()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.module(images)
    wall = time.perf_counter() - t0
    own = process_cpu_s() - cpu0
    return {"wall_s": wall, "cpu_s": own, "others_cpus": max(0.0, machine_busy_s() - busy0 - own) / wall}


class PhaseTimer:
    """Wall time per phase. Downloads run on 8 threads, so their phase is first start to last end."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def add(self, phase: str, start: float, end: float) -> None:
        self.spans.setdefault(phase, []).append((start, end))

    def wrap(self, phase: str, fn, *, cpu: bool = False):
        """``fn`` timed as ``phase``; with ``cpu``, the process's CPU time in it is recorded too (as
        ``<phase>_cpu``): on a shared machine CPU time is the part of the work that waiting does not inflate."""

        def timed(*args, **kwargs):
            c0 = process_cpu_s() if cpu else 0.0
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                self.add(phase, t0, t1)
                if cpu:
                    self.add(f"{phase}_cpu", 0.0, process_cpu_s() - c0)

        return timed

    def summary(self) -> dict[str, float]:
        out = {}
        for phase in ("download", "decode", "embed", "write"):
            spans = self.spans.get(phase, [])
            if phase == "download":
                out["download_s"] = max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0
            else:
                out[f"{phase}_s"] = sum(e - s for s, e in spans)
        for phase in ("decode", "embed"):
            if f"{phase}_cpu" in self.spans:
                out[f"{phase}_cpu_s"] = sum(e - s for s, e in self.spans[f"{phase}_cpu"])
        return out


class TimedStore:
    """A Store that times reads (``get``) or writes (``put``) as ``phase``; everything else passes through."""

    def __init__(self, inner, timer: PhaseTimer, phase: str):
        self.inner, self.timer, self.phase = inner, timer, phase

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if (self.phase, name) in (("download", "get"), ("write", "put")):
            return self.timer.wrap(self.phase, attr)
        return attr


def summarise(runs: list[dict], quiet_cpus: float = QUIET_CPUS) -> dict:
    """Medians over an invocation's repeats (only the repeats that met little contention, when at least two
    did), and the largest peak RSS."""
    quiet = [r for r in runs if r["others_cpus"] < quiet_cpus]
    used = quiet if len(quiet) >= 2 else runs
    keys = (
        "seconds",
        "download_s",
        "decode_s",
        "embed_s",
        "embed_cpu_s",
        "decode_cpu_s",
        "write_s",
        "other_s",
        "own_cpu_s",
        "others_cpus",
    )
    out = {k: percentile([r[k] for r in used], 50) for k in keys}
    out["images"] = runs[0]["images"]
    out["images_per_s"] = out["images"] / out["seconds"]
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    out["repeats"], out["quiet_repeats"], out["medians_over"] = len(runs), len(quiet), len(used)
    return out


def thread_scaling(probes: list[dict], quiet_cpus: float = QUIET_CPUS) -> dict:
    """The forward's 1- and 2-thread times from interleaved probes: the fastest of each (the repetition that met
    the least contention), and Amdahl's serial fraction from them."""
    out = {}
    for t in (1, 2):
        mine = [p for p in probes if p["threads"] == t]
        quiet = [p for p in mine if p["others_cpus"] < quiet_cpus]
        out[f"t{t}"] = {
            "min_s": min(p["wall_s"] for p in mine),
            "median_s": percentile([p["wall_s"] for p in mine], 50),
            "quiet_min_s": min((p["wall_s"] for p in quiet), default=None),
            "quiet_reps": len(quiet),
            "reps": len(mine),
        }
    quiet = out["t1"]["quiet_min_s"] is not None and out["t2"]["quiet_min_s"] is not None
    key = "quiet_min_s" if quiet else "min_s"
    out["serial_fraction"] = amdahl_serial_fraction(out["t1"][key], out["t2"][key])
    out["from"] = "quiet repetitions" if quiet else "all repetitions (none of one thread count was quiet)"
    return out


def lambda_estimates(results: dict, batch: int, kind: str, scaling: dict | None) -> dict:
    """Per Lambda memory size, seconds per invocation: the embed's single-thread CPU time (what waiting for a
    CPU does not inflate) scaled by Amdahl's law with the probes' serial fraction to min(threads, memory /
    1,769 MB) CPUs; decode (a thread per CPU in ingest) by its CPU time over those CPUs; download, write and
    the rest as measured."""
    one = results.get(f"{kind}/b{batch}/t1")
    if not one or not scaling:
        return {}
    serial = scaling["serial_fraction"]
    fixed = one["download_s"] + one["write_s"] + one["other_s"]
    out = {
        "embed_serial_fraction": serial,
        "embed_1_thread_s": one["embed_cpu_s"],
        "decode_cpu_s": one["decode_cpu_s"],
        "other_phases_s": fixed,
    }
    for memory_mb, threads in LAMBDA_CONFIGS.items():
        cpus = lambda_cpus(memory_mb, threads)
        decode = one["decode_cpu_s"] / cpus
        seconds = fixed + decode + amdahl_time(one["embed_cpu_s"], serial, cpus)
        ideal = fixed + decode + amdahl_time(one["embed_cpu_s"], 0.0, cpus)  # the bound: every CPU fully used
        out[str(memory_mb)] = {
            "threads": threads,
            "cpus": cpus,
            "seconds": seconds,
            "images_per_s": batch / seconds,
            "seconds_perfect_scaling": ideal,
            "images_per_s_perfect_scaling": batch / ideal,
        }
    return out


def main(args: argparse.Namespace) -> dict:
    if args.quick:
        args.rounds, args.batches, args.threads, args.max_wait = 1, "32", "1,2", min(args.max_wait, 5.0)
        args.probe_reps = 3
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    kinds = args.models.split(",")
    info = {**machine_info(), "cpus_usable": len(os.sched_getaffinity(0))}
    print(describe_machine(info))
    root = photos()
    for kind in kinds:
        deployment(kind)
    workers = {kind: Worker(kind, root) for kind in kinds}
    configs = [(b, t) for b in batches for t in threads]
    runs: dict[str, list[dict]] = {}
    seq = 0
    try:
        for kind, w in workers.items():  # warm-up: the first forwards at each size pay for lazy init
            for b, t in configs:
                seq += 1
                w.invoke(b, t, seq)
            print(f"  {kind}: model loaded in {w.ready['model_load_s']:.2f} s, RSS {w.ready['rss_mib']:.0f} MiB")
        started = time.perf_counter()
        for r in range(args.rounds):
            for b, t in configs if r % 2 == 0 else reversed(configs):
                for kind in kinds if r % 2 == 0 else reversed(kinds):
                    seq += 1
                    gate = wait_for_quiet(max_wait_s=args.max_wait)
                    result = {**workers[kind].invoke(b, t, seq), "quiet_gate": gate}
                    runs.setdefault(f"{kind}/b{b}/t{t}", []).append(result)
            print(f"  round {r + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)", flush=True)
        # Thread scaling from many short forwards, 1 and 2 threads interleaved: on a shared machine the
        # fastest repetition of each is the one that met the least contention.
        probes: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for _ in range(args.probe_reps):
            for t in (1, 2):
                for kind, w in workers.items():
                    wait_for_quiet(max_wait_s=args.max_wait / 2)
                    probes[kind].append({**w.probe(t, PROBE_BATCH), "threads": t})
    finally:
        for w in workers.values():
            w.close()
    results = {name: summarise(rs) for name, rs in runs.items()}
    print(
        f"\n{'model/batch/threads':<18} {'img/s':>6} {'s':>6} | ms: {'download':>8} {'decode':>7} {'embed':>7} "
        f"{'write':>6} {'other':>6} | {'peak RSS':>9} | quiet  others | embed CPU ms/img"
    )
    for name, r in results.items():
        print(
            f"{name:<18} {r['images_per_s']:>6.1f} {r['seconds']:>6.2f} |     {r['download_s'] * 1e3:>8.1f} "
            f"{r['decode_s'] * 1e3:>7.0f} {r['embed_s'] * 1e3:>7.0f} {r['write_s'] * 1e3:>6.1f} "
            f"{r['other_s'] * 1e3:>6.1f} "
            f"| {r['peak_rss_mib']:>5.0f} MiB | {r['quiet_repeats']}/{r['repeats']}  {r['others_cpus']:.2f} "
            f"| {r['embed_cpu_s'] / r['images'] * 1e3:.1f}"
        )
    scaling = {kind: thread_scaling(p) for kind, p in probes.items()}
    for kind, sc in scaling.items():
        print(
            f"  {kind} forward of {PROBE_BATCH}: fastest of {sc['t1']['reps']} at 1 thread {sc['t1']['min_s']:.3f} s, "
            f"at 2 threads {sc['t2']['min_s']:.3f} s -> serial fraction {sc['serial_fraction']:.2f} "
            f"(quiet repetitions {sc['t1']['quiet_reps']} / {sc['t2']['quiet_reps']})"
        )
    estimates = {f"{k}/b{b}": lambda_estimates(results, b, k, scaling.get(k)) for k in kinds for b in batches}
    estimates = {k: v for k, v in estimates.items() if v}
    for name, e in estimates.items():
        line = ", ".join(
            f"{m} MB ({e[m]['cpus']:.2f} CPUs) {e[m]['images_per_s']:.1f} img/s" for m in ("3008", "10240")
        )
        print(f"  estimate {name}: embed serial fraction {e['embed_serial_fraction']:.2f}; {line}")
    report = {
        "what": "lambda_fn.collection.ingest.ingest() per invocation over a FolderStore of synthetic 512x384 JPEGs",
        "machine": info,
        "loadavg_after": os.getloadavg(),
        "photo_size": PHOTO_SIZE,
        "photos": PHOTOS,
        "rounds": args.rounds,
        "model_load": {k: w.ready for k, w in workers.items()},
        "results": results,
        "runs": runs,
        "thread_scaling": scaling,
        "probes": probes,
        "lambda_estimates": estimates,
        "estimate_method": "the embed's 1-thread CPU time, scaled by Amdahl's law (serial fraction from the "
        "fastest 1- and 2-thread probe forwards) to min(threads, memory / 1769 MB) CPUs; decode (a thread "
        "per CPU) by its CPU time over those CPUs; download, write and the rest as measured at 1 thread",
    }
    write_result(report, args.out)
    return report


PLAN_SIZES = (10**5, 10**6, 10**7)
PLAN_CONCURRENCY = (100, 1000)
PLAN_BATCH = 64  # the backfill's items_per_batch
# ASSUMED, not measured here: a small S3 request from Lambda (the FolderStore read above costs ~0.1 ms).
S3_REQUEST_S = 0.05


def s3_batch_seconds(batch: int) -> float:
    """What S3 adds to one invocation over the FolderStore: the images on DOWNLOAD_THREADS threads, then the
    shard HEAD, the manifest and model pointer GETs and the shard PUT one after another."""
    from lambda_fn.collection.ingest import DOWNLOAD_THREADS

    return math.ceil(batch / DOWNLOAD_THREADS) * S3_REQUEST_S + 4 * S3_REQUEST_S


def plan(ingest_report: dict, reindex_report: dict | None, cold_starts: dict[str, float]) -> list[dict]:
    """Backfill wall time and cost per model, memory size, collection size and MaxConcurrency, from the
    measured per-invocation times (plus S3_REQUEST_S), the measured cold starts and, for the reindex after
    the map, the reindex fit (``bench.reindex``)."""
    fit = (reindex_report or {}).get("scaling", {}).get("backfill")
    rows = []
    for kind, cold in cold_starts.items():
        estimates = lambda_estimates(
            ingest_report["results"], PLAN_BATCH, kind, ingest_report.get("thread_scaling", {}).get(kind)
        )
        if not estimates:
            continue
        for memory_mb in LAMBDA_CONFIGS:
            seconds = estimates[str(memory_mb)]["seconds"] + s3_batch_seconds(PLAN_BATCH)
            ideal = estimates[str(memory_mb)]["seconds_perfect_scaling"] + s3_batch_seconds(PLAN_BATCH)
            for images in PLAN_SIZES:
                for concurrency in PLAN_CONCURRENCY:
                    kw = dict(batch=PLAN_BATCH, concurrency=concurrency, memory_mb=memory_mb, init_s=cold)
                    row = backfill_estimate(images, seconds_per_batch=seconds, **kw)
                    best = backfill_estimate(images, seconds_per_batch=ideal, **kw)
                    row.update(model=kind, seconds_per_batch=seconds, init_s=cold)
                    row["perfect_scaling"] = {
                        "seconds_per_batch": ideal,
                        "wall_s": best["wall_s"],
                        "lambda_gb_s": best["lambda_gb_s"],
                        "total_usd": best["total_usd"],
                    }
                    if fit:
                        cpus = lambda_cpus(LAMBDA_MAX_MEMORY_MB, LAMBDA_CONFIGS[LAMBDA_MAX_MEMORY_MB])
                        reindex_s = predict_reindex_s(fit, images + 240, cpus)
                        rss = fit["peak_rss_mib"]["a"] + fit["peak_rss_mib"]["b_per_vector"] * images
                        row["reindex"] = {
                            "wall_s": reindex_s,
                            "peak_rss_mib": rss,
                            "fits_lambda": reindex_s <= LAMBDA_MAX_TIMEOUT_S and rss <= LAMBDA_MAX_MEMORY_MB,
                            "cost_usd": reindex_s * LAMBDA_MAX_MEMORY_MB / 1024 * Prices().lambda_gb_s,
                        }
                    rows.append(row)
    return rows


def print_plan(rows: list[dict]) -> None:
    print(
        f"{'model':<5} {'MB':>6} {'images':>9} {'C':>5} {'s/batch':>8} {'map wall':>9} {'GB-s':>10} "
        f"{'$ lambda':>9} {'$ sfn':>7} {'$ s3':>7} {'$ total':>8} {'$/10^6':>7} | if every CPU is used: "
        f"{'wall':>7} {'$/10^6':>7} | reindex (10,240 MB)"
    )
    for r in rows:
        c = r["cost_usd"]
        lam = c["lambda_duration"] + c["lambda_requests"]
        rx = r.get("reindex")
        rx_text = (
            f"{rx['wall_s']:7.0f} s, {rx['peak_rss_mib']:6.0f} MiB, {'fits' if rx['fits_lambda'] else 'DOES NOT FIT'}"
            if rx
            else "-"
        )
        print(
            f"{r['model']:<5} {r['memory_mb']:>6} {r['images']:>9,} {r['concurrency']:>5} "
            f"{r['seconds_per_batch']:>8.2f} "
            f"{r['wall_s'] / 60:>7.1f} m {r['lambda_gb_s']:>10,.0f} {lam:>9.2f} {c['sfn_transitions']:>7.2f} "
            f"{c['s3_requests']:>7.2f} {r['total_usd']:>8.2f} {r['total_usd'] / r['images'] * 1e6:>7.2f} | "
            f"{'':>21}{r['perfect_scaling']['wall_s'] / 60:>5.1f} m "
            f"{r['perfect_scaling']['total_usd'] / r['images'] * 1e6:>7.2f} | {rx_text}"
        )


def cold_starts(report: dict) -> dict[str, float]:
    """Median cold start per model from ``bench.cold_start``'s result (full instruction set)."""
    return {kind: m["ours_median_s"] for kind, m in report.get("models", {}).items()}


def run_plan() -> int:
    def read(name: str) -> dict | None:
        path = RESULTS / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # the reindex fit over every measured size (python -m bench.reindex --fit ...) when there is one
    reindex = read("reindex_fit") or read("reindex")
    rows = plan(read("ingest"), reindex, cold_starts(read("cold_start") or {}))
    print_plan(rows)
    write_result(
        {
            "what": "backfill plan from measured results; S3 request time assumed",
            "assumed_s3_request_s": S3_REQUEST_S,
            "prices": vars(Prices()),
            "rows": rows,
        },
        RESULTS / "backfill_plan.json",
    )
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="fp32,int8", help="demo models to compare (default: %(default)s)")
    p.add_argument("--batches", default="32,64", help="changes per invocation (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="torch threads (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="timed invocations per setting (default: %(default)s)")
    p.add_argument(
        "--probe-reps", type=int, default=20, help="forwards per thread count for the scaling (default: %(default)s)"
    )
    add_max_wait_argument(p, "each invocation")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, batch 32, 3 probes")
    p.add_argument(
        "--plan",
        action="store_true",
        help="measure nothing: print the backfill plan (wall time, cost) from bench/results/{ingest,reindex_fit "
        "(else reindex),cold_start,cold_start_int8}.json and write it to bench/results/backfill_plan.json",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "ingest.json", help="JSON results")
    p.add_argument("--worker", choices=("fp32", "int8"), help=argparse.SUPPRESS)
    p.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    cli = get_args_parser().parse_args()
    if cli.worker:
        sys.exit(run_worker(cli.worker, cli.photos))
    if cli.plan:
        sys.exit(run_plan())
    main(cli)
