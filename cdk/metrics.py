"""The metrics the alarms and the dashboard read, as CloudWatch objects.

The service's own metrics are written by ``lambda_fn.contract.metrics`` (embedded metric format, namespace
``DeepFood``); their names and dimensions come from ``lambda_fn.contract.metric_names``, so neither can ask
for a metric the code does not write. The rest are AWS's: API Gateway, Lambda and SQS publish them for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch

from lambda_fn.contract import metric_names as m

if TYPE_CHECKING:
    from aws_cdk import aws_lambda as lambda_

    from cdk.api import SearchApi
    from cdk.ingest import Ingest

FIVE_MINUTES = cdk.Duration.minutes(5)
ONE_DAY = cdk.Duration.days(1)


def emf(name: str, service: str, statistic: str, *, label: str | None = None, period=FIVE_MINUTES, **dims):
    """One of the service's own metrics (``lambda_fn.contract.metrics``), with exactly the dimensions it is
    written with."""
    return cloudwatch.Metric(
        namespace=m.NAMESPACE,
        metric_name=name,
        dimensions_map={m.SERVICE_DIMENSION: service, **dims},
        statistic=statistic,
        label=label,
        period=period,
    )


def search_by(name: str, service: str, dimension: str, statistic: str, label: str) -> cloudwatch.MathExpression:
    """One line per value of ``dimension`` (a closed set: error codes, reindex statuses), as they occur."""
    schema = "{" + ",".join((m.NAMESPACE, dimension, m.SERVICE_DIMENSION)) + "}"
    query = f'{schema} MetricName="{name}" {m.SERVICE_DIMENSION}="{service}"'
    return cloudwatch.MathExpression(
        expression=f"SEARCH('{query}', '{statistic}', {int(FIVE_MINUTES.to_seconds())})",
        label=label,
        period=FIVE_MINUTES,
    )


@dataclass(frozen=True)
class Signals:
    """The metrics that both an alarm and a dashboard widget show, built once so the two show the same line."""

    requests: cloudwatch.IMetric
    server_errors: cloudwatch.IMetric
    error_rate: cloudwatch.IMetric
    throttles: cloudwatch.IMetric
    backlog: cloudwatch.IMetric
    stale: cloudwatch.IMetric

    @classmethod
    def of(
        cls,
        *,
        api: SearchApi,
        ingest: Ingest,
        functions: dict[str, lambda_.IFunction],
        every: cdk.Duration,
        min_requests: int,
    ) -> Signals:
        """``every`` is the reindex schedule's period, the one its metrics are written at."""
        rest_api = api.rest_api
        requests = rest_api.metric_count(statistic="Sum", period=FIVE_MINUTES, label="requests")
        server_errors = rest_api.metric_server_error(statistic="Sum", period=FIVE_MINUTES, label="5xx")
        # Throttles has datapoints only where something was throttled, and metric math can drop a period in
        # which an operand has none: FILL makes those 0, so one function's throttles are never left out of the sum.
        throttles = cloudwatch.MathExpression(
            expression=" + ".join(f"FILL({name}, 0)" for name in functions),
            using_metrics={
                name: fn.metric_throttles(statistic="Sum", period=FIVE_MINUTES) for name, fn in functions.items()
            },
            label="throttled invocations",
            period=FIVE_MINUTES,
        )
        return cls(
            requests=requests,
            server_errors=server_errors,
            error_rate=cloudwatch.MathExpression(
                expression=f"IF(requests >= {min_requests}, 100 * errors / requests, 0)",
                using_metrics={"requests": requests, "errors": server_errors},
                label="5xx % of requests",
                period=FIVE_MINUTES,
            ),
            throttles=throttles,
            backlog=ingest.queue.metric_approximate_age_of_oldest_message(
                statistic="Maximum", period=FIVE_MINUTES, label="oldest message (s)"
            ),
            stale=emf(m.STALE_BUILD_AGE, m.REINDEX_SERVICE, "Maximum", label="age while shards wait (s)", period=every),
        )
