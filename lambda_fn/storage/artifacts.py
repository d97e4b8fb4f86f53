"""Fetch the files an index build consists of, and verify them, for the search service.

The manifest is read first (``records.read_manifest``). From S3, model, index and key map are then downloaded
in parallel (``cache.download_verified``, boto3 managed transfers) into ``<cache_dir>/<sha256>/<name>``; a
second start with the same cache reuses the files, hashed again, without downloading. A local folder's files
are checked where they are, not copied.

A warm service asks whether the manifest changed with ``read_manifest(store, stamp=...)``: one conditional
GET, or one read of the small local file. A new build's files go into the same cache, and ``prune`` removes
the old build's files once the new build serves.

The cache is trusted no further than this process checked it: the manifest's digests and names are validated
by ``Manifest`` before a path is built from them, and every cache hit is hashed again (the three files in
parallel), because a file a previous process verified may have changed since.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lambda_fn.contract.manifest import Manifest, file_sha256
from lambda_fn.storage.cache import cache_path, download_verified
from lambda_fn.storage.errors import ROLES, ArtifactError
from lambda_fn.storage.records import read_manifest
from lambda_fn.storage.store import FolderStore, Store, open_store


@dataclass
class FetchedArtifacts:
    manifest: Manifest
    model: Path
    index: Path
    keys: Path
    stamp: str = ""  # the manifest's version: its ETag (S3's, or the MD5 of the local file)
    cached: bool = False  # the files are copies in the cache (``prune`` may delete them), not the source folder

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.model, self.index, self.keys


def _read_local(store: FolderStore, manifest: Manifest, stamp: str, have: dict[str, Path]) -> FetchedArtifacts:
    files = {}
    for attr, name, digest in manifest.files():
        if digest in have:
            files[attr] = have[digest]
            continue
        path = store.root / name
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


def fetch_build(
    store: Store, cache_dir: Path, manifest: Manifest, stamp: str, *, have: FetchedArtifacts | None = None
) -> FetchedArtifacts:
    """Verified local paths of the files ``manifest`` names: downloaded into the cache, or checked in the
    folder. A file ``have`` (the live build) already holds with the same sha256 is taken from it, neither
    fetched nor hashed again: a build that only changes the index does not re-read the model."""
    known = (
        {digest: path for (_, _, digest), path in zip(have.manifest.files(), have.paths, strict=True)} if have else {}
    )
    if isinstance(store, FolderStore):
        return _read_local(store, manifest, stamp, known)
    files = {attr: known[digest] for attr, _, digest in manifest.files() if digest in known}
    wanted = [(attr, name, digest) for attr, name, digest in manifest.files() if attr not in files]

    def download(name: str, digest: str, role: str) -> Path:
        return download_verified(store, name, digest, cache_path(cache_dir, digest, name), role=role, reuse=True)

    with ThreadPoolExecutor(max_workers=max(len(wanted), 1)) as pool:
        futures = {attr: pool.submit(download, name, digest, ROLES[attr]) for attr, name, digest in wanted}
        files.update({attr: f.result() for attr, f in futures.items()})
    return FetchedArtifacts(manifest, **files, stamp=stamp, cached=True)


def fetch(uri: str, cache_dir: Path, client=None) -> FetchedArtifacts:
    """Manifest plus verified local paths of model, index and key map."""
    store = open_store(uri, client)  # one client for the manifest and the files
    manifest, stamp = read_manifest(store)
    return fetch_build(store, Path(cache_dir), manifest, stamp)


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
