"""Embedding shards: names from their events, a lossless round trip, and the latest event per key wins."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from lambda_fn.contract.manifest import KeyEntry
from lambda_fn.contract.shards import Added, Collection, EventOrder, Removed, Shard, Skipped, events_digest


def _vec(i: int, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i % dim] = 1.0
    return v


T1, T2, T3 = (EventOrder.at(f"2026-11-29T12:0{m}:00Z") for m in (1, 2, 3))


def test_event_times_from_every_source_compare_as_strings():
    assert (
        EventOrder.at("2026-11-29T12:00:00.000Z")
        == EventOrder.at(1_795_953_600)
        == EventOrder.at("2026-11-29T12:00:00+00:00")
    )
    assert EventOrder.at("2026-11-29T12:00:00Z", "FF").key() > EventOrder.at("2026-11-29T12:00:00Z", "0A").key()
    assert EventOrder.at("2026-11-29T12:00:00Z", "1").key() < EventOrder.at("2026-11-29T12:00:00Z", "0A").key()


def test_round_trip_keeps_everything():
    shard = Shard(
        added=[Added("a/1.jpg", "a", "e1", T1, "mine", "00ff00ff00ff00ff"), Added("b/2.jpg", None, "e2", T2)],
        vectors=np.stack([_vec(0), _vec(1)]),
        removed=[Removed("c/3.jpg", T3)],
        skipped=[Skipped("d/4.jpg", "e4", "corrupt", T1)],
        merged_shards=["x.npz"],
    )
    back = Shard.from_bytes(shard.to_bytes())
    assert back.added == shard.added and back.removed == shard.removed and back.skipped == shard.skipped
    assert back.merged_shards == ["x.npz"] and np.array_equal(back.vectors, shard.vectors)
    assert [a.phash for a in back.added] == ["00ff00ff00ff00ff", None]
    merged = Collection()
    merged.apply(back)
    assert merged.hashes() == ["00ff00ff00ff00ff", None]  # in key_entries order, for the build's key map
    with pytest.raises(ValueError, match="not an embedding shard"):
        Shard.from_bytes(b"garbage")


def test_a_shard_written_before_hashes_reads_with_none():
    meta = {"format": 1, "added": [["a/1.jpg", "a", "e1", T1.time, "", None]], "removed": [], "skipped": []}
    buf = io.BytesIO()
    np.savez(buf, vectors=_vec(0)[None], meta=np.array(json.dumps(meta)))
    (added,) = Shard.from_bytes(buf.getvalue()).added
    assert added.key == "a/1.jpg" and added.phash is None


def test_the_name_depends_on_the_events_not_their_order_or_outcome():
    a = Shard(added=[Added("k/1.jpg", "k", "e1", T1)], vectors=_vec(0)[None], removed=[Removed("k/2.jpg", T2)])
    b = Shard(removed=[Removed("k/2.jpg", T2)], added=[Added("k/1.jpg", "k", "e1", T1)], vectors=_vec(3)[None])
    skipped = Shard(skipped=[Skipped("k/1.jpg", "e1", "corrupt", T1)], removed=[Removed("k/2.jpg", T2)])
    assert a.digest() == b.digest() == skipped.digest()  # embedded or skipped, the same event
    assert a.digest() == events_digest([("k/1.jpg", "e1", T1)], [("k/2.jpg", T2)])
    other = Shard(added=[Added("k/1.jpg", "k", "e9", T1)], vectors=_vec(0)[None], removed=[Removed("k/2.jpg", T2)])
    assert other.digest() != a.digest()


def test_latest_event_per_key_wins_in_any_delivery_order():
    older = Shard(added=[Added("x.jpg", "old", "e1", T1)], vectors=_vec(0)[None])
    removal = Shard(removed=[Removed("x.jpg", T2)])
    newer = Shard(added=[Added("x.jpg", "new", "e3", T3, "mine")], vectors=_vec(2)[None])
    for order in ([older, removal, newer], [newer, removal, older], [removal, newer, older]):
        collection = Collection()
        for shard in order:
            collection.apply(shard)
        entries, vectors = collection.key_entries()
        assert entries == [KeyEntry("x.jpg", "new", "mine")] and np.array_equal(vectors[0], _vec(2))
    gone = Collection()
    for shard in (older, removal):
        gone.apply(shard)
    assert gone.key_entries()[0] == [] and gone.knows("x.jpg")


def test_a_newer_unreadable_version_takes_the_old_vector_out():
    collection = Collection()
    collection.apply(Shard(added=[Added("y.jpg", "y", "e1", T1)], vectors=_vec(0)[None]))
    collection.apply(Shard(skipped=[Skipped("y.jpg", "e2", "truncated", T2)]))
    assert collection.key_entries()[0] == [] and [s.reason for s in collection.skipped] == ["truncated"]
    whole = Shard.from_bytes(collection.to_shard(["a.npz"]).to_bytes())
    again = Collection()
    again.apply(whole)
    assert again.key_entries()[0] == [] and [s.key for s in again.skipped] == ["y.jpg"]
