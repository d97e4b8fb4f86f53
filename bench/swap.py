"""From PUT to searchable on loopback, and query latency while the service swaps builds vs in steady state.

    python -m bench.swap [--quick] [--cycles 5] [--collection 10000]

A FolderStore deployment holds the int8 demo build plus ``--collection`` SYNTHETIC vectors (one reindex at
set-up). The local server (``python -m lambda_fn.search.local``, 1 torch thread) checks the manifest every
``--check-s`` seconds, while a client searches with a 640x480 photo about ten times a second all along.
Each cycle:
1. steady: only the searches, for ``--steady-s`` seconds;
2. pipeline: a new 512x384 photo is PUT into the store's images/, ``lambda_fn.collection.ingest.ingest()`` embeds it (a
   warm function: the model is loaded once) and ``lambda_fn.collection.reindex.reindex()`` publishes a new build;
3. swap: from the new manifest until a search with the new photo finds it first (the probe, every 0.1 s);
4. swap only: the manifest is set back to the previous build and then forward again, with nothing else
   running, and each flip is timed until searches answer from the build it names.
Searches are grouped by the window they started in; p50/p95 per window are compared side by side.
On this 2-core machine the pipeline's ingest and reindex take CPU from the server (in AWS they run in
their own functions), so the "pipeline" window is reported apart from the "swap only" one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import threading
import time
import urllib.request
from pathlib import Path

from bench._setup import RESULTS, WORK, artifacts, photo_jpeg
from bench.harness import (
    add_max_wait_argument,
    describe_machine,
    machine_info,
    percentile,
    wait_for_quiet,
    write_result,
)
from bench.ingest import PHOTO_SIZE
from bench.reindex import SHARD_IMAGES, new_shard
from support.service import service_env, start_local_server_process

QUERY_GAP_S = 0.1


def search(base: str, data: bytes, k: int = 10) -> dict:
    req = urllib.request.Request(
        f"{base}/search?k={k}", data=data, headers={"Content-Type": "image/jpeg"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class QueryLoad:
    """Searches one after another with ``QUERY_GAP_S`` between them, recording (start, end, ms, build_id)."""

    def __init__(self, base: str, data: bytes):
        self.base, self.data = base, data
        self.records: list[tuple[float, float, float, str]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            try:
                build = search(self.base, self.data)["build_id"]
                t1 = time.time()
                self.records.append((t0, t1, (t1 - t0) * 1e3, build))
            except OSError:
                self.errors += 1
            self._stop.wait(QUERY_GAP_S)

    def start(self) -> QueryLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def first_answer_from(self, build_id: str, after: float, timeout: float = 120.0) -> float:
        """End time of the first search started after ``after`` that the build ``build_id`` answered."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t0, t1, _, build in list(self.records):
                if t0 >= after and build == build_id:
                    return t1
            time.sleep(0.05)
        raise TimeoutError(f"no search answered from build {build_id} within {timeout} s")


def window_stats(records, windows: list[tuple[float, float]]) -> dict:
    """p50/p95 of the searches that started inside any of ``windows``."""
    ms = [r[2] for r in records if any(a <= r[0] < b for a, b in windows)]
    if not ms:
        return {"searches": 0}
    return {"searches": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms)}


def new_photo(cycle: int) -> bytes:
    from training.sample_data import render

    buf = io.BytesIO()
    render("sushi", random.Random(90_000 + cycle), *PHOTO_SIZE).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def deployment(count: int) -> Path:
    """A fresh FolderStore deployment: the int8 demo build merged with ``count`` synthetic vectors."""
    import shutil

    from bench._synthetic import make_clustered
    from lambda_fn.collection.reindex import reindex
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
    from lambda_fn.contract.shards import EventOrder, shard_key
    from lambda_fn.storage.publish import publish_build
    from lambda_fn.storage.store import FolderStore

    root = WORK / "swap-deploy"
    shutil.rmtree(root, ignore_errors=True)
    store = FolderStore(root)
    build = artifacts(int8=True)
    manifest = Manifest.read(build / MANIFEST_FILE)
    publish_build(store, build, manifest)
    if count:
        vectors = make_clustered(count, manifest.dim, seed=3)
        for start in range(0, count, SHARD_IMAGES):
            shard = new_shard(vectors[start : start + SHARD_IMAGES], start, EventOrder.at(1_700_000_000 + start))
            store.put(shard_key(manifest.model_sha256, shard.digest()), shard.to_bytes())
        assert reindex(store, WORK / "swap-work", lease_s=900, n_jobs=2).status == "published"
    return root


