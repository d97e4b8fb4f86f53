"""``download_verified``: what ingest (models) and the reindex (the live build's files) download through."""

from __future__ import annotations

import hashlib

import pytest

from lambda_fn.artifacts import ArtifactError
from lambda_fn.store import FolderStore, download_verified


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
    with pytest.raises(ArtifactError, match=r"index\.ann does not match its sha256 0{12}…; upload it again"):
        download_verified(store, "builds/a/index.ann", "0" * 64, target)
    assert list(target.parent.iterdir()) == []


def test_a_missing_object_says_so(store, tmp_path):
    with pytest.raises(ArtifactError, match=r"builds/a/keys\.json does not exist"):
        download_verified(store, "builds/a/keys.json", "0" * 64, tmp_path / "keys.json")
