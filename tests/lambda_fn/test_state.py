"""The service's loaded state from S3 (a loopback S3-protocol server): the first request fetches and verifies
the build into the container's cache; the next container on that cache starts from it.

Faults at this point (S3 slow or unreachable, objects missing or corrupt, a full disk) are in
tests/reliability/test_faults.py.
"""

from tests.helpers import jpeg_bytes


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
