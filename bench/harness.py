"""What the benchmarks use to measure: the machine a result was measured on, percentiles, CPU time, a quiet
machine, the Lambda handler in a child process and the results file. What the tests share with them (the
local server, the Lambda context and events, process memory) is in ``support``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from support.isa import ISA_ENV
from support.service import REPO_ROOT


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


# The CPU features int8 and fp32 speed depend on: AVX-512 (f), VNNI (512-bit or VEX AVX-VNNI) and AMX.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512vnni", "avx_vnni", "avx512_bf16", "amx_tile")


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


# A fresh process that imports the handler the way the Lambda runtime does (configured by the environment),
# searches with the image at argv[1] argv[2] times, prints FIRST once the first answer is in, then prints its
# memory (VmHWM, VmRSS) in MiB as one JSON line.
_HANDLER_CHILD = """
import json, sys
import lambda_fn.search.main as service
from support.service import LambdaContext, proc_status_kib, search_event
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


def run_until_first(argv: list[str], env: dict) -> tuple[float, dict, str]:
    """Run ``argv`` in the repository root until it prints its ``FIRST <json>`` line, then to its end:
    (seconds from spawning it to that line, that JSON, the rest of its stdout). Lines before it are skipped (the
    service's metrics are JSON lines on stdout too)."""
    t0 = time.perf_counter()
    # stderr goes to a file: the rest of stdout is then read through the same buffered reader the FIRST line
    # came from (a raw read would lose what that reader had already buffered) without a full stderr pipe
    # blocking the child.
    with tempfile.TemporaryFile(mode="w+") as errors:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
        line = ""
        for line in proc.stdout:
            if line.startswith("FIRST "):
                break
        seconds = time.perf_counter() - t0
        out = proc.stdout.read()
        proc.stdout.close()
        proc.wait(timeout=600)
        errors.seek(0)
        err = errors.read()
    if proc.returncode != 0 or not line.startswith("FIRST "):
        raise RuntimeError(f"{out[-2000:]}\n{err[-3000:]}")
    return seconds, json.loads(line.removeprefix("FIRST ")), out


async def parse_upload(body: bytes, content_type: str, spool_max_size: int | None = None) -> bytes:
    """Starlette's multipart parsing of ``body``, as ``lambda_fn.search.uploads`` asks for it: the ``image``
    part's bytes. ``spool_max_size`` overrides how large a part may grow in memory before Starlette moves it to a
    temporary file (1 MiB)."""
    from starlette.formparsers import MultiPartParser
    from starlette.requests import Request

    if spool_max_size is not None:
        default, MultiPartParser.spool_max_size = MultiPartParser.spool_max_size, spool_max_size

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-type", content_type.encode())]}
    try:
        form = await Request(scope, receive).form(max_files=2, max_fields=20, max_part_size=4 * len(body))
    finally:
        if spool_max_size is not None:
            MultiPartParser.spool_max_size = default
    data = await form["image"].read()
    await form.close()
    return data
