"""The app around the routes: CORS, JSON errors for unknown routes and unexpected failures, the OpenAPI document."""

from tests.helpers import SITE_ORIGIN, assert_json_error


def test_cors_allows_only_the_configured_origin(client):
    ok = client.options("/search", headers={"Origin": SITE_ORIGIN, "Access-Control-Request-Method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == SITE_ORIGIN
    bad = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


def test_unknown_route_is_a_json_404(client):
    assert_json_error(client.get("/nope"), 404)


def test_unexpected_errors_are_json_500_with_cors(make_client):
    client = make_client(cors_origins=SITE_ORIGIN, raise_server_exceptions=False)

    @client.app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    r = client.get("/boom", headers={"Origin": SITE_ORIGIN})
    error = assert_json_error(r, 500, "internal_error")
    assert "secret" not in error["message"]
    assert r.headers.get("access-control-allow-origin") == SITE_ORIGIN


def test_openapi_documents_the_contract(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/health", "/images/{image_id}/similar"} <= set(spec["paths"])
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*", "application/json"} <= set(content)
    assert "413" in spec["paths"]["/search"]["post"]["responses"]
    assert client.get("/docs").status_code == 200
