"""Objects under a prefix, in S3 or in a local folder, behind one small interface.

Ingest, reindex and the local collection tool read and write through a ``Store``, so the same code runs in
Lambda against S3, in tests against a loopback S3 server, and on a laptop against a folder. Keys are
relative to the store's root (``s3://bucket/<prefix>/`` or the folder), with POSIX separators.

Conditional writes make the reindex lease safe without a database: ``put(..., if_none_match=True)`` creates
an object only if it does not exist (S3's ``If-None-Match: *``), ``put(..., if_match=etag)`` replaces it only
if nobody changed it since it was read (S3's ``If-Match``), and ``delete(..., if_match=etag)`` removes it only
if it is still that version (S3's conditional delete). The folder store gives the same guarantees with a lock
file.

``open_store`` takes the one spelling of a location every setting and CLI uses (``s3://bucket/prefix/`` or a
folder, parsed by ``Location``), and ``s3_client`` is the one S3 client factory (timeouts, retries, signing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from lambda_fn.storage.errors import MISCONFIGURED, ArtifactError

# SigV4 everywhere: presigned URLs signed with the legacy scheme are refused in newer regions.
S3_CONFIG = Config(
    connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"
)
# Three files download at once; 4 x 8 MB in flight each keeps the peak memory of a cold start small.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4, max_io_queue=16)


def s3_client(*, endpoint_url: str | None = None, max_attempts: int | None = None):
    """boto3 S3 client with ``S3_CONFIG``; honours AWS_ENDPOINT_URL (any S3-compatible server) like every boto3
    client. ``max_attempts``: more retries, for a long run from a workstation (an upload) that should not stop
    at a passing throttle."""
    config = S3_CONFIG
    if max_attempts is not None:
        config = config.merge(Config(retries={"max_attempts": max_attempts, "mode": "standard"}))
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


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
                raise ArtifactError(f"{uri!r} has no bucket name; expected s3://bucket/prefix/", MISCONFIGURED)
            prefix = parsed.path.strip("/")
            return cls(parsed.netloc, prefix + "/" if prefix else "", None)
        if parsed.scheme not in ("", "file"):
            raise ArtifactError(
                f"unsupported artifacts location {uri!r}; use s3://bucket/prefix/ or a folder", MISCONFIGURED
            )
        return cls(None, "", Path(parsed.path if parsed.scheme == "file" else uri))

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def describe(self, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}" if self.is_s3 else str(self.path / name)


class PreconditionFailed(Exception):
    """A conditional write found the object in another state than the caller expected."""


class NotFound(KeyError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: datetime


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Store:
    """Interface shared by S3Store and FolderStore."""

    def describe(self, key: str = "") -> str:
        raise NotImplementedError

    def get(self, key: str) -> tuple[bytes, str]:
        """(content, ETag); raises NotFound."""
        raise NotImplementedError

    def get_with_metadata(self, key: str) -> tuple[bytes, str, dict[str, str]]:
        """(content, ETag, user metadata); a folder keeps no metadata. Raises NotFound."""
        data, etag = self.get(key)
        return data, etag, {}

    def get_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """(content, ETag), or None when the object's ETag is still ``etag``; raises NotFound."""
        data, current = self.get(key)
        return None if etag is not None and current == etag else (data, current)

    def head(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write ``data``; returns the new ETag. Raises PreconditionFailed when a condition does not hold."""
        raise NotImplementedError

    def upload_file(self, path: Path, key: str) -> None:
        raise NotImplementedError

    def download_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def copy(self, source: str, destination: str) -> None:
        raise NotImplementedError

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove ``key`` (nothing when absent). With ``if_match``, only while its ETag is still that: raises
        PreconditionFailed when it changed or is gone."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        raise NotImplementedError

    def full_key(self, key: str) -> str:
        """The key as the backing service names it (for S3: with the store's prefix)."""
        return key

    def relative_key(self, full_key: str) -> str | None:
        """Inverse of ``full_key``; None when ``full_key`` lies outside this store."""
        return full_key


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or s3_client()

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def full_key(self, key: str) -> str:
        return self.prefix + key

    def relative_key(self, full_key: str) -> str | None:
        return full_key[len(self.prefix) :] if full_key.startswith(self.prefix) else None

    def get(self, key: str) -> tuple[bytes, str]:
        data, etag, _ = self.get_with_metadata(key)
        return data, etag

    def get_with_metadata(self, key: str) -> tuple[bytes, str, dict[str, str]]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(key) from exc
            raise
        return response["Body"].read(), response["ETag"].strip('"'), response.get("Metadata") or {}

    def get_changed(self, key: str, etag: str | None) -> tuple[bytes, str] | None:
        """One conditional GET (``If-None-Match``): S3 answers 304, without a body, when nothing changed."""
        if etag is None:
            return self.get(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, IfNoneMatch=f'"{etag}"')
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304:
                return None
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(key) from exc
            raise
        return response["Body"].read(), response["ETag"].strip('"')

    def head(self, key: str) -> ObjectInfo | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return ObjectInfo(key, r["ETag"].strip('"'), r["ContentLength"], r["LastModified"])

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        extra = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = f'"{if_match}"'
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **extra)
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write to the same key won the race
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(key) from exc
            if if_match is not None and _error_code(exc) in ("NoSuchKey", "404"):
                raise PreconditionFailed(key) from exc
            raise
        return response["ETag"].strip('"')

    def upload_file(self, path: Path, key: str) -> None:
        self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=TRANSFER)

    def download_file(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self.prefix + key, str(path), Config=TRANSFER)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(key) from exc
            raise

    def copy(self, source: str, destination: str) -> None:
        """Server-side copy: the bytes never pass through this process."""
        self.client.copy(
            {"Bucket": self.bucket, "Key": self.prefix + source},
            self.bucket,
            self.prefix + destination,
            Config=TRANSFER,
        )

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        extra = {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key, **extra)
        except ClientError as exc:
            # with If-Match, S3 answers 412 for another version and 404 for none
            if if_match is not None and _error_code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise PreconditionFailed(key) from exc
            raise

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        ):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][len(self.prefix) :], obj["ETag"].strip('"'), obj["Size"], obj["LastModified"]
                )


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# A listed file's MD5 by path, with the (inode, size, mtime) it was computed for; shared by every FolderStore
# of the process (the local server and the collection tool open one per call).
_ETAGS: dict[Path, tuple[tuple[int, int, int], str]] = {}


