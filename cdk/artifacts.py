"""Where the model, builds, embeddings, manifest and collection images live (``<prefix>/`` in one bucket).

The layout under the prefix is ``lambda_fn.contract.manifest``'s; each function gets a grant naming exactly the
parts of it that it reads and writes.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import private_bucket
from cdk.nag import acknowledge, flat_ref
from lambda_fn.contract.manifest import (
    BUILDS_PREFIX,
    EMBEDDINGS_PREFIX,
    IMAGES_PREFIX,
    LOCKS_PREFIX,
    MANIFEST_FILE,
    MODELS_PREFIX,
    PENDING_PREFIX,
    PENDING_RECORDS_PREFIX,
    PENDING_STATUS_FILE,
)


class Artifacts(Construct):
    """The artifacts bucket (created, or an existing one by name) and the prefix the service reads.

    A created bucket is private, SSE-S3 encrypted, SSL-only and versioned, so an upload that goes wrong can
    be rolled back; old versions expire after ``noncurrent_version_days``. It is retained on ``cdk destroy``
    because it holds the trained model and the image collection. An existing bucket is used as it is; when
    it encrypts with a customer-managed KMS key (SSE-KMS), pass ``kms_key_arn`` so every role that reads gets
    ``kms:Decrypt`` and every role that writes also ``kms:GenerateDataKey`` on that key (without them S3
    answers AccessDenied although the S3 grants are right).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        prefix: str,
        existing_bucket_name: str | None = None,
        access_logs: s3.IBucket | None = None,
        noncurrent_version_days: int = 30,
        kms_key_arn: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.kms_key_arn = kms_key_arn
        self.prefix = prefix.strip("/")
        if not self.prefix:
            raise ValueError("artifacts prefix must not be empty: the function's read access is scoped to it")
        if existing_bucket_name:
            self.bucket: s3.IBucket = s3.Bucket.from_bucket_name(self, "Bucket", existing_bucket_name)
        else:
            self.bucket = private_bucket(
                self,
                "Bucket",
                versioned=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                server_access_logs_bucket=access_logs,
                server_access_logs_prefix="s3/artifacts/" if access_logs else None,
                lifecycle_rules=[
                    s3.LifecycleRule(
                        noncurrent_version_expiration=cdk.Duration.days(noncurrent_version_days),
                        abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
                    )
                ],
                removal_policy=cdk.RemovalPolicy.RETAIN,
            )

    @property
    def uri(self) -> str:
        """``s3://<bucket>/<prefix>/``: the service's artifacts URI (images are under ``images/`` there)."""
        return f"s3://{self.bucket.bucket_name}/{self.prefix}/"

    @property
    def objects_arn(self) -> str:
        """ARN pattern of every object under the prefix: ``arn:...:s3:::<bucket>/<prefix>/*``."""
        return self.key_arn("*")

    @property
    def images_prefix(self) -> str:
        return f"{self.prefix}/{IMAGES_PREFIX}"

    def key_arn(self, key: str) -> str:
        """ARN of ``<prefix>/<key>`` (``key`` may end in ``*``): ``arn:...:s3:::<bucket>/<prefix>/<key>``."""
        return self.bucket.arn_for_objects(f"{self.prefix}/{key}")

    def grant_read(self, role: iam.Role) -> None:
        """Search: read-only on ``<prefix>/*`` (builds, manifest, and the images it presigns GETs for).

        Nothing to write: the search function only loads what reindex publishes.
        """
        self._grant(
            role,
            {"s3:GetObject": ["*"]},
            reason="Read-only (s3:GetObject) on the artifacts prefix only: the manifest, model, index and key "
            "map it loads, and the collection images it presigns GET URLs for; their keys are not known when "
            "the stack is deployed.",
        )

    def grant_ingest(self, role: iam.Role) -> None:
        """Ingest: reads images, the current model and build; writes embedding shards, and before any model is
        published the records of the changes that wait for one (``pending/events/``).

        GetObject on ``embeddings/`` too: a HEAD of a shard that exists needs it (S3 answers 403 otherwise),
        and a redelivered or duplicate event finds its shard already there.
        """
        self._grant(
            role,
            {
                "s3:GetObject": [
                    f"{IMAGES_PREFIX}*",
                    f"{MODELS_PREFIX}*",
                    f"{BUILDS_PREFIX}*",
                    f"{EMBEDDINGS_PREFIX}*",
                    MANIFEST_FILE,
                ],
                "s3:PutObject": [f"{EMBEDDINGS_PREFIX}*", f"{PENDING_RECORDS_PREFIX}*"],
            },
            reason="Ingest reads the uploaded images, the current model and build, and writes embedding "
            "shards under embeddings/, or, before any model is published, records of the changes under "
            "pending/events/; image keys, shard and record names are known only at run time.",
        )

    def grant_reindex(self, role: iam.Role) -> None:
        """Reindex: reads shards, model and builds; publishes a build and the manifest; holds its lease; embeds
        the photos that arrived before any model.

        ``locks/`` is where the lease lives (an S3 conditional write), so it may write and delete there; it
        also deletes build files no manifest names any more (after a grace period), so builds/ does not grow
        by an index every few minutes. Photos recorded under ``pending/`` it embeds as ingest would (reading
        the images, writing shards), counts in ``pending/status.json``, and deletes each record once handled.
        """
        self._grant(
            role,
            {
                "s3:GetObject": [
                    f"{EMBEDDINGS_PREFIX}*",
                    f"{BUILDS_PREFIX}*",
                    f"{MODELS_PREFIX}*",
                    f"{LOCKS_PREFIX}*",
                    MANIFEST_FILE,
                    f"{PENDING_PREFIX}*",
                    f"{IMAGES_PREFIX}*",
                ],
                "s3:PutObject": [
                    f"{BUILDS_PREFIX}*",
                    f"{LOCKS_PREFIX}*",
                    MANIFEST_FILE,
                    PENDING_STATUS_FILE,
                    f"{EMBEDDINGS_PREFIX}*",
                ],
                "s3:DeleteObject": [f"{BUILDS_PREFIX}*", f"{LOCKS_PREFIX}*", f"{PENDING_RECORDS_PREFIX}*"],
            },
            reason="Reindex merges the embedding shards, writes a new content-addressed build under builds/, "
            "publishes manifest.json last, deletes build files no manifest names any more, and takes and releases "
            "its lease under locks/. Photos recorded under pending/ before any model existed it embeds as ingest "
            "would: it reads their records and images, writes their shards under embeddings/, and deletes the "
            "records under pending/events/ once handled. Build ids, image keys, shard and record names are known "
            "only at run time.",
        )

    def _grant(self, role: iam.Role, keys_by_action: dict[str, list[str]], *, reason: str) -> None:
        """Allow each action on ``<prefix>/<key>`` for its keys, ListBucket inside the prefix, and acknowledge
        cdk-nag's IAM5 for the wildcard keys with ``reason``."""
        for action, keys in keys_by_action.items():
            role.add_to_principal_policy(
                iam.PolicyStatement(actions=[action], resources=[self.key_arn(k) for k in keys])
            )
        # Without ListBucket a missing key reads as 403 instead of 404; the condition keeps it in the prefix.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.prefix}/*"]}},
            )
        )
        if self.kms_key_arn:
            writes = any(action != "s3:GetObject" for action in keys_by_action)
            actions = ["kms:Decrypt", "kms:GenerateDataKey"] if writes else ["kms:Decrypt"]
            condition = {"StringEquals": {"kms:ViaService": f"s3.{cdk.Aws.REGION}.amazonaws.com"}}
            role.add_to_principal_policy(
                iam.PolicyStatement(actions=actions, resources=[self.kms_key_arn], conditions=condition)
            )
        wildcards = {key for keys in keys_by_action.values() for key in keys if key.endswith("*")}
        acknowledge(
            role,
            {f"AwsSolutions-IAM5[Resource::{flat_ref(self, self.key_arn(key))}]": reason for key in sorted(wildcards)},
        )
