"""``-c modelSigningKey=create|<key ARN>``: every function gets the key and kms:Verify on it, and no role in the
stack can sign with it; cdk-nag stays clean."""

from __future__ import annotations

import fnmatch
import re

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template
from cdk_support import as_list, cdk_context, grants, image_function, statements, text

from cdk.context import stack_options
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER, SEARCH_HANDLER
from cdk.nag import add_nag_checks
from cdk.stack import DeepFoodStack
from lambda_fn.contract.config import env_name

HANDLERS = (SEARCH_HANDLER, INGEST_HANDLER, REINDEX_HANDLER)
KEY_ARN = "arn:aws:kms:eu-west-1:210987654321:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
VARIABLE = env_name("model_signing_key")


def _synth(tmp_path, *, nag: bool = False, **context: str) -> Template:
    app = cdk.App(outdir=str(tmp_path), context={**cdk_context(), **context})
    stack = DeepFoodStack(app, "DeepFood", **stack_options(app))
    if nag:
        add_nag_checks(app)  # app.synth() raises on any finding not acknowledged
        return Template.from_json(app.synth().get_stack_by_name("DeepFood").template)
    return Template.from_stack(stack)


def _can_sign(action: str) -> bool:
    return fnmatch.fnmatchcase("kms:Sign", action) or fnmatch.fnmatchcase("kms:sign", action.lower())


def _assert_no_role_signs(template: Template) -> None:
    for statement in statements(template):
        assert not any(_can_sign(a) for a in as_list(statement["Action"])), statement


@pytest.fixture(scope="module")
def created(tmp_path_factory) -> Template:
    return _synth(tmp_path_factory.mktemp("cdk"), nag=True, modelSigningKey="create")


def test_a_created_key_signs_and_verifies_with_ecc_and_is_kept(created):
    keys = created.find_resources("AWS::KMS::Key")
    assert len(keys) == 1
    ((key_id, key),) = keys.items()
    assert key["Properties"]["KeySpec"] == "ECC_NIST_P256" and key["Properties"]["KeyUsage"] == "SIGN_VERIFY"
    assert key["DeletionPolicy"] == "Retain"
    # only the account (its IAM administrators: the publisher) is named by the key policy, no function role
    principals = [s["Principal"] for s in key["Properties"]["KeyPolicy"]["Statement"]]
    assert all(re.fullmatch(r"arn:<AWS::Partition>:iam::<AWS::AccountId>:root", text(p["AWS"])) for p in principals)
    outputs = created.to_json()["Outputs"]
    assert text(outputs["ModelSigningKeyArn"]["Value"]) == f"<{key_id}.Arn>"
    assert text(outputs["UploadCommand"]["Value"]).endswith(f"--signing-key <{key_id}.Arn>")


def test_every_function_may_verify_with_the_key_and_none_may_sign(created):
    key_id = next(iter(created.find_resources("AWS::KMS::Key")))
    for handler in HANDLERS:
        assert image_function(created, handler)["Environment"]["Variables"][VARIABLE] == {"Fn::GetAtt": [key_id, "Arn"]}
        allowed = grants(created, handler)
        assert allowed["kms:Verify"] == {f"<{key_id}.Arn>"}
        assert not [a for a in allowed if _can_sign(a)], handler
    _assert_no_role_signs(created)


def test_an_existing_key_is_granted_by_its_arn_only_for_verify(tmp_path):
    template = _synth(tmp_path, modelSigningKey=f" {KEY_ARN} ")
    template.resource_count_is("AWS::KMS::Key", 0)
    for handler in HANDLERS:
        assert image_function(template, handler)["Environment"]["Variables"][VARIABLE] == KEY_ARN
        assert grants(template, handler)["kms:Verify"] == {KEY_ARN}
    _assert_no_role_signs(template)


def test_without_the_option_no_key_and_no_signature_is_required(template):
    template.resource_count_is("AWS::KMS::Key", 0)
    for handler in HANDLERS:
        assert VARIABLE not in image_function(template, handler)["Environment"]["Variables"]


@pytest.mark.parametrize("value", ["alias/deepfood", "arn:aws:kms:eu-west-1:210987654321:alias/deepfood", "yes"])
def test_a_key_option_that_names_no_key_stops_synth(tmp_path, value):
    with pytest.raises(ValueError, match="must be 'create' or a KMS key ARN"):
        _synth(tmp_path, modelSigningKey=value)
