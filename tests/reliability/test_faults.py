"""Faults at cold start and during upload, against a real S3-protocol server (moto) on loopback.

Each fault gives 503 with a message that names it, leaves nothing in the cache that a later start would
trust without it matching its sha256, and the same app recovers on its own once the fault is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient

from bench.harness import free_port
from lambda_fn import artifacts as artifacts_module
from lambda_fn.app import create_app
from lambda_fn.artifacts import S3_CONFIG
from lambda_fn.config import Settings
from lambda_fn.manifest import Manifest, file_sha256
from tests.helpers import REPO_ROOT, jpeg_bytes
from training.upload import upload

PREFIX = "svc"


def _manifest(s3, bucket) -> Manifest:
    return Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=f"{PREFIX}/manifest.json")["Body"].read())


@pytest.fixture
def uploaded(s3, bucket, artifacts_dir, s3_endpoint, monkeypatch):
    """Model, index and keys uploaded under svc/ (no images: the faults are about the artifacts)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    upload(artifacts_dir, None, bucket, PREFIX, client=s3)
    return bucket, _manifest(s3, bucket)


def _client(bucket, cache_dir, s3_client=None) -> TestClient:
    settings = Settings(artifacts_uri=f"s3://{bucket}/{PREFIX}/", cache_dir=cache_dir, num_threads=1)
    return TestClient(create_app(settings, s3_client=s3_client), raise_server_exceptions=True)


def _assert_unavailable(client, json_error, *fragments) -> str:
    """/health and /search both answer 503 (JSON, Retry-After) with every fragment in the message."""
    health = client.get("/health")
    assert health.status_code == 503 and health.headers.get("retry-after"), health.text
    assert health.json()["status"] == "unavailable"
    search = client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    message = json_error(search, 503, "not_ready")["message"]
    assert search.headers.get("retry-after")
    for fragment in fragments:
        assert fragment in message, message
    return message


def _assert_recovered(client, tally) -> None:
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


def test_s3_unreachable_at_cold_start(uploaded, tmp_path, monkeypatch, json_error, tally, s3_endpoint):
    bucket, _ = uploaded
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    client = _client(bucket, tmp_path / "cache")
    _assert_unavailable(client, json_error, "S3 is unreachable", "manifest.json")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    _assert_recovered(client, tally)


