"""No credentials in the repository or the image; no image bytes in the logs; presigned links expire.

Offline on purpose: ``pip-audit -r lambda_fn/requirements.txt`` needs PyPI and an advisory service, so it
is run by hand; here the runtime requirements are checked pinned, which is what makes that audit exact.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from lambda_fn.contract.logs import configure
from tests.helpers import REPO_ROOT, jpeg_bytes

SKIP_DIRS = {".venv", "node_modules", "cdk.out", ".git", "test-output", "data", "artifacts", "checkpoints"}
SKIP_PATHS = {Path("bench/.work")}
SECRET_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", re.IGNORECASE),
    re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----"),
]


def _source_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        dirnames[:] = [
            d for d in dirnames if d not in SKIP_DIRS and rel / d not in SKIP_PATHS and not d.startswith(".pytest")
        ]
        for name in filenames:
            path = here / name
            if path.stat().st_size <= 2_000_000:
                yield path


def find_secrets(root: Path) -> list[str]:
    hits = []
    for path in _source_files(root):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        for pattern in SECRET_PATTERNS:
            hits += [f"{path.relative_to(root)}: {m.group(0)[:12]}…" for m in pattern.finditer(text)]
    return hits


def test_the_secret_scanner_finds_a_planted_key(tmp_path):
    fake = "AKIA" + "Z7Q2" * 4  # built at run time, so the repository itself never holds a key-shaped string
    (tmp_path / "settings.ini").write_text(f"aws_access_key_id = {fake}\naws_secret_access_key = {'a1B/' * 10}\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.py").write_text(fake)
    assert len(find_secrets(tmp_path)) == 2


def test_no_credentials_in_the_repository():
    assert find_secrets(REPO_ROOT) == []


def test_the_lambda_image_carries_no_credentials():
    # What the build context may hold at all (only the service) is checked in tests/lambda_fn/test_dockerfile.py.
    dockerfile = (REPO_ROOT / "Dockerfile.lambda").read_text()
    assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)", dockerfile)


def test_runtime_requirements_are_pinned():
    # A requirement starts at column 0; indented lines continue it (--hash=...) or say where it came from.
    lines = [
        line.removesuffix("\\").strip()
        for line in (REPO_ROOT / "lambda_fn" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith(("#", " ", "\t"))
    ]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[0-9][\w.+-]*", line) for line in lines), lines


@pytest.fixture
def debug_client(make_client):
    """A client over the local artifacts whose service logs at DEBUG; the level is set back afterwards."""
    yield make_client(log_level="DEBUG")
    configure("INFO")


def test_logs_never_contain_the_uploaded_image(debug_client, log_lines, sample_dir):
    client, lines = debug_client, log_lines
    photo = sorted(sample_dir.glob("*/*.jpg"))[0].read_bytes()
    b64 = base64.b64encode(photo).decode()
    corrupt = photo[: len(photo) // 2]
    requests = [
        {"content": photo, "headers": {"Content-Type": "image/jpeg"}},
        {"files": {"image": ("dish.jpg", photo)}},
        {"json": {"image": b64}},
        {"data": {"image": "data:image/jpeg;base64," + b64}},
        {"content": corrupt, "headers": {"Content-Type": "image/jpeg"}},
        {"json": {"image": "data:text/plain;base64," + b64}},
        {"content": photo, "headers": {"Content-Type": "text/plain"}},
    ]
    statuses = [client.post("/search?k=2", **kwargs).status_code for kwargs in requests]
    assert statuses == [200, 200, 200, 200, 400, 415, 415]
    logs = lines()
    assert sum(entry.get("message") == "request" for entry in logs) >= len(requests)
    text = json.dumps(logs)
    for start in range(0, len(b64) - 40, 400):
        assert b64[start : start + 40] not in text  # no base64 window of the upload
    raw = json.dumps([e for e in logs])  # JSON-escaped bytes would show as \u00xx runs; compare decoded too
    for start in range(0, len(photo) - 24, 997):
        window = photo[start : start + 24].decode("latin-1")
        assert window not in raw and json.dumps(window)[1:-1] not in raw


def test_presigned_urls_expire_as_configured(upload_build, make_client, s3_endpoint):
    build = upload_build("sec", images=True)
    client = make_client(artifacts_uri=build.uri, presign_expires_s=123)
    found = client.post("/search?k=2", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"}).json()
    similar = client.get("/images/4/similar?k=2").json()
    urls = [m["url"] for m in found["results"] + similar["results"] + [similar["query"]]]
    for url in urls:
        assert url.startswith(f"{s3_endpoint}/{build.bucket}/{build.prefix}/images/"), url
        assert "X-Amz-Expires=123&" in url + "&" and "X-Amz-Signature=" in url and "X-Amz-Credential=" in url
    with urllib.request.urlopen(urls[0], timeout=10) as r:  # the link really serves the image
        assert r.status == 200 and r.headers["Content-Type"].startswith("image/")
