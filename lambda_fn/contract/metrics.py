"""The service's CloudWatch metrics: every name, unit and dimension, and one function per event that records it.

Written as CloudWatch embedded metric format (EMF) lines on stdout by Powertools' metrics provider: Lambda
sends stdout to CloudWatch Logs, which turns each line into metric values, so recording costs no API call
and no network time on the request path. Each function has its own provider (``search``, ``ingest``,
``reindex``), whose ``service`` dimension names the function; a handler flushes its provider once per
invocation (Powertools' ``log_metrics``, or ``flushed`` where an invocation may record nothing), the local
server once per request.

Dimensions are ``service`` plus, on two metrics, a value from a closed set: ``ErrorCode`` (an
``ErrorCode``'s value) and ``Status`` (a reindex outcome). Keys, ids, labels and build ids never become
dimensions: each distinct value is a new metric, billed and kept for 15 months. ``cdk`` builds the
dashboard and alarms from the same constants (``metric_names``), so the two cannot drift.

``traced`` puts a handler under Powertools' X-Ray tracer when DEEPFOOD_TRACING is on: the other half of
what an operator sees, kept next to the metrics so the handlers wrap themselves in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit, single_metric

from lambda_fn.contract.metric_names import (  # noqa: F401 (re-exported: callers read names from here too)
    CHANGES_PENDING,
    CLIENT_ERRORS,
    COLD_START,
    DECODE_LATENCY,
    DIMENSIONS,
    EMBED_LATENCY,
    ERROR_CODE_DIMENSION,
    IMAGES_EMBEDDED,
    IMAGES_FAILED,
    IMAGES_SKIPPED,
    INDEX_SIZE,
    INGEST_DURATION,
    INGEST_SERVICE,
    LIVE_BUILD_AGE,
    LIVE_VECTORS,
    MODEL_LOAD_TIME,
    NAMESPACE,
    OLDEST_MESSAGE_AGE,
    PENDING_IMAGES,
    QUIET_STATUSES,
    REINDEX_DURATION,
    REINDEX_FAILED,
    REINDEX_RUNS,
    REINDEX_SERVICE,
    RESULT_COUNT,
    SEARCH_LATENCY,
    SEARCH_SERVICE,
    SERVICE_DIMENSION,
    SETTLED_STATUSES,
    STAGE_LATENCIES,
    STALE_BUILD_AGE,
    STATUS_DIMENSION,
    TOTAL_LATENCY,
    UNAVAILABLE,
    VECTOR_QUERY_ERRORS,
    VECTOR_QUERY_LATENCY,
)

log = logging.getLogger(__name__)

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


def vector_query(ms: float | None) -> None:
    """One S3 Vectors query: its latency, or None when it failed."""
    if ms is None:
        search.add_metric(name=VECTOR_QUERY_ERRORS, unit=MetricUnit.Count, value=1)
    else:
        search.add_metric(name=VECTOR_QUERY_LATENCY, unit=MetricUnit.Milliseconds, value=ms)


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
