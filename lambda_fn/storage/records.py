"""Small JSON records beside the builds that the service and the collection pipeline both read.

- ``pending/status.json`` (``PendingStatus``): photos that arrived before any model, as the last reindex
  counted them; the search service reads it with its manifest check, the reindex writes it
  (``lambda_fn.collection.pending``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import BaseModel, Field, ValidationError

from lambda_fn.contract.manifest import PENDING_STATUS_FILE
from lambda_fn.storage.store import NotFound, Store

log = logging.getLogger(__name__)


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
