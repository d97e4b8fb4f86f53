"""The error contract: the OpenAPI document lists every ``ErrorCode``, and each code has one HTTP status."""

import re
from http import HTTPStatus

import pytest

from lambda_fn.contract.config import Settings
from lambda_fn.search.app import create_app
from lambda_fn.search.errors import ApiError, error_response
from lambda_fn.search.schemas import STATUS, ErrorCode


@pytest.fixture(scope="module")
def spec() -> dict:
    """The OpenAPI document of an app over absent artifacts: the contract does not depend on them."""
    return create_app(Settings(artifacts_uri="/nonexistent/deepfood-artifacts")).openapi()


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_openapi_lists_every_error_code_as_the_error_body_code(spec):
    detail = _resolve(spec, spec["components"]["schemas"]["ErrorResponse"]["properties"]["error"])
    code = _resolve(spec, detail["properties"]["code"])
    assert sorted(code["enum"]) == sorted(c.value for c in ErrorCode)


def test_every_documented_error_answer_is_the_error_body(spec):
    for path, operations in spec["paths"].items():
        if path == "/health":
            continue  # its 503 is the health body, which carries the error
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema.get("$ref", "").endswith("/ErrorResponse"), (method, path, status)


def test_codes_documented_under_a_status_belong_to_it(spec):
    named = 0
    for operations in spec["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                for word in re.findall(r"`(\w+)`", response.get("description", "")):
                    if word in ErrorCode.__members__.values():
                        named += 1
                        assert STATUS[ErrorCode(word)] == int(status), (word, status)
    assert named >= len(STATUS) // 2  # the descriptions do name codes


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_has_one_error_status(code):
    status = HTTPStatus(code.status)  # a status HTTP defines
    assert 400 <= status < 600
    assert ApiError(code, "m").status == error_response(code, "m").status_code == status


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (400, ErrorCode.BAD_REQUEST),
        (404, ErrorCode.NOT_FOUND),
        (413, ErrorCode.TOO_LARGE),
        (418, ErrorCode.BAD_REQUEST),  # a 4xx with no code of its own
        (502, ErrorCode.INTERNAL_ERROR),
    ],
)
def test_the_http_layers_own_errors_answer_with_their_codes_one_status(raised, code):
    # Starlette and FastAPI raise HTTPException themselves (routing, body parsing); the answer still keeps
    # the contract: a code from the enum, with the one status that code has.
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.exceptions import HTTPException

    from lambda_fn.search import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/raise")
    def _raise():
        raise HTTPException(raised, "refused")

    answer = TestClient(app).get("/raise")
    assert answer.status_code == code.status
    assert answer.json() == {"error": {"code": code.value, "message": "refused"}}
