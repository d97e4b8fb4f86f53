"""Merge embedding shards into a new index build and publish it.

``reindex(store, workdir, ...)`` is the work behind the scheduled reindex function, the step after a
backfill, and ``ops.collection reindex``. In order:

1. Cheap check first: list the shards of the target model; when their digest equals the live manifest's
   ``shards_digest`` nothing changed and the run ends (a LIST and a GET, every few minutes).
2. Take the lease (``locks/reindex.json``, created with an S3 conditional write and taken over only when
   expired), so two runs never build at once: this needs no reserved concurrency, which a new account
   with a concurrency quota of 10 cannot set aside.
3. Start from the live build's collection (``collection.npz``; for an older build without one, the
   vectors in its index), apply the shards it did not merge yet (latest event per key wins), build the
   Annoy index with the live manifest's ``n_trees`` and ``seed`` (``lambda_fn.vision.indexing``, the code
   ``training.build_index`` uses), measure the ``search_k`` that keeps recall@10 at the target as the
   collection grows (the live one is the floor), and publish it (``lambda_fn.storage.publish``: build folder first,
   manifest last, conditional on the manifest it started from). Any failure before that last PUT leaves
   the live manifest as it was; the next run starts over and re-uses the files already uploaded.
4. A new model (``models/current.json``) goes live only once its namespace covers every image of the live
   build; until then the live model's namespace is reindexed and the report says what is missing.
5. Old build files (neither the new nor the previous manifest's, older than an hour) are deleted.

Photos that arrived before any model (``lambda_fn.collection.pending``) are counted each run while there is none, and
drained by the first run that has one (before step 3, under the lease, for part of it at most), so that
run's build holds them.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.collection import pending
from lambda_fn.contract.manifest import BUILDS_PREFIX, LOCKS_PREFIX, Manifest, read_keys, read_keys_and_hashes
from lambda_fn.contract.shards import SHARD_SUFFIX, Added, Collection, EventOrder, Shard, listing_digest, namespace
from lambda_fn.storage.cache import download_verified
from lambda_fn.storage.publish import NO_MANIFEST, publish_build
from lambda_fn.storage.records import read_manifest, read_pointer
from lambda_fn.storage.store import NotFound, PreconditionFailed, Store
from lambda_fn.vision.indexing import DEFAULT_N_TREES, DEFAULT_SEARCH_K, DEFAULT_SEED, write_build

log = logging.getLogger(__name__)

LEASE_FILE = f"{LOCKS_PREFIX}reindex.json"
# Build files no manifest names any more are kept this long: warm containers may still be downloading them.
GC_GRACE = timedelta(hours=1)
SHARD_DOWNLOADS = 8


@dataclass
class ReindexReport:
    status: str = ""  # published | unchanged | busy | no_model | empty
    build_id: str | None = None
    model_sha256: str | None = None
    count: int = 0
    new_shards: int = 0
    skipped: int = 0
    pending_model: dict | None = None
    pending_images: int = 0  # photos recorded before a model existed, still waiting after this run
    drained: int = 0  # of those, handled by this run: embedded, removed, or found in the live build
    deleted_files: int = 0
    unhashed: int = 0  # images of the build without a perceptual hash (embedded before hashes): never collapsed
    search_k: int | None = None  # what the published build measured it needs (lambda_fn.vision.indexing.tune_search_k)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class Lease:
    """``locks/reindex.json`` held by one run: created if absent, taken over only once expired."""

    def __init__(self, store: Store, seconds: int, owner: str | None = None):
        self.store, self.seconds = store, seconds
        self.owner = owner or uuid.uuid4().hex
        self.etag: str | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.seconds}).encode()

    def acquire(self) -> bool:
        try:
            self.etag = self.store.put(LEASE_FILE, self._body(), if_none_match=True)
            return True
        except PreconditionFailed:
            pass
        try:
            body, etag = self.store.get(LEASE_FILE)
            held = json.loads(body)
            expired = float(held.get("expires_at", 0)) < time.time()
        except NotFound:  # released between our two calls: try once more from the start
            return self._create_once()
        except (ValueError, TypeError):
            expired = True  # an unreadable lease protects nothing
        if not expired:
            return False
        try:
            self.etag = self.store.put(LEASE_FILE, self._body(), if_match=etag)
            log.warning("took over an expired reindex lease", extra={"previous": body.decode(errors="replace")})
            return True
        except PreconditionFailed:
            return False  # another run took it over first

    def _create_once(self) -> bool:
        try:
            self.etag = self.store.put(LEASE_FILE, self._body(), if_none_match=True)
            return True
        except PreconditionFailed:
            return False

    def release(self) -> None:
        """Delete the lease only while it is the version this run wrote: a run that overran its lease and was
        taken over must not free the new holder's. S3 checks that atomically (``If-Match`` on DeleteObject, on
        general purpose buckets since 2025); the ETag is also compared first, which is all that protects on an
        S3-compatible server that ignores the header (a takeover between that read and the delete then wins)."""
        etag, self.etag = self.etag, None
        if etag is None:
            return
        try:
            if self.store.get(LEASE_FILE)[1] == etag:
                self.store.delete(LEASE_FILE, if_match=etag)
                return
        except NotFound:
            return
        except PreconditionFailed:
            pass
        log.warning("reindex lease was taken over by another run; left to it", extra={"owner": self.owner})


def shard_listing(store: Store, model_sha256: str) -> list[str]:
    return sorted(i.key for i in store.list(namespace(model_sha256)) if i.key.endswith(SHARD_SUFFIX))


def merged_all(live: Manifest, shards: list[str]) -> bool:
    """Whether the live build already merged exactly these shards."""
    return (live.shards_digest or listing_digest([])) == listing_digest(shards)


def base_collection(store: Store, manifest: Manifest, workdir: Path) -> tuple[Collection, set[str]]:
    """The live build's collection and the shards already in it."""
    collection = Collection()
    if manifest.collection_file and manifest.collection_sha256:
        path = download_verified(store, manifest.collection_file, manifest.collection_sha256, workdir / "base.npz")
        shard = Shard.from_bytes(path.read_bytes())
        collection.apply(shard)
        return collection, set(shard.merged_shards)
    # A build made before collections were stored: its index holds the vectors; their events count as
    # older than any shard (empty time), so every later upload or removal wins over them.
    index_path = download_verified(store, manifest.index_file, manifest.index_sha256, workdir / "base.ann")
    keys_path = download_verified(store, manifest.keys_file, manifest.keys_sha256, workdir / "base-keys.json")
    index = AnnoyIndex(manifest.dim, manifest.metric)
    index.load(str(index_path))
    entries, hashes = read_keys_and_hashes(keys_path)
    vectors = np.array([index.get_item_vector(i) for i in range(len(entries))], dtype=np.float32)
    index.unload()
    added = [Added(e.key, e.label, "", EventOrder(), e.source, h) for e, h in zip(entries, hashes, strict=True)]
    collection.apply(Shard(added=added, vectors=vectors))
    return collection, set()


