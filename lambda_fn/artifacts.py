"""Fetch the artifacts an index build consists of, from S3 or a local folder, and verify them.

From S3, the manifest is read first; model, index and key map are then downloaded in parallel (boto3
managed transfers) into ``<cache_dir>/<sha256>/<name>``. A download goes to a uniquely named partial file,
is checked against the manifest's sha256, and only then renamed into place, so a file at its final path has
always been verified: a crash mid-download, or two processes sharing the cache, never leave a file that a
later start would trust. A second start with the same cache reuses the files without downloading.

A warm service asks whether the manifest changed with ``read_manifest(..., stamp=...)``: one conditional
GET (``If-None-Match`` with the ETag it has; S3 answers 304 when nothing changed), or the digest of the local
file. A new build's files go into the same cache, and ``prune`` removes the old build's files once the new
build serves.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
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
    stamp: str = ""  # the manifest's version: its S3 ETag, or the sha256 of the local file's bytes
    cached: bool = False  # the files are copies in the cache (``prune`` may delete them), not the source folder

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.model, self.index, self.keys


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


def _local_manifest(location: Location) -> tuple[bytes, str]:
    """The local manifest's bytes and their sha256: for a file this small as cheap as comparing mtime and size,
    and a rewrite within the file system's mtime resolution cannot go unnoticed."""
    manifest_path = location.path / MANIFEST_FILE
    try:
        body = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"{manifest_path} does not exist; build the index with `python -m training.build_index`"
        ) from None
    except OSError as exc:
        raise ArtifactError(f"{manifest_path} could not be read: {exc}") from exc
    return body, hashlib.sha256(body).hexdigest()


def _parse(body: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate_json(body)
    except ValueError as exc:
        raise ArtifactError(f"{where} is not a valid manifest: {exc}") from exc


def _read_local(location: Location, manifest: Manifest, stamp: str, have: dict[str, Path]) -> FetchedArtifacts:
    root = location.path
    files = {}
    for attr, name, digest in manifest.files():
        if digest in have:
            files[attr] = have[digest]
            continue
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path} is listed in the manifest but does not exist")
        if file_sha256(path) != digest:
            raise ArtifactError(f"{path} does not match the sha256 in its manifest; rebuild or re-copy it")
        files[attr] = path
    return FetchedArtifacts(manifest, **files, stamp=stamp)


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


def _s3_manifest(location: Location, client, etag: str | None = None) -> tuple[bytes, str] | None:
    """The manifest's bytes and ETag; None when ``etag`` is given and still current (S3 answers 304)."""
    conditional = {"IfNoneMatch": etag} if etag else {}
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.prefix + MANIFEST_FILE, **conditional)
        return response["Body"].read(), response["ETag"]
    except ClientError as exc:
        if etag and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
            return None
        raise ArtifactError(_describe_s3_error(exc, location.describe(MANIFEST_FILE))) from exc
    except BotoCoreError as exc:
        raise ArtifactError(_describe_s3_error(exc, location.describe(MANIFEST_FILE))) from exc


def _fetch_s3(
    location: Location, cache_dir: Path, client, manifest: Manifest, etag: str, have: dict[str, Path]
) -> FetchedArtifacts:
    files = {attr: have[digest] for attr, _, digest in manifest.files() if digest in have}
    wanted = [(attr, name, digest) for attr, name, digest in manifest.files() if attr not in files]
    with ThreadPoolExecutor(max_workers=max(len(wanted), 1)) as pool:
        futures = {
            attr: pool.submit(_download, client, location, name, digest, cache_dir) for attr, name, digest in wanted
        }
        files.update({attr: f.result() for attr, f in futures.items()})
    return FetchedArtifacts(manifest, **files, stamp=etag, cached=True)


def read_manifest(uri: str, client=None, *, stamp: str | None = None) -> tuple[Manifest, str] | None:
    """The published manifest and its stamp (S3 ETag, or sha256 of the local file); None when its stamp is
    still ``stamp``, which costs one conditional GET (S3 answers 304, no body) or one read of a small file."""
    location = Location.parse(uri)
    if location.is_s3:
        current = _s3_manifest(location, client or s3_client(), stamp)
    else:
        current = _local_manifest(location)
        if current[1] == stamp:
            current = None
    if current is None:
        return None
    body, new_stamp = current
    return _parse(body, location.describe(MANIFEST_FILE)), new_stamp


def fetch_build(
    uri: str, cache_dir: Path, manifest: Manifest, stamp: str, client=None, *, have: FetchedArtifacts | None = None
) -> FetchedArtifacts:
    """Verified local paths of the files ``manifest`` names: from S3 into the cache, or checked in the folder.
    A file ``have`` (the live build) already holds with the same sha256 is taken from it, neither fetched nor
    hashed again: a build that only changes the index does not re-read the model."""
    known = (
        {digest: path for (_, _, digest), path in zip(have.manifest.files(), have.paths, strict=True)} if have else {}
    )
    location = Location.parse(uri)
    if not location.is_s3:
        return _read_local(location, manifest, stamp, known)
    return _fetch_s3(location, Path(cache_dir), client or s3_client(), manifest, stamp, known)


def fetch(uri: str, cache_dir: Path, client=None) -> FetchedArtifacts:
    """Manifest plus verified local paths of model, index and key map."""
    if client is None and Location.parse(uri).is_s3:
        client = s3_client()  # one client for the manifest and the files
    manifest, stamp = read_manifest(uri, client)
    return fetch_build(uri, cache_dir, manifest, stamp, client)


def prune(old: FetchedArtifacts, new: FetchedArtifacts) -> list[Path]:
    """Delete the cached files of ``old`` that ``new`` does not use (never a source folder's files); returns
    them. Safe while ``old`` is still being read on Linux: an unlinked file lives on until its last open
    handle or mapping (the memory-mapped index) goes, and the model and key map were read into memory."""
    if not old.cached:
        return []
    removed = []
    for path in set(old.paths) - set(new.paths):
        path.unlink(missing_ok=True)
        removed.append(path)
        with contextlib.suppress(OSError):  # the <sha256>/ folder, unless something else is in it
            path.parent.rmdir()
    return removed
