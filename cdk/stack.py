"""The one DeepFood stack: artifacts, search, ingest and reindex functions, API and site, wired together."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from constructs import Construct

from cdk.access_logs import AccessLogs
from cdk.api import SearchApi
from cdk.artifacts import Artifacts
from cdk.backfill import Backfill
from cdk.ingest import Ingest
from cdk.model_signing import ModelSigning
from cdk.monitoring import Monitoring
from cdk.reindex import Reindex
from cdk.search_function import SNAP_START_MAX_EPHEMERAL_STORAGE_MB, SearchFunction
from cdk.sizing import NEW_ACCOUNT_MEMORY_MB, capacity, check_memory_quota, sizes_for
from cdk.vectors import Vectors
from cdk.website import SiteDeployment, Website
from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import DEFAULT_PREFIX
from lambda_fn.contract.vectors import ANNOY, S3VECTORS, VECTOR_STORES

# The embedding width a pinned model's S3 Vectors index is created with, unless told (ResNet34's).
DEFAULT_VECTOR_DIMENSION = 512
# Search's /tmp on the S3 Vectors store: the model (~85 MB fp32) and nothing else.
VECTORS_SEARCH_EPHEMERAL_MB = 512


class DeepFoodStack(cdk.Stack):
    """Composes the constructs; ``function_options`` (search), ``ingest_options``, ``reindex_options``,
    ``backfill_options``, ``api_options`` and ``monitoring_options`` (dashboard, alarms, where they notify)
    pass their tunables through. ``tracing`` turns on X-Ray for the three functions (off: it costs extra).
    ``collection_images``, the number of images the collection is expected to reach, sizes the search and
    reindex functions' memory and ``/tmp`` (``cdk.sizing``; None keeps the defaults, ~180,000 images); sizes
    given in ``function_options`` or ``reindex_options`` win over it. The CollectionSize alarm goes off when
    the live build nears what the deployed sizes hold. ``memory_quota_mb`` is the most memory the account may
    give a function (a new account's 3,008 MB by default); a function sized above it is refused here, naming the
    quota to ask AWS for, rather than failing the deploy. ``model_signing_key`` (``create`` or a KMS key ARN)
    makes every function run only models that key signed, with ``kms:Verify`` as their only use of it.

    ``vector_store="s3vectors"`` (``-c vectorStore=s3vectors``) keeps the vectors in Amazon S3 Vectors instead
    (``cdk.vectors``): ingest writes each batch into the model's index, search queries it (a small ``/tmp``,
    no sizing by collection), the backfill ends with the index switch instead of a reindex, a daily rule
    checks the switch and deletes retired indexes, and the reindex function stays unscheduled.

    Photos put under ``<prefix>/images/`` are embedded by ingest, merged into a new build by reindex, and
    picked up by the search function's warm containers. The backfill state machine embeds the whole collection
    again (after a new model is announced) and then runs the reindex.

    Environment-agnostic on purpose (no account lookups), so it synthesizes offline and deploys anywhere.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        artifacts_bucket_name: str | None = None,
        artifacts_kms_key_arn: str | None = None,
        artifacts_prefix: str = DEFAULT_PREFIX,
        function_options: dict[str, Any] | None = None,
        ingest_options: dict[str, Any] | None = None,
        reindex_options: dict[str, Any] | None = None,
        backfill_options: dict[str, Any] | None = None,
        api_options: dict[str, Any] | None = None,
        monitoring_options: dict[str, Any] | None = None,
        tracing: bool = False,
        collection_images: int | None = None,
        memory_quota_mb: int = NEW_ACCOUNT_MEMORY_MB,
        vector_store: str = ANNOY,
        vector_dimension: int = DEFAULT_VECTOR_DIMENSION,
        model_signing_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        if vector_store not in VECTOR_STORES:
            raise ValueError(f"-c vectorStore={vector_store!r} must be one of {', '.join(VECTOR_STORES)}")
        on_vectors = vector_store == S3VECTORS
        function_options, reindex_options = dict(function_options or {}), dict(reindex_options or {})
        if on_vectors:
            # no index in the container: /tmp holds the model only, and the collection does not size search
            function_options.setdefault("ephemeral_storage_mb", VECTORS_SEARCH_EPHEMERAL_MB)
            collection_images = None
        # The collection a function's memory was computed for, where no explicit size overrides it.
        sized_for = {
            "search": None if "memory_mb" in function_options else collection_images,
            "reindex": None if "memory_mb" in reindex_options else collection_images,
        }
        if collection_images is not None:
            snap_start = function_options.get("snap_start", False)
            sizes = sizes_for(
                collection_images,
                **({"search_ephemeral_floor_mb": SNAP_START_MAX_EPHEMERAL_STORAGE_MB} if snap_start else {}),
            )
            function_options = {
                "memory_mb": sizes.search_memory_mb,
                "ephemeral_storage_mb": sizes.search_ephemeral_storage_mb,
                **function_options,
            }
            reindex_options = {"memory_mb": sizes.reindex_memory_mb, **reindex_options}
        logs = AccessLogs(self, "AccessLogs")
        artifacts = Artifacts(
            self,
            "Artifacts",
            prefix=artifacts_prefix,
            existing_bucket_name=artifacts_bucket_name,
            access_logs=logs.bucket,
            kms_key_arn=artifacts_kms_key_arn,
        )
        website = Website(self, "Website", access_logs=logs.bucket)
        search = SearchFunction(
            self,
            "Search",
            artifacts=artifacts,
            cors_origins=[website.origin],
            tracing=tracing,
            **function_options,
        )
        # A pinned model binds ingest too: it must never run a model the search service would refuse.
        pinned = function_options.get("trusted_model_sha256")
        ingest = Ingest(
            self,
            "Ingest",
            artifacts=artifacts,
            tracing=tracing,
            **({"trusted_model_sha256": pinned} if pinned else {}),
            **(ingest_options or {}),
        )
        # The reindex embeds the photos that waited for a model with the ingest's code: its pin and limits too.
        reindex = Reindex(
            self,
            "Reindex",
            artifacts=artifacts,
            tracing=tracing,
            scheduled=not on_vectors,
            **ingest.embedding_options,
            **reindex_options,
        )
        self.vectors = None
        if on_vectors:
            self.vectors = Vectors(self, "Vectors", trusted_model_sha256=pinned, vector_dimension=vector_dimension)
            settings = {env_name("vector_store"): S3VECTORS, env_name("vector_bucket"): self.vectors.bucket_name}
            grants = ((search.function, self.vectors.grant_search), (ingest.function, self.vectors.grant_ingest))
            for function, grant in grants:
                grant(function.role)
                for name, value in settings.items():
                    function.add_environment(name, value)
            # The switch check also deletes retired indexes once their grace period is over: once a day.
            events.Rule(
                self,
                "SwitchCheck",
                description="DeepFood: make a new model's vector index live once it covers; delete retired ones",
                schedule=events.Schedule.rate(cdk.Duration.days(1)),
                targets=[
                    targets.LambdaFunction(
                        ingest.function, event=events.RuleTargetInput.from_object({"Switch": {}}), retry_attempts=2
                    )
                ],
            )
        # One key binds all three: none of them may run a model the others would refuse.
        signing = ModelSigning(self, "ModelSigning", key=model_signing_key) if model_signing_key else None
        if signing is not None:
            for function in (search.function, ingest.function, reindex.function):
                signing.allow_verify(function)
        # Largest first, so the quota a refusal asks for covers every function.
        sized = sorted({"search": search, "ingest": ingest, "reindex": reindex}.items(), key=lambda f: -f[1].memory_mb)
        for name, function in sized:
            check_memory_quota(
                name, function.memory_mb, quota_mb=memory_quota_mb, collection_images=sized_for.get(name)
            )
        backfill = Backfill(
            self,
            "Backfill",
            artifacts=artifacts,
            ingest_function=ingest.function,
            reindex_function=reindex.function,
            switch_index=on_vectors,
            **(backfill_options or {}),
        )
        api = SearchApi(self, "Api", handler=search.target, allowed_origin=website.origin, **(api_options or {}))
        SiteDeployment(self, "SiteDeployment", website=website, api_base_url=api.url)
        monitoring = Monitoring(
            self,
            "Monitoring",
            api=api,
            search=search,
            ingest=ingest,
            reindex=reindex,
            collection_capacity=capacity(
                search_memory_mb=search.memory_mb,
                search_ephemeral_storage_mb=search.ephemeral_storage_mb,
                reindex_memory_mb=reindex.memory_mb,
            ),
            vector_queries=on_vectors,
            **(monitoring_options or {}),
        )

        cdk.CfnOutput(self, "SiteUrl", value=website.url, description="Open this in a browser")
        cdk.CfnOutput(self, "ApiUrl", value=api.url, description="API base URL (config.json's apiBaseUrl)")
        cdk.CfnOutput(self, "ArtifactsBucketName", value=artifacts.bucket.bucket_name)
        cdk.CfnOutput(
            self,
            "SearchFunctionName",
            value=search.function.function_name,
            description=f"Its warm containers pick up each new build within {search.manifest_check_s} s "
            f"({env_name('manifest_check_s')}); no configuration change needed",
        )
        cdk.CfnOutput(
            self, "IngestQueueUrl", value=ingest.queue.queue_url, description="S3 events of new and removed images"
        )
        cdk.CfnOutput(
            self,
            "DeadLetterQueueUrl",
            value=ingest.dead_letter_queue.queue_url,
            description="Images ingest gave up on (kept 14 days); its alarm goes off when any arrive",
        )
        cdk.CfnOutput(
            self,
            "ReindexFunctionName",
            value=reindex.function.function_name,
            description="Runs on a schedule; invoke it to publish newly ingested images at once",
        )
        cdk.CfnOutput(
            self,
            "BackfillStateMachineArn",
            value=backfill.state_machine.state_machine_arn,
            description="Embeds every image again with the current model, then reindexes: "
            f"python -m ops.backfill --stack {self.stack_name}",
        )
        cdk.CfnOutput(
            self,
            "UploadCommand",
            description="Run next (replace <DIR> with the image collection folder) to upload model and index",
            value=(
                "python -m ops.upload --artifacts artifacts/ --images <DIR> "
                f"--bucket {artifacts.bucket.bucket_name} --prefix {artifacts.prefix}"
                + (f" --signing-key {signing.key.key_arn}" if signing is not None else "")
            ),
        )
        if signing is not None:
            cdk.CfnOutput(
                self,
                "ModelSigningKeyArn",
                value=signing.key.key_arn,
                description="Models must be signed with it (ops.upload --signing-key); the publisher needs kms:Sign",
            )
        cdk.CfnOutput(
            self,
            "DashboardUrl",
            value=f"https://console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#dashboards/dashboard/{monitoring.dashboard_name}",
            description="Latency by stage, errors, ingest backlog, reindex runs, cost (README: Operating it)",
        )
        self.artifacts = artifacts
        self.search = search
        self.ingest = ingest
        self.reindex = reindex
        self.backfill = backfill
        self.api = api
        self.monitoring = monitoring
        self.website = website
