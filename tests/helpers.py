"""Helpers shared by the test suites: free ports, the local server as a subprocess, sample images."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
EVENTS_DIR = Path(__file__).resolve().parent / "events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_for_http(url: str, timeout: float = 90.0, expect: tuple[int, ...] = (200,)) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                last = r.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError:
            last = None
        if last in expect:
            return last
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout}s (last: {last})")


@contextlib.contextmanager
def start_local_server(
    artifacts: Path | str,
    images: Path | str | None = None,
    *,
    frontend: Path | None = None,
    env: dict | None = None,
    expect_health: tuple[int, ...] = (200,),
    threads: int = 1,
):
    """Run ``python -m lambda_fn.local`` on a free loopback port; yields its base URL."""
    with start_local_server_process(
        artifacts, images, frontend=frontend, env=env, expect_health=expect_health, threads=threads
    ) as (base, _):
        yield base


@contextlib.contextmanager
def start_local_server_process(
    artifacts: Path | str,
    images: Path | str | None = None,
    *,
    frontend: Path | None = None,
    env: dict | None = None,
    expect_health: tuple[int, ...] = (200,),
    threads: int = 1,
    extra_args: tuple[str, ...] = (),
):
    """Like ``start_local_server``, but yields ``(base URL, Popen)`` so callers can watch the process."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lambda_fn.local",
        "--artifacts",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    if images is not None:
        cmd += ["--images", str(images)]
    cmd += ["--frontend", str(frontend or REPO_ROOT / "frontend"), *extra_args]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Drain the server's output all along: it logs a JSON line per request, and a full pipe would block it.
    tail: collections.deque[str] = collections.deque(maxlen=200)
    drain = threading.Thread(target=lambda: tail.extend(proc.stdout), daemon=True)
    drain.start()
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(base + "/health", expect=expect_health)
        except TimeoutError:
            proc.terminate()
            proc.wait(timeout=10)
            drain.join(timeout=5)
            raise RuntimeError(f"local server did not come up:\n{''.join(tail)[-4000:]}") from None
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def rss_kib(pid: int) -> int:
    """Resident set size of a Linux process in KiB (``VmRSS`` in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose (valid, CRC-checked) header claims width x height pixels: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows of zeros; the rest "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
