"""Memory of the warm service with a large index: peak RSS (VmHWM) of a fresh process that loads the model
and a 10^5-vector index (SYNTHETIC vectors, real model) and answers searches, vs the same with a tiny index.

    python -m bench.memory [--count 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench._setup import RESULTS, THREADS, WORK, artifacts, photo_jpeg

REPO = Path(__file__).resolve().parent.parent

SERVE = """
import json, sys
import lambda_fn.main as m
from bench.latency import LambdaContext, event
data = open(sys.argv[1], "rb").read()
for _ in range(50):
    r = m.handler(event(data), LambdaContext())
    assert r["statusCode"] == 200, r["body"][:300]
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS")}))
"""


def large_artifacts(count: int) -> Path:
    """The real model with an index of ``count`` synthetic unit vectors (keys are placeholders)."""

    from bench._synthetic import make_clustered
    from lambda_fn.manifest import INDEX_FILE, KEYS_FILE, MODEL_FILE, KeyEntry, Manifest, file_sha256, write_keys
    from training.build_index import DEFAULT_N_TREES, DEFAULT_SEARCH_K, METRIC, build_annoy

    out = WORK / f"artifacts-synthetic-{count}"
    if (out / "manifest.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifacts() / MODEL_FILE, out / MODEL_FILE)
    vectors = make_clustered(count, 512, seed=0)
    build_annoy(vectors, out / INDEX_FILE, n_trees=DEFAULT_N_TREES, seed=42, n_jobs=-1, on_disk=False)
    write_keys(out / KEYS_FILE, [KeyEntry(key=f"synthetic/{i:07d}.jpg", label=None) for i in range(count)])
    Manifest(
        dim=512,
        metric=METRIC,
        n_trees=DEFAULT_N_TREES,
        search_k=DEFAULT_SEARCH_K,
        seed=42,
        count=count,
        model_sha256=file_sha256(out / MODEL_FILE),
        index_sha256=file_sha256(out / INDEX_FILE),
        keys_sha256=file_sha256(out / KEYS_FILE),
    ).write(out / "manifest.json")
    return out


def measure(art: Path, query: Path) -> dict:
    env = {
        **os.environ,
        "DEEPFOOD_ARTIFACTS_URI": str(art),
        "DEEPFOOD_LOG_LEVEL": "WARNING",
        "DEEPFOOD_NUM_THREADS": str(THREADS),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SERVE, str(query)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict:
    query = WORK / "memory-query.jpg"
    query.write_bytes(photo_jpeg(640, 480))
    small, large = artifacts(), large_artifacts(args.count)
    report = {
        "small_index": {"count": 240, **measure(small, query)},
        "large_index": {
            "count": args.count,
            "index_mb": (large / "index.ann").stat().st_size / 2**20,
            **measure(large, query),
        },
    }
    print(f"warm service after 50 searches ({THREADS} threads; CUDA torch wheel on CPU):")
    for name, r in report.items():
        print(f"  {name:<12} {r['count']:>7} images: peak RSS {r['VmHWM']:.0f} MB, RSS now {r['VmRSS']:.0f} MB")
    print(f"  index file {report['large_index']['index_mb']:.0f} MiB (memory-mapped; pages load as queries touch)")
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100_000, help="synthetic vectors in the large index (default: 1e5)")
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json", help="JSON results")
    return p


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    parsed.out.write_text(json.dumps(main(parsed), indent=2))
