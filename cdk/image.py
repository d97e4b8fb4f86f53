"""The one container image every function runs (``Dockerfile.lambda``), and what each function around it shares.

Search, ingest and reindex differ only in the handler the image starts (its ``CMD``). The Docker asset's
hash covers the build context, Dockerfile and platform but not the ``CMD``, so the three functions share one
image asset: one build, one push.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_lambda as lambda_
from pydantic import TypeAdapter, ValidationError

from lambda_fn.contract.config import Settings, env_name
from lambda_fn.contract.manifest import Sha256

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "Dockerfile.lambda"
# The handler each function's image starts; the search handler is also the Dockerfile's own CMD.
SEARCH_HANDLER = "lambda_fn.search.main.handler"
INGEST_HANDLER = "lambda_fn.collection.handlers.ingest.handler"
REINDEX_HANDLER = "lambda_fn.collection.handlers.reindex.handler"
# The runtime's defaults, so a tunable left alone configures exactly what the service would do unset.
SETTINGS_DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}

_PLATFORMS = {
    lambda_.Architecture.X86_64.name: ecr_assets.Platform.LINUX_AMD64,
    lambda_.Architecture.ARM_64.name: ecr_assets.Platform.LINUX_ARM64,
}


def image_code(handler: str, architecture: lambda_.Architecture) -> lambda_.DockerImageCode:
    """The image built from the repository root for ``architecture``, starting ``handler``."""
    return lambda_.DockerImageCode.from_image_asset(
        str(REPO_ROOT),
        file=DOCKERFILE,
        platform=_PLATFORMS[architecture.name],
        cmd=[handler],
    )


def pinned_model(sha256: str) -> str:
    """``trusted_model_sha256`` as the runtime accepts it (64 lowercase hex); uppercase, as PowerShell's
    ``Get-FileHash`` prints it, is lowercased. ValueError for anything else, so it fails at synth, not at every
    cold start."""
    digest = sha256.strip().lower()
    try:
        return TypeAdapter(Sha256).validate_python(digest)
    except ValidationError:
        raise ValueError(
            f"trustedModelSha256={sha256!r} is not a sha256: it must be exactly 64 hex characters "
            "(sha256sum model.pt, or Get-FileHash model.pt)"
        ) from None


def worker_environment(
    artifacts_uri: str, *, log_level: str, num_threads: int | None, **settings: str
) -> dict[str, str]:
    """The environment of the ingest and reindex functions: where the artifacts are, the /tmp cache, logging,
    optional thread count, and ``settings`` (field name -> value) of their own (``cdk.function`` adds tracing)."""
    environment = {
        env_name("artifacts_uri"): artifacts_uri,
        env_name("cache_dir"): str(SETTINGS_DEFAULTS["cache_dir"]),
        env_name("log_level"): log_level,
        **{env_name(field): value for field, value in settings.items()},
    }
    if num_threads is not None:
        environment[env_name("num_threads")] = str(num_threads)
    return environment


def embedding_environment(
    *, trusted_model_sha256: str | None, max_ingest_bytes: int, max_image_pixels: int
) -> dict[str, str]:
    """The settings (field name -> value, for ``worker_environment``) that decide what a function embeds: the
    ingest, and the reindex when it embeds the photos that waited for a model, get the same."""
    settings = {"max_ingest_bytes": str(max_ingest_bytes), "max_image_pixels": str(max_image_pixels)}
    if trusted_model_sha256:
        settings["trusted_model_sha256"] = pinned_model(trusted_model_sha256)
    return settings
