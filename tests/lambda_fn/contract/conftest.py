"""What the metrics and log tests of the event functions share: a deployment and the functions' environment."""

from __future__ import annotations

import importlib

import pytest

from lambda_fn.contract.logs import configure
from support.service import service_env
from tests.deployment import deploy


@pytest.fixture
def deployment(s3, bucket, artifacts_dir, sample_dir, s3_endpoint, tmp_path, monkeypatch):
    """The session's build and images in the loopback S3 server, and the event functions' environment."""
    d = deploy(s3, bucket, artifacts_dir, sample_dir, tmp_path / "cache")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    env = service_env(artifacts_uri=d.uri, images_uri=f"{d.uri}images/", num_threads=1, cache_dir=tmp_path / "fn")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from lambda_fn.contract.config import get_settings

    get_settings.cache_clear()
    yield d
    get_settings.cache_clear()
    configure("INFO")  # the search service's name again, for the tests that follow in this process


@pytest.fixture
def handler_of(deployment):
    """``handler_of(module)``: that module's ``handler``, reloaded so it reads the deployment's environment."""
    return lambda module: importlib.reload(importlib.import_module(module)).handler
