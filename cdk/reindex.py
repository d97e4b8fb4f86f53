"""Reindex: on a schedule, merge the embedding shards into a new Annoy build and publish it."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.artifacts import Artifacts
from cdk.function import image_function
from cdk.image import (
    REINDEX_HANDLER,
    SETTINGS_DEFAULTS,
    embedding_environment,
    worker_environment,
)
from cdk.sizing import REINDEX_MEMORY_FLOOR_MB
from lambda_fn.contract.config import Settings


def _least_lease_s() -> int:
    """The shortest lease the runtime's settings accept (``reindex_lease_s``'s ``ge``)."""
    (least,) = (c.ge for c in Settings.model_fields["reindex_lease_s"].metadata if hasattr(c, "ge"))
    return int(least)


class Reindex(Construct):
    """An EventBridge schedule runs the reindex function (same image as search) every ``every``.

    It merges the shards under ``embeddings/`` into a new build under ``builds/`` and publishes it by writing
    ``manifest.json`` last; warm search containers notice the new manifest and swap to the build.

    Two reindexes never race: the runtime takes a lease under ``locks/`` with an S3 conditional write, and
    a run that finds the lease held ends at once. The lease lasts as long as the function's ``timeout``
    (``reindex_lease_s``), so a run that dies holding it blocks the next one for that long at most. Reserved
    concurrency is not what keeps runs apart: an account may reserve only up to its unreserved concurrency
    minus 100, so one whose quota is under 101 (a new account's is 10) cannot reserve any. Where the account
    allows it, ``reserved_concurrency=1`` also caps the function at one container.

    A failed run is not retried, by the schedule or by Lambda's asynchronous invocation (retry attempts 0):
    the next tick is the retry.

    Tunables:
    - ``every``: 5 minutes by default: how long a new photo may wait before search can find it.
    - ``memory_mb``: 3008 by default (~180,000 images); the stack sizes it from ``collectionImages``
      (``cdk.sizing``): the merged embeddings and the Annoy build must fit in memory, beside the model that
      embedded any photos that waited for one; 9,856 MB for 10^6, which needs the account's memory quota
      raised first (the stack's ``memory_quota_mb``).
    - ``timeout``: 15 minutes, the most Lambda allows; also the lease.
    - ``ephemeral_storage_mb``: 10240, the most Lambda allows: the new index is written to ``/tmp`` first.
    - ``trusted_model_sha256``, ``max_ingest_bytes``, ``max_image_pixels``: the ingest's (the stack passes
      its ``embedding_options``): a run that finds photos recorded before any model existed embeds them with
      the ingest's code, so with its model pin and image limits too.
    - ``tracing``: off by default; on, X-Ray active tracing and ``DEEPFOOD_TRACING`` (``cdk.function``).
    - ``scheduled``: False on the S3 Vectors store (``-c vectorStore=s3vectors``), which needs no reindex: the
      function stays, unscheduled, to build an Annoy index from the shards ingest still writes (a way back).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        artifacts: Artifacts,
        every: cdk.Duration | None = None,
        memory_mb: int = REINDEX_MEMORY_FLOOR_MB,
        timeout: cdk.Duration | None = None,
        ephemeral_storage_mb: int = 10240,
        architecture: lambda_.Architecture = lambda_.Architecture.X86_64,
        reserved_concurrency: int | None = None,
        num_threads: int | None = SETTINGS_DEFAULTS["num_threads"],
        log_level: str = SETTINGS_DEFAULTS["log_level"],
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        tracing: bool = False,
        trusted_model_sha256: str | None = None,
        max_ingest_bytes: int = SETTINGS_DEFAULTS["max_ingest_bytes"],
        max_image_pixels: int = SETTINGS_DEFAULTS["max_image_pixels"],
        scheduled: bool = True,
    ) -> None:
        super().__init__(scope, construct_id)
        timeout = timeout or cdk.Duration.minutes(15)
        self.every = every or cdk.Duration.minutes(5)
        self.memory_mb = memory_mb
        lease_s, least_lease_s = int(timeout.to_seconds()), _least_lease_s()
        if lease_s < least_lease_s:
            raise ValueError(f"reindex timeout must be at least {least_lease_s} s: it is also the lease")

        self.function = image_function(
            self,
            handler=REINDEX_HANDLER,
            description="DeepFood reindex: merges embedding shards into a new Annoy build and publishes it",
            role_description="DeepFood reindex function: write its own logs, merge shards, publish builds",
            grant=artifacts.grant_reindex,
            environment=worker_environment(
                artifacts.uri,
                log_level=log_level,
                num_threads=num_threads,
                reindex_lease_s=str(lease_s),
                **embedding_environment(
                    trusted_model_sha256=trusted_model_sha256,
                    max_ingest_bytes=max_ingest_bytes,
                    max_image_pixels=max_image_pixels,
                ),
            ),
            memory_mb=memory_mb,
            timeout=timeout,
            ephemeral_storage_mb=ephemeral_storage_mb,
            architecture=architecture,
            log_retention=log_retention,
            tracing=tracing,
            reserved_concurrency=reserved_concurrency,
            # Neither Lambda (asynchronous invocations) nor the schedule retries a failed run: the next tick does.
            retry_attempts=0,
        )
        self.schedule = None
        if not scheduled:  # the S3 Vectors store: ingest writes the index; a build is made only when invoked
            return
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="Runs DeepFood reindex: merge new embeddings, publish a new build",
            schedule=events.Schedule.rate(self.every),
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
