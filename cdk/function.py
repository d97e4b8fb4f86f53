"""The one way this stack makes a function: the shared image, its own role and log group, tracing, environment.

Search, ingest and reindex each call ``image_function`` with their handler, grant, sizes and options; what
they have in common (and must keep in common, such as a role that writes only its own log group) is here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.image import image_code
from cdk.nag import acknowledge
from lambda_fn.contract.config import env_name


def image_function(
    scope: Construct,
    *,
    handler: str,
    description: str,
    role_description: str,
    grant: Callable[[iam.Role], None],
    environment: Mapping[str, str],
    memory_mb: int,
    timeout: cdk.Duration,
    ephemeral_storage_mb: int,
    architecture: lambda_.Architecture,
    log_retention: logs.RetentionDays,
    tracing: bool,
    reserved_concurrency: int | None = None,
    retry_attempts: int | None = None,
) -> lambda_.DockerImageFunction:
    """``Function`` in ``scope`` running ``handler`` from the shared image, with ``Role`` and ``Logs`` beside it.

    ``grant`` gives the role its access to the artifacts before the function exists; ``tracing`` turns on
    X-Ray active tracing and ``DEEPFOOD_TRACING`` (added after ``environment``'s own variables).
    """
    role, log_group = _execution_role(scope, description=role_description, log_retention=log_retention)
    grant(role)
    return lambda_.DockerImageFunction(
        scope,
        "Function",
        description=description,
        code=image_code(handler, architecture),
        architecture=architecture,
        memory_size=memory_mb,
        timeout=timeout,
        ephemeral_storage_size=cdk.Size.mebibytes(ephemeral_storage_mb),
        reserved_concurrent_executions=reserved_concurrency,
        retry_attempts=retry_attempts,
        role=role,
        log_group=log_group,
        tracing=_active_tracing(role, tracing),
        environment={**environment, **({env_name("tracing"): "true"} if tracing else {})},
    )


def _execution_role(
    scope: Construct, *, description: str, log_retention: logs.RetentionDays
) -> tuple[iam.Role, logs.LogGroup]:
    """A function's role and log group (``Role``, ``Logs`` in ``scope``); the role writes only to that group.

    Instead of AWSLambdaBasicExecutionRole, whose logs actions cover every log group in the account.
    """
    log_group = logs.LogGroup(scope, "Logs", retention=log_retention, removal_policy=cdk.RemovalPolicy.DESTROY)
    role = iam.Role(scope, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=description)
    log_group.grant_write(role)
    return role, log_group


def _active_tracing(role: iam.IRole, enabled: bool) -> lambda_.Tracing | None:
    """Lambda's active X-Ray tracing when ``enabled`` (for ``tracing=``), with its grant acknowledged."""
    if not enabled:
        return None
    acknowledge(
        role,
        {
            "AwsSolutions-IAM5[Resource::*]": "Active tracing lets the function send its X-Ray segments "
            "(xray:PutTraceSegments, xray:PutTelemetryRecords); X-Ray has no resources to scope these to, so "
            "Lambda's own grant names '*'.",
        },
    )
    return lambda_.Tracing.ACTIVE
