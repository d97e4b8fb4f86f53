"""The service as the tests and benchmarks run it: the local server as a subprocess on a free loopback port,
the Lambda context and an API Gateway search event, the environment that sets ``Settings`` fields, and a
process's memory from /proc.

Stdlib and ``lambda_fn.contract.config`` only at import: a handler child process imports this module next to
the service.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lambda_fn.contract.config import env_name

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(**settings: object) -> dict[str, str]:
    """The environment variables that set the given ``Settings`` fields, e.g. ``service_env(log_level="WARNING")``."""
    return {env_name(field): str(value) for field, value in settings.items()}


def proc_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The memory lines of /proc/<pid>/status in KiB: ``VmRSS`` (resident now), ``VmHWM`` (peak), ...

    VmHWM rather than ``getrusage`` for a child's peak: Linux carries ru_maxrss over from the parent across
    fork + exec, so a child would report the benchmark process's own peak.
    """
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm") and value.strip().endswith("kB"):
            out[name] = int(value.split()[0])
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of a Linux process in KiB (``VmRSS`` in /proc/<pid>/status)."""
    try:
        return proc_status_kib(pid)["VmRSS"]
    except KeyError:
        raise RuntimeError(f"no VmRSS for process {pid}") from None


@dataclass
class LambdaContext:
    """The attributes of the context object the Lambda runtime passes to a handler."""

    function_name: str = "deepfood-search"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:deepfood-search"
    aws_request_id: str = "5c1a1b7e-0d8f-4a4e-9b7a-3f3cdeadbeef"
    log_group_name: str = "/aws/lambda/deepfood-search"
    log_stream_name: str = "2026/11/29/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def multipart_image(data: bytes, boundary: str) -> bytes:
    """A multipart/form-data body with ``data`` as the ``image`` field, as the page's form sends it."""
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def search_event(data: bytes, k: int = 10, boundary: str = "----bench") -> dict:
    """An API Gateway REST (v1) proxy event: ``POST /search?k=`` with ``data`` as a base64 multipart upload."""
    return {
        "resource": "/{proxy+}",
        "path": "/search",
        "httpMethod": "POST",
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}", "Host": "bench.example"},
        "multiValueHeaders": {},
        "queryStringParameters": {"k": str(k)},
        "multiValueQueryStringParameters": {"k": [str(k)]},
        "pathParameters": {"proxy": "search"},
        "requestContext": {
            "httpMethod": "POST",
            "path": "/prod/search",
            "stage": "prod",
            "requestId": "b",
            "identity": {"sourceIp": "127.0.0.1"},
            "resourcePath": "/{proxy+}",
        },
        "body": base64.b64encode(multipart_image(data, boundary)).decode(),
        "isBase64Encoded": True,
    }


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
    """Run ``python -m lambda_fn.search.local`` on a free loopback port; yields ``(base URL, Popen)``."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lambda_fn.search.local",
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