def main(args: argparse.Namespace) -> dict:
    if args.quick:
        args.cycles, args.collection, args.steady_s, args.max_wait = 2, 2000, 3.0, 5.0
    import torch

    from lambda_fn.collection.ingest import Change, ingest
    from lambda_fn.collection.reindex import reindex
    from lambda_fn.contract.config import Settings
    from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
    from lambda_fn.contract.shards import EventOrder
    from lambda_fn.storage.store import FolderStore
    from lambda_fn.vision.models import target_models

    info = machine_info()
    print(describe_machine(info))
    t0 = time.perf_counter()
    root = deployment(args.collection)
    print(f"deployment: {args.collection:,} synthetic + 240 demo images, built in {time.perf_counter() - t0:.0f} s")
    store = FolderStore(root)
    images = FolderStore(root / "images")
    torch.set_num_threads(1)  # the ingest function's work shares this machine with the server
    models = target_models(store, WORK / "swap-cache")  # the ingest function's container, warm
    settings = Settings(artifacts_uri=str(root))
    query = photo_jpeg(640, 480, seed=5)
    env = service_env(manifest_check_s=args.check_s, log_level="WARNING", cache_dir=WORK / "swap-server-cache")
    cycles = []
    with start_local_server_process(root, env=env, threads=1) as (base, _):
        for _ in range(5):
            search(base, query)  # warm-up
        load = QueryLoad(base, query).start()
        steady, pipeline, swap, swap_only = [], [], [], []
        try:
            for c in range(args.cycles):
                gate = wait_for_quiet(threshold_cpus=0.6, max_wait_s=args.max_wait)  # the searches use ~0.4
                a = time.time()
                time.sleep(args.steady_s)
                steady.append((a, time.time()))
                before = Manifest.model_validate_json(store.get(MANIFEST_FILE)[0])
                key, data = f"new/cycle-{c}.jpg", new_photo(c)
                t_put = time.time()
                etag = images.put(key, data)
                change = Change("0", "created", key, etag=etag, size=len(data), order=EventOrder.at(t_put))
                report = ingest(
                    [change],
                    images=images,
                    artifacts=store,
                    models=models,
                    max_bytes=settings.max_ingest_bytes,
                    max_pixels=settings.max_image_pixels,
                )
                assert report.embedded == 1, report.as_dict()
                t_ingested = time.time()
                result = reindex(store, WORK / "swap-work", lease_s=900, n_jobs=1)
                assert result.status == "published", result.as_dict()
                t_reindexed = time.time()
                t_published = (root / MANIFEST_FILE).stat().st_mtime
                pipeline.append((t_put, t_published))
                t_found = probe(base, data, key)
                swap.append((t_published, t_found))
                t_answered = load.first_answer_from(result.build_id, t_published)
                flips = []
                for target in (before, Manifest.model_validate_json(store.get(MANIFEST_FILE)[0])):
                    time.sleep(args.steady_s / 2)
                    body = (target.model_dump_json(indent=2) + "\n").encode()
                    t_flip = time.time()
                    store.put(MANIFEST_FILE, body)
                    t_served = load.first_answer_from(target.build_id, t_flip)
                    swap_only.append((t_flip, t_served))
                    flips.append(t_served - t_flip)
                cycles.append(
                    {
                        "ingest_s": t_ingested - t_put,
                        "reindex_s": t_reindexed - t_ingested,
                        "reindex_report": result.as_dict(),
                        "published_after_put_s": t_published - t_put,
                        "searchable_after_put_s": t_found - t_put,
                        "searchable_after_publish_s": t_found - t_published,
                        "load_answered_after_publish_s": t_answered - t_published,
                        "flip_back_and_forth_s": flips,
                        "loadavg": os.getloadavg(),
                        "quiet_gate": gate,
                    }
                )
                last = cycles[-1]
                print(
                    f"  cycle {c + 1}: PUT -> searchable {last['searchable_after_put_s']:.2f} s (ingest "
                    f"{last['ingest_s']:.2f}, reindex {last['reindex_s']:.2f}, publish -> found "
                    f"{last['searchable_after_publish_s']:.2f}); flips {flips[0]:.2f} / {flips[1]:.2f} s",
                    flush=True,
                )
        finally:
            load.stop()
    windows = {
        "steady": window_stats(load.records, steady),
        "swap_only": window_stats(load.records, swap_only),
        "swap_after_pipeline": window_stats(load.records, swap),
        "pipeline": window_stats(load.records, pipeline),
    }
    print(f"\n{'window':<20} {'searches':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, w in windows.items():
        if w["searches"]:
            print(f"{name:<20} {w['searches']:>8} {w['p50_ms']:>8.1f} {w['p95_ms']:>8.1f} {w['max_ms']:>8.1f}")
    put_to_searchable = [c["searchable_after_put_s"] for c in cycles]
    print(
        f"PUT -> searchable: median {percentile(put_to_searchable, 50):.2f} s over {len(cycles)} cycles "
        f"(manifest checked every {args.check_s:g} s); search errors {load.errors}"
    )
    report = {
        "what": "PUT -> ingest -> reindex -> hot swap on loopback (FolderStore + local server), and search "
        "latency per window",
        "machine": info,
        "loadavg_after": os.getloadavg(),
        "collection": args.collection + 240,
        "check_s": args.check_s,
        "server_threads": 1,
        "cycles": cycles,
        "put_to_searchable_s": {"p50": percentile(put_to_searchable, 50), "max": max(put_to_searchable)},
        "windows": windows,
        "search_errors": load.errors,
    }
    write_result(report, args.out)
    return report


def probe(base: str, data: bytes, key: str, timeout: float = 120.0) -> float:
    """Search with the new photo every 0.1 s until it comes back first; the time that answer arrived."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        results = search(base, data, k=1)["results"]
        if results and results[0]["key"] == key:
            return time.time()
        time.sleep(0.1)
    raise TimeoutError(f"{key} was not searchable within {timeout} s")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=5, help="PUT -> searchable cycles (default: %(default)s)")
    p.add_argument(
        "--collection", type=int, default=10_000, help="synthetic vectors in the build (default: %(default)s)"
    )
    p.add_argument("--check-s", type=float, default=1.0, help="the server's manifest check interval (default: 1)")
    p.add_argument("--steady-s", type=float, default=5.0, help="steady-state seconds per cycle (default: 5)")
    add_max_wait_argument(p, "each cycle")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cycles over 2,000 vectors")
    p.add_argument("--out", type=Path, default=RESULTS / "swap.json", help="JSON results")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
