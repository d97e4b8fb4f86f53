"""Faults at cold start and during upload, against a real S3-protocol server (moto) on loopback.

Each fault gives 503 with a message that names it, leaves nothing in the cache that a later start would
trust without it matching its sha256, and the same app recovers on its own once the fault is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest, file_sha256
from lambda_fn.storage import cache as cache_module
from lambda_fn.storage.store import S3_CONFIG
from ops.upload import upload
from support.service import free_port
from tests.fakes import FlakyS3, SlowProxy, tiny_tmpfs
from tests.helpers import REPO_ROOT, S3_PREFIX, SAMPLE_COUNT, assert_json_error, jpeg_bytes


def _manifest(s3, bucket) -> Manifest:
    return Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=f"{S3_PREFIX}/{MANIFEST_FILE}")["Body"].read())


def _assert_unavailable(client, *fragments) -> str:
    """/health and /search both answer 503 (JSON, Retry-After) with every fragment in their messages."""
    health = client.get("/health")
    assert health.status_code == 503 and health.headers.get("retry-after"), health.text
    assert health.json()["status"] == "unavailable"
    search = client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    message = assert_json_error(search, 503, "not_ready")["message"]
    assert search.headers.get("retry-after")
    for fragment in fragments:
        assert fragment in health.json()["error"]["message"], health.json()
        assert fragment in message, message
    return message


def _assert_recovered(client, tally) -> None:
    time.sleep(client.app.state.service.backoff.remaining())  # the next attempt waits out the backoff
    assert client.get("/health").status_code == 200
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text
    tally["faults recovered without restart"] += 1


def _assert_cache_trustworthy(cache_dir: Path) -> None:
    """No partial files; every file at a final path ``<sha256>/<name>`` really has that sha256."""
    files = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.exists() else []
    assert not [p for p in files if p.name.endswith(".partial")], files
    for path in files:
        assert file_sha256(path) == path.parent.name, f"{path} is in the cache but does not match its hash"


def test_s3_unreachable_at_cold_start(uploaded, make_client, tmp_path, monkeypatch, tally, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache")
    _assert_unavailable(client, "S3 is unreachable", "manifest.json")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    _assert_recovered(client, tally)


def test_s3_slow_within_timeouts_still_answers(uploaded, make_client, tmp_path, s3_endpoint, tally):
    with SlowProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.delay = 0.4
        s3_client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", config=S3_CONFIG)
        client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache", s3_client=s3_client)
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - started >= 0.8  # manifest, then the downloads: each waited
        tally["faults injected"] += 1
        tally["faults recovered without restart"] += 1  # answered despite the fault
    _assert_cache_trustworthy(tmp_path / "cache")


def test_s3_slower_than_the_timeouts_is_503_then_recovers(uploaded, make_client, tmp_path, s3_endpoint, tally):
    with SlowProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.delay = 2.5
        # The deployed client waits 30 s per read; this one waits 1 s, so the test exercises the same path fast.
        impatient = S3_CONFIG.merge(Config(read_timeout=1, connect_timeout=1, retries={"total_max_attempts": 1}))
        s3_client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", config=impatient)
        client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache", s3_client=s3_client)
        _assert_unavailable(client, "S3 is unreachable", "manifest.json")
        tally["faults injected"] += 1
        _assert_cache_trustworthy(tmp_path / "cache")
        proxy.delay = 0.0
        _assert_recovered(client, tally)


def test_manifest_missing_is_503_then_recovers(bucket, upload_build, make_client, tmp_path, tally):
    client = make_client(artifacts_uri=f"s3://{bucket}/{S3_PREFIX}/", cache_dir=tmp_path / "cache")
    _assert_unavailable(client, MANIFEST_FILE, "does not exist", "ops.upload")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    upload_build()
    _assert_recovered(client, tally)


def test_object_missing_is_503_then_recovers(uploaded, s3, make_client, tmp_path, tally):
    key = uploaded.key(uploaded.manifest.model_file)
    good = s3.get_object(Bucket=uploaded.bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=uploaded.bucket, Key=key)
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache")
    _assert_unavailable(client, "model.pt", "does not exist", "ops.upload")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    assert not (tmp_path / "cache" / uploaded.manifest.model_sha256 / "model.pt").exists()
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=good)
    _assert_recovered(client, tally)


@pytest.mark.parametrize(
    ("role", "corrupt"),
    [
        ("keys", lambda good: good.replace(b'"label"', b'"lab3l"', 1)),
        ("index", lambda good: b"corrupted" + good[9:]),
    ],
    ids=["keys.json", "index.ann"],
)
def test_object_corrupted_is_503_then_recovers(uploaded, s3, make_client, tmp_path, tally, role, corrupt):
    name = Path(getattr(uploaded.manifest, f"{role}_file")).name
    key = uploaded.key(getattr(uploaded.manifest, f"{role}_file"))
    good = s3.get_object(Bucket=uploaded.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=corrupt(good))
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache")
    _assert_unavailable(client, name, "sha256", "corrupt")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    assert not (tmp_path / "cache" / getattr(uploaded.manifest, f"{role}_sha256") / name).exists()
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=good)
    _assert_recovered(client, tally)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"dim": 256}, ("could not be loaded", "different builds", "publish the build again")),
        ({"model_sha256": "0" * 64}, ("model.pt", "sha256", "another build")),
        ({"count": SAMPLE_COUNT + 1}, ("could not be loaded", "different builds", "publish the build again")),
    ],
    ids=["embedding dim", "model hash", "image count"],
)
def test_manifest_from_another_model_is_503_then_recovers(
    uploaded, s3, make_client, tmp_path, tally, change, fragments
):
    key = uploaded.key(MANIFEST_FILE)
    wrong = uploaded.manifest.model_copy(update=change)
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=wrong.model_dump_json().encode())
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache")
    _assert_unavailable(client, *fragments)
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    s3.put_object(Bucket=uploaded.bucket, Key=key, Body=uploaded.manifest.model_dump_json().encode())
    _assert_recovered(client, tally)


def test_cache_disk_full_is_503_then_recovers(uploaded, make_client, tmp_path, monkeypatch, tally):
    cache = tmp_path / "quota"
    with tiny_tmpfs(cache) as grow, monkeypatch.context() as patch:
        if grow is None:
            # Not root / no mount here: the write fails as a full disk would, at the same place.
            def full(_path):
                raise OSError(28, "No space left on device")

            patch.setattr(cache_module, "file_sha256", full)
        client = make_client(artifacts_uri=uploaded.uri, cache_dir=cache)
        _assert_unavailable(client, "no space left", "ephemeral_storage_mb")
        tally["faults injected"] += 1
        _assert_cache_trustworthy(cache)
        if grow is None:
            patch.undo()
        else:
            assert shutil.disk_usage(cache).used < 512 * 1024  # the partial files were removed
            grow("400m")
        _assert_recovered(client, tally)
        _assert_cache_trustworthy(cache)
        tally["disk-full via real tmpfs" if grow else "disk-full via patched write"] += 1


FETCH_SCRIPT = """
import json, sys, time
from pathlib import Path
from lambda_fn.storage.artifacts import fetch
cache, uri, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
got = fetch(uri, Path(cache))
print(json.dumps({"model": str(got.model), "index": str(got.index), "keys": str(got.keys)}))
"""


@pytest.mark.slow
def test_two_processes_cold_starting_on_one_cache(uploaded, make_client, tmp_path, tally):
    cache = tmp_path / "shared-cache"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        argv = [sys.executable, "-c", FETCH_SCRIPT, str(cache), uploaded.uri, str(ready), str(go)]
        procs.append((ready, subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both processes start downloading into the same cache at the same moment
    outputs = []
    for _, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        outputs.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    _assert_cache_trustworthy(cache)
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["index.ann", "keys.json", "model.pt"]
    tally["concurrent cold starts on one cache"] += 2
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=cache)
    assert client.get("/health").json()["model"]["sha256"] == uploaded.manifest.model_sha256


def _assert_manifest_objects_exist(s3, bucket) -> Manifest | None:
    """The service's view between runs: no manifest yet, or one whose every object exists."""
    try:
        manifest = _manifest(s3, bucket)
    except s3.exceptions.NoSuchKey:
        return None
    for _, name, _ in manifest.files(with_collection=True):
        s3.head_object(Bucket=bucket, Key=f"{S3_PREFIX}/{name}")
    return manifest


