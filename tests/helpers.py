"""Helpers shared by the test suites: the session fixtures' facts, saved events, sample images, the tiny
training run, an index build, a collection holding a copy of one photo, ``python -m``, the JSON error check and
the uploaded-build handle.

Free ports, the local server as a subprocess and the Lambda context are in ``bench.harness``; fakes that
really run (a slow TCP proxy, a flaky S3 client) are in ``tests.fakes``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lambda_fn.contract.manifest import Manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = Path(__file__).resolve().parent / "events"


# A small but real pipeline: ResNet34 at 64 px on the synthetic sample set below trains and indexes in seconds.
TEST_RESIZE, TEST_CROP = 72, 64
# The session's sample set (tests/conftest.py): SAMPLE_PER_CLASS images of each of SAMPLE_CLASSES dishes, each
# SAMPLE_SIZE (width, height) or its transpose, so the index holds ids 0..SAMPLE_COUNT-1.
SAMPLE_CLASSES = 6
SAMPLE_PER_CLASS = 10
SAMPLE_COUNT = SAMPLE_CLASSES * SAMPLE_PER_CLASS
SAMPLE_SIZE = (160, 128)
# The session's index: Annoy trees it is built with, and the width of the tiny model's (ResNet34) embeddings.
INDEX_TREES = 10
EMBED_DIM = 512
# The origin the route tests' shared client allows through CORS.
SITE_ORIGIN = "https://site.example"
# The S3 prefix the ``upload_build`` fixture uploads builds under.
S3_PREFIX = "svc"


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """training.train flags for the tests' tiny run: random init, 64 px, no worker processes."""
    return [
        "--data",
        str(data),
        "--weights",
        "none",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--resize-size",
        str(TEST_RESIZE),
        "--crop-size",
        str(TEST_CROP),
        "--output-dir",
        str(out),
        *extra,
    ]


def run_module(module: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the repository root, output captured as text."""
    return _run_python("-m", module, *args, env=env, timeout=timeout)


def run_code(code: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code args...`` from the repository root, output captured as text."""
    return _run_python("-c", code, *args, env=env, timeout=timeout)


def _run_python(*argv, env: dict | None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, argv)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def load_event(name: str) -> dict:
    """A saved API Gateway / Function URL event from tests/events/."""
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


def jpeg_bytes(size=(320, 240), colour=(200, 80, 40), quality=90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose (valid, CRC-checked) header claims width x height pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows of zeros; the rest "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def assert_json_error(response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    """The response has one of the given statuses and the documented ``{"error": {"code", "message"}}`` JSON
    body with a non-empty message (and ``code``, when given); returns the ``error`` object."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"].strip()
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


@dataclass(frozen=True)
class UploadedBuild:
    """A build that ``ops.upload`` put into a loopback S3 bucket, and the manifest it published."""

    bucket: str
    prefix: str
    manifest: Manifest

    @property
    def uri(self) -> str:
        """The service's ``artifacts_uri`` for this build."""
        return f"s3://{self.bucket}/{self.prefix}/"

    def key(self, name: str) -> str:
        """The object key of ``name`` (a manifest file name, or ``manifest.json``) under the prefix."""
        return f"{self.prefix}/{name}"


def with_copy(sample_dir: Path, images: Path) -> tuple[str, str]:
    """Eight sample photos in ``images``, plus a re-encoded, shrunk and 5% cropped copy of the first."""
    keys = sorted(p.relative_to(sample_dir) for p in sample_dir.rglob("*.jpg"))[::7][:8]
    for key in keys:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        (images / key).write_bytes((sample_dir / key).read_bytes())
    original = Image.open(sample_dir / keys[0]).convert("RGB")
    w, h = original.size
    copy = original.crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w * 3 // 4, h * 3 // 4))
    buf = io.BytesIO()
    copy.save(buf, "JPEG", quality=70)
    (images / keys[0].parent / "copy.jpg").write_bytes(buf.getvalue())
    return keys[0].as_posix(), f"{keys[0].parent.as_posix()}/copy.jpg"


def build_index(images: Path, model: Path, out: Path, *extra: str) -> Path:
    """``training.build_index`` of the folder ``images`` with ``model`` into ``out``, in this process."""
    from training.build_index import get_args_parser, main

    args = ["--images", str(images), "--model", str(model), "--out", str(out), "--workers", "0", *extra]
    assert main(get_args_parser().parse_args(args)) == 0
    return out