class FolderStore(Store):
    """A local folder with S3's semantics: ETag = MD5 of the content (as S3 gives for single-part uploads),
    writes atomic (temporary file, then rename), conditional writes serialised by a lock file."""

    _LOCK = ".store.lock"

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self, key: str = "") -> str:
        return str(self.root / key)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} leaves the folder {self.root}")
        return path

    def full_key(self, key: str) -> str:
        return str(self._path(key))

    def relative_key(self, full_key: str) -> str | None:
        path = Path(full_key).resolve()
        root = self.root.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(key) from exc
        return data, _md5(data)

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(key, _md5(path.read_bytes()), stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    @contextlib.contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / self._LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        path = self._path(key)
        if not (if_none_match or if_match is not None):
            self._write(path, data)
            return _md5(data)
        with self._locked():
            exists = path.is_file()
            if if_none_match and exists:
                raise PreconditionFailed(key)
            if if_match is not None and (not exists or _md5(path.read_bytes()) != if_match):
                raise PreconditionFailed(key)
            self._write(path, data)
        return _md5(data)

    def upload_file(self, path: Path, key: str) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)

    def download_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(key)
        shutil.copyfile(src, path)

    def copy(self, source: str, destination: str) -> None:
        self.upload_file(self._path(source), destination)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        if if_match is None:
            path.unlink(missing_ok=True)
            return
        with self._locked():
            if not path.is_file() or _md5(path.read_bytes()) != if_match:
                raise PreconditionFailed(key)
            path.unlink()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        root = self.root.resolve()
        # walk only the folder the prefix names (``embeddings/<sha>/`` is one folder of a big tree)
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.is_dir():
            return
        found = []
        for path in start.rglob("*"):
            key = path.relative_to(root).as_posix()
            if not key.startswith(prefix) or not path.is_file() or path.name.startswith("."):
                continue
            found.append((key, path))
        for key, path in sorted(found):
            stat = path.stat()
            yield ObjectInfo(key, self._etag(path, stat), stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def _etag(self, path: Path, stat: os.stat_result) -> str:
        """The file's MD5 (S3's ETag of a single-part upload), hashed again only when the file changed: a
        listing of many shards would otherwise read every one of them each time."""
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = _ETAGS.get(path)
        if cached is None or cached[0] != stamp:
            cached = _ETAGS[path] = (stamp, _md5(path.read_bytes()))
        return cached[1]


def open_store(uri: str, client=None) -> Store:
    """``s3://bucket/prefix/`` or a folder path as a Store."""
    location = Location.parse(uri)
    if location.is_s3:
        return S3Store(location.bucket, location.prefix, client)
    return FolderStore(location.path)
