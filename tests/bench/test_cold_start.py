"""bench/cold_start.py's child: the first search broken down by the service's own steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.cold_start import COLD_CHILD, FLOOR
from support.service import REPO_ROOT, service_env


@pytest.mark.slow
def test_cold_child_times_every_step_of_the_first_search(artifacts_dir, model_path, sample_dir, tmp_path):
    query = next(sample_dir.glob("*/*.jpg"))
    settings = service_env(artifacts_uri=artifacts_dir, num_threads=1, cache_dir=tmp_path, log_level="WARNING")
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", COLD_CHILD, str(query), "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = next(line for line in proc.stdout.splitlines() if line.startswith("FIRST "))
    steps = json.loads(first.removeprefix("FIRST "))
    # A renamed service function would silently drop out of the breakdown: every step must have been seen.
    assert set(steps) == {
        "imports_s",
        "prefetch_s",
        "prefetch_wait_s",
        "load_model_s",
        "load_index_s",
        "warm_up_s",
        "first_request_s",
        "child_s",
    }
    assert steps["warm_up_s"] + steps["load_model_s"] < steps["first_request_s"] < steps["child_s"]
    for collect in ("gc", "nogc"):
        floor = subprocess.run([sys.executable, "-c", FLOOR, str(model_path), collect], capture_output=True, text=True)
        assert floor.returncode == 0, floor.stderr[-3000:]
        assert set(json.loads(floor.stdout.strip().splitlines()[-1])) == {"import_torch_s", "load_s"}
