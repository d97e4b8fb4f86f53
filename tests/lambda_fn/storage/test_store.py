"""``download_verified``: what ingest (models) and the reindex (the live build's files) download through."""

from __future__ import annotations

import hashlib

import pytest

from lambda_fn.storage.cache import download_verified
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.store import FolderStore


@pytest.fixture
def store(tmp_path) -> FolderStore:
    store = FolderStore(tmp_path / "bucket")
    store.put("builds/a/index.ann", b"index bytes")
    return store


def test_a_matching_object_lands_at_the_path(store, tmp_path):
    digest = hashlib.sha256(b"index bytes").hexdigest()
    path = download_verified(store, "builds/a/index.ann", digest, tmp_path / "work" / "base.ann")
    assert path.read_bytes() == b"index bytes"
    assert [p.name for p in path.parent.iterdir()] == ["base.ann"]  # no partial file left beside it


def test_a_mismatch_leaves_nothing_and_says_what_to_do(store, tmp_path):
    target = tmp_path / "work" / "base.ann"
    with pytest.raises(ArtifactError, match=r"index\.ann does not match its sha256 0{12}….*; upload it again"):
        download_verified(store, "builds/a/index.ann", "0" * 64, target)
    assert list(target.parent.iterdir()) == []


def test_a_missing_object_says_so(store, tmp_path):
    with pytest.raises(ArtifactError, match=r"builds/a/keys\.json does not exist"):
        download_verified(store, "builds/a/keys.json", "0" * 64, tmp_path / "keys.json")


def test_a_listing_hashes_a_file_again_only_when_it_changed(tmp_path, monkeypatch):
    from lambda_fn.storage import store as store_module

    store = FolderStore(tmp_path / "bucket")
    store.put("embeddings/m/a.shard", b"one")
    store.put("embeddings/m/b.shard", b"two")
    store.put("images/x/c.jpg", b"three")
    hashed = []
    real_md5 = store_module._md5
    monkeypatch.setattr(store_module, "_md5", lambda data: hashed.append(data) or real_md5(data))

    first = list(store.list("embeddings/m/"))
    assert [(o.key, o.etag) for o in first] == [
        ("embeddings/m/a.shard", hashlib.md5(b"one").hexdigest()),
        ("embeddings/m/b.shard", hashlib.md5(b"two").hexdigest()),
    ]
    assert list(store.list("embeddings/m/")) == first
    assert sorted(hashed) == [b"one", b"two"]  # once each, and never the image outside the prefix

    store.put("embeddings/m/a.shard", b"changed")
    assert next(iter(store.list("embeddings/m/"))).etag == hashlib.md5(b"changed").hexdigest()
    assert list(store.list("nothing/here/")) == []
