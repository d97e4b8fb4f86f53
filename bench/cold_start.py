"""Cold start: a fresh process answering its first search with artifacts on a loopback S3 server, vs the
floor (a fresh process that only imports torch and loads the model from local disk). Interleaved runs.

    python -m bench.cold_start [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, collection, photo_jpeg
from bench.harness import REPO_ROOT, free_port, handler_child_cmd, handler_child_result, service_env, write_result

FLOOR = """
import sys, torch
m = torch.jit.load(sys.argv[1])
"""
INVOCATIONS = 1 + 20  # the timed first search, then warm ones so the memory reported is a warm service's


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - t0, proc.stdout


def main(args: argparse.Namespace) -> dict:
    from moto.server import ThreadedMotoServer

    from training.upload import upload

    art = artifacts(int8=args.int8)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    os.environ.update(creds)
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench")
    upload(art, collection(), "bench", "cold", client=s3)
    query = Path(tempfile.mkdtemp()) / "q.jpg"
    query.write_bytes(photo_jpeg(640, 480))
    # The first search of each run counts: time to answer includes interpreter start, imports, download,
    # verification, load and warm-up; 20 warm searches follow only to measure the warm RSS.
    ours_s, floor_s, rss = [], [], []
    for i in range(args.runs):
        settings = service_env(
            artifacts_uri="s3://bench/cold/",
            log_level="WARNING",
            cache_dir=tempfile.mkdtemp(prefix="coldcache"),
            num_threads=THREADS,
        )
        env = {**os.environ, **creds, **settings, "PYTHONPATH": str(REPO_ROOT)}
        first = ["ours", "floor"] if i % 2 == 0 else ["floor", "ours"]
        for which in first:
            if which == "ours":
                t0 = time.perf_counter()
                proc = subprocess.Popen(
                    handler_child_cmd(query, INVOCATIONS),
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                line = proc.stdout.readline()
                ours_s.append(time.perf_counter() - t0)
                out, err = proc.communicate(timeout=600)
                if proc.returncode != 0 or not line.startswith("FIRST"):
                    raise RuntimeError(err[-3000:])
                rss.append(handler_child_result(out)["VmHWM"])
            else:
                seconds, _ = timed([sys.executable, "-c", FLOOR, str(art / "model.pt")], env)
                floor_s.append(seconds)
    server.stop()
    report = {
        "runs": args.runs,
        "ours_s": ours_s,
        "floor_s": floor_s,
        "warm_rss_mb": rss,
        "ours_median_s": statistics.median(ours_s),
        "floor_median_s": statistics.median(floor_s),
    }
    report["ratio"] = report["ours_median_s"] / report["floor_median_s"]
    print(f"cold start, {args.runs} interleaved runs, artifacts from a loopback S3 server (moto)")
    print(f"  fresh process -> first search answered: median {report['ours_median_s']:.2f} s  {ours_s}")
    print(f"  floor (import torch + load model.pt):    median {report['floor_median_s']:.2f} s  {floor_s}")
    print(
        f"  ratio {report['ratio']:.2f}; warm service peak RSS {statistics.median(rss):.0f} MB "
        f"({art.name}: {len(list((collection()).glob('*/*')))} images)"
    )
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="cold starts of each kind (default: 5)")
    p.add_argument("--int8", action="store_true", help="use the int8 model (floor loads the same file)")
    p.add_argument("--out", type=Path, default=RESULTS / "cold_start.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
