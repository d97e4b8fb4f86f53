"""The ``<stack>-operations-<region>`` CloudWatch dashboard: alarms, search stages, API, ingest, reindex, cost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk.metrics import FIVE_MINUTES, ONE_DAY, Signals, emf, search_by
from lambda_fn.contract import metric_names as m

if TYPE_CHECKING:
    from cdk.api import SearchApi
    from cdk.ingest import Ingest
    from cdk.reindex import Reindex
    from cdk.search_function import SearchFunction

# Lambda's on-demand price per GB-second of duration and per request, us-east-1, as AWS's pricing page
# (https://aws.amazon.com/lambda/pricing/) lists them for the first 6 billion GB-seconds a month; looked up
# on 2026-11-29 (x86 $0.0000166667, Arm $0.0000133334, requests $0.20 per million). Other regions differ by
# up to ~40%, and the free tier is left out: the dashboard's cost is an estimate, not the bill.
PRICE_PER_GB_SECOND = {
    lambda_.Architecture.X86_64.name: 0.0000166667,
    lambda_.Architecture.ARM_64.name: 0.0000133334,
}
PRICE_PER_REQUEST = 0.20 / 1_000_000
PRICES_AS_OF = "2026-11-29"

PERCENTILES = ("p50", "p95", "p99")


def _decimal(x: float) -> str:
    """``x`` without an exponent: CloudWatch metric math reads ``1.6e-05`` as names."""
    return f"{x:.12f}".rstrip("0")


def daily_cost(function: lambda_.Function, label: str) -> cloudwatch.MathExpression:
    """Estimated USD a day: billed duration (the Duration metric) x memory x the GB-second price, plus requests.

    Leaves out the init phase of cold starts (imports; the model and index load on the first request, so
    that is in Duration), provisioned concurrency's own price, and ``/tmp`` above 512 MB (a few percent).
    """
    memory_gb = function.node.default_child.memory_size / 1024
    price = PRICE_PER_GB_SECOND[function.architecture.name]
    return cloudwatch.MathExpression(
        expression=f"{label}_ms / 1000 * {memory_gb:.4f} * {_decimal(price)} + "
        f"{label}_requests * {_decimal(PRICE_PER_REQUEST)}",
        using_metrics={
            f"{label}_ms": function.metric_duration(statistic="Sum", period=ONE_DAY),
            f"{label}_requests": function.metric_invocations(statistic="Sum", period=ONE_DAY),
        },
        label=label,
        period=ONE_DAY,
    )


def operations_dashboard(
    scope: Construct,
    *,
    dashboard_name: str,
    alarms: list[cloudwatch.IAlarm],
    signals: Signals,
    api: SearchApi,
    search: SearchFunction,
    ingest: Ingest,
    reindex: Reindex,
    error_rate_percent: float,
    latency_p95_ms: float,
    backlog_age: cdk.Duration,
    stale_build_after: cdk.Duration,
    collection_capacity: int | None,
) -> cloudwatch.Dashboard:
    """``Dashboard`` in ``scope``; each alarm's threshold is drawn on the graph of the metric it watches."""
    functions = {"search": search.function, "ingest": ingest.function, "reindex": reindex.function}
    rest_api = api.rest_api
    dashboard = cloudwatch.Dashboard(
        scope, "Dashboard", dashboard_name=dashboard_name, default_interval=cdk.Duration.hours(24)
    )
    dashboard.add_widgets(cloudwatch.AlarmStatusWidget(title="Alarms", alarms=alarms, width=24, height=3))
    dashboard.add_widgets(
        *(
            cloudwatch.GraphWidget(
                title=f"{stage} latency (ms)",
                left=[emf(name, m.SEARCH_SERVICE, p, label=p) for p in PERCENTILES],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=latency_p95_ms, label="p95 alarm")]
                if name == m.TOTAL_LATENCY
                else None,
                width=6,
            )
            for stage, name in (
                ("Decode", m.DECODE_LATENCY),
                ("Embed", m.EMBED_LATENCY),
                ("Neighbour search", m.SEARCH_LATENCY),
                ("Total", m.TOTAL_LATENCY),
            )
        )
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="API requests and errors",
            left=[
                signals.requests,
                rest_api.metric_client_error(statistic="Sum", period=FIVE_MINUTES, label="4xx"),
                signals.server_errors,
            ],
            right=[signals.error_rate],
            right_annotations=[cloudwatch.HorizontalAnnotation(value=error_rate_percent, label="5xx alarm")],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="Search function",
            left=[
                search.function.metric_invocations(statistic="Sum", label="invocations"),
                search.function.metric_errors(statistic="Sum", label="errors"),
            ],
            right=[search.function.metric_duration(statistic="p95", label="duration p95 (ms)")],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="4xx by error code, and 503s",
            left=[
                search_by(m.CLIENT_ERRORS, m.SEARCH_SERVICE, m.ERROR_CODE_DIMENSION, "Sum", "4xx"),
                emf(m.UNAVAILABLE, m.SEARCH_SERVICE, "Sum", label="503 not ready"),
            ],
            width=8,
        ),
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Cold starts and model load time",
            left=[emf(m.COLD_START, m.SEARCH_SERVICE, "Sum", label="cold starts")],
            right=[
                emf(m.MODEL_LOAD_TIME, m.SEARCH_SERVICE, stat, label=f"load {stat} (s)") for stat in ("p50", "Maximum")
            ],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Results per search",
            left=[emf(m.RESULT_COUNT, m.SEARCH_SERVICE, stat, label=stat) for stat in ("Average", "Minimum")],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Concurrent executions",
            left=[fn.metric("ConcurrentExecutions", statistic="Maximum", label=name) for name, fn in functions.items()],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Throttles",
            left=[fn.metric_throttles(statistic="Sum", label=name) for name, fn in functions.items()],
            width=6,
        ),
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Ingest backlog",
            left=[
                ingest.queue.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", label="messages waiting"
                ),
                emf(m.PENDING_IMAGES, m.REINDEX_SERVICE, "Maximum", label="photos waiting for a model"),
            ],
            right=[signals.backlog],
            right_annotations=[cloudwatch.HorizontalAnnotation(value=backlog_age.to_seconds(), label="backlog alarm")],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="Dead-letter queue",
            left=[
                ingest.dead_letter_queue.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", label="messages given up on"
                )
            ],
            width=4,
        ),
        cloudwatch.GraphWidget(
            title="Images per ingest batch",
            left=[
                emf(name, m.INGEST_SERVICE, "Sum", label=label)
                for name, label in (
                    (m.IMAGES_EMBEDDED, "embedded"),
                    (m.IMAGES_SKIPPED, "skipped"),
                    (m.IMAGES_FAILED, "failed (retried)"),
                    (m.CHANGES_PENDING, "recorded to wait for a model"),
                )
            ],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Ingest wait and work (s)",
            left=[
                emf(m.OLDEST_MESSAGE_AGE, m.INGEST_SERVICE, "Maximum", label="oldest message at ingest"),
                emf(m.INGEST_DURATION, m.INGEST_SERVICE, "p95", label="batch duration p95"),
            ],
            width=6,
        ),
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title="Reindex runs by status",
            left=[search_by(m.REINDEX_RUNS, m.REINDEX_SERVICE, m.STATUS_DIMENSION, "Sum", "runs")],
            right=[reindex.function.metric_errors(statistic="Sum", label="errors")],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Reindex duration (s)",
            left=[emf(m.REINDEX_DURATION, m.REINDEX_SERVICE, "Maximum", label="longest run")],
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Live build",
            left=[emf(m.LIVE_VECTORS, m.REINDEX_SERVICE, "Maximum", label="images")],
            right=[emf(m.INDEX_SIZE, m.REINDEX_SERVICE, "Maximum", label="index.ann bytes")],
            left_annotations=(
                [cloudwatch.HorizontalAnnotation(value=collection_capacity, label="sized for")]
                if collection_capacity is not None
                else None
            ),
            width=6,
        ),
        cloudwatch.GraphWidget(
            title="Build age (s)",
            left=[emf(m.LIVE_BUILD_AGE, m.REINDEX_SERVICE, "Maximum", label="live build"), signals.stale],
            left_annotations=[
                cloudwatch.HorizontalAnnotation(value=stale_build_after.to_seconds(), label="stale alarm")
            ],
            width=6,
        ),
    )
    costs = {name: daily_cost(fn, name) for name, fn in functions.items()}
    total = cloudwatch.MathExpression(
        expression=" + ".join(costs), using_metrics=costs, label="all functions", period=ONE_DAY
    )
    dashboard.add_widgets(
        cloudwatch.GraphWidget(
            title=f"Estimated Lambda cost per day (USD, prices of {PRICES_AS_OF})",
            left=[*costs.values(), total],
            period=ONE_DAY,
            width=16,
        ),
        cloudwatch.SingleValueWidget(
            title="Lambda cost, last day (USD, estimate)",
            metrics=[total],
            period=ONE_DAY,
            width=8,
            height=6,
        ),
    )
    return dashboard
