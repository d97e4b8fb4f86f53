"""`npx cdk synth -c key=value`: each option reaches the stack, and a value the deploy would fail on stops synth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_support import REPO_ROOT, cdk_context, image_function

from cdk.context import stack_options
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER, SEARCH_HANDLER
from cdk.sizing import NEW_ACCOUNT_MEMORY_MB
from cdk.stack import DeepFoodStack
from lambda_fn.contract.config import env_name

SHA256 = "0123456789abcdef" * 4


def template_from(tmp_path, **context: str) -> Template:
    """The stack ``npx cdk synth`` builds with these ``-c`` options."""
    app = cdk.App(outdir=str(tmp_path), context={**cdk_context(), **context})
    return Template.from_stack(DeepFoodStack(app, "DeepFood", **stack_options(app)))


def test_no_option_means_no_reservation_and_a_new_accounts_memory_quota():
    options = stack_options(cdk.App(context={}))
    assert options["function_options"]["reserved_concurrency"] is None
    assert options["function_options"]["snap_start"] is False
    assert options["memory_quota_mb"] == NEW_ACCOUNT_MEMORY_MB


def test_snap_start_switch_reaches_the_search_function(tmp_path):
    template = template_from(tmp_path, snapStart="true")
    assert image_function(template, SEARCH_HANDLER)["SnapStart"] == {"ApplyOn": "PublishedVersions"}


def test_search_reserved_concurrency_switch_reaches_the_search_function(tmp_path):
    template = template_from(tmp_path, searchReservedConcurrency="150")
    assert image_function(template, SEARCH_HANDLER)["ReservedConcurrentExecutions"] == 150


def test_an_uppercase_pinned_model_is_lowercased_for_search_and_ingest(tmp_path):
    # PowerShell's Get-FileHash prints uppercase hex; the runtime accepts only lowercase.
    template = template_from(tmp_path, trustedModelSha256=f" {SHA256.upper()} ")
    for handler in (SEARCH_HANDLER, INGEST_HANDLER):
        assert image_function(template, handler)["Environment"]["Variables"][env_name("trusted_model_sha256")] == SHA256


def test_a_raised_memory_quota_lets_a_large_collection_synthesize(tmp_path):
    template = template_from(tmp_path, collectionImages="1000000", memoryQuotaMb="10240")
    assert image_function(template, REINDEX_HANDLER)["MemorySize"] > NEW_ACCOUNT_MEMORY_MB


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"trustedModelSha256": SHA256[:-1]}, "is not a sha256: it must be exactly 64 hex characters"),
        ({"trustedModelSha256": "g" * 64}, "is not a sha256: it must be exactly 64 hex characters"),
        ({"snapStart": "yes"}, "-c snapStart='yes' must be true or false"),
        ({"tracing": "on"}, "-c tracing='on' must be true or false"),
        ({"memoryQuotaMb": "lots"}, "-c memoryQuotaMb='lots' must be a whole number"),
    ],
)
def test_a_malformed_option_is_refused(tmp_path, context, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        template_from(tmp_path, **context)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"trustedModelSha256": "abc123"}, "error: trustedModelSha256='abc123' is not a sha256"),
        ({"collectionImages": "1000000"}, "'Function memory allocation'"),
        ({"snapStart": "maybe"}, "error: -c snapStart='maybe' must be true or false"),
    ],
)
def test_the_cdk_app_refuses_what_the_deploy_would_fail_on_without_a_traceback(tmp_path, context, message):
    # `npx cdk synth -c ...` runs this module; the refusal must read as one line, before anything is built.
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "cdk.app"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
