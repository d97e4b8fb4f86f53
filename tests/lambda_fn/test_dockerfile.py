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


REQUIREMENTS = (REPO_ROOT / "lambda_fn" / "requirements.txt").read_text()


def _locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of each requirement in the hash-locked file."""
    out, name = {}, None
    for line in REQUIREMENTS.splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            name = m.group(1).lower()
            out[name] = (m.group(2), [])
        elif m := re.search(r"--hash=sha256:([0-9a-f]{64})", line):
            out[name][1].append(m.group(1))
    return out


def test_image_has_cpu_torch_only_the_service_and_the_right_entry_point():
    assert re.search(r"^ARG BASE_IMAGE=public\.ecr\.aws/lambda/python:3\.12@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    assert re.findall(r"^FROM (.+)$", DOCKERFILE, re.M) == ["${BASE_IMAGE}"]  # one stage: no compiled code of ours
    assert "--index-url https://download.pytorch.org/whl/cpu" in DOCKERFILE
    assert 'CMD ["lambda_fn.search.main.handler"]' in DOCKERFILE
    final = DOCKERFILE.split("FROM ${BASE_IMAGE}\n", 1)[1]
    copies = re.findall(r"^COPY (\S+)", final, re.M)
    assert copies == ["lambda_fn/requirements.txt", "lambda_fn/"]
    assert not set(_locked()) & {"torchvision", "tqdm", "moto", "pytest", "uvicorn"}


def test_requirements_are_hash_locked_and_installed_only_with_their_hashes():
    assert "pip install --require-hashes --no-deps -r /tmp/requirements.txt" in DOCKERFILE
    locked = _locked()
    assert locked and all(hashes for _, hashes in locked.values()), "every requirement carries its sha256"
    # the CPU build of torch needs none of PyPI's CUDA packages
    assert not [n for n in locked if n == "torch" or n == "triton" or n.startswith(("nvidia-", "cuda-"))]


def test_runtime_pins_agree_with_pyproject():
    import tomllib

    from packaging.requirements import Requirement

    declared = [
        Requirement(d) for d in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    locked = _locked()
    for req in declared:
        if req.name == "torch":
            continue
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{req.name} is a runtime dependency but not in the image's lock (run make lock)"
        assert req.specifier.contains(locked[name][0]), f"{name}=={locked[name][0]} does not satisfy {req}"
    torch = next(r for r in declared if r.name == "torch")
    image_torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert str(torch.specifier) == f"=={image_torch}"


def test_dockerignore_keeps_only_the_service():
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in rules if line and not line.startswith("#")]
    assert rules[0] == "*"  # build context: nothing unless re-included below
    assert "!lambda_fn/" in rules
    assert all(line.startswith(("!lambda_fn/", "!Dockerfile", "lambda_fn/")) for line in rules[1:]), rules
