"""The service over the session's local artifacts, shared by the route tests, and a build with another model."""

from pathlib import Path

import pytest

from lambda_fn.contract.manifest import MODEL_FILE
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
