"""schemathesis against the app's own OpenAPI document, in-process over ASGI: no 5xx, responses conform.

Every built-in check runs except ``positive_data_acceptance``: the schema says the JSON ``image`` field is
a string, and cannot say "base64 of a decodable picture", so a schema-valid ``{"image": ""}`` is rightly
answered 400. Status codes, content types, headers and response bodies must all match the document.
Multipart bodies skip ``negative_data_rejection`` too: a form field turned into an empty array is no field at
all on the wire, so "k became an array" arrives as a valid form without k (the hostile-input corpus covers
malformed forms).

The document is read at import from an app over absent artifacts (the contract does not depend on them);
requests then go to an app over the real test artifacts, swapped in by a fixture. (schemathesis's
``from_fixture`` loader fails on this pytest version with ``'Function' object has no attribute '_nodeid'``.)

The generated cases include the search parameters (``label``, ``offset``, ``min_similarity``, ``dedupe``)
and JSON bodies with a ``url``. Those links never reach the network: host names do not resolve here (as with
no DNS server), literal addresses and other schemes are refused by the fetch's checks, and any attempt to
open a connection is recorded, and fails the run.
"""

from __future__ import annotations

import socket

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from lambda_fn.contract.config import Settings
from lambda_fn.search import fetch
from lambda_fn.search.app import create_app
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


SEARCH_PARAMETERS = {"k", "offset", "label", "min_similarity", "dedupe"}
_CONNECTIONS: list[tuple[str, int]] = []


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Names do not resolve (numbers still parse); a connection attempt is recorded and refused."""
    real = socket.getaddrinfo

    def numbers_only(host, port, family=0, type=0, proto=0, flags=0):
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    def no_connection(address, port, timeout):
        _CONNECTIONS.append((address, port))
        raise ConnectionRefusedError(f"the schema tests never connect ({address})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fetch.socket, "getaddrinfo", numbers_only)
        patch.setattr(fetch, "open_socket", no_connection)
        yield


def test_every_search_endpoint_documents_the_search_parameters():
    paths = _CONTRACT_ONLY.openapi()["paths"]
    for path, method in (("/search", "post"), ("/images/{image_id}/similar", "get"), ("/similar", "get")):
        names = {p["name"] for p in paths[path][method]["parameters"] if p["in"] == "query"}
        assert names >= SEARCH_PARAMETERS, (path, names)
    body = paths["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    url = body["properties"]["url"]
    assert url["format"] == "uri" and {"type": "string", "maxLength": 2048} in url["anyOf"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_conforms_to_its_schema(case, tally):
    assert _APP.target is not _CONTRACT_ONLY
    excluded = [schemathesis.checks.positive_data_acceptance]
    if case.media_type == "multipart/form-data":
        excluded.append(schemathesis.checks.negative_data_rejection)
    response = case.call_and_validate(excluded_checks=excluded)
    tally["schemathesis calls"] += 1
    tally["5xx seen"] += response.status_code >= 500
    tally["schemathesis cases with a search parameter"] += bool(SEARCH_PARAMETERS - {"k"} & set(case.query or {}))
    tally["schemathesis image links"] += isinstance(case.body, dict) and isinstance(case.body.get("url"), str)
    assert _CONNECTIONS == [], f"an image link reached for the network: {_CONNECTIONS}"
    assert response.status_code < 500, response.text[:300]
    if case.path == "/health" and case.method.upper() == "GET":
        assert response.status_code == 200  # the real artifacts are loaded, not the contract-only app's


def test_the_generated_cases_used_the_new_parameters_without_any_connection(tally):
    if not tally["schemathesis calls"]:
        pytest.skip("the schemathesis cases did not run in this session")
    assert tally["schemathesis cases with a search parameter"] > 0
    assert tally["schemathesis image links"] > 0
    assert _CONNECTIONS == []
