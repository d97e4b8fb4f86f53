"""The search service: ``lambda_fn`` in a container image (``Dockerfile.lambda``) on AWS Lambda."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.artifacts import Artifacts
from cdk.function import image_function
from cdk.image import SEARCH_HANDLER, SETTINGS_DEFAULTS, pinned_model
from cdk.sizing import SEARCH_EPHEMERAL_FLOOR_MB, SEARCH_MEMORY_FLOOR_MB
from lambda_fn.contract.config import env_name

DEFAULT_TIMEOUT = cdk.Duration.seconds(120)
SNAP_START_MAX_EPHEMERAL_STORAGE_MB = 512  # SnapStart's limit on /tmp


class SearchFunction(Construct):
    """``DockerImageFunction`` running ``lambda_fn.search.main.handler`` with read access to the artifacts prefix.

    Tunables:
    - ``memory_mb``: 3008 by default. Lambda gives CPU in proportion to memory (one vCPU at 1,769 MB), and
      a ResNet34 forward pass is CPU-bound, so memory buys latency; 3008 MB is also the largest size a new
      account may use before asking for a quota increase. A collection past ~776,000 images needs more for
      its index pages: the stack sizes it from ``collectionImages`` (``cdk.sizing``), and refuses a size above
      the account's memory quota (``memory_quota_mb``).
    - ``timeout``: 120 s. A request's own work is bounded by the decode limits (``lambda_fn.vision.imaging``:
      bytes, pixels, JPEG scans and buffered samples, no RLE BMP; about 2 s and 280 MiB for the costliest image
      admitted, which the memory size leaves room for), so the timeout instead covers the slowest cold start
      supported: downloading, verifying and loading a 10^6-image index (about 2.7 GB) plus the model and
      warm-up. API Gateway answers 504 at 29 s, but the invocation goes on, the
      container finishes loading and stays warm, and the page retries. With 30 s such a load would be
      killed every time and the service would never come up. (``load_on_import`` stays false because the
      init phase of on-demand functions is capped at about 10 s.)
    - ``ephemeral_storage_mb``: ``/tmp`` holds the downloaded model and index (a few hundred MB for
      Food-101) plus room for the next version while the old one is still open; 2048 MB by default (~330,000
      images), ~6 GB for 10^6 images (``cdk.sizing`` from ``collectionImages``).
    - ``architecture``: x86_64 by default. ``Dockerfile.lambda`` compiles annoy with x86-64 flags, so arm64
      also needs that file changed.
    - ``reserved_concurrency``: none by default. N reserves N containers for search and caps it at N, so a
      client that floods the API can neither run up more than N containers' cost nor take the account's
      concurrency from the ingest, reindex and backfill functions (``-c searchReservedConcurrency=N``). Lambda
      lets an account reserve only up to its unreserved concurrency minus 100, so N fails the deploy on any
      account whose concurrency quota is under N + 100 (a new account's is 10). Without it, the caps are the
      API stage's throttle (``cdk.api``) and, where turned on, the per-client WAF rate limit.
    - ``trusted_model_sha256``: pin the model the service may load (``DEEPFOOD_TRUSTED_MODEL_SHA256``); a
      manifest naming any other model is refused with a 503 (see the README's trust model). Checked here and
      lowercased (``cdk.image.pinned_model``), since the runtime refuses anything but 64 lowercase hex.
    - ``provisioned_concurrency``: optional warm containers on a ``live`` alias; then the model and index
      load during init (``load_on_import``) because provisioned environments initialise before traffic.
    - ``snap_start``: off by default (``-c snapStart=true``). On, Lambda initialises each published version once
      (model and index loaded during init, ``load_on_import``) and resumes new containers from its memory
      snapshot, on a ``live`` alias; ``lambda_fn.search.snapstart`` holds the hooks. A model must be published before
      the deploy that publishes the version: a snapshot taken without one holds no model, and every restored
      container then loads it on its first request. AWS documents SnapStart for container images
      on its Python 3.12+ base images (this image's); SnapStart allows at most 512 MB of ``/tmp`` (so the
      default becomes 512: the int8 model and two builds' indexes of about 8 x 10^4 images each, 2.7 kB a
      vector, while a swap holds both) and excludes provisioned concurrency. What it skips is measured in
      docs/benchmarks.md ("Cold start").
    - ``manifest_check_s``: how often a warm container looks for a new manifest, i.e. a build reindex
      published, and swaps to it; no configuration change or new container is needed.
    - ``tracing``: off by default; on, X-Ray active tracing and ``DEEPFOOD_TRACING`` (``cdk.function``).

    It may only read: reindex publishes builds, this function loads them.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        artifacts: Artifacts,
        cors_origins: list[str],
        memory_mb: int = SEARCH_MEMORY_FLOOR_MB,
        timeout: cdk.Duration | None = None,
        ephemeral_storage_mb: int | None = None,
        architecture: lambda_.Architecture = lambda_.Architecture.X86_64,
        reserved_concurrency: int | None = None,
        trusted_model_sha256: str | None = None,
        provisioned_concurrency: int | None = None,
        snap_start: bool = False,
        presign_expires_s: int = SETTINGS_DEFAULTS["presign_expires_s"],
        manifest_check_s: float = SETTINGS_DEFAULTS["manifest_check_s"],
        log_level: str = SETTINGS_DEFAULTS["log_level"],
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        tracing: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        if snap_start and provisioned_concurrency:
            raise ValueError("snap_start and provisioned_concurrency exclude each other: choose one")
        if ephemeral_storage_mb is None:
            ephemeral_storage_mb = SNAP_START_MAX_EPHEMERAL_STORAGE_MB if snap_start else SEARCH_EPHEMERAL_FLOOR_MB
        if snap_start and ephemeral_storage_mb > SNAP_START_MAX_EPHEMERAL_STORAGE_MB:
            raise ValueError(
                f"SnapStart allows at most {SNAP_START_MAX_EPHEMERAL_STORAGE_MB} MB of /tmp, and this collection "
                f"needs {ephemeral_storage_mb} MB: a smaller collection, or no SnapStart"
            )
        if trusted_model_sha256:
            trusted_model_sha256 = pinned_model(trusted_model_sha256)
        self.manifest_check_s = manifest_check_s
        self.memory_mb, self.ephemeral_storage_mb = memory_mb, ephemeral_storage_mb
        self.function = image_function(
            self,
            handler=SEARCH_HANDLER,
            description="DeepFood similarity search (FastAPI + Mangum, ResNet34 embeddings, Annoy)",
            role_description="DeepFood search function: write its own logs, read the artifacts prefix",
            grant=artifacts.grant_read,
            environment={
                env_name("artifacts_uri"): artifacts.uri,
                env_name("cors_origins"): ",".join(cors_origins),
                env_name("cache_dir"): str(SETTINGS_DEFAULTS["cache_dir"]),
                env_name("presign_expires_s"): str(presign_expires_s),
                env_name("manifest_check_s"): str(manifest_check_s),
                env_name("log_level"): log_level,
                env_name("load_on_import"): "true" if provisioned_concurrency or snap_start else "false",
                **({env_name("trusted_model_sha256"): trusted_model_sha256} if trusted_model_sha256 else {}),
            },
            memory_mb=memory_mb,
            timeout=timeout or DEFAULT_TIMEOUT,
            ephemeral_storage_mb=ephemeral_storage_mb,
            architecture=architecture,
            log_retention=log_retention,
            tracing=tracing,
            reserved_concurrency=reserved_concurrency,
        )
        # What API Gateway invokes: the function itself, or the alias that holds the warm containers.
        self.target: lambda_.IFunction = self.function
        if snap_start:  # DockerImageFunction has no snap_start property (CDK checks runtimes, images have none)
            cfn: lambda_.CfnFunction = self.function.node.default_child
            cfn.snap_start = lambda_.CfnFunction.SnapStartProperty(apply_on="PublishedVersions")
            self.target = lambda_.Alias(self, "Live", alias_name="live", version=self.function.current_version)
        elif provisioned_concurrency:
            self.target = lambda_.Alias(
                self,
                "Live",
                alias_name="live",
                version=self.function.current_version,
                provisioned_concurrent_executions=provisioned_concurrency,
            )
