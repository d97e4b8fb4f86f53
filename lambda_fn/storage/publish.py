"""Publish a build folder so that readers switch to it in one step.

The contract every publisher follows (``ops.upload`` from a workstation, the reindex function in AWS):
1. the build's files go under ``builds/<build id>/``: content-addressed, so an upload never overwrites a
   file a running service is reading, and re-publishing an identical build uploads nothing;
2. ``manifest.json`` is written last and names those files: this one small PUT switches readers over.

A publish interrupted anywhere before step 2 leaves the live manifest untouched. ``expected_etag`` makes
step 2 conditional: the manifest is replaced only if it is still the one the caller built on, so a build
published meanwhile by someone else is never overwritten by an older view of the collection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lambda_fn.contract.manifest import BUILDS_PREFIX, MANIFEST_FILE, Manifest
from lambda_fn.storage.store import Store

# "the manifest must not exist yet" for ``expected_etag``; None means unconditional
NO_MANIFEST = ""


@dataclass
class PublishReport:
    build_id: str = ""
    uploaded: int = 0
    skipped: int = 0
    manifest_etag: str = ""


def build_folder(manifest: Manifest) -> str:
    return f"{BUILDS_PREFIX}{manifest.build_id}/"


def publish_build(
    store: Store,
    folder: Path,
    manifest: Manifest,
    *,
    expected_etag: str | None = None,
    keep_model: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Manifest, PublishReport]:
    """Upload ``folder``'s files named by ``manifest`` into the build folder, then the manifest.

    ``keep_model``: ``manifest.model_file`` already names the model's key in the store (the live build's,
    verified by its sha256 like any file), so the model is neither uploaded nor copied again: a reindex
    that only changes the index publishes a few MB, not the model. ``progress(bytes)`` follows the upload.
    Raises ``store.PreconditionFailed`` when ``expected_etag`` no longer matches the live manifest.
    """
    report = PublishReport(build_id=manifest.build_id)
    target = build_folder(manifest)
    existing = {info.key: info.size for info in store.list(target)}
    names = {}
    for role, name, _ in manifest.files(with_collection=True):
        if role == "model" and keep_model:
            continue
        local = folder / name
        key = target + Path(name).name
        names[f"{role}_file"] = key
        size = local.stat().st_size
        if existing.get(key) == size:
            report.skipped += 1
        else:
            store.upload_file(local, key)
            report.uploaded += 1
        if progress is not None:
            progress(size)
    remote = manifest.model_copy(update=names)
    body = (remote.model_dump_json(indent=2) + "\n").encode()
    if expected_etag is None:
        report.manifest_etag = store.put(MANIFEST_FILE, body)
    elif expected_etag == NO_MANIFEST:
        report.manifest_etag = store.put(MANIFEST_FILE, body, if_none_match=True)
    else:
        report.manifest_etag = store.put(MANIFEST_FILE, body, if_match=expected_etag)
    return remote, report
