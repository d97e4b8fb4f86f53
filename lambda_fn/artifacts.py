"""Fetch the artifacts an index build consists of, from S3 or a local folder, and verify them.

From S3, the manifest is read first; model, index and key map are then downloaded in parallel (boto3
managed transfers) into ``<cache_dir>/<sha256>/<name>``. A download goes to a uniquely named partial file,
is checked against the manifest's sha256, and only then renamed into place, so a file at its final path has
always been verified: a crash mid-download, or two processes sharing the cache, never leave a file that a
later start would trust. A second start with the same cache reuses the files without downloading.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lambda_fn.manifest import MANIFEST_FILE, Manifest, file_sha256

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """Artifacts are missing, corrupt or do not belong together."""


# SigV4 everywhere: presigned URLs signed with the legacy scheme are refused in newer regions.
S3_CONFIG = Config(
    connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"
)
# Three files download at once; 4 x 8 MB in flight each keeps the peak memory of a cold start small.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4, max_io_queue=16)


@dataclass(frozen=True)
class Location:
    """``s3://bucket/prefix/`` or a local folder."""

    bucket: str | None
    prefix: str
    path: Path | None

    @classmethod
    def parse(cls, uri: str) -> Location:
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ArtifactError(f"{uri!r} has no bucket name; expected s3://bucket/prefix/")
            prefix = parsed.path.strip("/")
            return cls(parsed.netloc, prefix + "/" if prefix else "", None)
        if parsed.scheme not in ("", "file"):
            raise ArtifactError(f"unsupported artifacts location {uri!r}; use s3://bucket/prefix/ or a folder")
        return cls(None, "", Path(parsed.path if parsed.scheme == "file" else uri))

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def describe(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}" if self.is_s3 else str(self.path / name)


@dataclass
class FetchedArtifacts:
    manifest: Manifest
    model: Path
    index: Path
    keys: Path


def s3_client():
    """boto3 S3 client; honours AWS_ENDPOINT_URL (any S3-compatible server) like every boto3 client."""
    return boto3.client("s3", config=S3_CONFIG)


def _describe_s3_error(exc: Exception, what: str) -> str:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return f"{what} does not exist; upload the artifacts with `python -m training.upload`"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"access to {what} was denied ({code}): it may not be uploaded yet (S3 answers 403 for a "
                "missing object when listing is not allowed) - run `python -m training.upload` - or the "
                "function's IAM role and the bucket name are wrong"
            )
        if code == "NoSuchBucket":
            return f"the bucket of {what} does not exist; check DEEPFOOD_ARTIFACTS_URI"
        return f"S3 refused {what}: {code or exc}"
    return f"S3 is unreachable while reading {what}: {exc}"


def _read_local(location: Location) -> FetchedArtifacts:
    root = location.path
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} does not exist; build the index with `python -m training.build_index`")
    manifest = Manifest.read(manifest_path)
    files = {}
    for attr, name, digest in manifest.files():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but does not exist")
        if file_sha256(path) != digest:
            raise ArtifactError(f"{path} does not match the sha256 in its manifest; rebuild or re-copy it")
        files[attr] = path
    return FetchedArtifacts(manifest, **files)


def _download(client, location: Location, name: str, digest: str, cache_dir: Path) -> Path:
    final = cache_dir / digest / Path(name).name
    if final.is_file():  # only ever renamed into place after verification
        log.info("artifact cache hit", extra={"artifact": name, "path": str(final)})
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.{uuid.uuid4().hex}.partial"
    try:
        client.download_file(location.bucket, location.prefix + name, str(partial), Config=TRANSFER)
        actual = file_sha256(partial)
        if actual != digest:
            raise ArtifactError(
                f"{location.describe(name)} has sha256 {actual[:12]}…, the manifest says {digest[:12]}…: "
                "the object is corrupt or from another build; upload the artifacts again"
            )
        os.replace(partial, final)
    except (ClientError, BotoCoreError) as exc:
        raise ArtifactError(_describe_s3_error(exc, location.describe(name))) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArtifactError(
                f"no space left in {cache_dir} while downloading {name}; give the function more ephemeral "
                "storage (ephemeral_storage_mb) or point DEEPFOOD_CACHE_DIR elsewhere"
            ) from exc
        raise ArtifactError(f"could not write {name} into {cache_dir}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return final


def _fetch_s3(location: Location, cache_dir: Path, client) -> FetchedArtifacts:
    manifest_uri = location.describe(MANIFEST_FILE)
    try:
        body = client.get_object(Bucket=location.bucket, Key=location.prefix + MANIFEST_FILE)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise ArtifactError(_describe_s3_error(exc, manifest_uri)) from exc
    try:
        manifest = Manifest.model_validate_json(body)
    except ValueError as exc:
        raise ArtifactError(f"{manifest_uri} is not a valid manifest: {exc}") from exc
    wanted = manifest.files()
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        futures = {
            attr: pool.submit(_download, client, location, name, digest, cache_dir) for attr, name, digest in wanted
        }
        files = {attr: f.result() for attr, f in futures.items()}
    return FetchedArtifacts(manifest, **files)


def fetch(uri: str, cache_dir: Path, client=None) -> FetchedArtifacts:
    """Manifest plus verified local paths of model, index and key map."""
    location = Location.parse(uri)
    if not location.is_s3:
        return _read_local(location)
    return _fetch_s3(location, Path(cache_dir), client or s3_client())
