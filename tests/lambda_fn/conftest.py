"""The service over the session's local artifacts, shared by the route tests, and a build with another model;
the session's build and images deployed in the loopback S3 server, and the collection's handlers configured for it."""

import importlib
from pathlib import Path

import pytest

from lambda_fn.contract import metrics
from lambda_fn.contract.config import get_settings
from lambda_fn.contract.manifest import MODEL_FILE
from support.service import service_env
from tests.deployment import deploy
from tests.helpers import SITE_ORIGIN
from tests.lambda_fn.builds import REBUILT_IDS, resaved_model, subset_build


@pytest.fixture(scope="session")
def client(make_client):
    """TestClient over the real app and the session's local artifacts; CORS allows ``SITE_ORIGIN``."""
    with make_client(cors_origins=SITE_ORIGIN) as c:
        yield c


@pytest.fixture(scope="session")
def retrained(artifacts_dir, tmp_path_factory) -> Path:
    """A flat build of 50 of the session build's images (``REBUILT_IDS``) with another model file: the same
    network saved again, so its hash differs. Tests copy it (``publish_flat``), never change it."""
    root = tmp_path_factory.mktemp("retrained")
    model = resaved_model(artifacts_dir / MODEL_FILE, root / "model" / MODEL_FILE)
    subset_build(artifacts_dir, root / "build", REBUILT_IDS, model=model)
    return root / "build"


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
