"""A pinned model (``trusted_model_sha256``): a manifest naming any other model is refused before the model is
downloaded or loaded, at cold start (503) and in a hot swap (the live build keeps serving); ingest skips it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from lambda_fn.contract.config import Settings, env_name
from lambda_fn.contract.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, file_sha256
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key
from lambda_fn.storage.store import FolderStore
from lambda_fn.vision import engine as engine_module
from lambda_fn.vision import models as models_module
from lambda_fn.vision.models import target_models
from tests.helpers import assert_json_error, jpeg_bytes
from tests.lambda_fn.builds import flat_copy, health_until, publish_flat

OTHER_SHA = "f" * 64
TRUSTS = "not the one this deployment trusts"


@pytest.fixture
def loads(monkeypatch) -> list[Path]:
    """Every model file the service loads as TorchScript."""
    seen: list[Path] = []
    real = engine_module.load_model

    def recorded(path):
        seen.append(Path(path))
        return real(path)

    # lambda_fn.vision.models imports load_model from the engine when it loads a model, so this covers ingest too
    monkeypatch.setattr(engine_module, "load_model", recorded)
    return seen


def _assert_untrusted(response, published_sha: str) -> str:
    message = assert_json_error(response, 503, "not_ready")["message"]
    assert TRUSTS in message and published_sha[:12] in message, message
    assert "deploy" in message and "publish" in message, message  # what to do, both ways
    assert env_name("trusted_model_sha256") in message
    return message


def test_an_untrusted_model_is_refused_before_it_is_downloaded(uploaded, make_client, tmp_path, loads):
    cache = tmp_path / "cache"
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=cache, trusted_model_sha256=OTHER_SHA)
    search = client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    message = _assert_untrusted(search, uploaded.manifest.model_sha256)
    assert search.headers["retry-after"]
    for internal in ("s3://", uploaded.bucket, str(tmp_path)):
        assert internal not in message
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert TRUSTS in health.json()["error"]["message"]
    assert loads == []
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]  # nothing was downloaded


def test_the_trusted_model_serves(uploaded, make_client, tmp_path):
    client = make_client(
        artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache", trusted_model_sha256=uploaded.manifest.model_sha256
    )
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text


def test_an_untrusted_local_model_is_refused_before_it_is_read(artifacts_dir, make_client, monkeypatch, loads):
    hashed = []
    monkeypatch.setattr(
        "lambda_fn.storage.artifacts.file_sha256", lambda path: hashed.append(path) or file_sha256(path)
    )
    client = make_client(artifacts_uri=str(artifacts_dir), trusted_model_sha256=OTHER_SHA)
    manifest = Manifest.read(artifacts_dir / MANIFEST_FILE)
    _assert_untrusted(client.get("/similar", params={"key": "x"}), manifest.model_sha256)
    assert loads == [] and hashed == []


def test_an_untrusted_new_build_is_not_swapped_in(artifacts_dir, retrained, make_client, tmp_path, loads, log_lines):
    served = flat_copy(artifacts_dir, tmp_path / "artifacts")
    first = Manifest.read(served / MANIFEST_FILE)
    client = make_client(artifacts_uri=str(served), manifest_check_s=0.1, trusted_model_sha256=first.model_sha256)
    assert client.get("/health").json()["build"]["id"] == first.build_id
    loaded = list(loads)
    second = publish_flat(retrained, served)
    assert second.model_sha256 != first.model_sha256

    health = health_until(client, lambda body: body["updates"]["error"] is not None)
    error = health["updates"]["error"]
    assert health["status"] == "ready" and health["build"]["id"] == first.build_id
    assert TRUSTS in error and second.build_id in error and first.build_id in error and "keeps serving" in error
    assert str(served) not in json.dumps(health)
    assert loads == loaded  # the new model was never loaded
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["build_id"] == first.build_id
    refused = [e for e in log_lines() if "trusted_model_sha256" in e]
    assert refused and refused[-1]["model_sha256"] == second.model_sha256

    # Rotation: a deployment that trusts the new model serves it.
    rotated = make_client(artifacts_uri=str(served), trusted_model_sha256=second.model_sha256)
    assert rotated.get("/health").json()["build"]["id"] == second.build_id


@pytest.mark.parametrize("value", ["abc", "F" * 64, "g" * 64, "0" * 63])
def test_the_pinned_sha256_must_be_a_sha256(value, artifacts_dir):
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        Settings(artifacts_uri=str(artifacts_dir), trusted_model_sha256=value)


def _store_with_pointer(artifacts_dir: Path, retrained: Path, root: Path) -> tuple[FolderStore, str, str]:
    """A deployment folder: the session build live, the retrained build's model announced as the next one."""
    live = Manifest.read(artifacts_dir / MANIFEST_FILE)
    store = FolderStore(root)
    for name in (MANIFEST_FILE, live.model_file):
        store.upload_file(artifacts_dir / name, name)
    new_sha = file_sha256(retrained / MODEL_FILE)
    store.upload_file(retrained / MODEL_FILE, model_key(new_sha))
    pointer = ModelPointer(model_file=model_key(new_sha), model_sha256=new_sha)
    store.put(POINTER_FILE, pointer.model_dump_json().encode())
    return store, live.model_sha256, new_sha


def test_ingest_skips_an_untrusted_model_with_a_logged_error(
    artifacts_dir, retrained, tmp_path, loads, caplog, monkeypatch
):
    monkeypatch.setattr(models_module, "_loaded", {})
    store, live_sha, new_sha = _store_with_pointer(artifacts_dir, retrained, tmp_path / "deployment")
    with caplog.at_level(logging.ERROR, logger="lambda_fn.vision.models"):
        models = target_models(store, tmp_path / "cache", trusted_model_sha256=new_sha)
    assert [m.sha256 for m in models] == [new_sha]
    assert [p.parent.name for p in loads] == [new_sha]  # the live (untrusted) model was not even downloaded
    assert not (tmp_path / "cache" / live_sha).exists()
    refused = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert refused and TRUSTS in refused[0].getMessage() and refused[0].model_sha256 == live_sha


def test_ingest_with_no_trusted_model_fails_instead_of_dropping_the_changes(
    artifacts_dir, retrained, tmp_path, loads, monkeypatch
):
    monkeypatch.setattr(models_module, "_loaded", {})
    store, _, _ = _store_with_pointer(artifacts_dir, retrained, tmp_path / "deployment")
    with pytest.raises(ArtifactError, match=TRUSTS):
        target_models(store, tmp_path / "cache", trusted_model_sha256=OTHER_SHA)
    assert loads == []
    assert [m.sha256 for m in target_models(store, tmp_path / "cache")] != []  # unpinned: both load


def test_a_backfill_embeds_with_the_announced_model_or_not_at_all(artifacts_dir, retrained, tmp_path, monkeypatch):
    """Regression: a backfill took the last of the models ingest would use; with the announced model refused,
    that was the live one, so the collection would have been re-embedded for the wrong model."""
    monkeypatch.setattr(models_module, "_loaded", {})
    store, live_sha, new_sha = _store_with_pointer(artifacts_dir, retrained, tmp_path / "deployment")
    cache = tmp_path / "cache"
    assert [m.sha256 for m in target_models(store, cache, newest_only=True)] == [new_sha]
    assert [m.sha256 for m in target_models(store, cache, trusted_model_sha256=new_sha, newest_only=True)] == [new_sha]
    with pytest.raises(ArtifactError, match=TRUSTS):
        target_models(store, cache, trusted_model_sha256=live_sha, newest_only=True)
