"""The infrastructure reads only the runtime's plain facts (``lambda_fn.contract``), never its image decoder,
model or AWS clients: synthesizing the stack must not need torch, Pillow or botocore."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from cdk_support import REPO_ROOT

CDK_MODULES = sorted((REPO_ROOT / "cdk").glob("*.py"))
# What the runtime needs and the infrastructure must not; aws_cdk and cdk_nag load none of these.
RUNTIME_ONLY = ("PIL", "numpy", "torch", "annoy", "botocore", "boto3")


def lambda_fn_imports(path) -> list[str]:
    """Every ``lambda_fn`` module ``path`` imports, including imports under ``if TYPE_CHECKING``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] if node.module != "lambda_fn" else [f"lambda_fn.{a.name}" for a in node.names]
    return [name for name in found if name.split(".")[0] == "lambda_fn"]


@pytest.mark.parametrize("path", CDK_MODULES, ids=lambda p: p.name)
def test_cdk_imports_only_the_contract(path):
    outside = [
        n for n in lambda_fn_imports(path) if n != "lambda_fn.contract" and not n.startswith("lambda_fn.contract.")
    ]
    assert not outside, f"{path.name} imports {outside}: cdk/ may import only lambda_fn.contract"


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from lambda_fn.vision import imaging\nfrom lambda_fn.contract import config\n")
    assert lambda_fn_imports(module) == ["lambda_fn.vision", "lambda_fn.contract"]


def test_building_the_stack_loads_no_runtime_library():
    # A fresh interpreter: this test session has long since imported the runtime's libraries.
    code = (
        "import json, sys\n"
        "import cdk.stack, cdk.context, cdk.nag\n"
        f"print(json.dumps([m for m in {RUNTIME_ONLY!r} if m in sys.modules]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the cdk app loads {loaded}"
