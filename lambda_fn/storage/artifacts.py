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

The cache is trusted no further than this process checked it. The manifest's digests and names are validated
by ``Manifest`` before a path is built from them, and ``cache_path`` refuses any path that resolves outside
the cache (a link planted in it). A cache hit is hashed again before use: a file a previous process verified
may have changed since, and the cost is what a download's check costs anyway: 0.05-0.13 s for the 85 MB demo
model and 0.26-0.5 s for a 10^5-image index (257 MiB), measured with ``file_sha256`` on a shared 2-vCPU x86
machine with SHA extensions; the three files hash in parallel. An HMAC kept in memory would prove nothing to
the next process, which is the one that finds a cache hit. Partial files a killed process left behind are
removed by ``clean_partials`` when a service starts.

An ``ArtifactError`` carries two texts: ``str(exc)``, the operator's detail (object URIs, paths, the underlying
error) for the logs, and ``public``, what an API client may read: what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import (
    COLLECTION_FILE,
    INDEX_FILE,
    KEYS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    cache_name,
    file_sha256,
)

log = logging.getLogger(__name__)

# What a client reads when the raiser gave no public text: the engine's own checks (dims, counts, TorchScript),
# whose messages name files and quote library errors, so they go to the logs only.
GENERIC_PUBLIC = (
    "the published build could not be loaded: its files are corrupt, come from different builds, or hold a "
    "model this service cannot run; publish the build again with `python -m ops.upload` (the service's "
    "logs have the details)"
)
# How a public message names each file of a build: its role and the name training gives it, never the key or
# path the manifest or the settings give.
ROLES = {
    "model": f"the model ({MODEL_FILE})",
    "index": f"the index ({INDEX_FILE})",
    "keys": f"the key map ({KEYS_FILE})",
    "collection": f"the collection shard ({COLLECTION_FILE})",
}
MANIFEST_ROLE = f"the manifest ({MANIFEST_FILE})"
# A partial file older than this has stopped growing: its download died with its process or stalled.
STALE_PARTIAL_S = 60.0
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{32})\.partial(?:\.[0-9A-Za-z]+)?")
_in_flight: set[str] = set()  # tokens of the partial files this process is writing now
_in_flight_lock = threading.Lock()


class ArtifactError(RuntimeError):
    """Artifacts are missing, corrupt or do not belong together. ``str()`` is the detail for the logs;
    ``public`` says what is wrong and what to do, without locations or library messages."""

    def __init__(self, detail: str, public: str | None = None):
        super().__init__(detail)
        self.public = public or GENERIC_PUBLIC


class UntrustedModel(ArtifactError):
    """The manifest names a model other than the one this deployment pins (``trusted_model_sha256``)."""

    def __init__(self, published: str, trusted: str):
        setting = env_name("trusted_model_sha256")
        super().__init__(
            f"the manifest names model sha256 {published}, not the one this deployment trusts: {setting} pins "
            f"{trusted}",
            f"the published model (sha256 {published[:12]}…) is not the one this deployment trusts ({setting} "
            f"{trusted[:12]}…): if that model is yours, deploy again with {setting} set to its sha256; "
            "otherwise publish the trusted model's build again",
        )
        self.published, self.trusted = published, trusted


def check_trusted(manifest: Manifest, trusted: str | None) -> None:
    """Raise ``UntrustedModel`` when ``trusted`` is set and the manifest names another model. Called before
    the model is downloaded, hashed or loaded: a TorchScript file is a program."""
    if trusted and manifest.model_sha256 != trusted:
        raise UntrustedModel(manifest.model_sha256, trusted)


def cache_path(cache_dir: Path, digest: str, name: str) -> Path:
    """``<cache_dir>/<digest>/<final part of name>``, refused unless it resolves inside the cache."""
    path = Path(cache_dir) / digest / cache_name(name)
    root = Path(cache_dir).resolve()
    if not path.resolve().is_relative_to(root):
        raise ArtifactError(
            f"cache path {path} resolves to {path.resolve()}, outside the cache {root}",
            "the artifact cache holds a link that leads outside it; empty the cache folder "
            f"({env_name('cache_dir')}) and start the service again",
        )
    return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _held(name: str) -> bool | None:
    """Whether a live process is writing the partial file ``name``; None when its name does not say."""
    match = _PARTIAL.fullmatch(name)
    if match is None:
        return None
    if int(match["pid"]) == os.getpid():  # a process before us may have had our pid (a new Lambda sandbox)
        with _in_flight_lock:
            return match["token"] in _in_flight
    return _process_alive(int(match["pid"]))


