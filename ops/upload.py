"""Upload an index build and its images to S3 (or any S3-compatible server).

    python -m ops.upload --artifacts artifacts/ --images data/sample --bucket B --prefix deepfood
    python -m ops.upload --source ifood=/data/ifood2019 --source food101=/data/food-101 --bucket B

Order matters, so that a reader never sees a manifest that points at objects that are not there:
1. the images, under ``<prefix>/images/<key>`` with their Content-Type, each read from its own source's folder
   (skipped when an object of the same size and MD5/ETag is already there, so re-runs are cheap);
2. model, index and key map under ``<prefix>/builds/<build id>/`` (content-addressed: an upload never
   overwrites what a running service is reading);
3. ``<prefix>/manifest.json`` last, naming those build files: this one small PUT switches readers over
   (``lambda_fn.storage.publish``, the contract the reindex function publishes by too). It is conditional on
   the manifest read before step 1: when a reindex published a newer build meanwhile, that build stays live,
   the upload says so and exits non-zero, and a re-run (which uploads nothing twice) publishes this one.

    python -m ops.upload --new-model artifacts/model.pt --bucket B --prefix deepfood

announces a new model to a deployment whose collection keeps itself indexed instead (``models/``); the live
build keeps serving until a backfill has re-embedded the collection with it and a reindex publishes it.

With ``--signing-key KEY`` (a KMS asymmetric key the publisher may ``kms:Sign`` with), either run first signs
the model's sha256 and writes ``models/<sha256>/signature.json`` (``lambda_fn.storage.signing``), before the
manifest or pointer names the model: a deployment with ``model_signing_key`` runs no model without it.
"""

from __future__ import annotations

import argparse
import mimetypes
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from lambda_fn.contract.manifest import (
    DEFAULT_PREFIX,
    MANIFEST_FILE,
    KeyEntry,
    Manifest,
    file_digest,
    file_sha256,
    image_object_key,
    label_metadata,
    read_keys,
)
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.publish import NO_MANIFEST, build_folder, publish_build
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key, read_manifest, read_pointer
from lambda_fn.storage.signing import sign_model, signature_key
from lambda_fn.storage.store import PreconditionFailed, S3Store, s3_client
from lambda_fn.vision.engine import load_model
from training.build_index import Sources, named_source
from training.cli import run

# An upload from a workstation retries a passing throttle more often than a Lambda function would.
UPLOAD_ATTEMPTS = 5
TRANSFER = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=8)


class NewerBuildWon(RuntimeError):
    """The live manifest changed while the upload ran: the newer build stays live, nothing was overwritten."""

    def __init__(self, store: S3Store, ours: Manifest):
        published = read_manifest(store, missing_ok=True)
        theirs = (
            f"build {published[0].build_id} ({published[0].count} images, built {published[0].built_at})"
            if published
            else "a change (the manifest was removed)"
        )
        super().__init__(
            f"a newer build won: {theirs} was published to {store.describe(MANIFEST_FILE)} while this upload ran, "
            f"and stays live; nothing was overwritten. This build ({ours.build_id}, {ours.count} images) is "
            f"uploaded under {store.describe(build_folder(ours))} but not published: run the upload again to "
            "publish it over the newer one (nothing is uploaded twice), or leave the newer build live"
        )


class NewerModelWon(RuntimeError):
    """``models/current.json`` changed while the model uploaded: the model announced meanwhile stays."""

    def __init__(self, store: S3Store, ours: str):
        theirs = read_pointer(store)
        named = f"model {theirs.model_sha256[:12]}…" if theirs else "a change (the pointer was removed)"
        super().__init__(
            f"another model was announced meanwhile: {named} in {store.describe(POINTER_FILE)} stays; nothing "
            f"was overwritten. Model {ours[:12]}… is uploaded to {store.describe(model_key(ours))} but not "
            "announced: run the command again to announce it over the other one"
        )


@dataclass
class UploadReport:
    uploaded_images: int = 0
    skipped_images: int = 0
    uploaded_artifacts: int = 0
    skipped_artifacts: int = 0
    manifest_key: str = ""


