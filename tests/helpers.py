"""Helpers shared by the test suites: saved events, sample images, the tiny training run, ``python -m``.

Free ports, the local server as a subprocess and the Lambda context are in ``bench.harness``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = Path(__file__).resolve().parent / "events"


# A small but real pipeline: ResNet34 at 64 px on 60 synthetic images trains and indexes in seconds.
TEST_RESIZE, TEST_CROP = 72, 64


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
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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