def clean_partials(cache_dir: Path, *, stale_s: float = STALE_PARTIAL_S) -> list[Path]:
    """Remove the partial files under ``cache_dir/<sha256>/`` that no live process is writing, or that have not
    grown for ``stale_s``, and folders that leaves empty; returns the files removed. A final path is never
    touched: only verified files are renamed there."""
    removed = []
    now = time.time()
    for path in Path(cache_dir).glob("*/.*.partial*"):
        with contextlib.suppress(FileNotFoundError):
            if _held(path.name) is False or now - path.stat().st_mtime > stale_s:
                path.unlink()
                removed.append(path)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
    if removed:
        log.warning("removed partial files left by an earlier process", extra={"files": [str(p) for p in removed]})
    return removed


@contextlib.contextmanager
def partial_for(final: Path):
    """A partial file beside ``final`` named so ``clean_partials`` knows whose it is; removed on the way out
    unless it was renamed into place."""
    token = uuid.uuid4().hex
    partial = final.parent / f".{final.name}.{os.getpid()}.{token}.partial"
    with _in_flight_lock:
        _in_flight.add(token)
    try:
        yield partial
    finally:
        partial.unlink(missing_ok=True)
        with _in_flight_lock:
            _in_flight.discard(token)


# SigV4 everywhere: presigned URLs signed with the legacy scheme are refused in newer regions.
S3_CONFIG = Config(
    connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"
)
# Three files download at once; 4 x 8 MB in flight each keeps the peak memory of a cold start small.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4, max_io_queue=16)


_MISCONFIGURED = (
    f"the artifacts location is not configured correctly; set {env_name('artifacts_uri')} to s3://bucket/prefix/ "
    "or a folder"
)


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
                raise ArtifactError(f"{uri!r} has no bucket name; expected s3://bucket/prefix/", _MISCONFIGURED)
            prefix = parsed.path.strip("/")
            return cls(parsed.netloc, prefix + "/" if prefix else "", None)
        if parsed.scheme not in ("", "file"):
            raise ArtifactError(
                f"unsupported artifacts location {uri!r}; use s3://bucket/prefix/ or a folder", _MISCONFIGURED
            )
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


def _describe_s3_error(exc: Exception, what: str, role: str) -> tuple[str, str]:
    """(detail for the logs, public message) for an S3 failure reading ``what`` (an s3:// URI), ``role``."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return (
                f"{what} does not exist; upload the artifacts with `python -m ops.upload`",
                f"{role} does not exist: no build is published, or not all of it; publish one with "
                "`python -m ops.upload`",
            )
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (
                f"access to {what} was denied ({code}): it may not be uploaded yet (S3 answers 403 for a "
                "missing object when listing is not allowed) - run `python -m ops.upload` - or the "
                "function's IAM role and the bucket name are wrong",
                f"access to {role} was denied: it may not be published yet (`python -m ops.upload`), or the "
                "function may not read it",
            )
        if code == "NoSuchBucket":
            return (
                f"the bucket of {what} does not exist; check {env_name('artifacts_uri')}",
                f"the artifacts bucket does not exist; check {env_name('artifacts_uri')}",
            )
        return f"S3 refused {what}: {code or exc}", f"S3 refused to serve {role}; the service retries"
    return f"S3 is unreachable while reading {what}: {exc}", f"S3 is unreachable or too slow while reading {role}"


def _local_manifest(location: Location) -> tuple[bytes, str]:
    """The local manifest's bytes and their sha256: for a file this small as cheap as comparing mtime and size,
    and a rewrite within the file system's mtime resolution cannot go unnoticed."""
    manifest_path = location.path / MANIFEST_FILE
    try:
        body = manifest_path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"{manifest_path} does not exist; build the index with `python -m training.build_index`",
            f"{MANIFEST_ROLE} does not exist: no build is published; build one with `python -m training.build_index`",
        ) from None
    except OSError as exc:
        raise ArtifactError(f"{manifest_path} could not be read: {exc}", f"{MANIFEST_ROLE} could not be read") from exc
    return body, hashlib.sha256(body).hexdigest()