class SlowProxy:
    """TCP proxy on loopback that holds back each response's first bytes by ``delay`` seconds."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        asked = asyncio.Event()  # a request went upstream and its answer has not started yet

        async def upstream() -> None:
            while data := await reader.read(65536):
                asked.set()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if asked.is_set():
                    asked.clear()
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def __enter__(self) -> SlowProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def test_s3_slow_within_timeouts_still_answers(uploaded, tmp_path, s3_endpoint, tally):
    bucket, _ = uploaded
    with SlowProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.delay = 0.4
        s3_client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", config=S3_CONFIG)
        client = _client(bucket, tmp_path / "cache", s3_client)
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - started >= 0.8  # manifest, then the downloads: each waited
        tally["faults injected"] += 1
        tally["faults recovered without restart"] += 1  # answered despite the fault
    _assert_cache_trustworthy(tmp_path / "cache")


def test_s3_slower_than_the_timeouts_is_503_then_recovers(uploaded, tmp_path, s3_endpoint, json_error, tally):
    bucket, _ = uploaded
    with SlowProxy(int(s3_endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.delay = 2.5
        # The deployed client waits 30 s per read; this one waits 1 s, so the test exercises the same path fast.
        impatient = S3_CONFIG.merge(Config(read_timeout=1, connect_timeout=1, retries={"total_max_attempts": 1}))
        s3_client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", config=impatient)
        client = _client(bucket, tmp_path / "cache", s3_client)
        _assert_unavailable(client, json_error, "S3 is unreachable", "manifest.json", "Read timeout")
        tally["faults injected"] += 1
        _assert_cache_trustworthy(tmp_path / "cache")
        proxy.delay = 0.0
        _assert_recovered(client, tally)


def test_object_missing_is_503_then_recovers(uploaded, s3, tmp_path, json_error, tally):
    bucket, remote = uploaded
    key = f"{PREFIX}/{remote.model_file}"
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key)
    client = _client(bucket, tmp_path / "cache")
    _assert_unavailable(client, json_error, "model.pt", "does not exist", "training.upload")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    assert not (tmp_path / "cache" / remote.model_sha256 / "model.pt").exists()
    s3.put_object(Bucket=bucket, Key=key, Body=good)
    _assert_recovered(client, tally)


def test_object_corrupted_is_503_then_recovers(uploaded, s3, tmp_path, json_error, tally):
    bucket, remote = uploaded
    key = f"{PREFIX}/{remote.keys_file}"
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=good.replace(b'"label"', b'"lab3l"', 1))
    client = _client(bucket, tmp_path / "cache")
    _assert_unavailable(client, json_error, "keys.json", "sha256", "corrupt")
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    assert not (tmp_path / "cache" / remote.keys_sha256 / "keys.json").exists()
    s3.put_object(Bucket=bucket, Key=key, Body=good)
    _assert_recovered(client, tally)


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"dim": 256}, ("256-d", "512-d", "rebuild the index")),
        ({"model_sha256": "0" * 64}, ("model.pt", "sha256", "another build")),
        ({"count": 61}, ("61 images", "different builds")),
    ],
    ids=["embedding dim", "model hash", "image count"],
)
def test_manifest_from_another_model_is_503_then_recovers(uploaded, s3, tmp_path, json_error, tally, change, fragments):
    bucket, remote = uploaded
    wrong = remote.model_copy(update=change)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/manifest.json", Body=wrong.model_dump_json().encode())
    client = _client(bucket, tmp_path / "cache")
    _assert_unavailable(client, json_error, *fragments)
    tally["faults injected"] += 1
    _assert_cache_trustworthy(tmp_path / "cache")
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/manifest.json", Body=remote.model_dump_json().encode())
    _assert_recovered(client, tally)


@contextlib.contextmanager
def _tiny_tmpfs(path: Path):
    """A 1 MiB tmpfs at ``path`` (root only); yields a function that grows it, or None where mount fails."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_cache_disk_full_is_503_then_recovers(uploaded, tmp_path, monkeypatch, json_error, tally):
    bucket, _ = uploaded
    cache = tmp_path / "quota"
    with _tiny_tmpfs(cache) as grow, monkeypatch.context() as patch:
        if grow is None:
            # Not root / no mount here: the write fails as a full disk would, at the same place.
            def full(_path):
                raise OSError(28, "No space left on device")

            patch.setattr(artifacts_module, "file_sha256", full)
        client = _client(bucket, cache)
        _assert_unavailable(client, json_error, "no space left", str(cache), "ephemeral_storage_mb")
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
from lambda_fn.artifacts import fetch
cache, uri, ready, go = sys.argv[1:5]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
got = fetch(uri, Path(cache))
print(json.dumps({"model": str(got.model), "index": str(got.index), "keys": str(got.keys)}))
"""


@pytest.mark.slow
def test_two_processes_cold_starting_on_one_cache(uploaded, tmp_path, tally):
    bucket, remote = uploaded
    cache = tmp_path / "shared-cache"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        argv = [sys.executable, "-c", FETCH_SCRIPT, str(cache), f"s3://{bucket}/{PREFIX}/", str(ready), str(go)]
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
    client = _client(bucket, cache)
    assert client.get("/health").json()["model"]["sha256"] == remote.model_sha256


class FlakyS3:
    """Wraps a boto3 S3 client; ``upload_file`` fails like a dropped connection once ``fail_after`` calls of a
    kind (images or build artifacts) have gone through."""

    def __init__(self, client, *, fail_after: int, kind: str):
        self._client, self.fail_after, self.kind = client, fail_after, kind
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def upload_file(self, filename, bucket, key, *args, **kwargs):
        if f"/{self.kind}/" in key:
            with self._lock:
                self.calls += 1
                if self.calls > self.fail_after:
                    raise ConnectionResetError(f"simulated: connection dropped uploading {key}")
        return self._client.upload_file(filename, bucket, key, *args, **kwargs)


def _assert_manifest_objects_exist(s3, bucket) -> Manifest | None:
    """The service's view between runs: no manifest yet, or one whose every object exists."""
    try:
        manifest = _manifest(s3, bucket)
    except s3.exceptions.NoSuchKey:
        return None
    for name in (manifest.model_file, manifest.index_file, manifest.keys_file):
        s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{name}")
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
    s3, bucket, artifacts_dir, sample_dir, s3_endpoint, monkeypatch, tmp_path, json_error, tally
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)

    def service(n: int):
        return _client(bucket, tmp_path / f"cache{n}")

    # 1. First upload dies after 20 of 60 images: no manifest yet, so a service says "not uploaded", cleanly.
    with pytest.raises(ConnectionResetError):
        upload(artifacts_dir, sample_dir, bucket, PREFIX, client=FlakyS3(s3, fail_after=20, kind="images"), workers=4)
    tally["faults injected"] += 1
    assert _assert_manifest_objects_exist(s3, bucket) is None
    _assert_unavailable(service(1), json_error, "manifest.json", "does not exist")

    # 2. Re-run: only the missing images go up, then the build, then the manifest.
    report = upload(artifacts_dir, sample_dir, bucket, PREFIX, client=s3, workers=4)
    assert report.skipped_images == 20 and report.uploaded_images == 40 and report.uploaded_artifacts == 3
    build_a = _assert_manifest_objects_exist(s3, bucket)
    assert service(2).get("/health").status_code == 200
    tally["faults recovered without restart"] += 1

    # 3. A new build's upload dies after its first artifact: the old manifest, whole, still serves.
    build_b_dir = _other_build(artifacts_dir, tmp_path / "build-b")
    with pytest.raises(ConnectionResetError):
        upload(build_b_dir, sample_dir, bucket, PREFIX, client=FlakyS3(s3, fail_after=1, kind="builds"))
    tally["faults injected"] += 1
    assert _assert_manifest_objects_exist(s3, bucket) == build_a
    health = service(3).get("/health")
    assert health.status_code == 200 and health.json()["model"]["sha256"] == build_a.model_sha256

    # 4. Re-run: images and the artifact already there are skipped; the manifest switches to build B last.
    report = upload(build_b_dir, sample_dir, bucket, PREFIX, client=s3)
    assert report.uploaded_images == 0 and report.skipped_images == 60
    assert report.skipped_artifacts == 1 and report.uploaded_artifacts == 2
    build_b = _assert_manifest_objects_exist(s3, bucket)
    assert build_b.keys_sha256 != build_a.keys_sha256
    r = service(4).post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and all(m["label"].startswith("v2-") for m in r.json()["results"])
    tally["faults recovered without restart"] += 1
