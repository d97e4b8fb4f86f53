import json

import pytest

from lambda_fn.contract.manifest import Manifest, read_keys
from ops.upload import upload
from tests.helpers import SAMPLE_COUNT, run_module


def _objects(s3, bucket):
    return {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_upload_lands_everything_with_types_and_manifest_last(s3, bucket, artifacts_dir, sample_dir):
    calls = []
    real_put, real_upload = s3.put_object, s3.upload_file
    s3.put_object = lambda **kw: (calls.append(kw["Key"]), real_put(**kw))[1]
    s3.upload_file = lambda *a, **kw: (calls.append(a[2]), real_upload(*a, **kw))[1]
    report = upload(artifacts_dir, sample_dir, bucket, "deepfood", client=s3, workers=4)
    assert calls[-1] == "deepfood/manifest.json"  # written after every object it names
    objects = _objects(s3, bucket)
    keys = read_keys(artifacts_dir / "keys.json")
    assert report.uploaded_images == len(keys) == SAMPLE_COUNT
    for entry in keys[:5]:
        head = s3.head_object(Bucket=bucket, Key=f"deepfood/images/{entry.key}")
        assert head["ContentType"] == ("image/png" if entry.key.endswith(".png") else "image/jpeg")
    remote = Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key="deepfood/manifest.json")["Body"].read())
    for name in (remote.model_file, remote.index_file, remote.keys_file):
        assert f"deepfood/{name}" in objects and name.startswith("builds/")
    assert remote.model_sha256 == Manifest.read(artifacts_dir / "manifest.json").model_sha256


def test_second_run_uploads_nothing_new(s3, bucket, artifacts_dir, sample_dir):
    upload(artifacts_dir, sample_dir, bucket, "p", client=s3)
    again = upload(artifacts_dir, sample_dir, bucket, "p", client=s3)
    assert again.uploaded_images == 0 and again.skipped_images == SAMPLE_COUNT
    build_files = Manifest.read(artifacts_dir / "manifest.json").files(with_collection=True)
    assert len(build_files) == 4  # model, index, keys, collection
    assert again.uploaded_artifacts == 0 and again.skipped_artifacts == len(build_files)


def test_cli_honours_endpoint_url(s3_endpoint, s3, bucket, artifacts_dir):
    proc = run_module(
        "ops.upload",
        "--artifacts",
        str(artifacts_dir),
        "--bucket",
        bucket,
        "--prefix",
        "cli",
        "--endpoint-url",
        s3_endpoint,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cli/manifest.json" in _objects(s3, bucket)
    assert json.loads(s3.get_object(Bucket=bucket, Key="cli/manifest.json")["Body"].read())["count"] == SAMPLE_COUNT


def test_cli_missing_bucket_is_readable(s3_endpoint, artifacts_dir):
    proc = run_module(
        "ops.upload",
        "--artifacts",
        str(artifacts_dir),
        "--bucket",
        "no-such-bucket",
        "--endpoint-url",
        s3_endpoint,
        timeout=120,
    )
    assert proc.returncode == 2 and "NoSuchBucket" in proc.stderr and "Traceback" not in proc.stderr


class _PublishedMeanwhile:
    """The test's S3 client, except that another publisher (a reindex) writes ``newer`` as the manifest (or the
    object whose key ends with ``suffix``) just before this upload's own PUT of it reaches S3."""

    def __init__(self, client, newer: bytes, suffix: str = "/manifest.json"):
        self._client, self.newer, self.suffix = client, newer, suffix

    def __getattr__(self, name):
        return getattr(self._client, name)

    def put_object(self, **kw):
        if kw["Key"].endswith(self.suffix):
            self._client.put_object(Bucket=kw["Bucket"], Key=kw["Key"], Body=self.newer)
        return self._client.put_object(**kw)


def _live(s3, bucket, prefix) -> bytes:
    return s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()


def test_a_build_published_meanwhile_wins_and_the_upload_says_so(s3, bucket, artifacts_dir, monkeypatch, capsys):
    from ops import upload as upload_module

    upload(artifacts_dir, None, bucket, "race", client=s3)
    ours = Manifest.read(artifacts_dir / "manifest.json")
    newer = Manifest.model_validate_json(_live(s3, bucket, "race")).model_copy(update={"count": ours.count + 1})
    racing = _PublishedMeanwhile(s3, newer.model_dump_json().encode())
    monkeypatch.setattr(upload_module, "s3_client", lambda **_: racing)
    status = upload_module.cli(["--artifacts", str(artifacts_dir), "--bucket", bucket, "--prefix", "race"])
    err = capsys.readouterr().err
    assert status != 0 and "Traceback" not in err
    assert "a newer build won" in err and f"{newer.count} images" in err and "nothing was overwritten" in err
    assert "run the upload again" in err
    assert _live(s3, bucket, "race") == racing.newer  # the newer build is not lost
    assert f"race/builds/{ours.build_id}/index.ann" in _objects(s3, bucket)  # ours is there for a re-run
    again = upload(artifacts_dir, None, bucket, "race", client=s3)  # the operator's informed re-run
    assert again.uploaded_artifacts == 0
    assert Manifest.model_validate_json(_live(s3, bucket, "race")).count == ours.count


def test_the_first_upload_leaves_a_manifest_that_appeared_meanwhile(s3, bucket, artifacts_dir):
    from ops.upload import NewerBuildWon

    ours = Manifest.read(artifacts_dir / "manifest.json")
    racing = _PublishedMeanwhile(s3, ours.model_copy(update={"count": 1}).model_dump_json().encode())
    with pytest.raises(NewerBuildWon, match="a newer build won"):
        upload(artifacts_dir, None, bucket, "empty", client=racing)
    assert _live(s3, bucket, "empty") == racing.newer


def test_a_model_announced_meanwhile_stays_announced(s3, bucket, artifacts_dir):
    from lambda_fn.storage.records import ModelPointer, model_key
    from ops.upload import NewerModelWon, announce_model

    theirs = ModelPointer(model_file=model_key("c" * 64), model_sha256="c" * 64).model_dump_json().encode()
    racing = _PublishedMeanwhile(s3, theirs, suffix="/models/current.json")
    with pytest.raises(NewerModelWon, match="another model was announced meanwhile: model cccccccccccc"):
        announce_model(artifacts_dir / "model.pt", bucket, "ann", client=racing)
    assert s3.get_object(Bucket=bucket, Key="ann/models/current.json")["Body"].read() == theirs
