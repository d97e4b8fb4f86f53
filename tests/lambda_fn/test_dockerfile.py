"""The Lambda image definition: lint it and check what goes in (no Docker engine here to build it)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile.lambda").read_text()


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(REPO_ROOT / "Dockerfile.lambda")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_annoy_is_compiled_for_a_portable_cpu():
    # annoy 1.17.3's setup.py flags with -march=native replaced: an image built on a newer CPU must not
    # die with "illegal instruction" on Lambda's.
    flags = re.search(r'ANNOY_COMPILER_ARGS="([^"]+)"', DOCKERFILE).group(1).split(",")
    assert "-march=x86-64-v2" in flags and not any("native" in f for f in flags)
    assert {"-O3", "-DANNOYLIB_MULTITHREADED_BUILD", "-std=c++14"} <= set(flags)


def test_image_has_cpu_torch_only_the_service_and_the_right_entry_point():
    assert "FROM public.ecr.aws/lambda/python:3.12" in DOCKERFILE
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE
    assert 'CMD ["lambda_fn.main.handler"]' in DOCKERFILE
    copies = re.findall(r"^COPY (\S+)", DOCKERFILE, re.M)
    assert copies == ["lambda_fn/requirements.txt", "lambda_fn/"]
    requirements = (REPO_ROOT / "lambda_fn" / "requirements.txt").read_text()
    pinned = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith(("torchvision", "tqdm", "moto", "pytest")) for line in pinned)


def test_runtime_pins_agree_with_pyproject():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=]", d)[0].strip().lower() for d in project}
    pinned = {
        line.split("==")[0].lower()
        for line in (REPO_ROOT / "lambda_fn" / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    assert declared <= pinned  # every runtime dependency is pinned for the image
    torch_pin = next(d for d in project if d.startswith("torch"))
    assert torch_pin.replace(" ", "") in (REPO_ROOT / "lambda_fn" / "requirements.txt").read_text()


def test_dockerignore_keeps_only_the_service():
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in rules if line and not line.startswith("#")]
    assert rules[0] == "*"  # build context: nothing unless re-included below
    assert "!lambda_fn/" in rules
    assert all(line.startswith(("!lambda_fn/", "!Dockerfile", "lambda_fn/")) for line in rules[1:]), rules
