"""Cold start against a real S3-protocol server on loopback (moto in server mode)."""

import pytest
from fastapi.testclient import TestClient

from bench.harness import free_port
from lambda_fn.app import create_app
from lambda_fn.config import Settings
from lambda_fn.manifest import Manifest
from tests.helpers import jpeg_bytes
from training.upload import upload


@pytest.fixture
def uploaded(s3, bucket, artifacts_dir, sample_dir, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    upload(artifacts_dir, sample_dir, bucket, "svc", client=s3)
    remote = Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key="svc/manifest.json")["Body"].read())
    return bucket, remote


def _app(bucket, cache_dir) -> TestClient:
    return TestClient(create_app(Settings(artifacts_uri=f"s3://{bucket}/svc/", cache_dir=cache_dir, num_threads=1)))


def test_first_request_downloads_verifies_and_serves_presigned_links(uploaded, tmp_path):
    bucket, remote = uploaded
    client = _app(bucket, tmp_path / "cache")
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    url = r.json()["results"][0]["url"]
    assert f"/{bucket}/svc/images/" in url and "X-Amz-Expires=900" in url and "X-Amz-Signature=" in url
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached == ["index.ann", "keys.json", "model.pt"]  # no partial files left behind
    assert (tmp_path / "cache" / remote.model_sha256 / "model.pt").is_file()


def test_corrupt_object_gives_503_then_recovers_without_restart(uploaded, s3, tmp_path):
    bucket, remote = uploaded
    good = s3.get_object(Bucket=bucket, Key=f"svc/{remote.index_file}")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"svc/{remote.index_file}", Body=b"corrupted" + good[9:])
    client = _app(bucket, tmp_path / "cache")
    r = client.get("/health")
    assert r.status_code == 503
    assert "sha256" in r.json()["error"]["message"] and "index.ann" in r.json()["error"]["message"]
    assert not [p for p in (tmp_path / "cache").rglob("*.partial")]
    assert not (tmp_path / "cache" / remote.index_sha256 / "index.ann").exists()
    s3.put_object(Bucket=bucket, Key=f"svc/{remote.index_file}", Body=good)
    assert client.get("/health").status_code == 200


def test_second_container_reuses_the_tmp_cache(uploaded, s3, tmp_path):
    bucket, remote = uploaded
    assert _app(bucket, tmp_path / "cache").get("/health").status_code == 200
    for name in (remote.model_file, remote.index_file, remote.keys_file):
        s3.delete_object(Bucket=bucket, Key=f"svc/{name}")  # only the cache can serve them now
    assert _app(bucket, tmp_path / "cache").get("/health").status_code == 200


def test_missing_manifest_and_unreachable_s3_are_503(s3, bucket, tmp_path, monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    r = _app(bucket, tmp_path / "c1").get("/health")
    assert r.status_code == 503 and "does not exist" in r.json()["error"]["message"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    r = _app(bucket, tmp_path / "c2").post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503 and "unreachable" in r.json()["error"]["message"]