def _other_build(artifacts_dir: Path, out: Path) -> Path:
    """Same model and index, relabelled key map: a different build (new keys sha256, new build folder)."""
    shutil.copytree(artifacts_dir, out)
    keys = out / "keys.json"
    keys.write_text(keys.read_text().replace('"label": "', '"label": "v2-'))
    manifest = Manifest.read(out / "manifest.json").model_copy(update={"keys_sha256": file_sha256(keys)})
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return out


@pytest.mark.slow
def test_interrupted_upload_reruns_and_never_exposes_a_broken_manifest(
    s3, bucket, artifacts_dir, sample_dir, s3_endpoint, monkeypatch, make_client, tmp_path, tally
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)

    def service(n: int):
        return make_client(artifacts_uri=f"s3://{bucket}/{S3_PREFIX}/", cache_dir=tmp_path / f"cache{n}")

    # 1. First upload dies after 20 images: no manifest yet, so a service says "not uploaded", cleanly.
    flaky = FlakyS3(s3, fail_after=20, kind="images")
    with pytest.raises(ConnectionResetError):
        upload(artifacts_dir, sample_dir, bucket, S3_PREFIX, client=flaky, workers=4)
    tally["faults injected"] += 1
    assert _assert_manifest_objects_exist(s3, bucket) is None
    _assert_unavailable(service(1), MANIFEST_FILE, "does not exist")

    # 2. Re-run: only the missing images go up, then the build, then the manifest.
    report = upload(artifacts_dir, sample_dir, bucket, S3_PREFIX, client=s3, workers=4)
    assert report.skipped_images == 20 and report.uploaded_images == SAMPLE_COUNT - 20
    build_files = len(Manifest.read(artifacts_dir / "manifest.json").files(with_collection=True))
    assert report.uploaded_artifacts == build_files
    build_a = _assert_manifest_objects_exist(s3, bucket)
    assert service(2).get("/health").status_code == 200
    tally["faults recovered without restart"] += 1

    # 3. A new build's upload dies after its first artifact: the old manifest, whole, still serves.
    build_b_dir = _other_build(artifacts_dir, tmp_path / "build-b")
    with pytest.raises(ConnectionResetError):
        upload(build_b_dir, sample_dir, bucket, S3_PREFIX, client=FlakyS3(s3, fail_after=1, kind="builds"))
    tally["faults injected"] += 1
    assert _assert_manifest_objects_exist(s3, bucket) == build_a
    health = service(3).get("/health")
    assert health.status_code == 200 and health.json()["model"]["sha256"] == build_a.model_sha256

    # 4. Re-run: images and the artifact already there are skipped; the manifest switches to build B last.
    report = upload(build_b_dir, sample_dir, bucket, S3_PREFIX, client=s3)
    assert report.uploaded_images == 0 and report.skipped_images == SAMPLE_COUNT
    assert report.skipped_artifacts == 1 and report.uploaded_artifacts == build_files - 1
    build_b = _assert_manifest_objects_exist(s3, bucket)
    assert build_b.keys_sha256 != build_a.keys_sha256
    r = service(4).post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and all(m["label"].startswith("v2-") for m in r.json()["results"])
    tally["faults recovered without restart"] += 1
