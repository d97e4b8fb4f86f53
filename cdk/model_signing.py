"""The key models are signed with: only their publisher signs, the functions only verify.

``-c modelSigningKey=create`` makes an AWS KMS asymmetric key (``ECC_NIST_P256``, ``SIGN_VERIFY``) whose key
policy is the account's default (the account's IAM administrators decide who may ``kms:Sign``: the publisher);
``-c modelSigningKey=<key ARN>`` takes an existing one, e.g. in the publisher's own account. Either way the
search, ingest and reindex functions get ``DEEPFOOD_MODEL_SIGNING_KEY`` and ``kms:Verify`` on that key, and
nothing else: no function role can sign, so whoever controls a function or the bucket cannot ship a model.
"""

from __future__ import annotations

import re

import aws_cdk as cdk
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from lambda_fn.contract.config import env_name

CREATE = "create"
# kms:Verify is authorised on the key's own ARN: an alias ARN would leave the grant matching nothing.
_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
# What the functions may do with the key; kms:Sign is the publisher's alone.
VERIFY_ACTIONS = ("kms:Verify",)


def signing_key_option(value: str) -> str:
    """``modelSigningKey`` as the stack takes it: ``create`` or a key ARN; ValueError (at synth) otherwise."""
    value = value.strip()
    if value.lower() == CREATE:
        return CREATE
    if not _KEY_ARN.fullmatch(value):
        raise ValueError(
            f"modelSigningKey={value!r} must be 'create' or a KMS key ARN "
            "(arn:aws:kms:REGION:ACCOUNT:key/KEY_ID, not an alias)"
        )
    return value


class ModelSigning(Construct):
    """``key``: the signing key, created (``create``) or imported by ARN; ``allow_verify`` hands it to a function."""

    def __init__(self, scope: Construct, construct_id: str, *, key: str) -> None:
        super().__init__(scope, construct_id)
        option = signing_key_option(key)
        if option == CREATE:
            self.key: kms.IKey = kms.Key(
                self,
                "Key",
                description="DeepFood model signing: the publisher signs each model's sha256, the functions verify",
                key_spec=kms.KeySpec.ECC_NIST_P256,
                key_usage=kms.KeyUsage.SIGN_VERIFY,
                removal_policy=cdk.RemovalPolicy.RETAIN,  # signatures made with it must stay checkable
            )
        else:
            self.key = kms.Key.from_key_arn(self, "Key", option)

    def allow_verify(self, function: lambda_.Function) -> None:
        self.key.grant(function.role, *VERIFY_ACTIONS)
        function.add_environment(env_name("model_signing_key"), self.key.key_arn)
