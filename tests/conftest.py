"""Session fixtures: a synthetic sample set, a tiny trained model, its index, and a loopback S3 server.

Shared by the suites: a client builder over the real app, the Lambda context, the service's JSON log lines,
and a build uploaded to the loopback S3 server.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest

from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest
from support.isa import ISA_ENV
from support.service import LambdaContext, free_port
from tests.helpers import (
    INDEX_TREES,
    S3_PREFIX,
    SAMPLE_CLASSES,
    SAMPLE_PER_CLASS,
    SAMPLE_SIZE,
    UploadedBuild,
    build_index,
    tiny_train_args,
)


def pytest_report_header(config) -> str:
    """Which instruction set the kernels run with: int8 numerics depend on it (make test runs both)."""
    import torch

    caps = {k: os.environ[k] for k in ISA_ENV if k in os.environ}
    return f"cpu capability: {torch.backends.cpu.get_cpu_capability()}; caps: {caps or 'none'}"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from training.sample_data import write_sample_set

    root = tmp_path_factory.mktemp("sample")
    width, height = SAMPLE_SIZE
    write_sample_set(root, per_class=SAMPLE_PER_CLASS, width=width, height=height, classes=SAMPLE_CLASSES, seed=0)
    return root


@pytest.fixture(scope="session")
def checkpoint_dir(sample_dir, tmp_path_factory) -> Path:
    from training.train import get_args_parser, main

    out = tmp_path_factory.mktemp("checkpoints")
    args = get_args_parser().parse_args(
        tiny_train_args(sample_dir, out, "--head-epochs", "1", "--epochs", "1", "--eval-first")
    )
    assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def model_path(checkpoint_dir, tmp_path_factory) -> Path:
    from training.export import get_args_parser, main

    out = tmp_path_factory.mktemp("model") / "model.pt"
    assert main(get_args_parser().parse_args(["--checkpoint", str(checkpoint_dir / "best.pt"), "--out", str(out)])) == 0
    return out


@pytest.fixture(scope="session")
def artifacts_dir(model_path, sample_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    return build_index(sample_dir, model_path, out, "--n-trees", str(INDEX_TREES), "--save-embeddings")


@pytest.fixture(scope="session")
def make_client(artifacts_dir, sample_dir, tmp_path_factory):
    """``make_client(**settings)``: a ``TestClient`` over ``create_app(Settings(...))``.

    Without ``artifacts_uri`` it serves the session's local artifacts and sample images. Unless given, it
    runs one torch thread with a fresh cache folder. ``s3_client`` goes to ``create_app``;
    ``raise_server_exceptions`` to the ``TestClient``.
    """
    from fastapi.testclient import TestClient

    from lambda_fn.contract.config import Settings
    from lambda_fn.search.app import create_app

    def build(*, s3_client=None, raise_server_exceptions: bool = True, **settings) -> TestClient:
        if "artifacts_uri" not in settings:
            settings = {"artifacts_uri": str(artifacts_dir), "images_uri": str(sample_dir), **settings}
        settings.setdefault("num_threads", 1)
        settings.setdefault("cache_dir", tmp_path_factory.mktemp("cache"))
        app = create_app(Settings(**settings), s3_client=s3_client)
        return TestClient(app, raise_server_exceptions=raise_server_exceptions)

    return build


@pytest.fixture
def lambda_context() -> LambdaContext:
    """The context object the Lambda runtime passes to a handler."""
    return LambdaContext()


@pytest.fixture
def log_lines():
    """Call it to get the JSON log lines the service has written during the test so far, parsed."""
    from lambda_fn.contract.logs import logger

    handler = logger.registered_handler
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    handler.setStream(previous)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto in server mode) on a free loopback port; it speaks S3 Vectors too, with
    QueryVectors from the labelled test extension ``tests.s3vectors_server``."""
    from moto.server import ThreadedMotoServer

    from tests import s3vectors_server

    s3vectors_server.install()

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SESSION_TOKEN": "testing",
        }
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def s3vectors(s3_endpoint):
    """A boto3 ``s3vectors`` client of the loopback server; requests are validated against the real model."""
    from lambda_fn.storage.vectors import s3vectors_client

    return s3vectors_client(endpoint_url=s3_endpoint)


@pytest.fixture
def vector_bucket(s3vectors, request):
    """A vector bucket named after the test, removed with its indexes afterwards."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-vec"
    s3vectors.create_vector_bucket(vectorBucketName=name)
    yield name
    for index in s3vectors.list_indexes(vectorBucketName=name).get("indexes", []):
        s3vectors.delete_index(vectorBucketName=name, indexName=index["indexName"])
    s3vectors.delete_vector_bucket(vectorBucketName=name)


@pytest.fixture
def bucket(s3, request):
    """A bucket named after the test, emptied and removed afterwards: the loopback server spools objects over
    16 MiB (every model) to temporary files that it keeps until their bucket goes."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-bkt"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=name, Key=item["Key"], VersionId=item["VersionId"])
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def upload_build(s3, bucket, artifacts_dir, sample_dir, s3_endpoint, monkeypatch):
    """``upload_build(prefix=S3_PREFIX, *, images=False)``: the session's build uploaded to the test's bucket
    with ``ops.upload`` (the sample images too, when asked), as an ``UploadedBuild``.

    The service's own S3 clients reach the loopback server through ``AWS_ENDPOINT_URL``.
    """
    from ops.upload import upload

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)

    def go(prefix: str = S3_PREFIX, *, images: bool = False) -> UploadedBuild:
        upload(artifacts_dir, sample_dir if images else None, bucket, prefix, client=s3)
        body = s3.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_FILE}")["Body"].read()
        return UploadedBuild(bucket, prefix, Manifest.model_validate_json(body))

    return go


@pytest.fixture
def uploaded(upload_build) -> UploadedBuild:
    """Model, index and key map uploaded under ``S3_PREFIX`` (no images)."""
    return upload_build()
