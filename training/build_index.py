"""Embed an image collection with an exported model and build a self-describing Annoy index.

    python -m training.build_index --images data/sample --model artifacts/model.pt --out artifacts/

Writes ``index.ann``, ``keys.json`` (id -> key, label), optionally ``embeddings.npy``, copies the model in
when it is elsewhere, and writes ``manifest.json`` last. Ids are dense 0..n-1 in sorted key order; a file
that cannot be read is skipped and listed, never fatal.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from annoy import AnnoyIndex
from tqdm import tqdm

from lambda_fn.artifacts import ArtifactError
from lambda_fn.engine import load_model
from lambda_fn.manifest import (
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
from training.cli import run
from training.data import Sample, eval_transform, list_images, make_loader

log = logging.getLogger("training.build_index")

# Chosen from the recall table in docs/benchmarks.md (bench/ann.py): the cheapest setting with
# recall@10 >= 0.98 against exact search at 10^5 synthetic clustered 512-d vectors.
DEFAULT_N_TREES = 50
DEFAULT_SEARCH_K = 20_000
METRIC = "angular"  # on L2-normalised vectors: d = sqrt(2 - 2 cos), so ranking equals cosine ranking


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


def build_annoy(vectors: np.ndarray, path: Path, *, n_trees: int, seed: int, n_jobs: int, on_disk: bool) -> None:
    index = AnnoyIndex(vectors.shape[1], METRIC)
    index.set_seed(seed)
    if on_disk:  # builds straight into the file, for collections larger than memory
        index.on_disk_build(str(path))
    for i, v in enumerate(tqdm(vectors, desc="indexing", unit="vec", dynamic_ncols=True, leave=False)):
        index.add_item(i, v.tolist())
    index.build(n_trees, n_jobs=n_jobs)
    if not on_disk:
        index.save(str(path))
    index.unload()


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
    p.add_argument("--seed", type=int, default=42, help="Annoy seed, for reproducible builds (default: 42)")
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

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest may describe a half-written build
    model_dst = args.out / MODEL_FILE
    if args.model.resolve() != model_dst.resolve():
        shutil.copyfile(args.model, model_dst)
    start = time.perf_counter()
    build_annoy(
        vectors,
        args.out / INDEX_FILE,
        n_trees=args.n_trees,
        seed=args.seed,
        n_jobs=args.n_jobs,
        on_disk=args.on_disk_build,
    )
    build_s = time.perf_counter() - start
    write_keys(args.out / KEYS_FILE, entries)
    if args.save_embeddings:
        np.save(args.out / EMBEDDINGS_FILE, vectors)
    manifest = Manifest(
        dim=vectors.shape[1],
        metric=METRIC,
        n_trees=args.n_trees,
        search_k=args.search_k,
        seed=args.seed,
        count=len(entries),
        model_sha256=file_sha256(model_dst),
        index_sha256=file_sha256(args.out / INDEX_FILE),
        keys_sha256=file_sha256(args.out / KEYS_FILE),
        embeddings_file=EMBEDDINGS_FILE if args.save_embeddings else None,
        versions={
            "torch": torch.__version__,
            "annoy": importlib.metadata.version("annoy"),
            "numpy": np.__version__,
            "model_weights_sha256": meta.weights_sha256,
        },
    )
    manifest.write(args.out / MANIFEST_FILE)
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
