"""The one verified download, and the cache of verified files it fills.

A download goes to a uniquely named partial file, is checked against the sha256 it should have, and only then
renamed into place, so a file at its final path has always been verified: a crash mid-download, or two
processes sharing the cache, never leave a file that a later start would trust. ``clean_partials`` removes
the partial files a killed process left behind when a service starts.

A cache hit is hashed again before use: a file a previous process verified may have changed since, and the
check costs what a download's check costs anyway. An HMAC kept in memory would prove nothing to the next
process, which is the one that finds a cache hit. ``cache_path`` refuses any path that resolves outside the
cache (a link planted in it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import cache_name, file_sha256
from lambda_fn.storage.errors import ArtifactError, missing, s3_error
from lambda_fn.storage.store import NotFound, Store

log = logging.getLogger(__name__)

# A partial file older than this has stopped growing: its download died with its process or stalled.
STALE_PARTIAL_S = 60.0
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{32})\.partial(?:\.[0-9A-Za-z]+)?")
_in_flight: set[str] = set()  # tokens of the partial files this process is writing now
_in_flight_lock = threading.Lock()


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


def _cache_hit(final: Path, digest: str, key: str) -> bool:
    """Whether ``final`` exists and still has its sha256; a copy that changed since it was verified is
    removed, so the download replaces it."""
    if not final.is_file():
        return False
    if file_sha256(final) == digest:
        log.info("artifact cache hit", extra={"artifact": key, "path": str(final)})
        return True
    log.warning(
        "cached artifact does not match its sha256; downloading it again", extra={"artifact": key, "path": str(final)}
    )
    final.unlink(missing_ok=True)
    return False


def download_verified(
    store: Store, key: str, sha256: str, path: Path, *, role: str = "the file", reuse: bool = False
) -> Path:
    """``key`` downloaded to ``path`` through a partial file that is renamed into place only once its sha256
    matches; with ``reuse``, a file already at ``path`` with that sha256 is taken as it is. Raises ArtifactError
    (``role`` names the file in its public text) when the object is missing, does not match, cannot be read or
    cannot be written; nothing unverified is ever left at ``path``."""
    where = store.describe(key)
    try:
        if reuse and _cache_hit(path, sha256, key):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial_for(path) as partial:
            try:
                store.download_file(key, partial)
            except NotFound:
                raise missing(where, role) from None
            actual = file_sha256(partial)
            if actual != sha256:
                raise ArtifactError(
                    f"{where} does not match its sha256 {sha256[:12]}… (it has {actual[:12]}…): the object is "
                    "corrupt or from another build; upload it again",
                    f"{role} does not match the sha256 in the manifest: it is corrupt or from another build; "
                    "upload the artifacts again",
                )
            os.replace(partial, path)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, where, role) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArtifactError(
                f"no space left in {path.parent} while downloading {where}; give the function more ephemeral "
                f"storage (ephemeral_storage_mb) or point {env_name('cache_dir')} elsewhere",
                f"no space left in the artifact cache while downloading {role}; give the function more ephemeral "
                f"storage (ephemeral_storage_mb) or point {env_name('cache_dir')} elsewhere",
            ) from exc
        raise ArtifactError(
            f"could not write {where} into {path.parent}: {exc}", f"{role} could not be written into the artifact cache"
        ) from exc
    return path
