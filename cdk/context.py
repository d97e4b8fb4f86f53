"""The app's options: CDK context (``-c key=value``, or ``cdk.json``'s ``context``) read into ``DeepFoodStack``'s
keyword arguments, so a wrong value stops ``cdk synth`` with a one-line error instead of failing the deploy.

- ``artifactsBucket``: use an existing bucket by name instead of creating one;
- ``artifactsKmsKeyArn``: that bucket's customer-managed KMS key, when it encrypts with SSE-KMS;
- ``artifactsPrefix``: the key prefix the artifacts live under (default:
  ``lambda_fn.contract.manifest.DEFAULT_PREFIX``);
- ``searchReservedConcurrency``: containers reserved for (and capping) search (default: none; an account may
  reserve only up to its unreserved concurrency minus 100, see ``cdk.search_function``);
- ``wafRateLimit``: requests per client IP per 5 minutes, enforced by AWS WAF on the API (default: off);
- ``trustedModelSha256``: the only model the search service will load (default: any published model); 64 hex
  characters in either case;
- ``modelSigningKey``: ``create`` (a new KMS signing key) or an existing key's ARN: the functions run only
  models that key signed, and may only verify with it (``cdk.model_signing``; default: off);
- ``snapStart``: ``true`` resumes search containers from a snapshot of an initialised one (default: off);
- ``alarmEmail`` / ``alarmTopicArn``: where the alarms notify (an SNS topic the stack creates and subscribes
  the address to, or an existing topic); default: the alarms only show on the dashboard;
- ``tracing``: ``true`` turns on X-Ray tracing for the three functions (default: off, it costs extra);
- ``collectionImages``: how many images the collection will reach; sizes the search and reindex functions'
  memory and ``/tmp`` for it (``cdk.sizing``; default: the 3,008 MB / 2,048 MB defaults, ~180,000 images);
- ``vectorStore``: ``annoy`` (default: an index build in each search container, up to one index's size) or
  ``s3vectors`` (Amazon S3 Vectors: no reindex, photos searchable once ingested; docs/scaling.md);
- ``vectorDimension``: the embedding width a pinned model's S3 Vectors index is created with (default 512);
- ``memoryQuotaMb``: the most memory the account lets a function have, once AWS has raised it (default: a new
  account's 3,008 MB); a function sized above it is refused at synth.
"""

from __future__ import annotations

from typing import Any

from constructs import Construct

from cdk.sizing import NEW_ACCOUNT_MEMORY_MB
from lambda_fn.contract.manifest import DEFAULT_PREFIX
from lambda_fn.contract.vectors import ANNOY


def _text(scope: Construct, name: str) -> str | None:
    value = scope.node.try_get_context(name)
    return None if value is None or value == "" else str(value)


def _int(scope: Construct, name: str, default: int | None) -> int | None:
    value = _text(scope, name)
    if value is None:
        return default
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"-c {name}={value!r} must be a whole number or 'none'") from None


def _bool(scope: Construct, name: str) -> bool:
    value = (_text(scope, name) or "false").lower()
    if value not in ("true", "false"):
        raise ValueError(f"-c {name}={value!r} must be true or false")
    return value == "true"


def stack_options(scope: Construct) -> dict[str, Any]:
    """``DeepFoodStack``'s keyword arguments from ``scope``'s context; ValueError names a value it cannot take."""
    memory_quota_mb = _int(scope, "memoryQuotaMb", NEW_ACCOUNT_MEMORY_MB)
    return {
        "artifacts_bucket_name": _text(scope, "artifactsBucket"),
        "artifacts_kms_key_arn": _text(scope, "artifactsKmsKeyArn"),
        "artifacts_prefix": _text(scope, "artifactsPrefix") or DEFAULT_PREFIX,
        "function_options": {
            "reserved_concurrency": _int(scope, "searchReservedConcurrency", None),
            "trusted_model_sha256": _text(scope, "trustedModelSha256"),
            "snap_start": _bool(scope, "snapStart"),
        },
        "api_options": {"waf_rate_limit": _int(scope, "wafRateLimit", None)},
        "monitoring_options": {
            "alarm_email": _text(scope, "alarmEmail"),
            "alarm_topic_arn": _text(scope, "alarmTopicArn"),
        },
        "model_signing_key": _text(scope, "modelSigningKey"),
        "tracing": _bool(scope, "tracing"),
        "collection_images": _int(scope, "collectionImages", None),
        "memory_quota_mb": NEW_ACCOUNT_MEMORY_MB if memory_quota_mb is None else memory_quota_mb,
        "vector_store": (_text(scope, "vectorStore") or ANNOY).lower(),
        "vector_dimension": _int(scope, "vectorDimension", 512) or 512,
    }
