"""The bucket that receives S3 server access logs and CloudFront standard logs."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.buckets import private_bucket


class AccessLogs(Construct):
    """Private, SSL-only log bucket; logs expire after ``retention_days`` and go with the stack.

    cdk-nag's S1 counts a bucket that receives server access logs as compliant, so it needs no own log.
    """

    def __init__(self, scope: Construct, construct_id: str, *, retention_days: int = 90) -> None:
        super().__init__(scope, construct_id)
        self.bucket = private_bucket(
            self,
            "Bucket",
            # CloudFront standard logging writes with an ACL, so ACLs must stay usable on this bucket.
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(retention_days))],
            removal_policy=cdk.RemovalPolicy.DESTROY,
            auto_delete_objects=True,
        )
