"""What a client sees when the build cannot be loaded: what is wrong and what to do, never where things are
(S3 URIs, bucket names, paths), the underlying exception or library versions; those go to the JSON logs with
the request id. A failing load is retried with exponential backoff, not on every request."""

from __future__ import annotations

import json
import math

import pytest
from mangum import Mangum

from lambda_fn import __version__
from lambda_fn.contract.config import Settings
from lambda_fn.contract.logs import logger
from lambda_fn.search import state as state_module
from lambda_fn.search.app import create_app
from lambda_fn.storage import cache as cache_module
from lambda_fn.storage import records as records_module
from support.service import free_port
from tests.helpers import assert_json_error, jpeg_bytes, load_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _search(client):
    return client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})


def _assert_public(text: str, *internal: str) -> None:
    for fragment in internal:
        assert fragment not in text, f"{fragment!r} is in the public body: {text}"


def test_s3_unreachable_says_so_without_the_endpoint_or_the_exception(uploaded, make_client, tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # nothing listens there
    client = make_client(artifacts_uri=uploaded.uri, cache_dir=tmp_path / "cache")
    r = _search(client)
    message = assert_json_error(r, 503, "not_ready")["message"]
    assert "S3 is unreachable" in message and "manifest" in message
    health = client.get("/health")
    _assert_public(
        r.text + health.text, "s3://", uploaded.bucket, "127.0.0.1", "Could not connect", str(tmp_path), "Error"
    )


def test_a_full_disk_says_so_without_the_cache_path(uploaded, make_client, tmp_path, monkeypatch):
    def full(_path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "file_sha256", full)
    cache = tmp_path / "cache"
    message = assert_json_error(_search(make_client(artifacts_uri=uploaded.uri, cache_dir=cache)), 503)["message"]
    assert "no space left" in message and "ephemeral_storage_mb" in message
    _assert_public(message, str(cache), "No space left on device", "[Errno")


def test_a_model_that_does_not_load_says_what_to_do_not_why_torch_refused(artifacts_dir, make_client, tmp_path):
    broken = tmp_path / "artifacts"
    broken.mkdir()
    for f in artifacts_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.pt").write_bytes(b"not a TorchScript archive")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["model_sha256"] = cache_module.file_sha256(broken / "model.pt")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    r = _search(make_client(artifacts_uri=str(broken)))
    message = assert_json_error(r, 503, "not_ready")["message"]
    assert "could not be loaded" in message and "publish" in message
    _assert_public(message, str(broken), "PytorchStreamReader", "TorchScript:", "RuntimeError")


def test_health_shows_only_the_service_version(make_client):
    body = make_client().get("/health").json()
    assert body["status"] == "ready" and body["versions"] == {"service": __version__}


def test_details_are_logged_with_the_request_id(tmp_path, lambda_context, log_lines):
    """Through Mangum and the powertools context, as ``lambda_fn.search.main.handler`` runs."""
    app = create_app(Settings(artifacts_uri=str(tmp_path / "nothing-here"), cache_dir=tmp_path / "cache"))
    handler = logger.inject_lambda_context(Mangum(app, lifespan="off"), clear_state=True)
    response = handler(load_event("function_url_get_health"), lambda_context)
    assert response["statusCode"] == 503
    _assert_public(response["body"], str(tmp_path))
    failures = [e for e in log_lines() if e.get("message") == "artifacts unavailable"]
    assert failures and str(tmp_path / "nothing-here") in failures[-1]["reason"]
    assert failures[-1]["function_request_id"] == lambda_context.aws_request_id
    assert failures[-1]["retry_in_s"] > 0


def test_a_failing_load_backs_off_and_requests_meanwhile_answer_at_once(tmp_path, make_client, monkeypatch):
    attempts = []
    real = records_module.read_manifest
    monkeypatch.setattr(records_module, "read_manifest", lambda *a, **k: attempts.append(1) or real(*a, **k))
    client = make_client(artifacts_uri=str(tmp_path / "empty"))
    clock = client.app.state.service.backoff.clock = Clock()
    client.app.state.service.backoff.random = lambda: 0.5  # no jitter: the middle of the range

    first = _search(client)
    assert_json_error(first, 503, "not_ready")
    assert attempts == [1] and first.headers["retry-after"] == str(math.ceil(state_module.RETRY_FIRST_S))
    clock.now += 0.4
    during = [_search(client), client.get("/health"), _search(client)]
    assert attempts == [1]  # no new attempt during the backoff
    for r in during:
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "manifest" in r.text
    clock.now += state_module.RETRY_FIRST_S
    second = _search(client)  # the second attempt: twice the wait
    assert second.headers["retry-after"] == str(math.ceil(2 * state_module.RETRY_FIRST_S))
    assert attempts == [1, 1]

    (tmp_path / "empty").mkdir()  # still nothing: the waits keep doubling, up to the cap
    for _ in range(12):
        clock.now += state_module.RETRY_MAX_S
        r = _search(client)
    assert r.headers["retry-after"] == str(math.ceil(state_module.RETRY_MAX_S))


def test_the_service_recovers_at_the_first_attempt_after_the_backoff(artifacts_dir, tmp_path, make_client):
    served = tmp_path / "artifacts"
    client = make_client(artifacts_uri=str(served))
    clock = client.app.state.service.backoff.clock = Clock()
    assert _search(client).status_code == 503
    served.mkdir()
    for f in artifacts_dir.iterdir():
        (served / f.name).write_bytes(f.read_bytes())
    assert _search(client).status_code == 503  # fixed, but the backoff has not passed
    clock.now += state_module.RETRY_FIRST_S * (1 + state_module.RETRY_JITTER)
    assert _search(client).status_code == 200
    assert client.app.state.service.backoff.failures == 0


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_doubles_from_one_second_to_a_minute_with_jitter(failures):
    backoff = state_module.Backoff(clock=Clock())
    delays = []
    for draw in (0.0, 0.5, 1.0):
        backoff.failures = failures - 1
        backoff.random = lambda draw=draw: draw
        delays.append(backoff.failed())
    nominal = min(state_module.RETRY_FIRST_S * 2 ** (failures - 1), state_module.RETRY_MAX_S)
    assert delays[1] == pytest.approx(nominal)
    assert delays[0] == pytest.approx(nominal * (1 - state_module.RETRY_JITTER))
    assert delays[2] == pytest.approx(min(nominal * (1 + state_module.RETRY_JITTER), state_module.RETRY_MAX_S))
