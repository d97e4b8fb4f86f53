"""Bounded load on loopback: a fixed number of searches at a fixed concurrency against the local server.

    python -m bench.load                                # 2,000 searches at concurrency 8, 224-px model
    python -m bench.load --requests 300 --concurrency 4

Starts ``python -m lambda_fn.search.local`` on 127.0.0.1 (never anything else), warms it up, then sends raw JPEG
uploads from an async httpx client until the request count is reached or the time cap runs out, whichever
comes first: it always stops by itself. Reports errors, p50/p95/p99 latency, requests/s and the server's
resident memory (VmRSS) before and after; writes JSON to bench/results/load.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from bench._setup import RESULTS, THREADS, artifacts, collection, photo_jpeg
from bench.harness import write_result
from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE
from support.load import measure, table
from support.service import start_local_server_process


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="searches to send (default: 2000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    p.add_argument("--time-cap", type=float, default=600.0, help="stop after this many seconds (default: 600)")
    p.add_argument("--k", type=int, default=10, help="results per search (default: 10)")
    p.add_argument("--threads", type=int, default=THREADS, help=f"server torch threads (default: {THREADS})")
    p.add_argument("--out", type=Path, default=RESULTS / "load.json", help="JSON results (default: results/load.json)")
    return p


def main(args: argparse.Namespace) -> dict:
    art, images = artifacts(), collection()
    payloads = [photo_jpeg(640, 480, seed=s) for s in range(8)]
    with start_local_server_process(art, images, threads=args.threads) as (base, proc):
        result = measure(
            proc.pid,
            base,
            payloads,
            requests=args.requests,
            concurrency=args.concurrency,
            time_cap_s=args.time_cap,
            k=args.k,
        )
    result.update(
        what=f"POST /search, 640x480 JPEG, {DEFAULT_CROP_SIZE}-px random-init ResNet34, 240-image index, "
        "local server on loopback",
        server_threads=args.threads,
        python=platform.python_version(),
        machine=platform.machine(),
    )
    print(table(result))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main(get_args_parser().parse_args())["errors"] == 0 else 1)
