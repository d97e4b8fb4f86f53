"""Which models new embeddings are made with, loaded once per container.

The live model is the one the live manifest names (on the S3 Vectors store, the live-index record); a new
one is announced by ``models/current.json``
(``lambda_fn.storage.records.ModelPointer``) and starts a new embeddings namespace. Until the collection is
re-embedded with it (a backfill) and a reindex publishes a build for it, the live build keeps serving, and
ingest embeds new photos with both models so neither namespace misses them.

A deployment that pins its model (``trusted_model_sha256``) loads no other, and one that names its publisher's
key (``model_signing_key``) loads only models that key signed (``lambda_fn.storage.signing``): a refused live or
announced model is skipped with a logged error before it is downloaded, as the search service refuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lambda_fn.contract.manifest import MODEL_FILE, ModelMeta
from lambda_fn.storage.cache import cache_path, download_verified
from lambda_fn.storage.errors import ROLES, RefusedModel
from lambda_fn.storage.records import read_live_index, read_manifest, read_pointer
from lambda_fn.storage.signing import check_model
from lambda_fn.storage.store import Store

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    sha256: str
    key: str
    module: torch.jit.ScriptModule
    meta: ModelMeta


_loaded: dict[str, LoadedModel] = {}


def load_verified(store: Store, key: str, sha256: str, cache_dir: Path) -> LoadedModel:
    """Download ``key`` into ``cache_dir/<sha256>/`` (verified before it is renamed into place; a cached copy
    is hashed again, as the service does) and load it; loaded models are kept for the container's life."""
    if sha256 in _loaded:
        return _loaded[sha256]
    final = download_verified(
        store, key, sha256, cache_path(cache_dir, sha256, MODEL_FILE), role=ROLES["model"], reuse=True
    )
    from lambda_fn.vision.engine import load_model  # torch: only where a model is loaded, not for reading pointers

    module, meta = load_model(final)
    _loaded[sha256] = LoadedModel(sha256, key, module, meta)
    log.info("model loaded", extra={"model_sha256": sha256, "key": key})
    return _loaded[sha256]


def target_models(
    store: Store,
    cache_dir: Path,
    *,
    trusted_model_sha256: str | None = None,
    model_signing_key: str | None = None,
    newest_only: bool = False,
) -> list[LoadedModel]:
    """The live model, then the announced new one when it differs: what ingest embeds with; with
    ``newest_only``, only the model that is to go live (the announced one, else the live one), which is what a
    backfill embeds the collection with. With ``trusted_model_sha256`` set, any other model is skipped (logged
    as an error) before it is downloaded, and so is, with ``model_signing_key`` set, a model its publisher did
    not sign; when that leaves none of the models asked for, that ``RefusedModel`` is raised, so the changes are
    retried rather than acknowledged unembedded (or a backfill embedding the collection with another model than
    the one it is for)."""
    # on the S3 Vectors store the live-index record names the live model (a manifest there is not served)
    manifest, _ = read_live_index(store) or read_manifest(store, missing_ok=True) or (None, None)
    pointer = read_pointer(store)
    wanted: dict[str, str] = {}
    if manifest is not None:
        wanted[manifest.model_sha256] = manifest.model_file
    if pointer is not None:
        wanted.setdefault(pointer.model_sha256, pointer.model_file)
    if newest_only and wanted:
        newest = pointer.model_sha256 if pointer is not None else manifest.model_sha256
        wanted = {newest: wanted[newest]}
    refused = None
    for sha in list(wanted):
        try:
            check_model(store, sha, trusted_model_sha256=trusted_model_sha256, model_signing_key=model_signing_key)
        except RefusedModel as exc:
            refused = exc
            log.error(
                f"model not loaded: {exc.public}",
                extra={"model_sha256": sha, "key": wanted.pop(sha), "reason": str(exc)},
            )
    if refused is not None and not wanted:
        raise refused
    return [load_verified(store, key, sha, cache_dir) for sha, key in wanted.items()]
