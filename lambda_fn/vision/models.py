"""Which models new embeddings are made with, loaded once per container.

The live model is the one the live manifest names. A new model is uploaded under ``models/<sha256>/`` and
announced by ``models/current.json`` (``ModelPointer``); it starts a new embeddings namespace. Until the
collection is re-embedded with it (a backfill) and a reindex publishes a build for it, the live build keeps
serving, and ingest embeds new photos with both models so neither namespace misses them.

A deployment that pins its model (``trusted_model_sha256``) loads no other: an untrusted live or announced
model is skipped with a logged error before it is downloaded, as the search service refuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from lambda_fn.contract.manifest import MANIFEST_FILE, MODELS_PREFIX, Manifest, ModelMeta, Sha256, file_sha256
from lambda_fn.storage.artifacts import ArtifactError, UntrustedModel, cache_path
from lambda_fn.storage.store import NotFound, Store, download_verified

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

POINTER_FILE = f"{MODELS_PREFIX}current.json"


class ModelPointer(BaseModel):
    """``models/current.json``: the model new embeddings are made with."""

    model_file: str = Field(description="Key of the TorchScript file, relative to the deployment's prefix")
    model_sha256: Sha256
    uploaded_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def model_key(sha256: str) -> str:
    return f"{MODELS_PREFIX}{sha256}/model.pt"


@dataclass
class LoadedModel:
    sha256: str
    key: str
    module: torch.jit.ScriptModule
    meta: ModelMeta


_loaded: dict[str, LoadedModel] = {}


def read_manifest(store: Store) -> tuple[Manifest | None, str | None]:
    """The live manifest and its ETag, or (None, None) when nothing is published yet."""
    try:
        body, etag = store.get(MANIFEST_FILE)
    except NotFound:
        return None, None
    try:
        return Manifest.model_validate_json(body), etag
    except ValidationError as exc:
        raise ArtifactError(f"{store.describe(MANIFEST_FILE)} is not a valid manifest: {exc}") from exc


def read_pointer(store: Store) -> ModelPointer | None:
    try:
        body, _ = store.get(POINTER_FILE)
    except NotFound:
        return None
    try:
        return ModelPointer.model_validate_json(body)
    except ValidationError as exc:
        raise ArtifactError(f"{store.describe(POINTER_FILE)} is not a valid model pointer: {exc}") from exc


def load_verified(store: Store, key: str, sha256: str, cache_dir: Path) -> LoadedModel:
    """Download ``key`` into ``cache_dir/<sha256>/`` (verified before it is renamed into place) and load it;
    loaded models are kept for the container's life."""
    if sha256 in _loaded:
        return _loaded[sha256]
    final = cache_path(cache_dir, sha256, "model.pt")
    if not final.is_file() or file_sha256(final) != sha256:  # a cached copy is hashed again, as the service does
        download_verified(store, key, sha256, final)
    from lambda_fn.vision.engine import load_model  # torch: only where a model is loaded, not for reading pointers

    module, meta = load_model(final)
    _loaded[sha256] = LoadedModel(sha256, key, module, meta)
    log.info("model loaded", extra={"model_sha256": sha256, "key": key})
    return _loaded[sha256]


def target_models(
    store: Store, cache_dir: Path, *, trusted_model_sha256: str | None = None, newest_only: bool = False
) -> list[LoadedModel]:
    """The live model, then the announced new one when it differs: what ingest embeds with; with
    ``newest_only``, only the model that is to go live (the announced one, else the live one), which is what a
    backfill embeds the collection with. With ``trusted_model_sha256`` set, any other model is skipped (logged
    as an error) before it is downloaded; when that leaves none of the models asked for, ``UntrustedModel`` is
    raised, so the changes are retried rather than acknowledged unembedded (or a backfill embedding the
    collection with another model than the one it is for)."""
    manifest, _ = read_manifest(store)
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
    if trusted_model_sha256:
        for sha in [sha for sha in wanted if sha != trusted_model_sha256]:
            refused = UntrustedModel(sha, trusted_model_sha256)
            log.error(
                f"model not loaded: {refused.public}",
                extra={"model_sha256": sha, "key": wanted.pop(sha), "trusted_model_sha256": trusted_model_sha256},
            )
    if refused is not None and not wanted:
        raise refused
    return [load_verified(store, key, sha, cache_dir) for sha, key in wanted.items()]
