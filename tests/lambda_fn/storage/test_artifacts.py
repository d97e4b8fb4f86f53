"""Where the artifacts are, and fetching them: a local folder is checked in place, S3 objects are downloaded
into the cache and verified against the manifest's sha256."""

import json
import shutil
from pathlib import Path

import pytest

from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import MANIFEST_FILE, file_sha256
from lambda_fn.storage.artifacts import fetch
from lambda_fn.storage.errors import ArtifactError
from lambda_fn.storage.store import Location


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix", "path"),
    [
        ("s3://bucket/some/prefix/", "bucket", "some/prefix/", None),
        ("s3://bucket/some/prefix", "bucket", "some/prefix/", None),
        ("s3://bucket", "bucket", "", None),
        ("s3://bucket/", "bucket", "", None),
        ("/srv/artifacts", None, "", Path("/srv/artifacts")),
        ("relative/artifacts", None, "", Path("relative/artifacts")),
        ("file:///srv/artifacts", None, "", Path("/srv/artifacts")),
    ],
)
def test_location_parse(uri, bucket, prefix, path):
    location = Location.parse(uri)
    assert (location.bucket, location.prefix, location.path) == (bucket, prefix, path)
    assert location.is_s3 == (bucket is not None)


def test_location_describes_an_object_or_a_file():
    assert Location.parse("s3://b/p").describe("model.pt") == "s3://b/p/model.pt"
    assert Location.parse("/srv/a").describe("model.pt") == "/srv/a/model.pt"


@pytest.mark.parametrize(("uri", "says"), [("s3:///prefix/", "no bucket name"), ("https://host/a/", "unsupported")])
def test_location_parse_refuses_what_it_cannot_read(uri, says):
    with pytest.raises(ArtifactError, match=says):
        Location.parse(uri)


def test_a_local_folder_is_read_in_place(artifacts_dir, tmp_path):
    fetched = fetch(str(artifacts_dir), tmp_path / "cache")
    assert (fetched.model, fetched.index, fetched.keys) == tuple(
        artifacts_dir / name for _, name, _ in fetched.manifest.files()
    )
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_a_local_folder_without_a_manifest_says_how_to_build_one(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist; build the index"):
        fetch(str(tmp_path), tmp_path / "cache")


def test_a_file_the_local_manifest_lists_but_is_missing_is_named(artifacts_dir, tmp_path):
    shutil.copytree(artifacts_dir, tmp_path / "a")
    (tmp_path / "a" / "index.ann").unlink()
    with pytest.raises(ArtifactError, match=r"index\.ann is listed in the manifest but does not exist"):
        fetch(str(tmp_path / "a"), tmp_path / "cache")


def test_a_model_that_is_not_the_manifests_is_refused(artifacts_dir, tmp_path):
    shutil.copytree(artifacts_dir, tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["model_sha256"] = "0" * 64
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        fetch(str(tmp_path / "a"), tmp_path / "cache")


def test_s3_objects_are_downloaded_verified_into_the_cache(uploaded, s3, tmp_path):
    cache = tmp_path / "cache"
    fetched = fetch(uploaded.uri, cache, client=s3)
    assert fetched.manifest == uploaded.manifest
    for (_, name, digest), path in zip(
        uploaded.manifest.files(), (fetched.model, fetched.index, fetched.keys), strict=True
    ):
        assert path == cache / digest / Path(name).name and file_sha256(path) == digest
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == ["index.ann", "keys.json", "model.pt"]


def test_an_s3_manifest_that_is_not_json_is_refused(uploaded, s3, tmp_path):
    s3.put_object(Bucket=uploaded.bucket, Key=uploaded.key(MANIFEST_FILE), Body=b"{not json")
    with pytest.raises(ArtifactError, match="is not a valid manifest"):
        fetch(uploaded.uri, tmp_path / "cache", client=s3)


def test_a_missing_bucket_names_the_setting_to_check(s3, tmp_path, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(ArtifactError, match=f"bucket .* does not exist; check {env_name('artifacts_uri')}"):
        fetch("s3://no-such-bucket-here/p/", tmp_path / "cache", client=s3)
