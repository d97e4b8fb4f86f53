"""A warm service picks up a newly published build without a restart, never failing or mixing up a query."""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient

from lambda_fn.contract.config import Settings
from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest, file_sha256, read_keys
from lambda_fn.search.app import create_app
from lambda_fn.storage.store import S3_CONFIG
from lambda_fn.vision.engine import Engine
from ops.upload import upload
from tests.helpers import jpeg_bytes
from tests.lambda_fn.builds import (
    REBUILT_IDS,
    flat_copy,
    health_until,
    publish_builds,
    publish_flat,
    publish_manifest,
    stage_build,
    subset_build,
)

CHECK_S = 0.2
PREFIX = "svc"


@pytest.fixture(scope="module")
def rebuilt(artifacts_dir, tmp_path_factory) -> Path:
    """A flat build of 50 of the session build's images, same model."""
    out = tmp_path_factory.mktemp("rebuilt")
    subset_build(artifacts_dir, out, REBUILT_IDS)
    return out


def _service(artifacts_uri: str, tmp_path: Path, *, check_s: float = CHECK_S, s3_client=None, **extra) -> TestClient:
    settings = Settings(
        artifacts_uri=artifacts_uri,
        num_threads=1,
        cache_dir=tmp_path / "cache",
        manifest_check_s=check_s,
        **extra,
    )
    return TestClient(create_app(settings, s3_client=s3_client), raise_server_exceptions=True)


def _swapped_to(build_id: str):
    return lambda body: body["build"]["id"] == build_id and not body["updates"]["swapping"]


def test_a_rebuilt_folder_is_served_without_restart(artifacts_dir, rebuilt, tmp_path):
    served = flat_copy(artifacts_dir, tmp_path / "artifacts")
    first = Manifest.read(served / MANIFEST_FILE)
    keys = read_keys(artifacts_dir / first.keys_file)
    with _service(str(served), tmp_path) as client:
        health = client.get("/health").json()
        assert health["build"] == {"id": first.build_id, "built_at": first.built_at}
        assert health["updates"]["check_interval_s"] == CHECK_S and health["updates"]["checked_at"]
        old_engine = client.app.state.service.engine
        r = client.get("/images/20/similar?k=3")
        assert r.json()["build_id"] == first.build_id and r.json()["query"]["key"] == keys[20].key

        second = publish_flat(rebuilt, served)
        health = health_until(client, _swapped_to(second.build_id))
        assert second.build_id != first.build_id
        assert health["index"]["count"] == len(REBUILT_IDS) and health["updates"]["error"] is None
        new_engine = client.app.state.service.engine
        assert new_engine is not old_engine and new_engine.model is old_engine.model  # same model: shared

        stale = client.get(f"/images/20/similar?k=3&build={first.build_id}")
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_build"
        assert "/similar?key=" in stale.json()["error"]["message"]
        by_key = client.get("/similar", params={"key": keys[20].key, "k": 3})
        assert by_key.status_code == 200, by_key.text
        assert by_key.json()["build_id"] == second.build_id
        assert by_key.json()["query"]["key"] == keys[20].key
        assert by_key.json()["query_id"] == REBUILT_IDS.index(20) != 20
        gone = client.get("/similar", params={"key": keys[7].key})  # not in the new build
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_image"


