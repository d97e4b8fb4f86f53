"""cdk-nag wiring: the AwsSolutions pack as a synth-time validation plugin, and the acknowledgment helper.

cdk-nag 3 reports through CDK's policy validation (``Validations``): a finding not acknowledged on its
resource (or an ancestor) fails ``cdk synth``, warnings included. Each construct acknowledges its own
findings next to the resources, with the reason; ``flat_ref`` and ``wildcard_findings`` name exact findings
without hard-coding hashed logical ids.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct


def acknowledge(scope: IConstruct, reasons: Mapping[str, str]) -> None:
    """Acknowledge each ``{rule or rule[finding]: reason}`` on ``scope`` and everything under it."""
    cdk.Validations.of(scope).acknowledge(
        *(cdk.Acknowledgment(id=rule, reason=reason) for rule, reason in reasons.items())
    )


def add_nag_checks(app: cdk.App) -> AwsSolutionsChecks:
    """Register the AwsSolutions pack; ``app.synth()`` then fails on any unacknowledged finding."""
    checks = AwsSolutionsChecks(app, verbose=True)
    cdk.Validations.of(app).add_plugins(checks)
    return checks


def flat_ref(scope: IConstruct, value: object) -> str:
    """``value`` (an ARN with tokens) as cdk-nag writes it in finding ids, e.g. ``<Bucket1234.Arn>/x/*``.

    Lets an acknowledgment name one exact finding without spelling out hashed logical ids.
    """
    return _flatten(cdk.Stack.of(scope).resolve(value))


def _flatten(node: object) -> str:
    # Port of cdk-nag's flattenCfnReference (utils/flatten-cfn-reference.ts).
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict) and len(node) == 1:
        ((fn, arg),) = node.items()
        if fn == "Fn::Join":
            delimiter, items = arg
            return delimiter.join(_flatten(item) for item in items)
        if fn in ("Fn::Sub", "Fn::ImportValue"):
            return _flatten(arg)
        if fn == "Fn::GetAtt":
            return f"<{_flatten(arg[0])}.{_flatten(arg[1])}>"
        if fn == "Ref":
            return f"<{_flatten(arg)}>"
    return json.dumps(node, separators=(",", ":"))


def wildcard_findings(role: iam.IRole) -> list[str]:
    """The ``AwsSolutions-IAM5[...]`` finding ids of ``role``'s default policy, as cdk-nag computes them.

    For roles whose grants aws-cdk-lib writes (its deployment handler), where we can list but not change them.
    """
    policy = role.node.try_find_child("DefaultPolicy")
    if policy is None:
        return []
    document = cdk.Stack.of(role).resolve(policy.document)
    findings: dict[str, None] = {}
    for statement in document.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        for action in _as_list(statement.get("Action")):
            if "*" in action:
                findings[f"Action::{action}"] = None
        for resource in map(_flatten, _as_list(statement.get("Resource"))):
            if "*" in resource:
                findings[f"Resource::{resource}"] = None
    return [f"AwsSolutions-IAM5[{finding}]" for finding in findings]


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]
