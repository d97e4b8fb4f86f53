"""Memory of the warm service with a large index: peak RSS (VmHWM) of a fresh process that loads the model
and a 10^5-vector index (SYNTHETIC vectors, real model) and answers searches, vs the same with a tiny index.

    python -m bench.memory [--count 100000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench._setup import RESULTS, THREADS, WORK, artifacts, photo_jpeg
from bench.harness import handler_child_cmd, handler_child_result, write_result
from support.service import REPO_ROOT, service_env

SEARCHES = 50


def large_artifacts(count: int) -> Path:
    """The real model with an index of ``count`` synthetic unit vectors (keys are placeholders)."""

    from bench._synthetic import make_clustered
    from lambda_fn.contract.manifest import MODEL_FILE, KeyEntry
    from lambda_fn.vision.indexing import DEFAULT_SEED, write_build

    out = WORK / f"artifacts-synthetic-{count}"
    if (out / "manifest.json").is_file():
        return out
    vectors = make_clustered(count, 512, seed=0)
    entries = [KeyEntry(key=f"synthetic/{i:07d}.jpg", label=None) for i in range(count)]
    write_build(out, entries, vectors, model=artifacts() / MODEL_FILE, seed=DEFAULT_SEED)
    return out


def measure(art: Path, query: Path) -> dict:
    """Peak and current RSS (MiB) of a fresh service process over ``art`` after SEARCHES searches."""
    settings = service_env(artifacts_uri=art, log_level="WARNING", num_threads=THREADS)
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        handler_child_cmd(query, SEARCHES), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return handler_child_result(proc.stdout)


def torch_wheel() -> str:
    """Which torch build is installed: CPU-only, or built for CUDA (the service runs on the CPU either way)."""
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__}, " + (f"CUDA {cuda} wheel" if cuda else "CPU-only wheel")


def main(args: argparse.Namespace) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    query = WORK / "memory-query.jpg"
    query.write_bytes(photo_jpeg(640, 480))
    small, large = artifacts(), large_artifacts(args.count)
    indexes = {
        "small_index": {"count": 240, **measure(small, query)},
        "large_index": {
            "count": args.count,
            "index_mb": (large / "index.ann").stat().st_size / 2**20,
            **measure(large, query),
        },
    }
    wheel = torch_wheel()
    print(f"warm service after {SEARCHES} searches ({THREADS} threads; {wheel}, on CPU):")
    for name, r in indexes.items():
        print(f"  {name:<12} {r['count']:>7} images: peak RSS {r['VmHWM']:.0f} MB, RSS now {r['VmRSS']:.0f} MB")
    print(f"  index file {indexes['large_index']['index_mb']:.0f} MiB (memory-mapped; pages load as queries touch)")
    report = {**indexes, "torch": wheel}
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100_000, help="synthetic vectors in the large index (default: 1e5)")
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
