"""Collection events that arrive before any model is published: kept under ``pending/`` until one is.

Ingest with no model writes the batch's events to ``pending/events/<digest>.json``, named by its content like
a shard (a redelivered batch writes the same object), and acknowledges them. A durable record, not SQS
redelivery: a message goes to the dead-letter queue after ``maxReceiveCount`` tries, and the first model
may come days later.

The first reindex with a model drains them (``drain``): the latest event per key wins (a removal wins a tie),
an image the live build already holds with the same ETag, or that a later event superseded, needs nothing,
the rest go through the ingest like any event, and a record is deleted once every key in it is handled.
A run that counts them anew or drains them writes ``pending/status.json`` (photos still waiting), which
/health reads with its manifest check instead of listing the prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ValidationError

from lambda_fn.contract.manifest import PENDING_RECORDS_PREFIX, PENDING_STATUS_FILE
from lambda_fn.contract.shards import Collection, EventOrder, events_digest, listing_digest
from lambda_fn.storage.records import PendingStatus, read_status
from lambda_fn.storage.store import NotFound, Store

log = logging.getLogger(__name__)

# Events per ingest call while draining: one shard each, like one SQS batch.
DRAIN_CHUNK = 64
RECORD_DOWNLOADS = 8


class PendingEvent(BaseModel):
    """One collection event, as ingest received it (``lambda_fn.collection.ingest.Change`` without the delivery id)."""

    kind: Literal["created", "removed"]
    key: str
    etag: str = ""
    size: int | None = None
    time: str = ""
    sequencer: str = ""
    label: str | None = None

    @property
    def order(self) -> EventOrder:
        return EventOrder(self.time, self.sequencer)

    def rank(self) -> tuple[tuple[str, str], bool]:
        """Later events rank higher; of two at the same moment the removal does, so a deletion is never undone."""
        return self.order.key(), self.kind == "removed"


class PendingRecord(BaseModel):
    events: list[PendingEvent]


def record_key(events: list[PendingEvent]) -> str:
    created = [(e.key, e.etag, e.order) for e in events if e.kind == "created"]
    removed = [(e.key, e.order) for e in events if e.kind == "removed"]
    return f"{PENDING_RECORDS_PREFIX}{events_digest(created, removed)}.json"


def record(store: Store, events: list[PendingEvent]) -> str:
    """Write the events to wait for a model; returns the record's key."""
    key = record_key(events)
    store.put(key, PendingRecord(events=events).model_dump_json(exclude_defaults=True).encode())
    return key


def record_keys(store: Store) -> list[str]:
    """The records waiting (one LIST)."""
    return sorted(i.key for i in store.list(PENDING_RECORDS_PREFIX) if i.key.endswith(".json"))


def read_records(store: Store, keys: list[str]) -> dict[str, list[PendingEvent]]:
    """Each readable record's events; an unreadable one is logged and left for the next run."""

    def fetch(key: str) -> list[PendingEvent] | None:
        try:
            return PendingRecord.model_validate_json(store.get(key)[0]).events
        except (NotFound, ValidationError, ValueError) as exc:
            log.error("unreadable pending record left out", extra={"key": key, "error": str(exc)})
            return None

    with ThreadPoolExecutor(max_workers=RECORD_DOWNLOADS) as pool:
        return {k: events for k, events in zip(keys, pool.map(fetch, keys), strict=True) if events is not None}


def latest(records: dict[str, list[PendingEvent]]) -> dict[str, PendingEvent]:
    """The latest event per key over all records."""
    out: dict[str, PendingEvent] = {}
    for events in records.values():
        for event in events:
            if event.key not in out or event.rank() >= out[event.key].rank():
                out[event.key] = event
    return out


def _write_status(store: Store, waiting: Iterable[PendingEvent], remaining: list[str]) -> PendingStatus:
    waiting = list(waiting)
    status = PendingStatus(
        images=sum(e.kind == "created" for e in waiting),
        removals=sum(e.kind == "removed" for e in waiting),
        records=len(remaining),
        records_digest=listing_digest(remaining),
    )
    store.put(PENDING_STATUS_FILE, status.model_dump_json(indent=2).encode())
    return status


def count(store: Store, keys: list[str]) -> int:
    """Photos waiting in the records ``keys``: the status's number when it counted these same records, else
    counted from them and the status rewritten."""
    status = read_status(store)
    if status is not None and status.records_digest == listing_digest(keys):
        return status.images
    if not keys and status is None:
        return 0
    return _write_status(store, latest(read_records(store, keys)).values(), keys).images


def _reflected(event: PendingEvent, live: Collection | None) -> bool:
    return live is not None and live.reflects(
        event.key, event.order, etag=event.etag if event.kind == "created" else None
    )


# Ingests the events now that a model exists; returns the keys that failed for a reason that may pass.
Embed = Callable[[list[PendingEvent]], set[str]]


@dataclass
class Drained:
    handled: int = 0  # latest events embedded, removed or found in the live build
    waiting: int = 0  # photos still waiting after the drain
    deleted: int = 0  # records fully handled, so deleted


def drain(
    store: Store, keys: list[str], embed: Embed, *, live: Collection | None, deadline: float | None = None
) -> Drained:
    """Ingest the latest event of each key in the records ``keys`` that the live build lacks, a chunk at a
    time until ``deadline`` (``time.monotonic()``; one chunk at least); write the status of what still
    waits, then delete the records whose every key is handled."""
    records = read_records(store, keys)
    events = latest(records)
    resolved = {key for key, event in events.items() if _reflected(event, live)}
    todo = [events[key] for key in sorted(events) if key not in resolved]
    out = Drained()
    for start in range(0, len(todo), DRAIN_CHUNK):
        if start and deadline is not None and time.monotonic() > deadline:
            break
        chunk = todo[start : start + DRAIN_CHUNK]
        try:
            failed = embed(chunk)
        except Exception:
            log.exception("pending photos not ingested; the next run retries", extra={"events": len(chunk)})
            break
        resolved |= {e.key for e in chunk if e.key not in failed}
    out.handled = len(resolved)
    done = [k for k, evs in records.items() if all(e.key in resolved for e in evs)]
    remaining = sorted(set(keys) - set(done))
    out.waiting = _write_status(store, (e for k, e in events.items() if k not in resolved), remaining).images
    for key in done:
        store.delete(key)
    out.deleted = len(done)
    log.info(
        "pending photos drained",
        extra={"handled": out.handled, "waiting": out.waiting, "records_deleted": out.deleted, "records": len(keys)},
    )
    return out
