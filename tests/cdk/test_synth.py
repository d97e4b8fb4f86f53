"""`npx cdk synth` through cdk.json, offline: template, lean Docker context, config.json, cfn-lint clean.

Needs the pinned CLI (`npm ci`). Without it the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cdk_support import REPO_ROOT
from cfnlint.api import ManualArgs, lint_file

from lambda_fn.contract.site_config import site_config

STACK = "DeepFood"
CDK_BIN = REPO_ROOT / "node_modules" / ".bin" / "cdk"
# Kept out of the Lambda image by .dockerignore: datasets, environments, tests, training code, build output.
NOT_IN_IMAGE_CONTEXT = [".venv", "tests", "training", "data", "artifacts", "node_modules", "cdk", "cdk.out", "frontend"]
# W3005: CDK adds DependsOn on an execution role next to the GetAtt that already implies it (so the role's
# policy exists before the function); redundant but harmless, and in code aws-cdk-lib generates.
CFN_LINT_IGNORED = ["W3005"]


@pytest.fixture(scope="module")
def cloud_assembly(tmp_path_factory) -> Path:
    if not CDK_BIN.exists():
        message = "the CDK CLI is not installed: run `npm ci` at the repository root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    outdir = tmp_path_factory.mktemp("cdk.out")
    env = {
        **os.environ,
        # cdk.json runs `python3 -m cdk.app`: this interpreter (the project's venv) must be that python3.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "CDK_DISABLE_VERSION_CHECK": "1",
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    }
    result = subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "--no-notices", "-o", str(outdir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return outdir


def asset_dirs(cloud_assembly: Path, kind: str) -> list[Path]:
    assets = json.loads((cloud_assembly / f"{STACK}.assets.json").read_text())[kind]
    return [cloud_assembly / a["source"]["directory" if kind == "dockerImages" else "path"] for a in assets.values()]


def test_synth_writes_the_template(cloud_assembly):
    template = json.loads((cloud_assembly / f"{STACK}.template.json").read_text())
    types = [r["Type"] for r in template["Resources"].values()]
    assert types.count("AWS::Lambda::Function") >= 1
    assert {"SiteUrl", "ApiUrl", "ArtifactsBucketName", "UploadCommand"} <= set(template["Outputs"])


def test_docker_asset_has_the_lean_context(cloud_assembly):
    (context,) = asset_dirs(cloud_assembly, "dockerImages")
    names = {p.name for p in context.iterdir()}
    assert {"lambda_fn", "Dockerfile.lambda"} <= names
    assert (context / "lambda_fn" / "requirements.txt").is_file()
    assert not names & set(NOT_IN_IMAGE_CONTEXT), names
    assert not list(context.rglob("__pycache__"))


def test_site_asset_and_config_json(cloud_assembly):
    files = {}
    for path in asset_dirs(cloud_assembly, "files"):
        if path.is_dir():
            files.update({p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()})
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                files.update({name: path for name in archive.namelist()})
    assert "index.html" in files
    # The URL is known at deploy time only: the deployment handler swaps the marker for the JSON string.
    text = re.sub(r"<<marker:0xbaba:\d+>>", '"URL"', files["config.json"].read_text())
    assert json.loads(text) == site_config(api_base_url="URL")


def test_cfn_lint_passes(cloud_assembly):
    matches = lint_file(
        cloud_assembly / f"{STACK}.template.json",
        ManualArgs(ignore_checks=CFN_LINT_IGNORED, regions=["us-east-1"]),
    )
    assert [str(m) for m in matches] == []
