"""Add, remove and re-sync collection images without rebuilding everything: the ingest and reindex that run
in AWS, run here against a folder (or any S3-compatible server).

    python -m ops.collection add my-dish.jpg --label ramen        # copy in, embed, publish a new build
    python -m ops.collection remove ramen/my-dish.jpg
    python -m ops.collection sync                                 # embed what changed in the folder
    python -m ops.collection reindex                              # merge pending shards, publish
    python -m ops.collection status

``--artifacts`` is the build folder (default: artifacts) or s3://bucket/prefix/; ``--images`` the collection
(default: data/sample for a folder, <artifacts>/images/ for S3). A running ``lambda_fn.search.local`` server picks
the new build up within its manifest check interval, without a restart.

Photos added before any model exists wait under ``pending/`` (``lambda_fn.collection.pending``); ``status`` counts
them, and the first ``reindex`` (or ``add``, ``remove``) once a model is published embeds them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from lambda_fn.collection import pending
from lambda_fn.collection.ingest import Change, IngestReport, ingest, ingest_pending
from lambda_fn.collection.reindex import ReindexReport, base_collection, merged_all, reindex, shard_listing
from lambda_fn.contract.config import Settings
from lambda_fn.contract.shards import EventOrder
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.records import read_manifest, read_pointer
from lambda_fn.storage.store import NotFound, Store, open_store
from lambda_fn.vision.imaging import IMAGE_EXTENSIONS
from lambda_fn.vision.models import target_models
from training.cli import run


class IngestFailed(RuntimeError):
    """Some images could not be read for a reason that may pass (throttling, a timeout)."""


_DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
CHUNK = 64  # changes per ingest call: one shard each, like one SQS batch or one Distributed Map batch


def _stores(args: argparse.Namespace) -> tuple[Store, Store]:
    artifacts = open_store(args.artifacts)
    images = args.images or (
        args.artifacts.rstrip("/") + "/images/" if args.artifacts.startswith("s3://") else "data/sample"
    )
    return open_store(images), artifacts


def _is_image(key: str) -> bool:
    return Path(key).suffix.lower() in IMAGE_EXTENSIONS and not Path(key).name.startswith(".")


def _now() -> EventOrder:
    return EventOrder.at(datetime.now(UTC))


def _ingest_all(changes: list[Change], images: Store, artifacts: Store, args) -> IngestReport:
    total = IngestReport()
    if not changes:
        return total
    models = target_models(artifacts, args.cache_dir)
    with tqdm(total=len(changes), desc="embedding", unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(changes), CHUNK):
            chunk = changes[start : start + CHUNK]
            report = ingest(
                chunk,
                images=images,
                artifacts=artifacts,
                models=models,
                max_bytes=_DEFAULTS["max_ingest_bytes"],
                max_pixels=_DEFAULTS["max_image_pixels"],
            )
            total.embedded += report.embedded
            total.removed += report.removed
            total.reused += report.reused
            total.pending += report.pending
            total.skipped += report.skipped
            total.failed.update(report.failed)
            bar.update(len(chunk))
    for skipped in total.skipped:
        print(f"skipped {skipped.key}: {skipped.reason}", file=sys.stderr)
    if total.pending:
        print(f"no model is published yet: {total.pending} changes wait for one (pending/)", file=sys.stderr)
    if total.failed:
        raise IngestFailed(f"{len(total.failed)} images failed ({next(iter(total.failed.values()))}); run again")
    return total


def _reindex(images: Store, artifacts: Store, args) -> ReindexReport:
    def embed_pending(events: list[pending.PendingEvent]) -> set[str]:
        return ingest_pending(
            events,
            images=images,
            artifacts=artifacts,
            cache_dir=args.cache_dir,
            max_bytes=_DEFAULTS["max_ingest_bytes"],
            max_pixels=_DEFAULTS["max_image_pixels"],
        )

    with tempfile.TemporaryDirectory(prefix="reindex-") as work:
        report = reindex(artifacts, Path(work), lease_s=_DEFAULTS["reindex_lease_s"], embed_pending=embed_pending)
    if report.drained:
        print(f"{report.drained} photos that waited for a model were handled")
    if report.status == "published":
        print(f"build {report.build_id} with {report.count} images is live ({report.seconds:.1f}s)")
    elif report.status == "unchanged":
        print(f"nothing new to index; build {report.build_id} stays live")
    elif report.status == "busy":
        print("another reindex holds the lease; it will publish the changes (or run this again shortly)")
    else:
        print(f"reindex: {report.status}")
    if report.pending_model:
        print(
            f"a new model ({report.pending_model['model_sha256'][:12]}…) waits for {report.pending_model['missing']} "
            "images to be embedded with it: run `python -m ops.collection sync --all`"
        )
    if report.pending_images:
        print(_waiting(report.pending_images, report.status == "no_model"))
    return report


def _waiting(images: int, no_model: bool) -> str:
    if no_model:
        return f"{images} photos wait for a model: publish one (ops.upload), then reindex"
    return f"{images} photos that arrived before the model still wait: the next reindex embeds them"


def cmd_add(args, images: Store, artifacts: Store) -> int:
    changes = []
    for photo in args.photos:
        path = Path(photo)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        if not _is_image(path.name):
            raise ValueError(f"{path} is not an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        key = f"{args.label}/{path.name}" if args.label else path.name
        existing = images.head(key)
        data = path.read_bytes()
        if existing is not None and not args.replace:
            raise ValueError(f"{images.describe(key)} already exists; pass --replace to overwrite it")
        etag = images.put(key, data)
        changes.append(Change(str(len(changes)), "created", key, etag, len(data), _now()))
    report = _ingest_all(changes, images, artifacts, args)
    print(f"added {report.embedded} images ({len(report.skipped)} skipped)")
    _reindex(images, artifacts, args)
    return 0


def cmd_remove(args, images: Store, artifacts: Store) -> int:
    changes = []
    for key in args.keys:
        if images.head(key) is None:
            raise ValueError(f"{images.describe(key)} is not in the collection")
        images.delete(key)
        changes.append(Change(str(len(changes)), "removed", key, order=_now()))
    report = _ingest_all(changes, images, artifacts, args)
    print(f"removed {report.removed} images")
    _reindex(images, artifacts, args)
    return 0


def cmd_sync(args, images: Store, artifacts: Store) -> int:
    live, _ = read_manifest(artifacts, missing_ok=True) or (None, None)
    if live is None:
        raise ArtifactError(f"{artifacts.describe()} has no build yet; run training.build_index first")
    present = {i.key: i for i in images.list() if _is_image(i.key)}
    with tempfile.TemporaryDirectory(prefix="sync-") as work:
        collection, _ = base_collection(artifacts, live, Path(work))
    known = {a.key: a.etag for a, _ in collection.live()}
    known |= {s.key: s.etag for s in collection.skipped}
    changes = []
    for key, info in sorted(present.items()):
        if args.all or known.get(key) != info.etag:
            changes.append(
                Change(str(len(changes)), "created", key, info.etag, info.size, EventOrder.at(info.last_modified))
            )
    for key in sorted(set(known) - set(present)):
        changes.append(Change(str(len(changes)), "removed", key, order=_now()))
    print(f"{len(changes)} changes to ingest ({len(present)} images in {images.describe()})")
    _ingest_all(changes, images, artifacts, args)
    _reindex(images, artifacts, args)
    return 0


def cmd_reindex(args, images: Store, artifacts: Store) -> int:
    _reindex(images, artifacts, args)
    return 0


def cmd_status(args, images: Store, artifacts: Store) -> int:
    live, _ = read_manifest(artifacts, missing_ok=True) or (None, None)
    pointer = read_pointer(artifacts)
    if live is None:
        print(f"no build published in {artifacts.describe()}")
    else:
        shards = shard_listing(artifacts, live.model_sha256)
        unmerged = not merged_all(live, shards)
        print(
            f"live build {live.build_id}: {live.count} images, model {live.model_sha256[:12]}…, built {live.built_at}; "
            f"{len(shards)} shards, {'changes waiting for a reindex' if unmerged else 'all merged'}"
        )
    if pointer is not None and (live is None or pointer.model_sha256 != live.model_sha256):
        print(f"new model {pointer.model_sha256[:12]}… announced {pointer.uploaded_at}; not live yet")
    # counted from the records themselves, not from the last reindex's status
    waiting = pending.latest(pending.read_records(artifacts, pending.record_keys(artifacts))).values()
    images, removals = sum(e.kind == "created" for e in waiting), sum(e.kind == "removed" for e in waiting)
    print(_waiting(images, live is None and pointer is None) if images else "no photos wait for a model")
    if removals:
        print(f"{removals} removals recorded before the model wait for the next reindex too")
    return 0


COMMANDS = {"add": cmd_add, "remove": cmd_remove, "sync": cmd_sync, "reindex": cmd_reindex, "status": cmd_status}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default="artifacts", help="build folder or s3://bucket/prefix/ (default: artifacts)")
    p.add_argument(
        "--images", default=None, help="collection folder or s3:// URI (default: data/sample, or <artifacts>/images/)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "deepfood-models",
        help="where downloaded models are kept (default: <tmp>/deepfood-models)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="copy photos into the collection, embed them, publish a new build")
    add.add_argument("photos", nargs="+", help="image files")
    add.add_argument("--label", default=None, help="label (the collection's top folder), e.g. ramen")
    add.add_argument("--replace", action="store_true", help="overwrite an image of the same name")
    remove = sub.add_parser("remove", help="delete images (by collection key) and publish a build without them")
    remove.add_argument("keys", nargs="+", help="keys as results show them, e.g. ramen/my-dish.jpg")
    sync = sub.add_parser("sync", help="embed what was added, changed or deleted in the collection, then reindex")
    sync.add_argument("--all", action="store_true", help="embed every image again (after announcing a new model)")
    sub.add_parser("reindex", help="merge pending embedding shards and publish a build")
    sub.add_parser("status", help="the live build, pending shards, photos waiting for a model, any new model")
    return p


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    images, artifacts = _stores(args)
    code = COMMANDS[args.command](args, images, artifacts)
    if args.command != "status":
        print(f"done in {time.perf_counter() - started:.1f}s")
    return code


def cli(argv: list[str] | None = None) -> int:
    expected = (FileNotFoundError, ValueError, ArtifactError, NotFound, IngestFailed, ClientError, BotoCoreError)
    return run(main, get_args_parser(), argv, expected)


if __name__ == "__main__":
    sys.exit(cli())
