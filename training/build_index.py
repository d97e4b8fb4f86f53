"""Embed an image collection with an exported model and build a self-describing Annoy index.

    python -m training.build_index --images data/sample --model artifacts/model.pt --out artifacts/
    python -m training.build_index --source ifood=/data/ifood2019 --source food101=/data/food-101 --out artifacts/

A collection is one folder, or several named sources (``--source NAME=DIR``, or ``--images NAME=DIR``).
Each source is read in its own layout (``training.data``): an iFood 2019 or Food-101 root gives its images
with the labels of its metadata, any other folder every image under it labelled by its top folder. A key is
the image's path relative to its source (Food-101: to the folder holding ``meta/``), after ``NAME/`` for a
named source, so keys from different sources cannot collide; ``keys.json`` records each image's source.

Writes ``index.ann``, ``keys.json`` (id -> key, label, source, perceptual hash), ``collection.npz`` (the
embeddings with each file's MD5, time and hash, which a reindex in AWS merges new photos into), optionally
``embeddings.npy``, copies the model in when it is elsewhere, and writes ``manifest.json`` last
(``lambda_fn.vision.indexing.write_build``, which the reindex function builds with too). Ids are dense 0..n-1
in sorted key order; a file that cannot be read is skipped and listed, never fatal; an image its metadata
lists but that is not on disk is reported.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lambda_fn.contract.manifest import EMBEDDINGS_FILE, INDEX_FILE, MODEL_FILE, KeyEntry, file_digest
from lambda_fn.contract.shards import Added, EventOrder, Shard
from lambda_fn.storage.artifacts import ArtifactError
from lambda_fn.vision.engine import load_model
from lambda_fn.vision.indexing import DEFAULT_N_TREES, DEFAULT_SEARCH_K, DEFAULT_SEED, write_build
from lambda_fn.vision.phash import perceptual_hash, to_hex
from training.cli import run
from training.data import Sample, detect_layout, eval_transform, food101_base, list_images, load_labelled, make_loader

log = logging.getLogger("training.build_index")


SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # one key segment


@dataclass(frozen=True)
class Source:
    """Where images come from: ``name`` (the first segment of their keys; None for a lone unnamed folder)
    and ``root``, read in the layout detected there."""

    name: str | None
    root: Path

    @cached_property
    def layout(self) -> str:
        return detect_layout(self.root)

    @cached_property
    def base(self) -> Path:
        """The folder keys are relative to: ``root``, or for Food-101 the folder holding ``meta/``."""
        return food101_base(self.root) if self.layout == "food101" else self.root

    def key(self, relative: str) -> str:
        return f"{self.name}/{relative}" if self.name else relative

    def __str__(self) -> str:
        return f"{self.name}={self.root}" if self.name else str(self.root)


def parse_source(spec: str | Path, *, named: bool = False) -> Source:
    """``DIR`` or ``NAME=DIR`` (a path that itself contains ``=`` can be written ``./a=b``)."""
    text = str(spec)
    name, sep, root = text.partition("=")
    if sep and SOURCE_NAME.fullmatch(name) and root:
        return Source(name, Path(root))
    if named:
        raise ValueError(f"{text!r}: expected NAME=DIR, the name made of letters, digits, '_', '-' and '.'")
    return Source(None, Path(text))


def named_source(spec: str) -> str:
    """argparse ``type`` of ``--source``: the spec, once it is known to be NAME=DIR."""
    try:
        parse_source(spec, named=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


@dataclass(frozen=True)
class Sources:
    """The sources of one collection, and where the file of each of its keys is."""

    items: tuple[Source, ...]

    @classmethod
    def parse(cls, images: list[str | Path] | None = None, named: list[str] | None = None) -> Sources:
        items = [parse_source(s) for s in images or []] + [parse_source(s, named=True) for s in named or []]
        if not items:
            raise ValueError("no images: give the collection with --images DIR or --source NAME=DIR")
        if len(items) > 1:
            for source in items:
                if source.name is None:
                    raise ValueError(f"{source.root}: name every source of a collection of several (NAME=DIR)")
            names = [s.name for s in items]
            if len(set(names)) < len(names):
                raise ValueError(f"source names must differ: {', '.join(names)}")
        return cls(tuple(items))

    @classmethod
    def folder(cls, root: Path) -> Sources:
        """One unnamed folder (a ``Path`` is never read as ``NAME=DIR``)."""
        return cls((Source(None, Path(root)),))

    @property
    def named(self) -> bool:
        return self.items[0].name is not None

    def path(self, key: str) -> Path:
        """The file of ``key``: ``<base>/<key>`` for one unnamed folder, else ``<base of NAME>/<rest>``."""
        if not self.named:
            return self.items[0].base / key
        name, _, rest = key.partition("/")
        for source in self.items:
            if source.name == name:
                return source.base / rest
        raise ValueError(f"{key} comes from source {name!r}: pass its folder as {name}=DIR")

    def __str__(self) -> str:
        return ", ".join(map(str, self.items))


@dataclass
class Collection:
    sources: Sources
    entries: list[KeyEntry]
    paths: list[Path]
    missing: list[Path] = field(default_factory=list)  # listed in a source's metadata but not on disk


def _scan_source(source: Source) -> tuple[list[tuple[str, Path, str | None]], list[Path]]:
    """(relative path, file, label) of every image of ``source``, and the listed images not on disk."""
    if not source.root.is_dir():
        raise FileNotFoundError(f"image folder {source.root} does not exist")
    if source.layout == "folder":
        paths = list_images(source.root)
        if not paths:
            raise ValueError(f"no images (jpg, jpeg, png, webp, bmp, gif) found under {source.root}")
        items = []
        for p in paths:
            parts = p.relative_to(source.root).parts
            items.append(("/".join(parts), p, parts[0] if len(parts) > 1 else None))
        return items, []
    data = load_labelled(source.root, layout=source.layout)
    found: dict[str, tuple[Path, str]] = {}
    for sample in data.train + data.val:
        found.setdefault(sample.path.relative_to(source.base).as_posix(), (sample.path, data.classes[sample.label]))
    return [(rel, path, label) for rel, (path, label) in found.items()], data.missing


def scan_sources(sources: Sources) -> Collection:
    """Every image of every source, each with its key, label and source, in sorted key order."""
    rows, missing = [], []
    for source in sources.items:
        items, gone = _scan_source(source)
        rows += [(source.key(rel), path, label, source.name) for rel, path, label in items]
        missing += gone
        log.info("source %s (%s layout): %d images", source, source.layout, len(items))
    rows.sort(key=lambda r: r[0])
    return Collection(
        sources,
        [KeyEntry(key, label, name) for key, _, label, name in rows],
        [path for _, path, _, _ in rows],
        missing,
    )


def scan_collection(root: Path) -> Collection:
    """The images of one folder, keyed by their path in it (see ``scan_sources``)."""
    return scan_sources(Sources.folder(root))


@torch.inference_mode()
def embed_collection(
    model, resize_size: int, crop_size: int, paths: list[Path], *, batch_size: int, workers: int
) -> tuple[np.ndarray, list[int], list[str], list[str]]:
    """Embed ``paths`` in order; returns (vectors, positions embedded, paths skipped, the perceptual hash of each
    embedded image's prepared crop)."""
    samples = [Sample(p, i) for i, p in enumerate(paths)]  # label slot carries the position
    loader = make_loader(
        samples, eval_transform(resize_size, crop_size), batch_size=batch_size, workers=workers, shuffle=False
    )
    chunks, kept, skipped, hashes = [], [], [], []
    with tqdm(total=len(paths), desc="embedding", unit="img", dynamic_ncols=True) as bar:
        for images, positions, _, bad in loader:
            skipped += bad
            if images is not None:
                chunks.append(model(images).numpy().astype(np.float32, copy=False))
                kept += positions.tolist()
                hashes += [to_hex(perceptual_hash(a)) for a in images.numpy()]
            bar.update(len(bad) + (0 if images is None else len(images)))
    dim = chunks[0].shape[1] if chunks else 0
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), kept, skipped, hashes