@pytest.mark.parametrize("next_build", ["rebuilt", "retrained"])
def test_queries_during_a_swap_all_answer_from_the_old_or_the_new_build(
    request, artifacts_dir, sample_dir, next_build, tmp_path, monkeypatch
):
    """4 threads query (uploads and similar-image look-ups) while a build is published and swapped in.

    Prints the median latency of the queries started before the manifest switched and until the swap."""
    build = request.getfixturevalue(next_build)
    served = tmp_path / "published"
    first = publish_builds(artifacts_dir, served)
    warm_ups = []
    real_warm_up = Engine.warm_up

    def recorded_warm_up(engine):
        warm_ups.append(threading.current_thread().name)
        real_warm_up(engine)

    monkeypatch.setattr(Engine, "warm_up", recorded_warm_up)
    photo = jpeg_bytes((96, 80), (180, 120, 40))
    answers: list[tuple[int, float, float, int, str | None]] = []  # thread, started, ended, status, build
    swapped = threading.Event()
    lock = threading.Lock()
    with _service(str(served), tmp_path, images_uri=str(sample_dir)) as client:
        assert client.get("/health").json()["build"]["id"] == first.build_id
        old_engine = client.app.state.service.engine

        def query(thread: int) -> None:
            n = 0
            while n < 20 or not swapped.is_set():
                started = time.perf_counter()
                if n % 2:
                    r = client.get(f"/images/{n % 40}/similar?k=5")
                else:
                    r = client.post("/search?k=5", content=photo, headers={"Content-Type": "image/jpeg"})
                ended = time.perf_counter()
                build_id = r.json().get("build_id") if r.status_code == 200 else None
                with lock:
                    answers.append((thread, started, ended, r.status_code, build_id))
                n += 1
                if n > 400:
                    break

        threads = [threading.Thread(target=query, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        second = stage_build(build, served)  # the files go up first, while the old build serves
        health_until(client, lambda _: len(answers) >= 40)  # steady state, polled like the swap below
        t_published = time.perf_counter()
        publish_manifest(second, served)
        health_until(client, _swapped_to(second.build_id))
        t_swapped = time.perf_counter()
        swapped.set()
        for t in threads:
            t.join(120)
        new_engine = client.app.state.service.engine

    assert [a for a in answers if a[3] != 200] == []
    assert {a[4] for a in answers} == {first.build_id, second.build_id}
    for thread in range(4):  # each thread, querying one after another, moves from old to new once
        seen = [a[4] for a in sorted(answers) if a[0] == thread]
        assert len(seen) >= 20
        assert seen == sorted(seen, key=lambda b: b == second.build_id), seen
    if next_build == "retrained":
        assert new_engine.model is not old_engine.model
        assert warm_ups[-1].startswith("swap"), warm_ups  # loaded and warmed up on the swap thread
    else:
        assert new_engine.model is old_engine.model
        assert not any(name.startswith("swap") for name in warm_ups), warm_ups  # no torch work at all

    def p50(started_from: float, started_before: float) -> str:
        took = [a[2] - a[1] for a in answers if started_from <= a[1] < started_before]
        return f"{statistics.median(took) * 1000:.0f} ms (n={len(took)})" if took else "-"

    print(
        f"\n{next_build}: manifest written -> swapped {t_swapped - t_published:.2f} s; p50 of queries started "
        f"before {p50(0, t_published)}, between then and the swap {p50(t_published, t_swapped)}"
    )


@pytest.fixture
def published(s3, bucket, artifacts_dir):
    """The session build uploaded under svc/; returns the manifest as uploaded."""
    upload(artifacts_dir, None, bucket, PREFIX, client=s3)
    return _remote(s3, bucket)


def _remote(s3, bucket) -> Manifest:
    return Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{MANIFEST_FILE}")["Body"].read())


def _cached(cache: Path) -> set[str]:
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}


def test_s3_new_build_is_swapped_in_and_the_old_files_leave_the_cache(s3, bucket, published, rebuilt, tmp_path):
    with _service(f"s3://{bucket}/{PREFIX}/", tmp_path, s3_client=s3) as client:
        health = client.get("/health").json()
        assert health["build"]["id"] == published.build_id == published.index_file.split("/")[1]
        old_engine = client.app.state.service.engine
        cache = tmp_path / "cache"
        assert _cached(cache) == {
            f"{published.model_sha256}/model.pt",
            f"{published.index_sha256}/index.ann",
            f"{published.keys_sha256}/keys.json",
        }

        upload(rebuilt, None, bucket, PREFIX, client=s3)  # the manifest PUT is its last request
        t_put = time.perf_counter()
        second = _remote(s3, bucket)
        health = health_until(client, _swapped_to(second.build_id))
        print(f"\nS3: manifest PUT -> swapped in {time.perf_counter() - t_put:.2f} s (check interval {CHECK_S} s)")
        assert health["index"]["sha256"] == second.index_sha256 and health["updates"]["error"] is None
        assert client.app.state.service.engine.model is old_engine.model
        # the old index and key map are gone from /tmp; the model both builds use stays
        assert second.model_sha256 == published.model_sha256
        assert _cached(cache) == {
            f"{second.model_sha256}/model.pt",
            f"{second.index_sha256}/index.ann",
            f"{second.keys_sha256}/keys.json",
        }
        assert not (cache / published.index_sha256).exists() and not (cache / published.keys_sha256).exists()
        r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["build_id"] == second.build_id
        assert old_engine.search(old_engine.vector(5), 1)[0].id == 5  # a request in flight still reads the old index


class Calls:
    """Every S3 request a boto3 client makes: (operation, HTTP status), in order."""

    def __init__(self, client):
        self.seen: list[tuple[str, int]] = []
        client.meta.events.register("after-call.s3", self._record)

    def _record(self, http_response, model, **_):
        self.seen.append((model.name, http_response.status_code))


def test_an_unchanged_manifest_costs_a_pointer_read_and_one_conditional_request(
    s3_endpoint, bucket, published, tmp_path
):
    counted = boto3.client("s3", endpoint_url=s3_endpoint, config=S3_CONFIG)
    calls = Calls(counted)
    with _service(f"s3://{bucket}/{PREFIX}/", tmp_path, check_s=1.0, s3_client=counted) as client:
        health = client.get("/health").json()
        assert ("GetObject", 200) in calls.seen  # the cold start read the manifest and downloaded
        before, cached = health["updates"]["checked_at"], _cached(tmp_path / "cache")
        calls.seen.clear()
        health = health_until(client, lambda body: body["updates"]["checked_at"] != before)
        # the model pointer (none announced: 404), the photos waiting for a model (none: 404, read until none
        # wait), then the manifest (unchanged: 304, nothing downloaded)
        assert calls.seen == [("GetObject", 404), ("GetObject", 404), ("GetObject", 304)]
        assert health["build"]["id"] == published.build_id and health["updates"]["error"] is None
        assert health["updates"]["pending_images"] == 0
        assert _cached(tmp_path / "cache") == cached
        before = health["updates"]["checked_at"]
        calls.seen.clear()
        health_until(client, lambda body: body["updates"]["checked_at"] != before)
        assert calls.seen == [("GetObject", 404), ("GetObject", 304)]  # the pointer and the manifest only


def test_a_corrupt_new_build_keeps_the_old_one_serving_until_it_is_fixed(s3, bucket, published, rebuilt, tmp_path):
    local = Manifest.read(rebuilt / MANIFEST_FILE)
    folder = f"{PREFIX}/builds/{local.build_id}/"
    for _, name, _ in local.files():
        s3.upload_file(str(rebuilt / name), bucket, folder + name)
    good_keys = (rebuilt / local.keys_file).read_bytes()
    s3.put_object(Bucket=bucket, Key=folder + local.keys_file, Body=good_keys.replace(b'"key"', b'"kez"', 1))
    remote = local.model_copy(update={f"{role}_file": f"builds/{local.build_id}/{n}" for role, n, _ in local.files()})
    with _service(f"s3://{bucket}/{PREFIX}/", tmp_path, s3_client=s3) as client:
        assert client.get("/health").json()["build"]["id"] == published.build_id
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{MANIFEST_FILE}", Body=remote.model_dump_json().encode())
        health = health_until(client, lambda body: body["updates"]["error"] is not None)
        assert health["status"] == "ready" and health["build"]["id"] == published.build_id
        assert local.build_id in health["updates"]["error"] and "keeps serving" in health["updates"]["error"]
        for internal in ("s3://", bucket, str(tmp_path), "builds/", "keys.json"):  # logged, not shown
            assert internal not in json.dumps(health), internal
        r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["build_id"] == published.build_id
        cache = tmp_path / "cache"
        assert not (cache / local.keys_sha256 / "keys.json").exists() and not list(cache.rglob("*.partial"))
        assert all(file_sha256(p) == p.parent.name for p in cache.rglob("*") if p.is_file())

        s3.put_object(Bucket=bucket, Key=folder + local.keys_file, Body=good_keys)  # fixed: the next check loads it
        health = health_until(client, _swapped_to(local.build_id))
        assert health["updates"]["error"] is None


def test_health_says_when_a_new_model_waits_for_its_backfill(tmp_path, artifacts_dir, make_client):
    """Announcing a model (models/current.json) keeps the live build serving; /health names the waiting one."""
    from lambda_fn.storage.records import POINTER_FILE, ModelPointer

    art = tmp_path / "art"
    shutil.copytree(artifacts_dir, art)
    with make_client(artifacts_uri=str(art), manifest_check_s=0.1) as client:
        assert client.get("/health").json()["updates"]["pending_model"] is None
        (art / POINTER_FILE).parent.mkdir(parents=True, exist_ok=True)
        (art / POINTER_FILE).write_text(
            ModelPointer(model_file="models/x/model.pt", model_sha256="c" * 64).model_dump_json()
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = client.get("/health").json()
            if body["updates"]["pending_model"]:
                break
            time.sleep(0.1)
        assert body["updates"]["pending_model"] == "c" * 64
        assert body["status"] == "ready" and body["build"]["id"] == Manifest.read(art / "manifest.json").build_id
