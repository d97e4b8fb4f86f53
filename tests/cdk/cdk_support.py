"""Shared by the infrastructure tests (a plain module: `from conftest import` is ambiguous across test dirs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the cdk/ and lambda_fn/ packages, when the repo is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import aws_cdk as cdk  # noqa: E402

from cdk.stack import DeepFoodStack  # noqa: E402

# Tunables the tuned stack sets, so the tests prove they reach the template (defaults could hide that).
TUNED_FUNCTION = {
    "memory_mb": 4096,
    "timeout": cdk.Duration.seconds(20),
    "ephemeral_storage_mb": 3072,
    "provisioned_concurrency": 2,
}
TUNED_API = {"throttle_rate": 7, "throttle_burst": 11}


def cdk_context() -> dict:
    """The context `npx cdk synth` gets from cdk.json, so in-process stacks match the deployed one."""
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


def build_stack(outdir: Path, **kwargs) -> DeepFoodStack:
    app = cdk.App(outdir=str(outdir), context=cdk_context())
    return DeepFoodStack(app, "DeepFood", **kwargs)
