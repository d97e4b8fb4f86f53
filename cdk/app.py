"""Entry point of ``npx cdk ...`` (see ``cdk.json``): builds the one stack and runs cdk-nag on it.

Context (``-c key=value``):
- ``artifactsBucket``: use an existing bucket by name instead of creating one;
- ``artifactsKmsKeyArn``: that bucket's customer-managed KMS key, when it encrypts with SSE-KMS;
- ``artifactsPrefix``: the key prefix the artifacts live under (default: ``lambda_fn.manifest.DEFAULT_PREFIX``);
- ``searchReservedConcurrency``: containers reserved for (and capping) search; ``none`` on an account whose
  concurrency quota is still 10 (default: ``cdk.search_function.DEFAULT_RESERVED_CONCURRENCY``);
- ``wafRateLimit``: requests per client IP per 5 minutes, enforced by AWS WAF on the API (default: off);
- ``trustedModelSha256``: the only model the search service will load (default: any published model);
- ``alarmEmail`` / ``alarmTopicArn``: where the alarms notify (an SNS topic the stack creates and subscribes
  the address to, or an existing topic); default: the alarms only show on the dashboard;
- ``tracing``: ``true`` turns on X-Ray tracing for the three functions (default: off, it costs extra);
- ``collectionImages``: how many images the collection will reach; sizes the search and reindex functions'
  memory and ``/tmp`` for it (``cdk.sizing``; default: the 3,008 MB / 2,048 MB defaults, ~270,000 images).
"""

from __future__ import annotations

import aws_cdk as cdk

from cdk.nag import add_nag_checks
from cdk.search_function import DEFAULT_RESERVED_CONCURRENCY
from cdk.stack import DeepFoodStack
from lambda_fn.manifest import DEFAULT_PREFIX

app = cdk.App()


def _context_int(name: str, default: int | None) -> int | None:
    value = app.node.try_get_context(name)
    if value is None or value == "":
        return default
    if str(value).lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"error: -c {name}={value!r} must be a whole number or 'none'") from None


function_options = {
    "reserved_concurrency": _context_int("searchReservedConcurrency", DEFAULT_RESERVED_CONCURRENCY),
    "trusted_model_sha256": app.node.try_get_context("trustedModelSha256") or None,
}
try:
    stack = DeepFoodStack(
        app,
        "DeepFood",
        description="DeepFood image similarity search: Docker-image Lambda behind API Gateway, site on CloudFront",
        artifacts_bucket_name=app.node.try_get_context("artifactsBucket") or None,
        artifacts_kms_key_arn=app.node.try_get_context("artifactsKmsKeyArn") or None,
        artifacts_prefix=app.node.try_get_context("artifactsPrefix") or DEFAULT_PREFIX,
        function_options=function_options,
        api_options={"waf_rate_limit": _context_int("wafRateLimit", None)},
        monitoring_options={
            "alarm_email": app.node.try_get_context("alarmEmail") or None,
            "alarm_topic_arn": app.node.try_get_context("alarmTopicArn") or None,
        },
        tracing=str(app.node.try_get_context("tracing") or "false").lower() == "true",
        collection_images=_context_int("collectionImages", None),
    )
except ValueError as exc:  # a setting the constructs refuse (sizes, limits): say which, no traceback
    raise SystemExit(f"error: {exc}") from None
add_nag_checks(app)
app.synth()
