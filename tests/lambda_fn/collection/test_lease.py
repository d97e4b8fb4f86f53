"""The reindex lease is released only while it is the version its run wrote: a conditional delete (S3's
``If-Match`` on DeleteObject), so a run whose expired lease was taken over never frees the new holder's."""

from __future__ import annotations

import json

import pytest

from lambda_fn.collection.reindex import LEASE_FILE, Lease
from lambda_fn.storage.store import FolderStore, PreconditionFailed, S3Store, Store


@pytest.fixture(params=["s3", "folder"])
def store(request, tmp_path) -> Store:
    if request.param == "folder":
        return FolderStore(tmp_path / "artifacts")
    return S3Store(request.getfixturevalue("bucket"), "deepfood", request.getfixturevalue("s3"))


class TakenOverBeforeDelete(Store):
    """Passes everything to ``inner``, but lets another run take the lease over just before a delete: the
    window a compare-then-delete leaves open between its read and its delete."""

    def __init__(self, inner: Store):
        self.inner, self.taker = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get(self, key):
        return self.inner.get(key)

    def put(self, key, data, **kw):
        return self.inner.put(key, data, **kw)

    def delete(self, key, **kw):
        self.taker = Lease(self.inner, 600)
        assert self.taker.acquire()  # the holder's lease has expired
        return self.inner.delete(key, **kw)


def _owner(store: Store) -> str:
    return json.loads(store.get(LEASE_FILE)[0])["owner"]


def test_a_released_lease_is_gone_and_can_be_taken_again(store):
    holder = Lease(store, 600)
    assert holder.acquire() and not Lease(store, 600).acquire()
    holder.release()
    assert store.head(LEASE_FILE) is None
    assert Lease(store, 600).acquire()


def test_a_lease_taken_over_meanwhile_is_left_to_its_new_holder(store, caplog):
    racing = TakenOverBeforeDelete(store)
    holder = Lease(racing, -1)  # expired as soon as written: the run overran its lease
    assert holder.acquire()
    holder.release()
    assert racing.taker is not None and _owner(store) == racing.taker.owner  # the new holder's lease stands
    assert any("taken over by another run" in r.getMessage() for r in caplog.records)
    racing.taker.release()
    assert store.head(LEASE_FILE) is None


def test_a_conditional_delete_refuses_another_version_and_a_missing_object(store):
    etag = store.put("locks/x.json", b"one")
    store.put("locks/x.json", b"two")
    with pytest.raises(PreconditionFailed):
        store.delete("locks/x.json", if_match=etag)
    assert store.get("locks/x.json")[0] == b"two"
    store.delete("locks/x.json", if_match=store.head("locks/x.json").etag)
    with pytest.raises(PreconditionFailed):
        store.delete("locks/x.json", if_match=etag)
    store.delete("locks/x.json")  # unconditional: absent is fine


class IgnoresIfMatch(TakenOverBeforeDelete):
    """An S3-compatible server that drops ``If-Match`` on DeleteObject: every delete is unconditional."""

    def delete(self, key, **kw):
        return self.inner.delete(key)


def test_a_server_that_ignores_a_conditional_delete_still_leaves_a_taken_over_lease(store):
    server = IgnoresIfMatch(store)
    holder = Lease(server, -1)
    assert holder.acquire()
    taker = Lease(store, 600)
    assert taker.acquire()
    holder.release()  # the ETag it compares first is no longer its own
    assert _owner(store) == taker.owner
