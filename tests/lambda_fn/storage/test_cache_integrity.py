"""The artifact cache holds only what this service verified: manifest digests and names are checked before any
path is built from them, every cache path stays inside the cache, a cache hit is hashed again, partial files a
killed process left are removed at start, and the local server's default cache is private to its user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest, file_sha256
from lambda_fn.search import local
from lambda_fn.storage import cache as cache_module
from lambda_fn.storage.artifacts import fetch
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.records import ModelPointer
from tests.helpers import jpeg_bytes

GOOD = "0" * 64


def _manifest(**change) -> dict:
    base = {
        "dim": 512,
        "metric": "angular",
        "n_trees": 10,
        "search_k": 100,
        "seed": 0,
        "count": 1,
        "model_sha256": GOOD,
        "index_sha256": GOOD,
        "keys_sha256": GOOD,
    }
    return base | change


@pytest.mark.parametrize(
    "digest",
    ["0" * 63, "0" * 65, "A" * 64, "g" * 64, "../../" + "0" * 58, "0" * 63 + "/", " " + "0" * 63, "0" * 64 + "\n"],
)
@pytest.mark.parametrize("field", ["model_sha256", "index_sha256", "keys_sha256", "collection_sha256"])
def test_manifest_digests_are_64_lowercase_hex(field, digest):
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        Manifest.model_validate(_manifest(**{field: digest}))


@pytest.mark.parametrize(
    "name",
    [
        "../model.pt",
        "builds/../../model.pt",
        "builds/..",
        "/etc/passwd",
        "/model.pt",
        "builds\\abc\\model.pt",
        "..\\model.pt",
        "builds//model.pt",
        "builds/abc/",
        "./model.pt",
        "builds/./model.pt",
        "",
        "model.pt\0.txt",
    ],
)
@pytest.mark.parametrize("field", ["model_file", "index_file", "keys_file", "collection_file", "embeddings_file"])
def test_manifest_file_names_are_relative_posix_paths(field, name):
    with pytest.raises(ValidationError, match="relative POSIX path"):
        Manifest.model_validate(_manifest(**{field: name}))


@pytest.mark.parametrize("name", ["model.pt", "builds/0123abcd/model.pt", "builds/x/collection.npz", "a..b/c.pt"])
def test_plain_relative_names_are_accepted(name):
    assert Manifest.model_validate(_manifest(model_file=name)).model_file == name


def test_a_model_pointer_digest_is_checked_too():
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        ModelPointer(model_file="models/x/model.pt", model_sha256="../../x")


def test_cache_paths_use_the_final_name_and_stay_inside(tmp_path):
    cache = tmp_path / "cache"
    assert cache_module.cache_path(cache, GOOD, "builds/abc/model.pt") == cache / GOOD / "model.pt"
    outside = tmp_path / "outside"
    outside.mkdir()
    cache.mkdir()
    (cache / GOOD).symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the cache"):
        cache_module.cache_path(cache, GOOD, "model.pt")


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target, start)


def test_a_manifest_digest_that_climbs_out_of_the_cache_is_refused(uploaded, s3, make_client, tmp_path):
    """Regression: a digest was joined to the cache path unchecked, and a file found there counted as a verified
    cache hit, so ``model_sha256: "../../elsewhere"`` made the service load ``elsewhere/model.pt`` unhashed."""
    cache = tmp_path / "a" / "cache"
    cache.mkdir(parents=True)  # a warm cache: the OS resolves "cache/../.." only through a folder that exists
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    good = s3.get_object(Bucket=uploaded.bucket, Key=uploaded.key(uploaded.manifest.model_file))["Body"].read()
    (planted / "model.pt").write_bytes(good)  # any TorchScript program would do
    wrong = uploaded.manifest.model_dump() | {"model_sha256": _relative(planted, cache)}
    s3.put_object(Bucket=uploaded.bucket, Key=uploaded.key(MANIFEST_FILE), Body=json.dumps(wrong).encode())
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=cache)
    r = client.get("/health")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "manifest" in message and "not valid" in message, message
    assert str(tmp_path) not in r.text and uploaded.bucket not in r.text


def _cached_copy(uploaded, make_client, cache: Path) -> None:
    assert make_client(artifacts_uri=uploaded.uri, cache_dir=cache).get("/health").status_code == 200


def test_a_tampered_cache_hit_is_hashed_again_and_replaced(uploaded, make_client, tmp_path, log_lines):
    cache = tmp_path / "cache"
    _cached_copy(uploaded, make_client, cache)
    keys = cache / uploaded.manifest.keys_sha256 / "keys.json"
    keys.write_text(keys.read_text().replace('"label": "', '"label": "tampered-'))
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=cache)
    r = client.post("/search?k=3", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert not any(m["label"].startswith("tampered-") for m in r.json()["results"]), r.json()["results"]
    assert file_sha256(keys) == uploaded.manifest.keys_sha256  # downloaded again
    warned = [
        e for e in log_lines() if e.get("message") == "cached artifact does not match its sha256; downloading it again"
    ]
    assert warned and warned[0]["artifact"] == uploaded.manifest.keys_file


def test_a_verified_cache_hit_is_not_downloaded_again(uploaded, s3, make_client, tmp_path):
    cache = tmp_path / "cache"
    _cached_copy(uploaded, make_client, cache)
    for _, name, _ in uploaded.manifest.files():
        s3.delete_object(Bucket=uploaded.bucket, Key=uploaded.key(name))
    assert make_client(artifacts_uri=uploaded.uri, cache_dir=cache).get("/health").status_code == 200


def test_a_cache_folder_linked_outside_the_cache_is_refused(uploaded, make_client, tmp_path):
    cache = tmp_path / "cache"
    _cached_copy(uploaded, make_client, cache)
    folder = cache / uploaded.manifest.model_sha256
    moved = folder.rename(tmp_path / "moved")
    folder.symlink_to(moved, target_is_directory=True)  # the same, verified bytes, but outside the cache
    r = make_client(artifacts_uri=uploaded.uri, cache_dir=cache).get("/health")
    assert r.status_code == 503 and "cache" in r.json()["error"]["message"], r.text
    assert str(tmp_path) not in r.text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(folder: Path, name: str, pid: int, *, age_s: float = 0, s3transfer: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{pid}.{uuid.uuid4().hex}.partial{'.aB3dE9f0' if s3transfer else ''}"
    path.write_bytes(b"half a download")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_partial_files_of_killed_processes_are_removed_at_start(uploaded, make_client, tmp_path):
    cache = tmp_path / "cache"
    live_pid = os.getppid()  # alive, and not this process
    dead = _partial(cache / GOOD, "model.pt", _dead_pid())
    dead_s3transfer = _partial(cache / GOOD, "index.ann", _dead_pid(), s3transfer=True)
    old = _partial(cache / ("1" * 64), "keys.json", live_pid, age_s=120)
    old_format = cache / ("2" * 64) / f".model.pt.{uuid.uuid4().hex}.partial"
    old_format.parent.mkdir()
    old_format.write_bytes(b"x")
    os.utime(old_format, (time.time() - 120, time.time() - 120))
    held = _partial(cache / ("3" * 64), "model.pt", live_pid)
    young_unknown = cache / ("3" * 64) / f".index.ann.{uuid.uuid4().hex}.partial"
    young_unknown.write_bytes(b"x")
    verified = cache / ("3" * 64) / "model.pt"
    verified.write_bytes(b"a file at a final path is never a partial")

    make_client(artifacts_uri=uploaded.uri, cache_dir=cache)  # the service starts; no request yet
    assert not dead.exists() and not dead_s3transfer.exists() and not old.exists() and not old_format.exists()
    assert held.exists() and young_unknown.exists() and verified.exists()
    assert not (cache / GOOD).exists() and not (cache / ("1" * 64)).exists()  # emptied folders go too


def test_partials_this_process_is_writing_are_kept(tmp_path, uploaded, s3, monkeypatch):
    seen = []
    real = cache_module.file_sha256

    def hash_and_clean(path):
        # what another start on this cache would do, while this process is downloading
        seen.append(cache_module.clean_partials(tmp_path / "cache"))
        return real(path)

    monkeypatch.setattr(cache_module, "file_sha256", hash_and_clean)
    fetched = fetch(uploaded.uri, tmp_path / "cache", client=s3)
    assert seen and all(removed == [] for removed in seen)
    assert file_sha256(fetched.model) == uploaded.manifest.model_sha256
    own = _partial(tmp_path / "cache" / GOOD, "model.pt", os.getpid())  # this pid, but no download of ours
    assert cache_module.clean_partials(tmp_path / "cache") == [own]


def _args(*argv: str):
    return local.get_args_parser().parse_args(["--artifacts", "artifacts", *argv])


def test_the_local_server_caches_in_a_private_per_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = local.settings_from_args(_args())
    assert settings.cache_dir == tmp_path / "xdg" / "deepfood"
    assert stat.S_IMODE(settings.cache_dir.stat().st_mode) == 0o700

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert local.settings_from_args(_args()).cache_dir == tmp_path / "home" / ".cache" / "deepfood"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec says: ignore a relative path
    assert local.settings_from_args(_args()).cache_dir == tmp_path / "home" / ".cache" / "deepfood"
    assert local.settings_from_args(_args("--cache-dir", str(tmp_path / "mine"))).cache_dir == tmp_path / "mine"


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777, 0o722])
def test_the_local_server_refuses_a_cache_others_can_write(tmp_path, monkeypatch, capsys, mode):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "deepfood").mkdir()
    (tmp_path / "deepfood").chmod(mode)
    with pytest.raises(local.UnsafeCacheDir, match="writable by other users"):
        local.settings_from_args(_args())
    assert local.main(_args()) == 2
    assert "writable by other users" in capsys.readouterr().err


def test_the_local_server_refuses_a_cache_owned_by_someone_else(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "deepfood").mkdir(mode=0o700)
    someone_else = os.getuid() + 1
    monkeypatch.setattr(local.os, "getuid", lambda: someone_else)
    with pytest.raises(local.UnsafeCacheDir, match="owned by another user"):
        local.settings_from_args(_args())
