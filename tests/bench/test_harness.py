"""bench/harness.py: process memory, the results file, the service's environment and the handler child."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import (
    handler_child_cmd,
    handler_child_result,
    parse_upload,
    percentile,
    run_until_first,
    write_result,
)
from lambda_fn.contract.config import ENV_PREFIX, Settings
from support.service import REPO_ROOT, proc_status_kib, rss_kib, service_env

BENCH = REPO_ROOT / "bench"


def test_proc_status_reads_current_and_peak_rss():
    status = proc_status_kib()
    assert 0 < status["VmRSS"] <= status["VmHWM"]
    assert rss_kib(os.getpid()) > 0


def test_write_result_creates_folders_and_writes_json(tmp_path, capsys):
    out = write_result({"p50_ms": 1.5, "artifacts": Path("/a/b")}, tmp_path / "new" / "r.json")
    written = json.loads(out.read_text())
    assert written.pop("machine")["flags"] is not None  # every result says what CPU it was measured on
    assert written == {"p50_ms": 1.5, "artifacts": "/a/b"}
    assert out.read_text().endswith("}\n") and str(out) in capsys.readouterr().out


def test_percentile_interpolates_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0


def test_service_env_is_what_settings_read(monkeypatch, tmp_path):
    env = service_env(artifacts_uri=tmp_path, num_threads=3, log_level="WARNING")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.artifacts_uri, settings.num_threads, settings.log_level) == (str(tmp_path), 3, "WARNING")


def test_bench_runs_without_the_tests_package():
    """bench/ is run on its own (make bench); the tests import from it, never the other way round."""
    for path in BENCH.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+tests\b", path.read_text(), re.M), path.name


def test_bench_names_service_variables_through_env_name():
    for path in BENCH.glob("*.py"):
        assert ENV_PREFIX not in path.read_text(), path.name


def test_memory_reports_the_installed_torch_wheel(monkeypatch):
    import torch

    from bench.memory import torch_wheel

    monkeypatch.setattr(torch.version, "cuda", None)
    assert torch_wheel().endswith("CPU-only wheel")
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    assert torch_wheel().endswith("CUDA 12.1 wheel")


@pytest.mark.slow
def test_handler_child_answers_searches_and_reports_memory(artifacts_dir, sample_dir, tmp_path):
    """The child process bench.memory measures, on the tests' tiny model."""
    query = next(sample_dir.glob("*/*.jpg"))
    settings = service_env(artifacts_uri=artifacts_dir, num_threads=1, cache_dir=tmp_path, log_level="WARNING")
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        handler_child_cmd(query, 2), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FIRST" in proc.stdout.splitlines()  # among the metrics lines the handler prints (EMF)
    memory = handler_child_result(proc.stdout)
    assert 0 < memory["VmRSS"] <= memory["VmHWM"]


def test_run_until_first_skips_lines_before_first_and_returns_the_rest():
    child = 'print(\'{"metric": 1}\'); print(\'FIRST {"child_s": 0.5}\', flush=True); print("after")'
    seconds, first, rest = run_until_first([sys.executable, "-c", child], dict(os.environ))
    assert seconds > 0 and first == {"child_s": 0.5} and rest.strip() == "after"
    with pytest.raises(RuntimeError):
        run_until_first([sys.executable, "-c", "print('no first line')"], dict(os.environ))


def test_parse_upload_returns_the_image_part_and_restores_the_spool_size():
    from starlette.formparsers import MultiPartParser

    default = MultiPartParser.spool_max_size
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\nJPEG\r\n--b--\r\n'
    assert asyncio.run(parse_upload(body, "multipart/form-data; boundary=b", spool_max_size=1)) == b"JPEG"
    assert MultiPartParser.spool_max_size == default
