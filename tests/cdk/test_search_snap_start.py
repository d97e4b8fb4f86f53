"""The search function's SnapStart option: published versions snapshotted, loaded at init, on the live alias."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Template
from cdk_support import build_stack, image_function

from cdk.image import SEARCH_HANDLER
from cdk.search_function import SNAP_START_MAX_EPHEMERAL_STORAGE_MB
from lambda_fn.contract.config import env_name


@pytest.fixture(scope="module")
def snap_template(tmp_path_factory) -> Template:
    stack = build_stack(tmp_path_factory.mktemp("cdk-snap"), function_options={"snap_start": True})
    return Template.from_stack(stack)


def test_snap_start_snapshots_published_versions_loaded_at_init(snap_template):
    function = image_function(snap_template, SEARCH_HANDLER)
    assert function["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    assert function["EphemeralStorage"] == {"Size": SNAP_START_MAX_EPHEMERAL_STORAGE_MB}
    # The snapshot is only worth taking with the model and index already loaded.
    assert function["Environment"]["Variables"][env_name("load_on_import")] == "true"
    (alias_id,) = snap_template.find_resources("AWS::Lambda::Alias", {"Properties": {"Name": "live"}})
    methods = snap_template.find_resources("AWS::ApiGateway::Method", {"Properties": {"HttpMethod": "ANY"}})
    assert methods and all(alias_id in str(m["Properties"]["Integration"]["Uri"]) for m in methods.values())


def test_snap_start_is_off_by_default(template):
    assert "SnapStart" not in image_function(template, SEARCH_HANDLER)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"snap_start": True, "provisioned_concurrency": 2}, "exclude each other"),
        ({"snap_start": True, "ephemeral_storage_mb": 2048}, "at most 512 MB"),
    ],
)
def test_snap_start_refuses_what_lambda_refuses(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        build_stack(tmp_path, function_options=options)