def _existing(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """key -> (size, ETag) of the objects under ``prefix``."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
    return out


def content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def upload_images(
    client, bucket: str, prefix: str, images: Sources, entries: list[KeyEntry], workers: int, report: UploadReport
) -> None:
    """Each key's file (from its own source root, for a collection of several) to ``images/<key>``, with its
    label in the object's metadata, so ingest and a backfill label it as the build does whatever the key."""
    labels = {e.key: e.label for e in entries}
    keys = list(labels)
    existing = _existing(client, bucket, image_object_key(prefix, ""))
    todo = []
    for key in keys:
        path = images.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is in the index but not under --images {images}")
        have = existing.get(image_object_key(prefix, key))
        if have and have[0] == path.stat().st_size and have[1] == file_digest(path, "md5"):
            report.skipped_images += 1
        else:
            todo.append((key, path))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(todo), desc="images", unit="img", dynamic_ncols=True) as bar,
    ):
        futures = [
            pool.submit(
                client.upload_file,
                str(path),
                bucket,
                image_object_key(prefix, key),
                ExtraArgs={"ContentType": content_type(key), "Metadata": label_metadata(labels[key])},
                Config=TRANSFER,
            )
            for key, path in todo
        ]
        for future in as_completed(futures):
            future.result()
            report.uploaded_images += 1
            bar.update(1)


def verify_local(artifacts: Path) -> Manifest:
    manifest_path = artifacts / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} does not exist; build the index first (training.build_index)")
    manifest = Manifest.read(manifest_path)
    for _, name, digest in manifest.files(with_collection=True):
        path = artifacts / name
        if not path.is_file() or file_sha256(path) != digest:
            raise ValueError(f"{path} is missing or does not match {manifest_path}; rebuild before uploading")
    return manifest


def sign(store: S3Store, sha256: str, signing_key: str, kms=None) -> None:
    """The publisher's signature over the model, where every function looks for it."""
    signature = sign_model(sha256, signing_key, kms=kms)
    store.put(signature_key(sha256), signature.model_dump_json(indent=2).encode())


def upload(
    artifacts: Path,
    images: Path | Sources | None,
    bucket: str,
    prefix: str,
    *,
    client=None,
    workers: int = 8,
    signing_key: str | None = None,
    kms=None,
) -> UploadReport:
    """Upload a build; with ``images`` (the folder, or the sources, it was built from) its images first. The
    manifest is published only if it is still the one read before the upload began; else ``NewerBuildWon``."""
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    manifest = verify_local(artifacts)
    client = client or s3_client(max_attempts=UPLOAD_ATTEMPTS)
    store = S3Store(bucket, prefix, client)
    live = store.head(MANIFEST_FILE)  # the version this upload replaces: only its ETag, so a broken one may be fixed
    report = UploadReport()
    if signing_key:
        sign(store, manifest.model_sha256, signing_key, kms)
    if images is not None:
        entries = read_keys(artifacts / manifest.keys_file)
        sources = images if isinstance(images, Sources) else Sources.folder(images)
        upload_images(client, bucket, prefix, sources, entries, workers, report)
    total = sum((artifacts / name).stat().st_size for _, name, _ in manifest.files(with_collection=True))
    with tqdm(total=total, desc="artifacts", unit="B", unit_scale=True, dynamic_ncols=True) as bar:
        try:
            _, published = publish_build(
                store, artifacts, manifest, expected_etag=live.etag if live else NO_MANIFEST, progress=bar.update
            )
        except PreconditionFailed:
            raise NewerBuildWon(store, manifest) from None
    report.uploaded_artifacts, report.skipped_artifacts = published.uploaded, published.skipped
    report.manifest_key = prefix + MANIFEST_FILE
    return report