def _parse(body: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate_json(body)
    except ValueError as exc:
        raise ArtifactError(
            f"{where} is not a valid manifest: {exc}",
            "the published manifest is not valid (the logs say which field); publish the build again with "
            "`python -m ops.upload`",
        ) from exc


def _read_local(location: Location, manifest: Manifest, stamp: str, have: dict[str, Path]) -> FetchedArtifacts:
    root = location.path
    files = {}
    for attr, name, digest in manifest.files():
        if digest in have:
            files[attr] = have[digest]
            continue
        path = root / name
        role = ROLES[attr]
        if not path.is_file():
            raise ArtifactError(
                f"{path} is listed in the manifest but does not exist",
                f"{role} the manifest lists does not exist; build or copy the artifacts again",
            )
        if file_sha256(path) != digest:
            raise ArtifactError(
                f"{path} does not match the sha256 in its manifest; rebuild or re-copy it",
                f"{role} does not match the sha256 in the manifest: it is corrupt or from another build; build "
                "or copy the artifacts again",
            )
        files[attr] = path
    return FetchedArtifacts(manifest, **files, stamp=stamp)


def _cache_hit(final: Path, digest: str, name: str) -> bool:
    """Whether ``final`` exists and still has its sha256; a copy that changed since it was verified is
    removed, so the download below replaces it."""
    if not final.is_file():
        return False
    if file_sha256(final) == digest:
        log.info("artifact cache hit", extra={"artifact": name, "path": str(final)})
        return True
    log.warning(
        "cached artifact does not match its sha256; downloading it again", extra={"artifact": name, "path": str(final)}
    )
    final.unlink(missing_ok=True)
    return False


def _download(client, location: Location, name: str, digest: str, cache_dir: Path, role: str) -> Path:
    final = cache_path(cache_dir, digest, name)
    try:
        if _cache_hit(final, digest, name):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with partial_for(final) as partial:
            client.download_file(location.bucket, location.prefix + name, str(partial), Config=TRANSFER)
            actual = file_sha256(partial)
            if actual != digest:
                raise ArtifactError(
                    f"{location.describe(name)} has sha256 {actual[:12]}…, the manifest says {digest[:12]}…: "
                    "the object is corrupt or from another build; upload the artifacts again",
                    f"{role} does not match the sha256 in the manifest: it is corrupt or from another build; "
                    "upload the artifacts again",
                )
            os.replace(partial, final)
    except (ClientError, BotoCoreError) as exc:
        raise ArtifactError(*_describe_s3_error(exc, location.describe(name), role)) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArtifactError(
                f"no space left in {cache_dir} while downloading {name}; give the function more ephemeral "
                f"storage (ephemeral_storage_mb) or point {env_name('cache_dir')} elsewhere",
                f"no space left in the artifact cache while downloading {role}; give the function more ephemeral "
                f"storage (ephemeral_storage_mb) or point {env_name('cache_dir')} elsewhere",
            ) from exc
        raise ArtifactError(
            f"could not write {name} into {cache_dir}: {exc}", f"{role} could not be written into the artifact cache"
        ) from exc
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
        raise ArtifactError(*_describe_s3_error(exc, location.describe(MANIFEST_FILE), MANIFEST_ROLE)) from exc
    except BotoCoreError as exc:
        raise ArtifactError(*_describe_s3_error(exc, location.describe(MANIFEST_FILE), MANIFEST_ROLE)) from exc


def _fetch_s3(
    location: Location, cache_dir: Path, client, manifest: Manifest, etag: str, have: dict[str, Path]
) -> FetchedArtifacts:
    files = {attr: have[digest] for attr, _, digest in manifest.files() if digest in have}
    wanted = [(attr, name, digest) for attr, name, digest in manifest.files() if attr not in files]
    with ThreadPoolExecutor(max_workers=max(len(wanted), 1)) as pool:
        futures = {
            attr: pool.submit(_download, client, location, name, digest, cache_dir, ROLES[attr])
            for attr, name, digest in wanted
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
