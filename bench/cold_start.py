"""Cold start: a fresh process answering its first search with artifacts on a loopback S3 server, vs the
floor (a fresh process that only imports torch and loads the model from local disk), for the fp32 and the
int8 model. Interleaved runs. By default the run repeats in a child with the kernels capped at AVX2
(``bench.isa``): the ``avx2`` entry.

The first search is broken down in the container's own terms: interpreter start, imports
(``import lambda_fn.search.main``), the build's fetch (S3 client, manifest, download + sha256, in a process of its own
that overlaps the imports) and what the first load still waited for it, model load, index load, warm-up
forwards and the request itself, by timing the service's own functions in the child. The floor
child reports ``import torch`` and ``torch.jit.load`` apart. The service imports with Python's cyclic garbage
collector off (``lambda_fn/search/main.py``); a second floor does the same (``floor_nogc``), so the ratio against it
shows what is left when the floor gets that cut too. ``--python`` runs the children with another interpreter,
e.g. a venv with torch's CPU-only wheel (what the Lambda image installs), to separate what the CUDA wheel
of the development venv adds to the imports.

    python -m bench.cold_start [--runs 5] [--models fp32,int8] [--isa both|full|avx2] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, collection, photo_jpeg
from bench.harness import run_until_first, write_result
from bench.isa import add_isa_argument, run_capped
from lambda_fn.contract.manifest import MODEL_FILE
from support.service import REPO_ROOT, free_port, service_env

FLOOR = """
import gc, json, sys, time
if sys.argv[2] == "nogc":
    gc.disable()
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
m = torch.jit.load(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "load_s": t2 - t1}), flush=True)
"""

# A fresh process that imports the handler the way the Lambda runtime does, with the service's own steps
# timed (module functions wrapped before the first request), then searches with the image at argv[1] argv[2]
# times. The build is fetched by a child process the service starts during its imports (``lambda_fn.search.prefetch``):
# ``prefetch_s`` is how long that took, overlapping the imports, ``prefetch_wait_s`` what the first load still
# waited for it. Prints "FIRST <json>" once the first answer is in, then its memory (VmHWM, VmRSS) in MiB.
COLD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import lambda_fn.search.main as service
t_imported = time.perf_counter()
from lambda_fn.vision import engine
from support.service import LambdaContext, proc_status_kib, search_event
spent = {}
def timed(owner, name, label):
    fn = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)
timed(engine, "load_model", "load_model_s")
timed(engine, "load_index", "load_index_s")
timed(engine.Engine, "warm_up", "warm_up_s")
data = open(sys.argv[1], "rb").read()
event = search_event(data)
for i in range(int(sys.argv[2])):
    t_request = time.perf_counter()
    r = service.handler(event, LambdaContext())
    assert r["statusCode"] == 200, r["body"][:500]
    if i == 0:
        now = time.perf_counter()
        spent.update(imports_s=t_imported - t0, first_request_s=now - t_request, child_s=now - t0)
        spent.update(prefetch_s=service.prefetch.seconds, prefetch_wait_s=service.app.state.service.prefetch_wait_s)
        print("FIRST " + json.dumps(spent), flush=True)
status = proc_status_kib()
print(json.dumps({k: status[k] / 1024 for k in ("VmHWM", "VmRSS")}))
"""
INVOCATIONS = 1 + 20  # the timed first search, then warm ones so the memory reported is a warm service's


def run_ours(python: str, query: Path, env: dict) -> tuple[float, dict, float]:
    """(seconds to the first answer, the child's breakdown, warm peak RSS MiB)."""
    total, breakdown, out = run_until_first([python, "-c", COLD_CHILD, str(query), str(INVOCATIONS)], env)
    breakdown["interpreter_start_s"] = total - breakdown.pop("child_s")
    return total, breakdown, json.loads(out.strip().splitlines()[-1])["VmHWM"]


def run_floor(python: str, model: Path, env: dict, *, collect: bool = True) -> tuple[float, dict]:
    """(seconds until the model is loaded, not until the process has exited, like ``run_ours``; its breakdown).
    ``collect=False``: the floor with the cyclic garbage collector off, as the service imports."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-c", FLOOR, str(model), "gc" if collect else "nogc"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    seconds = time.perf_counter() - t0
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0 or not line.startswith("{"):
        raise RuntimeError(err[-3000:])
    return seconds, json.loads(line)


def medians(rows: list[dict]) -> dict:
    """Each key's median over the rows; a step a row never reached counts as 0 s there."""
    keys = dict.fromkeys(key for r in rows for key in r)
    return {key: statistics.median(r.get(key, 0.0) for r in rows) for key in keys}


