"""The S3 Vectors store (``-c vectorStore=s3vectors``): a vector bucket with one index per model, and its grants.

Indexes are named for their model (``lambda_fn.contract.vectors.index_name``), so a model's index is known
here only when the deployment pins the model (``trustedModelSha256``): then the stack creates it, with the
dimension given (``vector_dimension``, the model's embedding width; 512 for ResNet34) and cosine distance.
Otherwise ingest creates each model's index when it first writes to it, with the dimension the model's own
metadata states. An index never changes dimension: a model of another width gets an index of its own, filled
by the backfill, and goes live by the same switch as any new model.

Grants, per function, on this bucket's indexes only: search may query and get (a filtered query or one
returning metadata needs GetVectors too); ingest (which also runs the backfill's batches and the switch)
puts, deletes, reads and lists vectors, and creates and deletes indexes.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3vectors as s3vectors
from constructs import Construct

from cdk.nag import acknowledge, flat_ref
from lambda_fn.contract.vectors import METRIC, NON_FILTERABLE, index_name

SEARCH_ACTIONS = ["s3vectors:QueryVectors", "s3vectors:GetVectors"]
INGEST_ACTIONS = [
    "s3vectors:PutVectors",
    "s3vectors:DeleteVectors",
    "s3vectors:GetVectors",
    "s3vectors:ListVectors",
    "s3vectors:GetIndex",
    "s3vectors:CreateIndex",
    "s3vectors:DeleteIndex",
]


class Vectors(Construct):
    """The vector bucket, the pinned model's index when there is one, and the functions' grants."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        trusted_model_sha256: str | None = None,
        vector_dimension: int = 512,
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket_name = f"{cdk.Stack.of(self).stack_name.lower()}-vectors"
        self.bucket = s3vectors.CfnVectorBucket(
            self,
            "Bucket",
            vector_bucket_name=self.bucket_name,
            encryption_configuration=s3vectors.CfnVectorBucket.EncryptionConfigurationProperty(sse_type="AES256"),
        )
        self.bucket_arn = self.bucket.attr_vector_bucket_arn
        self.index = None
        if trusted_model_sha256:
            self.index = s3vectors.CfnIndex(
                self,
                "Index",
                vector_bucket_name=self.bucket_name,
                index_name=index_name(trusted_model_sha256),
                data_type="float32",
                dimension=vector_dimension,
                distance_metric=METRIC,
                metadata_configuration=s3vectors.CfnIndex.MetadataConfigurationProperty(
                    non_filterable_metadata_keys=list(NON_FILTERABLE)
                ),
            )
            self.index.add_dependency(self.bucket)

    def _grant(self, role: iam.IRole, actions: list[str]) -> None:
        indexes = f"{self.bucket_arn}/index/*"
        role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=[self.bucket_arn, indexes]))
        acknowledge(
            role,
            {
                f"AwsSolutions-IAM5[Resource::{flat_ref(self, indexes)}]": "The indexes of this stack's own "
                "vector bucket: one per model, named for the model's sha256, which is not known at deploy time."
            },
        )

    def grant_search(self, role: iam.IRole) -> None:
        self._grant(role, SEARCH_ACTIONS)

    def grant_ingest(self, role: iam.IRole) -> None:
        self._grant(role, INGEST_ACTIONS)
