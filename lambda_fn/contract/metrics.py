"""The service's CloudWatch metrics: every name, unit and dimension, and one function per event that records it.

Written as CloudWatch embedded metric format (EMF) lines on stdout by Powertools' metrics provider: Lambda
sends stdout to CloudWatch Logs, which turns each line into metric values, so recording costs no API call
and no network time on the request path. Each function has its own provider (``search``, ``ingest``,
``reindex``), whose ``service`` dimension names the function; a handler flushes its provider once per
invocation (Powertools' ``log_metrics``, or ``flushed`` where an invocation may record nothing), the local
server once per request.

Dimensions are ``service`` plus, on two metrics, a value from a closed set: ``ErrorCode`` (an
``ErrorCode``'s value) and ``Status`` (a reindex outcome). Keys, ids, labels and build ids never become
dimensions: each distinct value is a new metric, billed and kept for 15 months. ``cdk/monitoring.py``
builds the dashboard and alarms from these constants, so the two cannot drift.

``traced`` puts a handler under Powertools' X-Ray tracer when DEEPFOOD_TRACING is on: the other half of
what an operator sees, kept next to the metrics so the handlers wrap themselves in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit, single_metric

log = logging.getLogger(__name__)

NAMESPACE = "DeepFood"
SEARCH_SERVICE = "deepfood-search"
INGEST_SERVICE = "deepfood-ingest"
REINDEX_SERVICE = "deepfood-reindex"
# Every dimension name a metric may carry; each one's values come from a small, closed set.
SERVICE_DIMENSION = "service"
ERROR_CODE_DIMENSION = "ErrorCode"
STATUS_DIMENSION = "Status"
DIMENSIONS = frozenset({SERVICE_DIMENSION, ERROR_CODE_DIMENSION, STATUS_DIMENSION})

# Search (service deepfood-search). Stage latencies are the response's ``timings``; a stage that did not run
# (decode and embed of a search by image id) records nothing rather than a zero that would drag percentiles.
DECODE_LATENCY = "DecodeLatency"  # ms
EMBED_LATENCY = "EmbedLatency"  # ms
SEARCH_LATENCY = "SearchLatency"  # ms, the nearest-neighbour stage
TOTAL_LATENCY = "TotalLatency"  # ms, decode + embed + search + building the response
RESULT_COUNT = "ResultCount"  # results in the response
STAGE_LATENCIES = {"decode_ms": DECODE_LATENCY, "embed_ms": EMBED_LATENCY, "search_ms": SEARCH_LATENCY}
COLD_START = "ColdStart"  # a container loaded the model and index
MODEL_LOAD_TIME = "ModelLoadTime"  # s, download, verify, load and warm-up
CLIENT_ERRORS = "ClientErrors"  # 4xx answers, with ErrorCode
UNAVAILABLE = "Unavailable"  # 503 answers: the model or index could not be loaded
# Ingest (service deepfood-ingest), per batch.
IMAGES_EMBEDDED = "ImagesEmbedded"
IMAGES_SKIPPED = "ImagesSkipped"  # permanent: corrupt, unsupported, too large, gone; never retried
IMAGES_FAILED = "ImagesFailed"  # transient: delivered again by SQS or the backfill's retry
OLDEST_MESSAGE_AGE = "OldestMessageAge"  # s, since SQS received the batch's oldest message
INGEST_DURATION = "IngestDuration"  # s
CHANGES_PENDING = "ChangesPending"  # changes recorded to wait for a model (none published); only when some were
# Reindex (service deepfood-reindex), per run.
REINDEX_RUNS = "ReindexRuns"  # with Status: published, busy, empty or failed (see QUIET_STATUSES)
REINDEX_DURATION = "ReindexDuration"  # s
LIVE_VECTORS = "LiveVectors"  # images in the live build
INDEX_SIZE = "IndexSize"  # bytes of the live build's index.ann
LIVE_BUILD_AGE = "LiveBuildAge"  # s since the live build was made (manifest built_at)
# The live build's age when embedding shards wait to be merged, 0 otherwise: a quiet collection has an old
# build and nothing waiting, so only this one is alarmed on.
STALE_BUILD_AGE = "StaleBuildAge"
# Photos recorded before any model existed that still wait after the run (lambda_fn.collection.pending); only
# while some do.
PENDING_IMAGES = "PendingImages"
REINDEX_FAILED = "failed"  # the Status of a run that raised
# Run outcomes after which nothing waits to be merged: the shards are all in the live build, or none can be.
SETTLED_STATUSES = frozenset({"published", "unchanged", "no_model"})
# Runs that found nothing to do record no metric: CloudWatch bills a custom metric for every hour it is sent,
# and a run every 5 minutes would keep six of them alive (~$1.80 a month) on a stack that is otherwise free
# at rest. Lambda's own Invocations metric still shows the schedule running.
QUIET_STATUSES = frozenset({"unchanged", "no_model"})

search = EphemeralMetrics(namespace=NAMESPACE, service=SEARCH_SERVICE)
ingest = EphemeralMetrics(namespace=NAMESPACE, service=INGEST_SERVICE)
reindex = EphemeralMetrics(namespace=NAMESPACE, service=REINDEX_SERVICE)


def searched(timings: dict[str, float], results: int) -> None:
    """A search answered: its stage timings (the response's ``timings``, ms) and how many results."""
    for field, name in STAGE_LATENCIES.items():
        if timings.get(field):
            search.add_metric(name=name, unit=MetricUnit.Milliseconds, value=timings[field])
    search.add_metric(name=TOTAL_LATENCY, unit=MetricUnit.Milliseconds, value=timings["total_ms"])
    search.add_metric(name=RESULT_COUNT, unit=MetricUnit.Count, value=results)


def model_loaded(seconds: float) -> None:
    """The container's first load of the model and index, i.e. its cold start, took ``seconds``."""
    search.add_metric(name=COLD_START, unit=MetricUnit.Count, value=1)
    search.add_metric(name=MODEL_LOAD_TIME, unit=MetricUnit.Seconds, value=seconds)


def _count_apart(name: str, service: str, dimension: str, value: str) -> None:
    """A count of 1 with one extra dimension, in an EMF line of its own (its dimensions differ from the rest)."""
    with single_metric(
        name=name,
        unit=MetricUnit.Count,
        value=1,
        namespace=NAMESPACE,
        default_dimensions={SERVICE_DIMENSION: service, dimension: value},
    ):
        pass


def client_error(code: str) -> None:
    """A 4xx answer with error code ``code`` (an ``ErrorCode`` value: a closed set, so a fine dimension)."""
    _count_apart(CLIENT_ERRORS, SEARCH_SERVICE, ERROR_CODE_DIMENSION, code)


def unavailable() -> None:
    """A 503 answer: the model or index is not loaded (loading, or failed to load)."""
    search.add_metric(name=UNAVAILABLE, unit=MetricUnit.Count, value=1)


def flush(provider: EphemeralMetrics) -> None:
    """Print what ``provider`` recorded as one EMF line, if anything (a health check records nothing)."""
    if provider.metric_set:
        provider.flush_metrics()


def flushed(provider: EphemeralMetrics) -> Callable:
    """Decorator: flush ``provider`` after each invocation, like ``log_metrics`` but quiet when nothing was
    recorded (``log_metrics`` warns on every empty flush)."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(event, context):
            try:
                return handler(event, context)
            finally:
                flush(provider)

        return run

    return decorate


def ingested(*, embedded: int, skipped: int, failed: int, seconds: float, oldest_age_s: float | None) -> None:
    """An ingest batch: images embedded, skipped and failed; for SQS batches, the oldest message's age."""
    ingest.add_metric(name=IMAGES_EMBEDDED, unit=MetricUnit.Count, value=embedded)
    ingest.add_metric(name=IMAGES_SKIPPED, unit=MetricUnit.Count, value=skipped)
    ingest.add_metric(name=IMAGES_FAILED, unit=MetricUnit.Count, value=failed)
    ingest.add_metric(name=INGEST_DURATION, unit=MetricUnit.Seconds, value=seconds)
    if oldest_age_s is not None:
        ingest.add_metric(name=OLDEST_MESSAGE_AGE, unit=MetricUnit.Seconds, value=max(oldest_age_s, 0.0))


def reindexed(status: str, seconds: float) -> None:
    """A reindex run ended with ``status`` (``REINDEX_FAILED`` when it raised) after ``seconds``."""
    reindex.add_metric(name=REINDEX_DURATION, unit=MetricUnit.Seconds, value=seconds)
    _count_apart(REINDEX_RUNS, REINDEX_SERVICE, STATUS_DIMENSION, status)


def live_build(*, age_s: float, vectors: int, index_bytes: int | None, pending: bool) -> None:
    """The live build after a reindex run: its age, size, and whether embedding shards wait to be merged."""
    reindex.add_metric(name=LIVE_BUILD_AGE, unit=MetricUnit.Seconds, value=max(age_s, 0.0))
    reindex.add_metric(name=STALE_BUILD_AGE, unit=MetricUnit.Seconds, value=max(age_s, 0.0) if pending else 0.0)
    reindex.add_metric(name=LIVE_VECTORS, unit=MetricUnit.Count, value=vectors)
    if index_bytes is not None:
        reindex.add_metric(name=INDEX_SIZE, unit=MetricUnit.Bytes, value=index_bytes)


def traced(handler: Callable, *, service: str, enabled: bool) -> Callable:
    """``handler`` under Powertools' X-Ray ``Tracer`` when ``enabled`` (DEEPFOOD_TRACING), else unchanged.

    The tracer needs the X-Ray SDK (``aws-xray-sdk``); without it the function still runs, traced only by
    Lambda's own segments (active tracing), and says so once in the log. Responses are not attached to the
    trace: they carry image keys and URLs.
    """
    if not enabled:
        return handler
    try:
        from aws_lambda_powertools import Tracer

        tracer = Tracer(service=service)
    except ImportError as exc:
        log.warning("tracing asked for, but the X-Ray SDK is not installed: Lambda's segments only", exc_info=exc)
        return handler
    return tracer.capture_lambda_handler(handler, capture_response=False)
