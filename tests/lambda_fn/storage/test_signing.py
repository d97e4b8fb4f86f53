"""Models only their publisher can ship (``model_signing_key``): ``ops.upload --signing-key`` signs the model's
sha256 with KMS, and search and ingest run no model without that signature, checked with ``kms:Verify``
against the loopback server (moto's KMS signs and verifies with real ECC keys)."""

from __future__ import annotations

import json
import logging

import pytest

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import MODEL_FILE, file_sha256
from lambda_fn.search.prefetch import Prefetch
from lambda_fn.storage import signing
from lambda_fn.storage.errors import UNSIGNED_PUBLIC, ArtifactError, UnsignedModel
from lambda_fn.storage.records import POINTER_FILE, ModelPointer, model_key
from lambda_fn.storage.signing import KEY_SPEC, ModelSignature, signature_key
from lambda_fn.storage.store import S3Store
from lambda_fn.vision import engine as engine_module
from lambda_fn.vision import models as models_module
from lambda_fn.vision.models import target_models
from ops.upload import announce_model, upload
from tests.helpers import S3_PREFIX, assert_json_error, jpeg_bytes
from tests.lambda_fn.builds import health_until


@pytest.fixture
def kms(s3_endpoint, monkeypatch):
    """A KMS client on the loopback server; the service's own clients reach it through AWS_ENDPOINT_URL, and
    start each test with no verdict remembered."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setattr(signing, "_verified", set())
    return boto3.client("kms", endpoint_url=s3_endpoint, region_name="us-east-1")


def _new_key(kms) -> str:
    return kms.create_key(KeySpec=KEY_SPEC, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]


@pytest.fixture
def key(kms) -> str:
    return _new_key(kms)


@pytest.fixture
def verifies(kms, monkeypatch) -> list[str]:
    """The model sha256 of every kms:Verify the service makes."""
    calls: list[str] = []

    class Counting:
        def verify(self, **kw):
            calls.append(kw["Message"].decode().rsplit(":", 1)[1].strip())
            return kms.verify(**kw)

    monkeypatch.setattr(signing, "kms_client", Counting)
    return calls


@pytest.fixture
def loads(monkeypatch) -> list:
    seen: list = []
    real = engine_module.load_model
    monkeypatch.setattr(engine_module, "load_model", lambda path: seen.append(path) or real(path))
    monkeypatch.setattr(models_module, "_loaded", {})
    return seen


def _published(s3, bucket, artifacts_dir, **signed) -> tuple[str, str]:
    """The session build uploaded by ``ops.upload`` (signed when given ``signing_key`` and ``kms``): its URI
    and model sha256."""
    upload(artifacts_dir, None, bucket, S3_PREFIX, client=s3, **signed)
    return f"s3://{bucket}/{S3_PREFIX}/", file_sha256(artifacts_dir / MODEL_FILE)


def _search(client):
    return client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})


def _assert_refused_plainly(response, *internals: str) -> None:
    message = assert_json_error(response, 503, "not_ready")["message"]
    assert UNSIGNED_PUBLIC in message, message
    for internal in ("s3://", "kms", "arn:", "signature.json", *internals):
        assert internal not in message.lower(), (internal, message)


def test_a_model_its_publisher_signed_serves_with_one_verify_per_container(
    s3, bucket, artifacts_dir, make_client, tmp_path, kms, key, verifies
):
    uri, sha = _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    record = ModelSignature.model_validate_json(
        s3.get_object(Bucket=bucket, Key=f"{S3_PREFIX}/{signature_key(sha)}")["Body"].read()
    )
    assert record.model_sha256 == sha and record.key_id == key
    client = make_client(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=key)
    for _ in range(3):
        assert _search(client).status_code == 200
    assert verifies == [sha]  # a warm container does not ask KMS per request


def test_an_unsigned_model_is_refused_with_a_plain_503_before_it_is_downloaded(
    s3, bucket, artifacts_dir, make_client, tmp_path, kms, key, loads
):
    uri, _ = _published(s3, bucket, artifacts_dir)
    cache = tmp_path / "cache"
    client = make_client(artifacts_uri=uri, cache_dir=cache, model_signing_key=key)
    _assert_refused_plainly(_search(client), bucket, key, str(tmp_path))
    health = client.get("/health")
    assert health.status_code == 503 and UNSIGNED_PUBLIC in health.json()["error"]["message"]
    assert loads == [] and not [p for p in cache.rglob("*") if p.is_file()]


def test_a_model_signed_with_another_key_is_refused(s3, bucket, artifacts_dir, make_client, tmp_path, kms, key, loads):
    uri, _ = _published(s3, bucket, artifacts_dir, signing_key=_new_key(kms), kms=kms)
    client = make_client(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=key)
    _assert_refused_plainly(_search(client), bucket, key)
    assert loads == []


@pytest.mark.parametrize("tamper", ["record names another sha", "signature of another sha"])
def test_a_signature_for_another_model_is_refused(
    s3, bucket, artifacts_dir, make_client, tmp_path, kms, key, tamper, log_lines
):
    uri, sha = _published(s3, bucket, artifacts_dir)
    other = "e" * 64
    forged = signing.sign_model(other, key, kms=kms)  # a real signature by the key, over another model
    # either the record names the other model, or it claims this one while its signature is over the other
    body = forged if tamper == "record names another sha" else forged.model_copy(update={"model_sha256": sha})
    s3.put_object(Bucket=bucket, Key=f"{S3_PREFIX}/{signature_key(sha)}", Body=body.model_dump_json().encode())
    client = make_client(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=key)
    _assert_refused_plainly(_search(client), bucket, key)
    logged = [e for e in log_lines() if e.get("model_sha256") == sha]
    assert logged and "not signed by the publisher" in logged[-1]["reason"]


def test_kms_out_of_reach_is_a_retried_503_not_a_refusal(
    s3, bucket, artifacts_dir, make_client, tmp_path, kms, key, monkeypatch
):
    uri, _ = _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    missing = key.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    client = make_client(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=missing)
    message = assert_json_error(_search(client), 503, "not_ready")["message"]
    assert signing.UNCHECKED_PUBLIC in message and "000000" not in message
    assert signing._verified == set()  # nothing remembered: the next attempt asks again


def test_the_prefetch_refuses_an_unsigned_model_and_remembers_a_signed_one(
    s3, bucket, artifacts_dir, tmp_path, kms, key
):
    uri, sha = _published(s3, bucket, artifacts_dir)
    settings = Settings(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=key)
    with pytest.raises(UnsignedModel):
        Prefetch.start(settings).result()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    assert Prefetch.start(settings).result().manifest.model_sha256 == sha
    assert (key, sha) in signing._verified  # verified in the child: a swap to the same model asks KMS no more


def test_ingest_skips_an_unsigned_announced_model_and_embeds_with_the_signed_one(
    s3, bucket, artifacts_dir, retrained, tmp_path, kms, key, loads, caplog
):
    _, live_sha = _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    store = S3Store(bucket, S3_PREFIX, s3)
    pointer = announce_model(retrained / MODEL_FILE, bucket, S3_PREFIX, client=s3)  # announced, not signed
    with caplog.at_level(logging.ERROR, logger="lambda_fn.vision.models"):
        models = target_models(store, tmp_path / "cache", model_signing_key=key)
    assert [m.sha256 for m in models] == [live_sha]
    assert not (tmp_path / "cache" / pointer.model_sha256).exists()  # never downloaded
    assert any(UNSIGNED_PUBLIC in r.getMessage() for r in caplog.records)
    with pytest.raises(UnsignedModel):  # a backfill for the unsigned model embeds nothing
        target_models(store, tmp_path / "cache", model_signing_key=key, newest_only=True)
    announce_model(retrained / MODEL_FILE, bucket, S3_PREFIX, client=s3, signing_key=key, kms=kms)
    shas = [m.sha256 for m in target_models(store, tmp_path / "cache", model_signing_key=key)]
    assert shas == [live_sha, pointer.model_sha256]


def test_a_pointer_naming_a_model_with_a_copied_signature_is_refused(s3, bucket, artifacts_dir, tmp_path, kms, key):
    """Whoever writes the bucket can copy a valid signature record next to their own model: it names, and
    signs, the publisher's model, not theirs."""
    _, live_sha = _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    store = S3Store(bucket, S3_PREFIX, s3)
    theirs = "d" * 64
    store.copy(signature_key(live_sha), signature_key(theirs))
    store.put(POINTER_FILE, ModelPointer(model_file=model_key(theirs), model_sha256=theirs).model_dump_json().encode())
    with pytest.raises(ArtifactError, match="not signed by the publisher"):
        signing.check_model(store, theirs, model_signing_key=key)
    assert json.loads(store.get(signature_key(theirs))[0])["model_sha256"] == live_sha


def test_an_unsigned_new_build_is_not_swapped_in_and_a_signed_one_is(
    s3, bucket, artifacts_dir, retrained, make_client, tmp_path, kms, key
):
    uri, _ = _published(s3, bucket, artifacts_dir, signing_key=key, kms=kms)
    client = make_client(artifacts_uri=uri, cache_dir=tmp_path / "cache", model_signing_key=key, manifest_check_s=0.1)
    first = client.get("/health").json()["build"]["id"]
    upload(retrained, None, bucket, S3_PREFIX, client=s3)  # a bucket writer's build, its model unsigned
    health = health_until(client, lambda body: body["updates"]["error"] is not None)
    assert health["status"] == "ready" and health["build"]["id"] == first
    assert UNSIGNED_PUBLIC in health["updates"]["error"] and key not in json.dumps(health)
    assert _search(client).json()["build_id"] == first
    upload(retrained, None, bucket, S3_PREFIX, client=s3, signing_key=key, kms=kms)  # its publisher signs it
    health_until(client, lambda body: body["build"]["id"] != first and body["updates"]["error"] is None)
