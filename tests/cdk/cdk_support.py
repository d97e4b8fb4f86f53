"""Shared by the infrastructure tests (a plain module: `from conftest import` is ambiguous across test dirs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the cdk/ and lambda_fn/ packages, when the repo is not pip-installed
    sys.path.insert(0, str(REPO_ROOT))

import aws_cdk as cdk  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from cdk.stack import DeepFoodStack  # noqa: E402

# Tunables the tuned stack sets, so the tests prove they reach the template (defaults could hide that).
TUNED_FUNCTION = {
    "memory_mb": 4096,
    "timeout": cdk.Duration.seconds(20),
    "ephemeral_storage_mb": 3072,
    "provisioned_concurrency": 2,
    "reserved_concurrency": 30,
    "trusted_model_sha256": "ab" * 32,
}
# Above a new account's memory maximum: the tuned stack declares the raised quota its sizes need.
TUNED_MEMORY_QUOTA_MB = 10240
# The existing bucket in the tests encrypts with this customer-managed key (SSE-KMS).
EXISTING_BUCKET_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TUNED_API = {"throttle_rate": 7, "throttle_burst": 11, "waf_rate_limit": 300}
TUNED_INGEST = {
    "memory_mb": 4096,
    "timeout": cdk.Duration.minutes(2),
    "batch_size": 10,
    "max_batching_window": cdk.Duration.seconds(5),
    "max_concurrency": 5,
    "max_receive_count": 3,
    "max_ingest_bytes": 20_000_000,
    "max_image_pixels": 40_000_000,
}
TUNED_REINDEX = {
    "every": cdk.Duration.minutes(30),
    "memory_mb": 10240,
    "timeout": cdk.Duration.minutes(10),
    "reserved_concurrency": 1,
    "num_threads": 4,
}


def cdk_context() -> dict:
    """The context `npx cdk synth` gets from cdk.json, so in-process stacks match the deployed one."""
    return json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


def build_stack(outdir: Path, **kwargs) -> DeepFoodStack:
    app = cdk.App(outdir=str(outdir), context=cdk_context())
    return DeepFoodStack(app, "DeepFood", **kwargs)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def image_function(template: Template, handler: str) -> dict:
    """Properties of the one function whose image starts ``handler``."""
    functions = template.find_resources(
        "AWS::Lambda::Function", {"Properties": {"PackageType": "Image", "ImageConfig": {"Command": [handler]}}}
    )
    assert len(functions) == 1, handler
    return next(iter(functions.values()))["Properties"]


def statements(template: Template, role: dict | None = None) -> list[dict]:
    """Every IAM policy statement, or those of ``role`` (``{"Ref": <role id>}``)."""
    match = {"Properties": {"Roles": [role]}} if role else None
    policies = template.find_resources("AWS::IAM::Policy", match).values()
    return [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]


def role_of(function: dict) -> dict:
    return {"Ref": function["Role"]["Fn::GetAtt"][0]}


def own_logs(function: dict) -> dict[str, set[str]]:
    """The grants that let a function write to its own log group and nowhere else."""
    log_group = f"<{function['LoggingConfig']['LogGroup']['Ref']}.Arn>"
    return {"logs:CreateLogStream": {log_group}, "logs:PutLogEvents": {log_group}}


def text(value) -> str:
    """A template value as text: joins joined, ``{"Ref": X}`` as ``<X>``, ``{"Fn::GetAtt": [X, A]}`` as ``<X.A>``."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return delimiter.join(map(text, parts))
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    raise ValueError(value)


def grants(template: Template, handler: str) -> dict[str, set[str]]:
    """Action -> the resources (as ``text``) the role of ``handler``'s function is allowed it on."""
    granted: dict[str, set[str]] = {}
    for statement in statements(template, role_of(image_function(template, handler))):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            granted.setdefault(action, set()).update(text(r) for r in as_list(statement["Resource"]))
    return granted
