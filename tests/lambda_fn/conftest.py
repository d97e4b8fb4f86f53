"""The service over the session's local artifacts, shared by the route tests."""

import pytest

from tests.helpers import SITE_ORIGIN


@pytest.fixture(scope="session")
def client(make_client):
    """TestClient over the real app and the session's local artifacts; CORS allows ``SITE_ORIGIN``."""
    with make_client(cors_origins=SITE_ORIGIN) as c:
        yield c
