"""Build an index from embeddings and write it as a self-describing build folder.

One implementation for every way a build is made: ``training.build_index`` (a folder of images on a
workstation) and the reindex function (embedding shards in S3) both end in ``write_build``, so their
builds are interchangeable: same files, same manifest, same Annoy settings.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import (
    COLLECTION_FILE,
    EMBEDDINGS_FILE,
    INDEX_FILE,
    KEYS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    KeyEntry,
    Manifest,
    file_sha256,
    write_keys,
)
from lambda_fn.contract.shards import Shard
from lambda_fn.vision.phash import HASH_NAME

# Chosen from the recall table in docs/benchmarks.md (bench/ann.py): the cheapest setting with
# recall@10 >= 0.98 against exact search at 10^5 synthetic clustered 512-d vectors.
DEFAULT_N_TREES = 50
DEFAULT_SEARCH_K = 20_000
DEFAULT_SEED = 42
METRIC = "angular"  # on L2-normalised vectors: d = sqrt(2 - 2 cos), so ranking equals cosine ranking

# Recall falls as the collection grows at a fixed search_k (docs/scaling.md), so a build measures its own: the
# smallest search_k on this ladder, at least the one it was given, whose recall@10 on sampled images reaches
# the target; the top keeps a query at 10^6 under the latency budget.
RECALL_TARGET = 0.95
SEARCH_K_LADDER = (20_000, 50_000, 100_000)
RECALL_QUERIES = 200

log = logging.getLogger(__name__)


def build_annoy(
    vectors: np.ndarray,
    path: Path,
    *,
    n_trees: int,
    seed: int,
    n_jobs: int = -1,
    on_disk: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Annoy index of ``vectors`` (id i = row i) in ``path``; ``progress(n)`` is called as items are added."""
    index = AnnoyIndex(vectors.shape[1], METRIC)
    index.set_seed(seed)
    if on_disk:  # builds straight into the file, for collections larger than memory
        index.on_disk_build(str(path))
    step = max(1, len(vectors) // 100)
    for i, v in enumerate(vectors):
        index.add_item(i, v.tolist())
        if progress is not None and (i + 1) % step == 0:
            progress(step)
    if progress is not None and len(vectors) % step:
        progress(len(vectors) % step)
    index.build(n_trees, n_jobs=n_jobs)
    if not on_disk:
        index.save(str(path))
    index.unload()


def exact_top_k(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: list[int | None] | None = None,
    *,
    with_similarities: bool = False,
    max_block_bytes: int = 256 << 20,
):
    """Exact top-k by inner product (cosine for unit vectors), nearest first, leaving ``exclude[q]`` out.

    Queries go in blocks so the float32 similarity block stays under ``max_block_bytes`` (10^6 vectors fit).
    Returns ids ``(len(queries), k)``, and their similarities too with ``with_similarities``.
    """
    block = max(1, max_block_bytes // (4 * len(vectors)))
    ids = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        s = queries[start : start + block] @ vectors.T
        for row, ex in enumerate((exclude or [])[start : start + block]):
            if ex is not None:
                s[row, ex] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        ids[start : start + block] = np.take_along_axis(part, order, axis=1)
        sims[start : start + block] = np.take_along_axis(part_sims, order, axis=1)
    return (ids, sims) if with_similarities else ids


def recall_at_k(approx: list[list[int]], exact: np.ndarray, k: int | None = None) -> float:
    """Mean share of the exact top-k (k: all of ``exact``'s columns by default) the approximate search found."""
    k = k or exact.shape[1]
    return float(np.mean([len(set(a[:k]) & set(e[:k].tolist())) / k for a, e in zip(approx, exact, strict=True)]))


def tune_search_k(
    index_path: Path,
    vectors: np.ndarray,
    *,
    floor: int,
    target: float = RECALL_TARGET,
    ladder: tuple[int, ...] = SEARCH_K_LADDER,
    queries: int = RECALL_QUERIES,
    k: int = 10,
    seed: int = DEFAULT_SEED,
) -> tuple[int, float]:
    """The smallest ``search_k`` (``floor`` or a larger step of ``ladder``) whose recall@k against exact search
    reaches ``target``, and that recall; the largest step and its recall when none does.

    Queries are ``queries`` of the indexed vectors, each left out of its own results, so the measure costs
    one exact pass over the collection (a second at 10^6 vectors) and ``queries`` Annoy lookups per step.
    """
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False))
    k = min(k, len(vectors) - 1)
    if k < 1:
        return floor, 1.0
    exact = exact_top_k(vectors, vectors[picked], k, picked.tolist())
    index = AnnoyIndex(vectors.shape[1], METRIC)
    index.load(str(index_path))
    try:
        steps = [floor, *(s for s in ladder if s > floor)]
        for search_k in steps:
            found = [[j for j in index.get_nns_by_item(int(i), k + 1, search_k=search_k) if j != i][:k] for i in picked]
            recall = recall_at_k(found, exact, k)
            if recall >= target:
                break
        return search_k, recall
    finally:
        index.unload()


