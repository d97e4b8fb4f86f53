"""What the benchmarks (and the tests) use to run and watch the service: the local server as a subprocess,
the Lambda handler in a child process, a fake Lambda context and API Gateway event, the service's
environment, a process's memory, percentiles and the results file.

Stdlib and ``lambda_fn.contract.config`` only at import: the child process imports this module next to the service.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


# The CPU features int8 and fp32 speed depend on: AVX-512 (f), VNNI (512-bit or VEX AVX-VNNI) and AMX.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512vnni", "avx_vnni", "avx512_bf16", "amx_tile")
# Environment variables that cap the kernels' instruction set (set in a child process, before torch loads).
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")


def cpu_facts(cpuinfo: str) -> dict:
    """Model name, family/model, nominal clock and the ``ISA_FLAGS`` present, from /proc/cpuinfo's text."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name"),
        "family_model": f"{fields.get('cpu family')}/{fields.get('model')}",
        "nominal_mhz": float(fields["cpu MHz"]) if "cpu MHz" in fields else None,
        "logical_cpus": cpuinfo.count("processor\t:") or None,
        "flags": [f for f in ISA_FLAGS if f in flags],
    }


def machine_info() -> dict:
    """What a result was measured on: the CPU, its ISA flags, the kernels' caps in force, torch's CPU capability
    (after ``ATEN_CPU_CAPABILITY``), the quantized engine and the load average. Recorded by ``write_result``."""
    import platform

    try:
        facts = cpu_facts(Path("/proc/cpuinfo").read_text())
    except OSError:
        facts = {"model_name": platform.processor() or platform.machine(), "flags": []}
    info = {**facts, "machine": platform.machine(), "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["quantized_engine"] = torch.backends.quantized.engine
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return info


def describe_machine(info: dict) -> str:
    """One line for the console: CPU, CPUs usable, torch's capability, load."""
    return (
        f"{info.get('model_name')} ({len(os.sched_getaffinity(0))} CPUs, flags {','.join(info.get('flags', []))}, "
        f"torch {info.get('torch_cpu_capability')}), load {info.get('loadavg')}"
    )


def machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (user, nice, system, irq, softirq; /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | str = "self") -> float:
    """CPU seconds (user + system, all threads) a process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(threshold_cpus: float = 0.3, max_wait_s: float = 120.0, window_s: float = 1.0) -> dict:
    """Wait until other processes use less than ``threshold_cpus`` CPUs over ``window_s`` (this machine is
    shared), at most ``max_wait_s``; returns how long it waited and the last CPUs measured."""
    started = time.perf_counter()
    while True:
        busy = machine_busy_s()
        time.sleep(window_s)
        others = (machine_busy_s() - busy) / window_s
        waited = time.perf_counter() - started
        if others < threshold_cpus or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "others_cpus": round(others, 2)}


def add_max_wait_argument(parser, before: str) -> None:
    """``--max-wait`` (seconds, default 60): how long ``wait_for_quiet`` may wait before ``before``."""
    parser.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help=f"before {before}, wait up to this long for the shared machine to quiet down (default: 60)",
    )


def write_result(report: dict, out: Path | str) -> Path:
    """Write a benchmark's report as indented JSON to ``out`` (parents created) and say so. The report gets a
    ``machine`` entry (``machine_info()``) unless it has one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = report if "machine" in report else {**report, "machine": machine_info()}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return out


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


# A fresh process that imports the handler the way the Lambda runtime does (configured by the environment),
# searches with the image at argv[1] argv[2] times, prints FIRST once the first answer is in, then prints its
# memory (VmHWM, VmRSS) in MiB as one JSON line.
_HANDLER_CHILD = """
import json, sys
import lambda_fn.search.main as service
from bench.harness import LambdaContext, proc_status_kib, search_event
data = open(sys.argv[1], "rb").read()
for i in range(int(sys.argv[2])):
    r = service.handler(search_event(data), LambdaContext())
    assert r["statusCode"] == 200, r["body"][:500]
    if i == 0:
        print("FIRST", flush=True)
status = proc_status_kib()
print(json.dumps({k: status[k] / 1024 for k in ("VmHWM", "VmRSS")}))
"""


def handler_child_cmd(query: Path, invocations: int) -> list[str]:
    """Command line of a child process that runs the handler ``invocations`` times (see ``handler_child_result``)."""
    return [sys.executable, "-c", _HANDLER_CHILD, str(query), str(invocations)]


def handler_child_result(stdout: str) -> dict[str, float]:
    """The child's memory report: ``{"VmHWM": MiB, "VmRSS": MiB}``."""
    return json.loads(stdout.strip().splitlines()[-1])


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
    """Run ``python -m lambda_fn.search.local`` on a free loopback port; yields its base URL."""
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
