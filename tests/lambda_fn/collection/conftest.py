"""What the collection tests share: the session's build and images deployed in the loopback S3 server."""

import importlib

import pytest

from lambda_fn.contract import metrics
from lambda_fn.contract.config import get_settings
from support.service import service_env
from tests.deployment import deploy


@pytest.fixture
def deployment(s3, bucket, artifacts_dir, sample_dir, tmp_path):
    return deploy(s3, bucket, artifacts_dir, sample_dir, tmp_path / "cache")


@pytest.fixture
def handlers_for(s3_endpoint, tmp_path, monkeypatch):
    """``handlers_for(uri, **settings)``: the ingest and reindex handler modules, imported afresh and configured
    for the deployment at ``uri`` (and any other ``settings``) by the environment, as in the Lambda runtime."""

    def load(uri: str, **settings) -> list:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        env = service_env(artifacts_uri=uri, num_threads=1, cache_dir=tmp_path / "fn", **settings)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        for provider in (metrics.ingest, metrics.reindex):
            provider.clear_metrics()
        names = ("ingest", "reindex")
        return [importlib.reload(importlib.import_module(f"lambda_fn.collection.handlers.{m}")) for m in names]

    yield load
    get_settings.cache_clear()
