"""schemathesis against the app's own OpenAPI document, in-process over ASGI: no 5xx, responses conform.

Every built-in check runs except ``positive_data_acceptance``: the schema says the JSON ``image`` field is
a string, and cannot say "base64 of a decodable picture", so a schema-valid ``{"image": ""}`` is rightly
answered 400. Status codes, content types, headers and response bodies must all match the document.

The document is read at import from an app over absent artifacts (the contract does not depend on them);
requests then go to an app over the real test artifacts, swapped in by a fixture. (schemathesis's
``from_fixture`` loader fails on this pytest version with ``'Function' object has no attribute '_nodeid'``.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from lambda_fn.app import create_app
from lambda_fn.config import Settings
from tests.fakes import ForwardingApp

_CONTRACT_ONLY = create_app(Settings(artifacts_uri="/nonexistent/deepfood-artifacts"))
_APP = ForwardingApp(_CONTRACT_ONLY)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _serve_real_artifacts(make_client):
    real = make_client().app  # the app over the session's local artifacts
    assert real.openapi() == _CONTRACT_ONLY.openapi()  # the contract does not depend on the artifacts
    _APP.target = real
    yield
    _APP.target = _CONTRACT_ONLY


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_to_its_schema(case, tally):
    assert _APP.target is not _CONTRACT_ONLY
    response = case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
    tally["schemathesis calls"] += 1
    tally["5xx seen"] += response.status_code >= 500
    assert response.status_code < 500, response.text[:300]
    if case.path == "/health" and case.method.upper() == "GET":
        assert response.status_code == 200  # the real artifacts are loaded, not the contract-only app's
