"""Startup tuning (``lambda_fn/search/startup.py``): each trick with and without it, interleaved in one run.

- **First search**: a fresh process imports ``lambda_fn.search.main`` and answers one 640x480 search, timed from
  the parent's spawn to the answer (artifacts in a local folder, so only the process's own work is timed).
  ``all`` has every trick; each other kind turns one off by replacing its function in
  ``lambda_fn.search.startup`` before the import: ``no_gc`` (collection on throughout), ``no_freeze``
  (collection off during init, then simply back on). The kinds take turns going first.
- **Request**: a warm 12-MP multipart search through the handler, in this process, with Starlette's default
  of spooling a part past 1 MiB to a temporary file and with parts kept in memory
  (``MultiPartParser.spool_max_size`` unbounded, a patch the service dropped for gaining too little),
  alternating; also the form parse alone.

    python -m bench.startup [--runs 8] [--requests 40] [--model fp32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, photo_jpeg, pin_threads
from bench.harness import parse_upload, run_until_first, write_result
from support.service import REPO_ROOT, LambdaContext, search_event, service_env

KINDS = ("all", "no_gc", "no_freeze")

# argv: query image, the kind. Prints the seconds from its first line to the imports' end and to the answer, in
# wall time and in this process's CPU time (all its threads). On a shared machine both swing with the load, so
# the child also measures, in CPU time of the main thread, what each trick saves in the same process: ``gc_s``,
# the cyclic collections run (``no_gc``: during init and the first search; ``no_freeze``: after init). Its share
# of the same process's first search is the trick's gain.
CHILD = """
import gc, json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import lambda_fn.search.startup as startup
kind = sys.argv[2]
collecting = {"on": kind == "no_gc", "s": 0.0}
def timed_collection(phase, info):
    if collecting["on"]:
        if phase == "start":
            collecting["t"] = time.thread_time()
        else:
            collecting["s"] += time.thread_time() - collecting["t"]
gc.callbacks.append(timed_collection)
if kind == "no_gc":
    startup.pause_gc = startup.settle_gc = lambda: None
elif kind == "no_freeze":
    def enable_and_count():
        collecting["on"] = True
        gc.enable()
    startup.settle_gc = enable_and_count
import lambda_fn.search.main as service
t1, c1 = time.perf_counter(), time.process_time()
from support.service import LambdaContext, search_event
r = service.handler(search_event(open(sys.argv[1], "rb").read()), LambdaContext())
assert r["statusCode"] == 200, r["body"][:500]
t2, c2 = time.perf_counter(), time.process_time()
row = {"imports_s": t1 - t0, "child_s": t2 - t0, "imports_cpu_s": c1 - c0, "child_cpu_s": c2 - c0,
       "gc_s": collecting["s"]}
