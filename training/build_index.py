"""Embed an image collection with an exported model and build a self-describing Annoy index.

    python -m training.build_index --images data/sample --model artifacts/model.pt --out artifacts/

Writes ``index.ann``, ``keys.json`` (id -> key, label), ``collection.npz`` (the embeddings with each file's
MD5 and time, which a reindex in AWS merges new photos into), optionally ``embeddings.npy``, copies the model
in when it is elsewhere, and writes ``manifest.json`` last (``lambda_fn.indexing.write_build``, which the
reindex function builds with too). Ids are dense 0..n-1 in sorted key order; a file that cannot be read is
skipped and listed, never fatal.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lambda_fn.artifacts import ArtifactError
from lambda_fn.engine import load_model
from lambda_fn.indexing import DEFAULT_N_TREES, DEFAULT_SEARCH_K, DEFAULT_SEED, write_build
from lambda_fn.manifest import EMBEDDINGS_FILE, INDEX_FILE, MODEL_FILE, KeyEntry, file_digest
from lambda_fn.shards import Added, EventOrder, Shard
from training.cli import run
from training.data import Sample, eval_transform, list_images, make_loader

log = logging.getLogger("training.build_index")


@dataclass
class Collection:
    root: Path
    entries: list[KeyEntry]
    paths: list[Path]


def scan_collection(root: Path) -> Collection:
    """Every image under ``root``; key = POSIX path relative to root, label = its top folder (if nested)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no images (jpg, jpeg, png, webp, bmp, gif) found under {root}")
    entries = []
    for p in paths:
        parts = p.relative_to(root).parts
        entries.append(KeyEntry(key="/".join(parts), label=parts[0] if len(parts) > 1 else None))
    return Collection(root, entries, paths)


@torch.inference_mode()
def embed_collection(
    model, resize_size: int, crop_size: int, paths: list[Path], *, batch_size: int, workers: int
) -> tuple[np.ndarray, list[int], list[str]]:
    """Embed ``paths`` in order; returns (vectors, positions embedded, paths skipped)."""
    samples = [Sample(p, i) for i, p in enumerate(paths)]  # label slot carries the position
    loader = make_loader(
        samples, eval_transform(resize_size, crop_size), batch_size=batch_size, workers=workers, shuffle=False
    )
    chunks, kept, skipped = [], [], []
    with tqdm(total=len(paths), desc="embedding", unit="img", dynamic_ncols=True) as bar:
        for images, positions, _, bad in loader:
            skipped += bad
            if images is not None:
                chunks.append(model(images).numpy().astype(np.float32, copy=False))
                kept += positions.tolist()
            bar.update(len(bad) + (0 if images is None else len(images)))
    dim = chunks[0].shape[1] if chunks else 0
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), kept, skipped


def collection_shard(collection: Collection, kept: list[int], vectors: np.ndarray) -> Shard:
    """The build's collection as an embedding shard: each file's MD5 (its S3 ETag once uploaded) and
    modification time, so a later reindex in AWS merges new uploads into it by the same rules."""
    added = []
    for i in kept:
        path, entry = collection.paths[i], collection.entries[i]
        order = EventOrder.at(path.stat().st_mtime)
        added.append(Added(entry.key, entry.label, file_digest(path, "md5"), order))
    return Shard(added=added, vectors=vectors)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, help="collection root (searched recursively)")
    p.add_argument(
        "--model",
        type=Path,
        default=Path("artifacts") / MODEL_FILE,
        help="exported TorchScript model (default: artifacts/model.pt)",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="output folder (default: artifacts)")
    p.add_argument(
        "--n-trees",
        type=int,
        default=DEFAULT_N_TREES,
        help=f"Annoy trees; more = better recall, bigger index (default: {DEFAULT_N_TREES})",
    )
    p.add_argument(
        "--search-k",
        type=int,
        default=DEFAULT_SEARCH_K,
        help=f"default search_k stored in the manifest (default: {DEFAULT_SEARCH_K})",
    )
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"Annoy seed, for reproducible builds (default: {DEFAULT_SEED})"
    )
    p.add_argument("--n-jobs", type=int, default=-1, help="threads building the trees; -1 = all (default: -1)")
    p.add_argument("--on-disk-build", action="store_true", help="build the index in its file, not in memory")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes (default: 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--save-embeddings", action="store_true", help=f"also write {EMBEDDINGS_FILE} (float32)")
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.is_file():
        raise FileNotFoundError(f"model {args.model} does not exist; export one with training.export")
    model, meta = load_model(args.model)
    collection = scan_collection(args.images)
    log.info("embedding %d images from %s at %dpx", len(collection.paths), args.images, meta.crop_size)
    start = time.perf_counter()
    vectors, kept, skipped = embed_collection(
        model, meta.resize_size, meta.crop_size, collection.paths, batch_size=args.batch_size, workers=args.workers
    )
    embed_s = time.perf_counter() - start
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), ", ".join(skipped[:5]))
    if not kept:
        raise ValueError(f"none of the {len(collection.paths)} images under {args.images} could be read")
    entries = [collection.entries[i] for i in kept]

    shard = collection_shard(collection, kept, vectors)
    start = time.perf_counter()
    with tqdm(total=len(entries), desc="indexing", unit="vec", dynamic_ncols=True, leave=False) as bar:
        write_build(
            args.out,
            entries,
            vectors,
            model=args.model,
            n_trees=args.n_trees,
            search_k=args.search_k,
            seed=args.seed,
            n_jobs=args.n_jobs,
            on_disk=args.on_disk_build,
            collection=shard,
            save_embeddings=args.save_embeddings,
            versions={"torch": torch.__version__, "model_weights_sha256": meta.weights_sha256},
            progress=bar.update,
        )
    build_s = time.perf_counter() - start
    size = (args.out / INDEX_FILE).stat().st_size
    print(
        f"indexed {len(entries)} images ({len(skipped)} skipped) into {args.out}: embedding "
        f"{len(entries) / embed_s:.1f} img/s, build {build_s:.2f}s, index {size / 1e6:.1f} MB "
        f"({size / len(entries):.0f} B/image), n_trees={args.n_trees}, search_k={args.search_k}"
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run(main, get_args_parser(), argv, (FileNotFoundError, ValueError, ArtifactError))


if __name__ == "__main__":
    sys.exit(cli())
