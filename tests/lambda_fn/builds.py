"""Second builds for the hot-swap tests, publishing them into an artifacts folder as a build would, and waiting
for the service to take them."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from annoy import AnnoyIndex

from lambda_fn.contract.manifest import (
    BUILDS_PREFIX,
    INDEX_FILE,
    KEYS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    MODEL_META_FILE,
    Manifest,
    file_sha256,
    read_keys,
    write_keys,
)

# The second build drops ids 0-9 and reverses the rest: id 7 is gone, id 0 is the first build's id 59.
REBUILT_IDS = list(range(59, 9, -1))


def subset_build(artifacts_dir: Path, out: Path, ids: list[int], *, model: Path | None = None) -> Manifest:
    """Another build, flat in ``out``: the session build's images ``ids``, in that order, so an id names another
    image than before. Same model unless ``model`` is given. The index is built from the session index's own
    vectors: no torch work."""
    base = Manifest.read(artifacts_dir / MANIFEST_FILE)
    out.mkdir(parents=True, exist_ok=True)
    source = AnnoyIndex(base.dim, base.metric)
    source.load(str(artifacts_dir / base.index_file))
    index = AnnoyIndex(base.dim, base.metric)
    index.set_seed(base.seed)
    for new_id, old_id in enumerate(ids):
        index.add_item(new_id, source.get_item_vector(old_id))
    source.unload()
    index.build(base.n_trees, n_jobs=1)
    index.save(str(out / INDEX_FILE))
    keys = read_keys(artifacts_dir / base.keys_file)
    write_keys(out / KEYS_FILE, [keys[i] for i in ids])
    shutil.copyfile(model or artifacts_dir / base.model_file, out / MODEL_FILE)
    manifest = base.model_copy(
        update={
            "count": len(ids),
            "model_sha256": file_sha256(out / MODEL_FILE),
            "index_sha256": file_sha256(out / INDEX_FILE),
            "keys_sha256": file_sha256(out / KEYS_FILE),
            "embeddings_file": None,
            "collection_file": None,
            "collection_sha256": None,
            "shards_digest": None,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    manifest.write(out / MANIFEST_FILE)
    return manifest


def resaved_model(model_path: Path, out: Path) -> Path:
    """The same network saved again with one more metadata field: a different model file (new sha256)."""
    extra = {MODEL_META_FILE: ""}
    model = torch.jit.load(str(model_path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[MODEL_META_FILE])
    meta["resaved"] = True
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(model, str(out), _extra_files={MODEL_META_FILE: json.dumps(meta)})
    return out


def _replace(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` as a new file (new inode) renamed over it: a served, memory-mapped index is
    never rewritten in place (Annoy's own save unlinks first for the same reason)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, partial)
    os.replace(partial, dst)


def publish_flat(build: Path, folder: Path) -> Manifest:
    """Rewrite ``folder`` with the flat build in ``build`` the way training.build_index does: manifest last."""
    manifest = Manifest.read(build / MANIFEST_FILE)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    for _, name, _ in manifest.files():
        _replace(build / name, folder / name)
    _replace(build / MANIFEST_FILE, folder / MANIFEST_FILE)
    return manifest


def stage_build(build: Path, folder: Path) -> Manifest:
    """Copy the flat build in ``build`` into ``folder`` in the layout ops.upload gives S3: its files under
    builds/<id>/, never rewritten. Returns the manifest that names them there; nothing reads it until
    ``publish_manifest``."""
    local = Manifest.read(build / MANIFEST_FILE)
    prefix = f"{BUILDS_PREFIX}{local.build_id}/"
    for _, name, _ in local.files():
        _replace(build / name, folder / prefix / name)
    return local.model_copy(update={f"{role}_file": prefix + name for role, name, _ in local.files()})


def publish_manifest(manifest: Manifest, folder: Path) -> None:
    """Switch readers of ``folder`` to ``manifest`` in one rename."""
    partial = folder / (MANIFEST_FILE + ".partial")
    manifest.write(partial)
    os.replace(partial, folder / MANIFEST_FILE)


def publish_builds(build: Path, folder: Path) -> Manifest:
    """``stage_build``, then the manifest last."""
    manifest = stage_build(build, folder)
    publish_manifest(manifest, folder)
    return manifest


def flat_copy(artifacts_dir: Path, folder: Path) -> Path:
    """A new ``folder`` holding a copy of the flat build in ``artifacts_dir``: its manifest and the files it names."""
    folder.mkdir()
    manifest = Manifest.read(artifacts_dir / MANIFEST_FILE)
    for name in (MANIFEST_FILE, *(name for _, name, _ in manifest.files())):
        shutil.copyfile(artifacts_dir / name, folder / name)
    return folder


def health_until(client, predicate, timeout: float = 60.0) -> dict:
    """/health (each request may start a due check) until ``predicate(body)``; the body that satisfied it."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/health")
        assert r.status_code == 200, r.text
        body = r.json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"gave up waiting; last /health: {body}"
        time.sleep(0.05)