def announce_model(
    model: Path, bucket: str, prefix: str, *, client, signing_key: str | None = None, kms=None
) -> ModelPointer:
    """Upload a new model to ``models/<sha256>/model.pt`` and name it in ``models/current.json``.

    The live build keeps serving; ingest embeds new photos with both models from now on, a backfill
    re-embeds the collection with the new one, and the reindex after it publishes the new model's build.
    Like a build's manifest, the pointer is written only over the one read first: ``NewerModelWon`` otherwise.
    """
    load_model(model)  # refuse a file the service could not load before anyone depends on it
    sha = file_sha256(model)
    store = S3Store(bucket, prefix, client)
    current = store.head(POINTER_FILE)
    store.upload_file(model, model_key(sha))
    if signing_key:
        sign(store, sha, signing_key, kms)
    pointer = ModelPointer(model_file=model_key(sha), model_sha256=sha)
    condition = {"if_match": current.etag} if current else {"if_none_match": True}
    try:
        store.put(POINTER_FILE, pointer.model_dump_json(indent=2).encode(), **condition)
    except PreconditionFailed:
        raise NewerModelWon(store, sha) from None
    return pointer


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="build folder (default: artifacts)")
    p.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="collection folder the index was built from; for a collection of several sources, each as "
        "NAME=DIR (repeat), as given to training.build_index",
    )
    p.add_argument(
        "--source", action="append", dest="images", type=named_source, metavar="NAME=DIR", help="--images NAME=DIR"
    )
    p.add_argument("--bucket", required=True, help="S3 bucket name")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"key prefix in the bucket (default: {DEFAULT_PREFIX})")
    p.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint (default: AWS, or the AWS_ENDPOINT_URL environment variable)",
    )
    p.add_argument("--workers", type=int, default=8, help="parallel image uploads (default: 8)")
    p.add_argument(
        "--new-model",
        type=Path,
        default=None,
        help="instead of a build: announce this exported model for a deployment whose collection keeps "
        "itself indexed (then run the backfill); the live build serves until the new one covers it",
    )
    p.add_argument(
        "--signing-key",
        default=None,
        metavar="KMS_KEY",
        help="sign the model with this KMS asymmetric key (ARN or alias/NAME; needs kms:Sign on it), as a "
        "deployment with DEEPFOOD_MODEL_SIGNING_KEY requires; the stack's ModelSigningKeyArn output names it",
    )
    return p


def main(args: argparse.Namespace) -> int:
    client = s3_client(endpoint_url=args.endpoint_url, max_attempts=UPLOAD_ATTEMPTS)
    if args.new_model is not None:
        if not args.new_model.is_file():
            raise FileNotFoundError(f"model {args.new_model} does not exist; export one with training.export")
        pointer = announce_model(args.new_model, args.bucket, args.prefix, client=client, signing_key=args.signing_key)
        print(
            f"model {pointer.model_sha256[:12]}… uploaded to s3://{args.bucket}/{args.prefix.strip('/')}/"
            f"{pointer.model_file}; run the backfill (python -m ops.backfill) to re-embed the collection"
        )
        return 0
    images = Sources.parse(args.images) if args.images else None
    report = upload(
        args.artifacts,
        images,
        args.bucket,
        args.prefix,
        client=client,
        workers=args.workers,
        signing_key=args.signing_key,
    )
    print(
        f"uploaded {report.uploaded_images} images ({report.skipped_images} already there), "
        f"{report.uploaded_artifacts} artifacts ({report.skipped_artifacts} already there); "
        f"manifest at s3://{args.bucket}/{report.manifest_key}"
    )
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError) and exc.operation_name == "Sign":
        return (
            f"KMS did not sign the model: {exc}. --signing-key must name an ECC_NIST_P256 SIGN_VERIFY key that "
            "your credentials may use with kms:Sign; nothing was published."
        )
    if isinstance(exc, ClientError | BotoCoreError):
        return (
            f"S3 upload failed: {exc}. Check the bucket name, credentials and --endpoint-url; "
            "re-running uploads only what is missing."
        )
    return str(exc)


def cli(argv: list[str] | None = None) -> int:
    expected = (FileNotFoundError, ValueError, ClientError, BotoCoreError, ArtifactError, NewerBuildWon, NewerModelWon)
    return run(main, get_args_parser(), argv, expected, _describe)


if __name__ == "__main__":
    sys.exit(cli())
