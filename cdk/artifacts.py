"""Where the model, index, key map, manifest and collection images live (``<prefix>/`` in one bucket)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import private_bucket
from lambda_fn.manifest import IMAGES_PREFIX


class Artifacts(Construct):
    """The artifacts bucket (created, or an existing one by name) and the prefix the service reads.

    A created bucket is private, SSE-S3 encrypted, SSL-only and versioned, so an upload that goes wrong can
    be rolled back; old versions expire after ``noncurrent_version_days``. It is retained on ``cdk destroy``
    because it holds the trained model and the image collection. An existing bucket is used as it is.
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
    ) -> None:
        super().__init__(scope, construct_id)
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
        return self.bucket.arn_for_objects(f"{self.prefix}/*")

    @property
    def images_prefix(self) -> str:
        return f"{self.prefix}/{IMAGES_PREFIX}"

    def grant_read(self, grantee: iam.IGrantable) -> None:
        """Read-only on ``<prefix>/*`` (artifacts, and images it presigns GETs for); list only inside it."""
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[self.objects_arn],
            )
        )
        # Without ListBucket a missing key reads as 403 instead of 404; the condition keeps it in the prefix.
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.prefix}/*"]}},
            )
        )