def collection_shard(collection: Collection, kept: list[int], vectors: np.ndarray, hashes: list[str]) -> Shard:
    """The build's collection as an embedding shard: each file's MD5 (its S3 ETag once uploaded), modification
    time and perceptual hash, so a later reindex in AWS merges new uploads into it by the same rules."""
    added = []
    for i, phash in zip(kept, hashes, strict=True):
        path, entry = collection.paths[i], collection.entries[i]
        order = EventOrder.at(path.stat().st_mtime)
        added.append(Added(entry.key, entry.label, file_digest(path, "md5"), order, entry.source, phash))
    return Shard(added=added, vectors=vectors)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="collection root (searched recursively; an iFood 2019 or Food-101 root is read by its metadata); "
        "repeat with NAME=DIR for a collection of several sources",
    )
    p.add_argument(
        "--source",
        action="append",
        dest="images",
        type=named_source,
        metavar="NAME=DIR",
        help="one named source of the collection (repeatable): its keys start with NAME/ and say where "
        "each image came from, e.g. --source ifood=/data/ifood2019 --source food101=/data/food-101",
    )
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
    sources = Sources.parse(args.images)
    model, meta = load_model(args.model)
    collection = scan_sources(sources)
    log.info("embedding %d images from %s at %dpx", len(collection.paths), collection.sources, meta.crop_size)
    start = time.perf_counter()
    vectors, kept, skipped, hashes = embed_collection(
        model, meta.resize_size, meta.crop_size, collection.paths, batch_size=args.batch_size, workers=args.workers
    )
    embed_s = time.perf_counter() - start
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), ", ".join(skipped[:5]))
    if not kept:
        raise ValueError(f"none of the {len(collection.paths)} images of {collection.sources} could be read")
    entries = [collection.entries[i] for i in kept]

    shard = collection_shard(collection, kept, vectors, hashes)
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
            hashes=hashes,
        )
    build_s = time.perf_counter() - start
    size = (args.out / INDEX_FILE).stat().st_size
    if collection.sources.named:
        counts = Counter(e.source for e in entries)
        print("sources: " + ", ".join(f"{s.name} {counts[s.name]} images" for s in collection.sources.items))
    if collection.missing:
        shown = ", ".join(str(p) for p in collection.missing[:3])
        print(f"{len(collection.missing)} images listed in the metadata are not on disk (skipped), e.g. {shown}")
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
