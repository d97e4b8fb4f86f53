"""GET /health: the loaded model and index, or 503 with the reason until they load."""

import shutil
import time

from lambda_fn import __version__
from tests.helpers import (
    EMBED_DIM,
    SAMPLE_CLASSES,
    SAMPLE_COUNT,
    TEST_RESIZE,
    assert_json_error,
    jpeg_bytes,
)


def test_health_reports_identity(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["error"] is None
    assert body["index"]["count"] == SAMPLE_COUNT and body["index"]["dim"] == body["model"]["dim"] == EMBED_DIM
    assert body["model"]["resize_size"] == TEST_RESIZE and body["model"]["classes"] == SAMPLE_CLASSES
    assert body["limits"]["max_upload_bytes"] == 4_500_000 and body["versions"] == {"service": __version__}


def test_health_says_which_model_and_kernels_run(client):
    import torch

    runtime = client.get("/health").json()["runtime"]
    assert runtime["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert runtime["model"] in ("int8", "fp32") and runtime["threads"] >= 1
    assert (runtime["quantized_engine"] is None) == (runtime["model"] == "fp32")


def test_not_ready_is_503_and_recovers_without_restart(make_client, tmp_path, artifacts_dir):
    broken = tmp_path / "artifacts"
    broken.mkdir()
    client = make_client(artifacts_uri=str(broken))
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert "manifest.json) does not exist" in r.json()["error"]["message"]
    error = assert_json_error(client.post("/search", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"}), 503)
    assert "Retry" in error["message"]
    for f in artifacts_dir.iterdir():
        shutil.copy(f, broken / f.name)
    time.sleep(client.app.state.service.backoff.remaining())
    assert client.get("/health").status_code == 200  # the first request after the backoff retried and loaded