def _apply_shards(store: Store, collection: Collection, keys: list[str], workdir: Path) -> int:
    """Apply shards in key order after downloading them in parallel; an unreadable shard is logged and left
    out (it stays unmerged and is retried by the next run). Returns how many were applied."""

    def fetch(key: str) -> Shard | None:
        try:
            body, _ = store.get(key)
            return Shard.from_bytes(body)
        except (ValueError, NotFound) as exc:
            log.error("unreadable embedding shard left out", extra={"key": key, "error": str(exc)})
            return None

    applied = 0
    with ThreadPoolExecutor(max_workers=SHARD_DOWNLOADS) as pool:
        for shard in pool.map(fetch, keys):
            if shard is not None:
                collection.apply(shard)
                applied += 1
    return applied


def _collect_garbage(store: Store, keep: set[str], now: datetime) -> int:
    deleted = 0
    for info in store.list(BUILDS_PREFIX):
        if info.key not in keep and now - info.last_modified > GC_GRACE:
            store.delete(info.key)
            deleted += 1
    return deleted


def reindex(
    store: Store,
    workdir: Path,
    *,
    lease_s: int,
    n_jobs: int = -1,
    collect_garbage: bool = True,
    embed_pending: pending.Embed | None = None,
    drain_s: float | None = None,
) -> ReindexReport:
    """One reindex run; see the module doc. ``workdir`` is scratch space (e.g. under /tmp). ``embed_pending``
    ingests photos that waited for a model (without it they are only counted), for ``drain_s`` seconds at
    most (default: a third of the lease, so the build that follows has time to finish)."""
    started = time.perf_counter()
    report = ReindexReport()
    live, live_etag = read_manifest(store, missing_ok=True) or (None, None)
    pointer = read_pointer(store)
    try:  # the photos that wait must not stop the merge of everything else
        records = pending.record_keys(store)
        drain = bool(records) and embed_pending is not None and (live is not None or pointer is not None)
        if not drain:
            report.pending_images = pending.count(store, records)
    except Exception:
        log.exception("photos waiting for a model could not be counted")
        records, drain = [], False
    if live is None and pointer is None:
        report.status = "no_model"
        if report.pending_images:
            log.warning("photos wait for a model", extra={"pending_images": report.pending_images})
        return report
    target_sha = pointer.model_sha256 if pointer is not None else live.model_sha256
    target_key = pointer.model_file if pointer is not None else live.model_file
    shards = shard_listing(store, target_sha)
    new_model = live is None or target_sha != live.model_sha256

    def unchanged() -> bool:
        return not new_model and merged_all(live, shards)

    if not drain and unchanged():
        report.status, report.build_id = "unchanged", live.build_id
        report.seconds = time.perf_counter() - started
        return report

    lease = Lease(store, lease_s)
    if not lease.acquire():
        report.status = "busy"
        return report
    workdir = Path(workdir) / f"reindex-{lease.owner[:8]}"
    workdir.mkdir(parents=True, exist_ok=True)
    # the live build's collection, downloaded once whether the drain or the merge asks first
    live_base = functools.cache(lambda: base_collection(store, live, workdir))
    try:
        if drain:
            t0 = time.perf_counter()
            deadline = time.monotonic() + (lease_s / 3 if drain_s is None else drain_s)
            covered = live_base()[0] if live is not None else None
            try:
                drained = pending.drain(store, records, embed_pending, live=covered, deadline=deadline)
                report.drained, report.pending_images = drained.handled, drained.waiting
            except Exception:
                log.exception("photos waiting for a model were not drained; the next run retries")
            report.timings["drain_s"] = round(time.perf_counter() - t0, 3)
            shards = shard_listing(store, target_sha)  # with the shards the drain wrote
            if unchanged():
                report.status, report.build_id = "unchanged", live.build_id
                return report
        t0 = time.perf_counter()
        if new_model:
            collection, merged = Collection(), set()
            applied = _apply_shards(store, collection, shards, workdir)
            missing = [] if live is None else _uncovered(store, live, collection, workdir)
            if missing:
                report.pending_model = {
                    "model_sha256": target_sha,
                    "missing": len(missing),
                    "example": missing[:5],
                    "action": "re-embed the collection with the new model (the backfill), then reindex",
                }
                log.warning("new model not live yet: images missing", extra=report.pending_model)
                # keep the live model's namespace up to date meanwhile
                target_sha, target_key = live.model_sha256, live.model_file
                shards = shard_listing(store, target_sha)
                if merged_all(live, shards):
                    report.status, report.build_id = "unchanged", live.build_id
                    return report
                collection, merged = live_base()
                applied = _apply_shards(store, collection, sorted(set(shards) - merged), workdir)
        else:
            collection, merged = live_base()
            applied = _apply_shards(store, collection, sorted(set(shards) - merged), workdir)
        report.timings["merge_s"] = round(time.perf_counter() - t0, 3)
        report.new_shards = applied
        stacked = collection.stacked()  # one (n, dim) array for the index and the collection file alike
        entries, vectors = collection.key_entries(stacked)
        report.skipped = len(collection.skipped)
        if not entries:
            report.status = "empty"
            log.warning("the collection has no searchable image: the live build is kept")
            return report
        t0 = time.perf_counter()
        manifest = write_build(
            workdir / "build",
            entries,
            vectors,
            model=target_key,
            model_sha256=target_sha,
            n_trees=live.n_trees if live else DEFAULT_N_TREES,
            search_k=live.search_k if live else DEFAULT_SEARCH_K,
            seed=live.seed if live else DEFAULT_SEED,
            n_jobs=n_jobs,
            collection=collection.to_shard(merged | set(shards), stacked=stacked),
            shards_digest=listing_digest(shards),
            tune_recall=True,
            hashes=collection.hashes(stacked),
        )
        report.timings["build_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        remote, _ = publish_build(
            store,
            workdir / "build",
            manifest,
            expected_etag=live_etag if live_etag is not None else NO_MANIFEST,
            keep_model=True,
        )
        report.timings["publish_s"] = round(time.perf_counter() - t0, 3)
        report.unhashed = remote.count - remote.hashed
        if report.unhashed:
            log.warning(
                "images without a perceptual hash are never collapsed as duplicates; the backfill re-embeds them",
                extra={"unhashed": report.unhashed, "count": remote.count},
            )
        report.status, report.build_id = "published", remote.build_id
        report.model_sha256, report.count, report.search_k = target_sha, remote.count, remote.search_k
        log.info("build published", extra=report.as_dict())
        if collect_garbage:
            keep = {name for m in (remote, live) if m is not None for _, name, _ in m.files(with_collection=True)}
            report.deleted_files = _collect_garbage(store, keep, datetime.now(UTC))
        return report
    finally:
        lease.release()
        shutil.rmtree(workdir, ignore_errors=True)
        report.seconds = round(time.perf_counter() - started, 3)


def _uncovered(store: Store, live: Manifest, collection: Collection, workdir: Path) -> list[str]:
    """Keys of the live build the new model's namespace knows nothing about."""
    keys_path = download_verified(store, live.keys_file, live.keys_sha256, workdir / "live-keys.json")
    return [e.key for e in read_keys(keys_path) if not collection.knows(e.key)]