def library_versions() -> dict[str, str]:
    """Versions that decide whether a build can be read back (recorded in the manifest)."""
    return {name: importlib.metadata.version(name) for name in ("annoy", "numpy")}


def write_build(
    out: Path,
    entries: list[KeyEntry],
    vectors: np.ndarray,
    *,
    model: Path | str,
    model_sha256: str | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    seed: int = DEFAULT_SEED,
    n_jobs: int = -1,
    on_disk: bool = False,
    collection: Shard | None = None,
    save_embeddings: bool = False,
    shards_digest: str | None = None,
    versions: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    tune_recall: bool = False,
    hashes: list[str | None] | None = None,
) -> Manifest:
    """Write model, index, key map (and the collection shard the next reindex starts from) into ``out``,
    then ``manifest.json`` last: a folder with a manifest always holds a complete build.

    With ``tune_recall``, ``search_k`` is a floor: the manifest gets the smallest ``search_k`` from
    ``tune_search_k`` that reaches ``RECALL_TARGET`` on this collection (logged with the recall measured).

    ``model`` is a model file to copy in, or, with ``model_sha256``, the store key of a model already
    published (the manifest then names that key; see ``publish_build(keep_model=True)``).

    ``hashes``: each image's perceptual hash (``lambda_fn.vision.phash.to_hex``; None where unknown), stored in
    the key map; a build without any collapses no duplicates.
    """
    if len(entries) != len(vectors):
        raise ValueError(f"{len(entries)} keys but {len(vectors)} vectors")
    if hashes is not None and len(hashes) != len(entries):
        raise ValueError(f"{len(entries)} keys but {len(hashes)} perceptual hashes")
    if not entries:
        raise ValueError("no images to index: the collection is empty")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest may describe a half-written build
    if model_sha256 is None:
        model_dst = out / MODEL_FILE
        if Path(model).resolve() != model_dst.resolve():
            shutil.copyfile(model, model_dst)
        model_file, model_sha256 = MODEL_FILE, file_sha256(model_dst)
    else:
        model_file = str(model)
    build_annoy(
        vectors, out / INDEX_FILE, n_trees=n_trees, seed=seed, n_jobs=n_jobs, on_disk=on_disk, progress=progress
    )
    if tune_recall:
        floor = search_k
        search_k, recall = tune_search_k(out / INDEX_FILE, vectors, floor=floor, seed=seed)
        log.info(
            "search_k measured",
            extra={"search_k": search_k, "floor": floor, "recall_at_10": round(recall, 4), "count": len(vectors)},
        )
    write_keys(out / KEYS_FILE, entries, hashes)
    hashed = sum(h is not None for h in hashes or [])
    if collection is not None:
        collection.write(out / COLLECTION_FILE)
    if save_embeddings:
        np.save(out / EMBEDDINGS_FILE, vectors)
    manifest = Manifest(
        dim=vectors.shape[1],
        metric=METRIC,
        n_trees=n_trees,
        search_k=search_k,
        seed=seed,
        count=len(entries),
        model_file=model_file,
        model_sha256=model_sha256,
        index_sha256=file_sha256(out / INDEX_FILE),
        keys_sha256=file_sha256(out / KEYS_FILE),
        collection_file=COLLECTION_FILE if collection is not None else None,
        collection_sha256=file_sha256(out / COLLECTION_FILE) if collection is not None else None,
        embeddings_file=EMBEDDINGS_FILE if save_embeddings else None,
        shards_digest=shards_digest,
        perceptual_hash=HASH_NAME if hashed else None,
        hashed=hashed,
        versions={**library_versions(), **(versions or {})},
    )
    manifest.write(out / MANIFEST_FILE)
    return manifest
