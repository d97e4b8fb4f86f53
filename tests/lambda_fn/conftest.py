import pytest
from fastapi.testclient import TestClient

from lambda_fn.app import create_app
from lambda_fn.config import Settings


@pytest.fixture(scope="session")
def settings(artifacts_dir, sample_dir, tmp_path_factory) -> Settings:
    return Settings(
        artifacts_uri=str(artifacts_dir),
        images_uri=str(sample_dir),
        num_threads=1,
        cache_dir=tmp_path_factory.mktemp("cache"),
        cors_origins="https://site.example",
    )


@pytest.fixture(scope="session")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def make_client(**overrides) -> TestClient:
    return TestClient(create_app(Settings(**overrides)))