def main(args: argparse.Namespace) -> dict:
    from moto.server import ThreadedMotoServer

    from ops.upload import upload

    models = args.models.split(",")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    creds = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(creds)
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    for name in models:
        upload(artifacts(int8=name == "int8"), collection(), "bench", name, client=s3)
    # Every run's cache folder (a whole build each) lives under one scratch folder, removed at the end.
    scratch = Path(tempfile.mkdtemp(prefix="cold-start-"))
    try:
        return _measure(args, models, creds, scratch)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(args: argparse.Namespace, models: list[str], creds: dict[str, str], scratch: Path) -> dict:
    query = scratch / "q.jpg"
    query.write_bytes(photo_jpeg(640, 480))
    # The first search of each run counts: time to answer includes interpreter start, imports, download,
    # verification, load and warm-up; 20 warm searches follow only to measure the warm RSS.
    kinds = ["ours", "floor", "floor_nogc"]
    results = {name: {"warm_rss_mb": [], **{k: [] for kind in kinds for k in (kind, f"{kind}_s")}} for name in models}
    for i in range(args.runs):
        for name in models if i % 2 == 0 else models[::-1]:
            settings = service_env(
                artifacts_uri=f"s3://bench/{name}/",
                log_level="WARNING",
                cache_dir=tempfile.mkdtemp(prefix="cache-", dir=scratch),
                num_threads=THREADS,
            )
            env = {**os.environ, **creds, **settings, "PYTHONPATH": str(REPO_ROOT)}
            r = results[name]
            for which in kinds[i % 3 :] + kinds[: i % 3]:  # each kind goes first in turn
                if which == "ours":
                    seconds, breakdown, rss = run_ours(args.python, query, env)
                    r["warm_rss_mb"].append(rss)
                else:
                    model = artifacts(int8=name == "int8") / MODEL_FILE
                    seconds, breakdown = run_floor(args.python, model, env, collect=which == "floor")
                r[f"{which}_s"].append(seconds)
                r[which].append(breakdown)
    report = {
        "isa": args.isa if args.isa != "both" else "full",
        "python": args.python,
        "runs": args.runs,
        "threads": THREADS,
        "models": {},
    }
    for name, r in results.items():
        m = {
            "ours_s": r["ours_s"],
            "floor_s": r["floor_s"],
            "floor_nogc_s": r["floor_nogc_s"],
            "warm_rss_mb": r["warm_rss_mb"],
            "ours_median_s": statistics.median(r["ours_s"]),
            "floor_median_s": statistics.median(r["floor_s"]),
            "floor_nogc_median_s": statistics.median(r["floor_nogc_s"]),
            "ours_breakdown_median_s": medians(r["ours"]),
            "floor_breakdown_median_s": medians(r["floor"]),
            "floor_nogc_breakdown_median_s": medians(r["floor_nogc"]),
        }
        m["ratio"] = m["ours_median_s"] / m["floor_median_s"]
        m["ratio_vs_floor_nogc"] = m["ours_median_s"] / m["floor_nogc_median_s"]
        report["models"][name] = m
    print(
        f"cold start [{report['isa']} ISA], {args.runs} interleaved runs, artifacts from a loopback S3 server "
        f"(moto), children run by {args.python}"
    )
    for name, m in report["models"].items():
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in m["ours_breakdown_median_s"].items())
        floor = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in m["floor_breakdown_median_s"].items())
        print(
            f"  {name}: first search {m['ours_median_s']:.2f} s vs floor {m['floor_median_s']:.2f} s -> ratio "
            f"{m['ratio']:.2f} (vs floor with collection off {m['floor_nogc_median_s']:.2f} s: "
            f"{m['ratio_vs_floor_nogc']:.2f}); warm peak RSS {statistics.median(m['warm_rss_mb']):.0f} MB\n"
            f"    ours (s): {parts}\n    floor (s): {floor}"
        )
    if args.isa == "both":
        argv = ["--runs", str(args.runs), "--models", args.models, "--python", args.python]
        report["avx2"] = run_capped("cold_start", argv)
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="cold starts of each kind and model (default: 5)")
    p.add_argument("--models", default="fp32,int8", help="comma-separated: fp32, int8 (default: both)")
    add_isa_argument(p)
    p.add_argument("--python", default=sys.executable, help="interpreter for the children (default: this one)")
    p.add_argument("--out", type=Path, default=RESULTS / "cold_start.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
