"""The service's loaded state from S3 (a loopback S3-protocol server): the first request fetches and verifies
the build into the container's cache; the next container on that cache starts from it. A cold start on
Lambda begins that fetch before torch is imported (``lambda_fn.search.prefetch``); the first load takes its result or
its error.

Faults at this point (S3 slow or unreachable, objects missing or corrupt, a full disk) are in
tests/reliability/test_faults.py.
"""

import subprocess
import time

import pytest
from fastapi.testclient import TestClient

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import MANIFEST_FILE
from lambda_fn.search.app import create_app
from lambda_fn.search.prefetch import Prefetch
from lambda_fn.storage.errors import UntrustedModel
from tests.helpers import assert_json_error, jpeg_bytes


def test_first_request_downloads_verifies_and_serves_presigned_links(upload_build, make_client, tmp_path):
    build = upload_build(images=True)
    client = make_client(artifacts_uri=build.uri, cache_dir=tmp_path / "cache")
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    url = r.json()["results"][0]["url"]
    assert f"/{build.bucket}/{build.prefix}/images/" in url and "X-Amz-Signature=" in url
    assert "X-Amz-Expires=900" in url  # the default link lifetime
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert cached == ["index.ann", "keys.json", "model.pt"]  # no partial files left behind
    assert (tmp_path / "cache" / build.manifest.model_sha256 / "model.pt").is_file()


def test_second_container_reuses_the_tmp_cache(uploaded, s3, make_client, tmp_path):
    assert make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache").get("/health").status_code == 200
    for _, name, _ in uploaded.manifest.files():
        s3.delete_object(Bucket=uploaded.bucket, Key=uploaded.key(name))  # only the cache can serve them now
    assert make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache").get("/health").status_code == 200


def _settings(uri: str, cache_dir, **extra) -> Settings:
    return Settings(artifacts_uri=uri, cache_dir=cache_dir, num_threads=1, log_level="WARNING", **extra)


def test_first_load_takes_the_build_the_prefetch_downloaded(uploaded, s3, tmp_path):
    settings = _settings(uploaded.uri, tmp_path / "cache")
    prefetch = Prefetch.start(settings)
    fetched = prefetch.result()  # downloaded and verified with no app, no model load, no torch call
    assert fetched.model == tmp_path / "cache" / uploaded.manifest.model_sha256 / "model.pt"
    for key in [uploaded.key(MANIFEST_FILE)] + [uploaded.key(name) for _, name, _ in uploaded.manifest.files()]:
        s3.delete_object(Bucket=uploaded.bucket, Key=key)  # a load that fetched again would find nothing
    client = TestClient(create_app(settings, prefetch=prefetch))
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert client.app.state.service.prefetch_wait_s is not None


def test_a_failed_prefetch_is_the_first_loads_503_and_the_retry_fetches_again(uploaded, s3, tmp_path):
    key = uploaded.key(uploaded.manifest.model_file)
    good = s3.get_object(Bucket=uploaded.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=b"corrupted" + good[9:])
    settings = _settings(uploaded.uri, tmp_path / "cache")
    client = TestClient(create_app(settings, prefetch=Prefetch.start(settings)))
    r = client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    message = assert_json_error(r, 503, "not_ready")["message"]
    assert "model.pt" in message and "sha256" in message and "corrupt" in message
    assert not list((tmp_path / "cache").rglob("model.pt"))  # the corrupt download was never renamed into place
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=good)
    time.sleep(client.app.state.service.backoff.remaining())
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text


def test_prefetch_refuses_an_untrusted_model_before_downloading_it(uploaded, tmp_path):
    prefetch = Prefetch.start(_settings(uploaded.uri, tmp_path / "cache", trusted_model_sha256="0" * 64))
    with pytest.raises(UntrustedModel):
        prefetch.result()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_prefetch_that_cannot_start_leaves_the_fetch_to_the_first_load(uploaded, tmp_path, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError("no more processes")

    settings = _settings(uploaded.uri, tmp_path / "cache")
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", no_processes)
        prefetch = Prefetch.start(settings)
    assert prefetch is None
    client = TestClient(create_app(settings, prefetch=prefetch))
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text


def test_a_prefetch_process_that_dies_without_an_answer_costs_no_503(uploaded, tmp_path):
    settings = _settings(uploaded.uri, tmp_path / "cache")
    prefetch = Prefetch.start(settings)
    prefetch._proc.kill()  # e.g. killed for memory before it could answer
    client = TestClient(create_app(settings, prefetch=prefetch))
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text  # fetched again by the first load itself
