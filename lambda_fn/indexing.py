"""Build an index from embeddings and write it as a self-describing build folder.

One implementation for every way a build is made: ``training.build_index`` (a folder of images on a
workstation) and the reindex function (embedding shards in S3) both end in ``write_build``, so their
builds are interchangeable: same files, same manifest, same Annoy settings.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from lambda_fn.manifest import (
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
from lambda_fn.shards import Shard

# Chosen from the recall table in docs/benchmarks.md (bench/ann.py): the cheapest setting with
# recall@10 >= 0.98 against exact search at 10^5 synthetic clustered 512-d vectors.
DEFAULT_N_TREES = 50
DEFAULT_SEARCH_K = 20_000
DEFAULT_SEED = 42
METRIC = "angular"  # on L2-normalised vectors: d = sqrt(2 - 2 cos), so ranking equals cosine ranking


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
) -> Manifest:
    """Write model, index, key map (and the collection shard the next reindex starts from) into ``out``,
    then ``manifest.json`` last: a folder with a manifest always holds a complete build.

    ``model`` is a model file to copy in, or, with ``model_sha256``, the store key of a model already
    published (the manifest then names that key; see ``publish_build(keep_model=True)``).
    """
    if len(entries) != len(vectors):
        raise ValueError(f"{len(entries)} keys but {len(vectors)} vectors")
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
    write_keys(out / KEYS_FILE, entries)
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
        versions={**library_versions(), **(versions or {})},
    )
    manifest.write(out / MANIFEST_FILE)
    return manifest
