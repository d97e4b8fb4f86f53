"""Service settings: the one place that reads the environment.

Every variable is ``DEEPFOOD_<FIELD>``; ``env_name("artifacts_uri")`` gives the exact name, which the CDK
stack uses so infrastructure and runtime cannot disagree. docs/configuration.md lists them, generated from
the field descriptions here (``make docs``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lambda_fn.contract.manifest import Sha256
from lambda_fn.contract.vectors import ANNOY, DEFAULT_RETIRE_AFTER_S, S3VECTORS, VectorStoreKind

ENV_PREFIX = "DEEPFOOD_"
# API Gateway + Lambda accept a 6 MB payload, and binary bodies arrive base64-encoded (x4/3): ~4.5 MB raw.
DEFAULT_MAX_UPLOAD_BYTES = 4_500_000
# Two results are one picture (dedupe) when their perceptual hashes differ in at most this many of 64 bits and
# their embeddings' cosine is at least this high; both chosen in docs/benchmarks.md (bench.dedupe).
DEFAULT_DEDUPE_MAX_DISTANCE = 8
DEFAULT_DEDUPE_SIMILARITY = 0.8
# How long browsers may cache a CORS preflight answer, from the app locally and from API Gateway in AWS.
CORS_MAX_AGE_S = 3600


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    artifacts_uri: str = Field(
        description="Where manifest.json, model.pt, index.ann and keys.json are: s3://bucket/prefix/ or a folder"
    )
    images_uri: str | None = Field(
        None, description="Where collection images are (s3://... or a folder); default: images/ under the artifacts URI"
    )
    images_base_url: str | None = Field(
        None, description="Public base URL for image links; when unset, S3 images get presigned GET URLs"
    )
    presign_expires_s: int = Field(900, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned image URLs")
    default_k: int = Field(12, ge=1, description="Results returned when the request gives no k")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for")
    max_feedback_images: int = Field(
        20,
        ge=1,
        le=200,
        description="Most liked plus disliked images (`like=`, `dislike=` keys) one search may carry; more is a 422",
    )
    max_upload_bytes: int = Field(DEFAULT_MAX_UPLOAD_BYTES, ge=1024, description="Largest image accepted (bytes)")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Largest width x height decoded (bomb guard)")
    max_ingest_bytes: int = Field(
        50_000_000,
        ge=1024,
        description="Largest collection image the ingest function embeds; larger ones are skipped with that reason",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS; empty: none"
    )
    cache_dir: Path = Field(Path("/tmp/deepfood"), description="Local cache for downloaded artifacts")
    trusted_model_sha256: Sha256 | None = Field(
        None,
        description="sha256 (64 lowercase hex) of the only model this deployment runs: a manifest naming another "
        "is refused before the model is downloaded (503 `not_ready` at a cold start; during a swap the live build "
        "keeps serving), and ingest skips it. Unset: any model the manifest names. See docs/deploy.md, Trust model",
    )
    model_signing_key: str | None = Field(
        None,
        min_length=1,
        description="KMS asymmetric key (its ARN) whose signature every model must carry "
        "(`models/<sha256>/signature.json`): a model without a valid one is refused before it is downloaded "
        "(503 `not_ready` at a cold start; during a swap the live build keeps serving), and ingest skips it. The "
        "functions only verify (kms:Verify); the publisher signs (`python -m ops.upload --signing-key`). Unset: "
        "no signature needed. See docs/deploy.md, Trust model",
    )
    num_threads: int | None = Field(None, ge=1, description="Torch intra-op threads; default: the CPUs we may use")
    search_k: int | None = Field(None, ge=1, description="Override the manifest's Annoy search_k")
    load_on_import: bool = Field(False, description="Load model and index at import (Lambda init) instead of first use")
    log_level: str = Field("INFO", description="Log level of the JSON logger")
    tracing: bool = Field(
        False,
        description="Trace each invocation with AWS X-Ray through Powertools' Tracer (S3 calls as subsegments); "
        "needs Lambda active tracing, which CDK turns on with it (`-c tracing=true`). Costs extra: docs/deploy.md",
    )
    manifest_check_s: float = Field(
        60,
        ge=0,
        description="Seconds between a warm search container's checks for a new build (one conditional GET); "
        "0: never. The local server uses 2",
    )
    reindex_lease_s: int = Field(
        900,
        ge=30,
        description="How long a reindex holds its lease (`locks/reindex.json`); at least the reindex function's "
        "timeout, which CDK sets it to",
    )
    url_connect_timeout_s: float = Field(
        3, gt=0, le=30, description="Seconds to connect (TCP and TLS) when `POST /search` fetches an image by URL"
    )
    url_read_timeout_s: float = Field(5, gt=0, le=30, description="Seconds a URL fetch waits for each read")
    url_fetch_timeout_s: float = Field(
        10, gt=0, le=25, description="Seconds a whole URL fetch may take, redirects included (API Gateway stops at 29)"
    )
    url_max_redirects: int = Field(
        3, ge=0, le=10, description="Redirects a URL fetch follows, each hop's address checked again"
    )
    url_allow_http: bool = Field(False, description="Fetch plain http:// image URLs too (default: https only)")
    url_allow_private: bool = Field(
        False,
        description="Fetch from loopback and private addresses too, on any port (the tests' local servers); cloud "
        "metadata and link-local addresses stay refused. Never in a deployment",
    )
    url_allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated ports a URL fetch may connect to besides 443 (and 80 with `url_allow_http`); "
        "links naming any other port are refused",
    )
    dedupe_max_distance: int = Field(
        DEFAULT_DEDUPE_MAX_DISTANCE,
        ge=0,
        le=64,
        description="Bits (of 64) in which a result's perceptual hash may differ from a higher-ranked one's for it to "
        "be the same picture and be collapsed (`dedupe=false` turns collapsing off per request; a build without "
        "hashes collapses nothing); chosen in docs/benchmarks.md",
    )
    vector_store: VectorStoreKind = Field(
        ANNOY,
        description="Where the vectors are searched: `annoy` (an index build loaded into each search container; "
        "the default and the local mode) or `s3vectors` (Amazon S3 Vectors, written by ingest; chosen with "
        "`cdk deploy -c vectorStore=s3vectors`). See docs/scaling.md",
    )
    vector_bucket: str | None = Field(
        None, description="The S3 Vectors bucket (its name) holding one index per model; required with `s3vectors`"
    )
    vector_retire_after_s: int = Field(
        DEFAULT_RETIRE_AFTER_S,
        ge=0,
        description="How long an S3 Vectors index that stopped serving (a new model went live) is kept before "
        "the switch check deletes it",
    )
    dedupe_similarity: float = Field(
        DEFAULT_DEDUPE_SIMILARITY,
        ge=-1,
        le=1,
        description="Cosine a result must also have with that higher-ranked one to be collapsed: a guard against "
        "hash collisions, never the test of sameness on its own; chosen in docs/benchmarks.md",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("url_allowed_ports", mode="before")
    @classmethod
    def _split_ports(cls, value):
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("url_allowed_ports")
    @classmethod
    def _ports_in_range(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports must be between 1 and 65535, not {bad}")
        return value

    @model_validator(mode="after")
    def _default_k_within_max(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self

    @model_validator(mode="after")
    def _vector_bucket_with_s3vectors(self) -> Settings:
        if self.vector_store == S3VECTORS and not self.vector_bucket:
            raise ValueError(f"vector_store {S3VECTORS} needs {env_name('vector_bucket')}: the vector bucket's name")
        return self

    @property
    def resolved_images_uri(self) -> str:
        return self.images_uri or self.artifacts_uri.rstrip("/") + "/images/"

    @property
    def threads(self) -> int:
        if self.num_threads:
            return self.num_threads
        # the CPUs this process may run on (Lambda: vCPUs by memory size); sched_getaffinity is Linux-only
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    if field not in Settings.model_fields:
        raise KeyError(field)
    return ENV_PREFIX + field.upper()


class SettingsError(RuntimeError):
    """The environment does not configure the service; the message names the variables to set."""


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(e['loc'][0])) if e['loc'] and e['loc'][0] in Settings.model_fields else e['loc']}: "
            f"{e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"invalid service configuration: {problems}. See docs/configuration.md.") from None