print("FIRST " + json.dumps(row), flush=True)
"""


def first_search(kind: str, query: Path, env: dict) -> dict:
    """Seconds from spawning a fresh process of ``kind`` to its first answer, and its own breakdown."""
    total, breakdown, _ = run_until_first([sys.executable, "-c", CHILD, str(query), kind], env)
    return {"first_search_s": total, **breakdown}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_first_search(runs: int, model_dir: Path, scratch: Path) -> dict:
    query = scratch / "q.jpg"
    query.write_bytes(photo_jpeg(640, 480))
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for i in range(runs):
        for kind in KINDS[i % len(KINDS) :] + KINDS[: i % len(KINDS)]:  # each kind goes first in turn
            settings = service_env(
                artifacts_uri=model_dir,
                log_level="WARNING",
                cache_dir=tempfile.mkdtemp(prefix="cache-", dir=scratch),
                num_threads=THREADS,
            )
            env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
            rows[kind].append(first_search(kind, query, env))
    report = {}
    for kind, r in rows.items():
        keys = ("first_search_s", "imports_s", "child_cpu_s", "imports_cpu_s")
        report[kind] = {key: {**summary([row[key] for row in r]), "all": [row[key] for row in r]} for key in keys}
    for kind in KINDS[1:]:
        for key in ("first_search_s", "child_cpu_s"):
            without, gain = report[kind][key]["median"], report[kind][key]["median"] - report["all"][key]["median"]
            report[kind][f"trick_gain_{key}"] = gain
            report[kind][f"trick_gain_pct_{key}"] = 100 * gain / without
    # Each trick's saving as a share of the first search's CPU time in the same process (median over the runs).
    shares = {
        "no_gc": [100 * row["gc_s"] / row["child_cpu_s"] for row in rows["no_gc"]],
        "no_freeze": [100 * row["gc_s"] / row["child_cpu_s"] for row in rows["no_freeze"]],
    }
    for kind, pct in shares.items():
        report[kind]["saved_pct_of_first_search_cpu"] = {**summary(pct), "all": pct}
    for kind in ("no_gc", "no_freeze"):
        report[kind]["gc_cpu_s"] = summary([row["gc_s"] for row in rows[kind]])
    return report


def measure_request(requests: int, model_dir: Path) -> dict:
    """Warm 12-MP multipart searches through the handler, parts in memory vs spooled past 1 MiB, alternating."""
    import base64

    from starlette.formparsers import MultiPartParser

    os.environ.update(service_env(artifacts_uri=model_dir, num_threads=THREADS, log_level="WARNING"))
    import lambda_fn.search.main as service

    pin_threads()
    event = search_event(photo_jpeg(4000, 3000))
    body, content_type = base64.b64decode(event["body"]), event["headers"]["Content-Type"]
    spool = {"in_memory": sys.maxsize, "spooled_past_1_MiB": 1 << 20}
    ctx = LambdaContext()
    loop = asyncio.new_event_loop()
    stages = ("request", "request cpu", "parse", "parse cpu")
    times: dict[str, list[float]] = {f"{stage} {k}": [] for stage in stages for k in spool}
    default = MultiPartParser.spool_max_size
    try:
        for i in range(requests + 3):
            for name, size in list(spool.items())[:: 1 if i % 2 == 0 else -1]:
                MultiPartParser.spool_max_size = size
                t0, c0 = time.perf_counter(), time.process_time()
                response = service.handler(event, ctx)
                t1, c1 = time.perf_counter(), time.process_time()
                loop.run_until_complete(parse_upload(body, content_type))
                t2, c2 = time.perf_counter(), time.process_time()
                assert response["statusCode"] == 200, response["body"][:300]
                if i >= 3:  # the first rounds warm up
                    for stage, ms in zip(stages, (t1 - t0, c1 - c0, t2 - t1, c2 - c1), strict=True):
                        times[f"{stage} {name}"].append(ms * 1000)
    finally:
        MultiPartParser.spool_max_size = default
        loop.close()
    report: dict = {name: summary(t) for name, t in times.items()}
    for stage in ("request", "request cpu"):
        without = report[f"{stage} spooled_past_1_MiB"]["median"]
        report[f"trick_gain_{stage.replace(' ', '_')}_ms"] = without - report[f"{stage} in_memory"]["median"]
        report[f"trick_gain_pct_{stage.replace(' ', '_')}"] = (
            100 * (without - report[f"{stage} in_memory"]["median"]) / without
        )
    report["upload_bytes"] = len(body)
    return report


def main(args: argparse.Namespace) -> dict:
    model_dir = artifacts(int8=args.model == "int8")
    report: dict = {"runs": args.runs, "requests": args.requests, "model": args.model, "threads": THREADS}
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
        report["first_search"] = measure_first_search(args.runs, model_dir, Path(scratch))
    report["request"] = measure_request(args.requests, model_dir)
    report["load_average"] = [load, os.getloadavg()]
    print(f"startup tuning, {args.model}, load average {load[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    for kind, r in report["first_search"].items():
        line = f"  first search, {kind}:"
        for key, unit in (("first_search_s", "wall"), ("child_cpu_s", "CPU")):
            v = r[key]
            line += f" {unit} {v['median']:.3f} s ({v['min']:.3f}-{v['max']:.3f})"
            if kind != "all":
                line += f", trick worth {r[f'trick_gain_{key}'] * 1000:+.0f} ms ({r[f'trick_gain_pct_{key}']:+.1f}%);"
        if kind != "all":
            v = r["saved_pct_of_first_search_cpu"]
            line += f" saved in-process: {v['median']:.1f}% ({v['min']:.1f}-{v['max']:.1f}) of the first search's CPU"
        print(line)
    for name, r in report["request"].items():
        if isinstance(r, dict):
            print(f"  {name}: {r['median']:.1f} ms ({r['min']:.1f}-{r['max']:.1f})")
        else:
            print(f"  {name}: {r:+.1f}")
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8, help="fresh processes of each kind (default: 8)")
    p.add_argument("--requests", type=int, default=40, help="warm 12-MP requests of each spool setting (default: 40)")
    p.add_argument("--model", choices=("fp32", "int8"), default="fp32", help="which bench model (default: fp32)")
    p.add_argument("--out", type=Path, default=RESULTS / "startup.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
