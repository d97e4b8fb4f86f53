"""The service's metric names, dimensions and reindex statuses: plain values, for the code that writes the
metrics (``lambda_fn.contract.metrics``) and the infrastructure that alarms on them (``cdk``), which must not
import Powertools."""

from __future__ import annotations

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
# The S3 Vectors store only: each QueryVectors call's latency, and the calls that failed (after the retries).
VECTOR_QUERY_LATENCY = "VectorQueryLatency"  # ms
VECTOR_QUERY_ERRORS = "VectorQueryErrors"
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
