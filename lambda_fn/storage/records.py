"""Small JSON records beside the builds that the service and the collection pipeline both read.

- ``manifest.json`` (``Manifest``): the live build; ``read_manifest`` is how everyone reads it.
- ``models/current.json`` (``ModelPointer``): a new model announced before a build for it is live; it starts
  a new embeddings namespace, and ingest embeds with it as well as the live model until that build is live.
- ``pending/status.json`` (``PendingStatus``): photos that arrived before any model, as the last reindex
  counted them; the search service reads it with its manifest check, the reindex writes it
  (``lambda_fn.collection.pending``).
- ``vectors/live.json`` (``LiveIndex``): on the S3 Vectors store, the index that serves and its model, in
  place of a manifest; the switch to a new model's index writes it (``lambda_fn.collection.vectors``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, ValidationError

from lambda_fn.contract.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    MODELS_PREFIX,
    PENDING_STATUS_FILE,
    Manifest,
    Sha256,
)
from lambda_fn.contract.vectors import LIVE_RECORD
from lambda_fn.storage.errors import MANIFEST_ROLE, ArtifactError, missing, s3_error
from lambda_fn.storage.store import NotFound, S3Store, Store

log = logging.getLogger(__name__)

POINTER_FILE = f"{MODELS_PREFIX}current.json"


def read_manifest(store: Store, *, stamp: str | None = None, missing_ok: bool = False) -> tuple[Manifest, str] | None:
    """The published manifest and its ETag (S3's, or the MD5 of the local file). None when its ETag is still
    ``stamp``, which costs one conditional GET (S3 answers 304, no body) or one read of a small file; None too,
    with ``missing_ok``, when nothing is published yet. Any other failure raises ArtifactError."""
    where = store.describe(MANIFEST_FILE)
    try:
        current = store.get_changed(MANIFEST_FILE, stamp)
    except NotFound:
        if missing_ok:
            return None
        if isinstance(store, S3Store):
            raise missing(where, MANIFEST_ROLE) from None
        raise ArtifactError(
            f"{where} does not exist; build the index with `python -m training.build_index`",
            f"{MANIFEST_ROLE} does not exist: no build is published; build one with `python -m training.build_index`",
        ) from None
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, where, MANIFEST_ROLE) from exc
    except OSError as exc:
        raise ArtifactError(f"{where} could not be read: {exc}", f"{MANIFEST_ROLE} could not be read") from exc
    if current is None:
        return None
    body, etag = current
    try:
        return Manifest.model_validate_json(body), etag
    except ValueError as exc:
        raise ArtifactError(
            f"{where} is not a valid manifest: {exc}",
            "the published manifest is not valid (the logs say which field); publish the build again with "
            "`python -m ops.upload`",
        ) from exc


class ModelPointer(BaseModel):
    """``models/current.json``: the model new embeddings are made with."""

    model_file: str = Field(description="Key of the TorchScript file, relative to the deployment's prefix")
    model_sha256: Sha256
    uploaded_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def model_key(sha256: str) -> str:
    return f"{MODELS_PREFIX}{sha256}/{MODEL_FILE}"


def read_pointer(store: Store) -> ModelPointer | None:
    try:
        body, _ = store.get(POINTER_FILE)
    except NotFound:
        return None
    try:
        return ModelPointer.model_validate_json(body)
    except ValidationError as exc:
        raise ArtifactError(f"{store.describe(POINTER_FILE)} is not a valid model pointer: {exc}") from exc


class PendingStatus(BaseModel):
    """``pending/status.json``: what the last reindex found waiting; small, so /health can read it often."""

    images: int = Field(description="Photos recorded before a model existed that are not embedded yet")
    removals: int = Field(0, description="Removals recorded before a model existed, not applied yet")
    records: int = Field(0, description="Objects under pending/events/ these were counted from")
    records_digest: str = Field("", description="Digest of those objects' names: a recount is needed when it differs")
    counted_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def read_status(store: Store) -> PendingStatus | None:
    try:
        body, _ = store.get(PENDING_STATUS_FILE)
    except NotFound:
        return None
    try:
        return PendingStatus.model_validate_json(body)
    except ValidationError:
        log.warning("pending status unreadable; it is counted again", extra={"key": PENDING_STATUS_FILE})
        return None


class RetiredIndex(BaseModel):
    """An S3 Vectors index that stopped serving, kept until ``delete_after`` (ISO 8601) for a rollback."""

    index: str
    model_sha256: Sha256
    delete_after: str


class LiveIndex(BaseModel):
    """``vectors/live.json``: which S3 Vectors index serves, and with which model. One object, rewritten with
    a conditional PUT, so a switch to a new model's index is atomic for every reader."""

    index: str = Field(description="The serving index's name: the service's build id on this store")
    model_file: str = Field(description="Key of the model's TorchScript file, relative to the deployment's prefix")
    model_sha256: Sha256
    dim: int
    count: int | None = Field(None, description="Vectors in the index when it went live")
    switched_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    retired: list[RetiredIndex] = Field(default_factory=list)


def read_live_index(store: Store, *, stamp: str | None = None) -> tuple[LiveIndex, str] | None:
    """The live-index record and its ETag; None when none is written yet or when its ETag is still ``stamp``."""
    where = store.describe(LIVE_RECORD)
    try:
        current = store.get_changed(LIVE_RECORD, stamp)
    except NotFound:
        return None
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, where, "the live vector index record") from exc
    if current is None:
        return None
    body, etag = current
    try:
        return LiveIndex.model_validate_json(body), etag
    except ValidationError as exc:
        raise ArtifactError(
            f"{where} is not a valid live-index record: {exc}", "the live vector index record is not valid"
        ) from exc


def write_live_index(store: Store, live: LiveIndex, *, previous_etag: str | None) -> str:
    """Publish ``live``; raises ``PreconditionFailed`` when another writer changed the record since it was read."""
    data = live.model_dump_json(indent=1).encode()
    if previous_etag is None:
        return store.put(LIVE_RECORD, data, if_none_match=True)
    return store.put(LIVE_RECORD, data, if_match=previous_etag)
