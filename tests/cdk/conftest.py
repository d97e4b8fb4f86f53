"""Fixtures for the infrastructure tests: the stack built in-process, with cdk.json's context (feature flags).

Session-scoped: each stack is synthesized once per test run (synthesis takes seconds); no test changes them.
"""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Template
from cdk_support import (
    EXISTING_BUCKET_KEY,
    TUNED_API,
    TUNED_FUNCTION,
    TUNED_INGEST,
    TUNED_MEMORY_QUOTA_MB,
    TUNED_REINDEX,
    build_stack,
)

from cdk.stack import DeepFoodStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> DeepFoodStack:
    return build_stack(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def template(stack) -> Template:
    return Template.from_stack(stack)


@pytest.fixture(scope="session")
def tuned_template(tmp_path_factory) -> Template:
    stack = build_stack(
        tmp_path_factory.mktemp("cdk-tuned"),
        artifacts_prefix="food/v2",
        function_options=TUNED_FUNCTION,
        api_options=TUNED_API,
        ingest_options=TUNED_INGEST,
        reindex_options=TUNED_REINDEX,
        memory_quota_mb=TUNED_MEMORY_QUOTA_MB,
    )
    return Template.from_stack(stack)


@pytest.fixture(scope="session")
def existing_bucket_stack(tmp_path_factory) -> DeepFoodStack:
    return build_stack(
        tmp_path_factory.mktemp("cdk-existing"),
        artifacts_bucket_name="my-existing-artifacts",
        artifacts_kms_key_arn=EXISTING_BUCKET_KEY,
    )


@pytest.fixture(scope="session")
def existing_bucket_template(existing_bucket_stack) -> Template:
    return Template.from_stack(existing_bucket_stack)
