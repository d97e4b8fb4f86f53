"""Operating the stack: one CloudWatch dashboard, the alarms, and where they notify.

The service's own metrics come from ``lambda_fn.contract.metrics`` (embedded metric format, namespace ``DeepFood``);
their names and dimensions are imported from there, so the dashboard cannot ask for a metric the code does
not write. The rest are AWS's: API Gateway, Lambda and SQS publish them for free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk.nag import acknowledge
from lambda_fn.contract import metrics as m

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

FIVE_MINUTES = cdk.Duration.minutes(5)
ONE_DAY = cdk.Duration.days(1)
PERCENTILES = ("p50", "p95", "p99")


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


class Monitoring(Construct):
    """The ``<stack>-operations-<region>`` dashboard and the alarms; with ``alarm_email`` or ``alarm_topic_arn``,
    alarms notify.

    Tunables (``DeepFoodStack(monitoring_options={...})``):
    - ``alarm_email``: creates an SNS topic and subscribes this address (AWS emails a confirmation link first).
    - ``alarm_topic_arn``: an existing topic to notify instead (chat, paging); both may be given.
    - ``error_rate_percent`` (5) and ``min_requests`` (20): the API's 5xx share over 5 minutes that alarms,
      and the fewest requests in those minutes for a share to count (two failures of three are not a trend).
    - ``latency_p95_ms`` (1000): the p95 of a search's server-side work (decode, embed, search) that alarms
      when held for 15 minutes. Measured warm (README's benchmarks) it is ~65 ms for a 224-px image and ~90 ms
      for a 12-MP photo; cold starts are not in it (their load is ``ModelLoadTime``).
    - ``backlog_age`` (1 hour): how old the oldest waiting ingest message may get; a failed message waits out
      the queue's visibility timeout (6 x the ingest timeout, 30 minutes) before each retry.
    - ``stale_build_after``: how old the live build may get while embedding shards wait for the reindex;
      default the reindex timeout plus three schedule periods (30 minutes with the defaults).
    - ``pending_after`` (1 hour): how long photos may wait for a model (uploaded before any was published,
      or not yet embedded by the reindex since) before the PendingImages alarm goes off.
    - ``collection_capacity``: the most images the functions' memory and ``/tmp`` hold (``cdk.sizing``);
      the CollectionSize alarm goes off when the live build passes ``collection_alarm_fraction`` (0.9) of it,
      before a reindex runs out of memory. None: no such alarm.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: SearchApi,
        search: SearchFunction,
        ingest: Ingest,
        reindex: Reindex,
        alarm_email: str | None = None,
        alarm_topic_arn: str | None = None,
        error_rate_percent: float = 5,
        min_requests: int = 20,
        latency_p95_ms: float = 1000,
        backlog_age: cdk.Duration | None = None,
        stale_build_after: cdk.Duration | None = None,
        pending_after: cdk.Duration | None = None,
        collection_capacity: int | None = None,
        collection_alarm_fraction: float = 0.9,
    ) -> None:
        super().__init__(scope, construct_id)
        backlog_age = backlog_age or cdk.Duration.hours(1)
        every = reindex.every
        stale_build_after = stale_build_after or cdk.Duration.seconds(
            reindex.function.timeout.to_seconds() + 3 * every.to_seconds()
        )
        functions = {"search": search.function, "ingest": ingest.function, "reindex": reindex.function}
        rest_api = api.rest_api

        requests = rest_api.metric_count(statistic="Sum", period=FIVE_MINUTES, label="requests")
        server_errors = rest_api.metric_server_error(statistic="Sum", period=FIVE_MINUTES, label="5xx")
        error_rate = cloudwatch.MathExpression(
            expression=f"IF(requests >= {min_requests}, 100 * errors / requests, 0)",
            using_metrics={"requests": requests, "errors": server_errors},
            label="5xx % of requests",
            period=FIVE_MINUTES,
        )
        total_p95 = emf(m.TOTAL_LATENCY, m.SEARCH_SERVICE, "p95", label="total p95")
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
        backlog = ingest.queue.metric_approximate_age_of_oldest_message(
            statistic="Maximum", period=FIVE_MINUTES, label="oldest message (s)"
        )
        stale = emf(m.STALE_BUILD_AGE, m.REINDEX_SERVICE, "Maximum", label="age while shards wait (s)", period=every)
        pending_after = pending_after or cdk.Duration.hours(1)
        waiting = emf(m.PENDING_IMAGES, m.REINDEX_SERVICE, "Maximum", label="photos waiting for a model", period=every)
        # Each run reports them while they wait: the alarm needs the runs that span pending_after, out of one
        # period more, so a tick that lands late and leaves a period empty does not start the count again.
        waiting_runs = math.ceil(pending_after.to_seconds() / every.to_seconds()) + 1

        self.alarms: dict[str, cloudwatch.Alarm] = {
            "ApiErrorRate": cloudwatch.Alarm(
                self,
                "ApiErrorRate",
                alarm_description=f"DeepFood API: over {error_rate_percent}% of requests answered 5xx. "
                "See the search function's logs (level ERROR) and /health.",
                metric=error_rate,
                threshold=error_rate_percent,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "SearchLatency": cloudwatch.Alarm(
                self,
                "SearchLatency",
                alarm_description=f"DeepFood search: p95 of the server-side work over {latency_p95_ms:g} ms for "
                "15 minutes. See the dashboard's stage latencies for which stage grew.",
                metric=total_p95,
                threshold=latency_p95_ms,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3,
                datapoints_to_alarm=3,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "Throttles": cloudwatch.Alarm(
                self,
                "Throttles",
                alarm_description="DeepFood: Lambda throttled search, ingest or reindex invocations in two of the "
                "last three 5-minute periods; the dashboard's throttles widget names the function.",
                metric=throttles,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "DeadLetters": ingest.dead_letter_alarm,
            "IngestBacklog": cloudwatch.Alarm(
                self,
                "IngestBacklog",
                alarm_description=f"DeepFood ingest: a photo has waited over {backlog_age.to_human_string()} "
                "to be embedded. See the ingest function's logs and its errors and throttles.",
                metric=backlog,
                threshold=backlog_age.to_seconds(),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "ReindexErrors": cloudwatch.Alarm(
                self,
                "ReindexErrors",
                alarm_description="DeepFood reindex failed two runs in a row. See its logs; the live build "
                "keeps serving, new photos are not searchable until a run succeeds.",
                metric=reindex.function.metric_errors(statistic="Sum", period=every),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=2,
                datapoints_to_alarm=2,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "StaleBuild": cloudwatch.Alarm(
                self,
                "StaleBuild",
                alarm_description=f"DeepFood reindex: new embeddings have waited while the live build is over "
                f"{stale_build_after.to_human_string()} old. See the reindex runs by status (busy, failed, "
                "empty) and its logs.",
                metric=stale,
                threshold=stale_build_after.to_seconds(),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "PendingImages": cloudwatch.Alarm(
                self,
                "PendingImages",
                alarm_description=f"DeepFood: photos uploaded before any model was published have waited over "
                f"{pending_after.to_human_string()}. Publish a model (ops.upload): the next reindex embeds "
                "them. If one is published, the reindex function's logs say why they were not embedded.",
                metric=waiting,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=waiting_runs + 1,
                datapoints_to_alarm=waiting_runs,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        }
        if collection_capacity is not None:
            threshold = int(collection_capacity * collection_alarm_fraction)
            self.alarms["CollectionSize"] = cloudwatch.Alarm(
                self,
                "CollectionSize",
                alarm_description=f"DeepFood: the live build holds over {threshold:,} images, "
                f"{collection_alarm_fraction:.0%} of the {collection_capacity:,} the functions are sized for; "
                "past it the reindex runs out of memory. Redeploy with -c collectionImages=<expected images> "
                "(docs/scaling.md).",
                metric=emf(m.LIVE_VECTORS, m.REINDEX_SERVICE, "Maximum", label="images", period=ONE_DAY),
                threshold=threshold,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )
        self.topic = self._notify(alarm_email, alarm_topic_arn)

        # Dashboard names are global to the account: the region keeps one stack per region apart.
        stack = cdk.Stack.of(self)
        self.dashboard_name = f"{stack.stack_name}-operations-{stack.region}"
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=self.dashboard_name,
            default_interval=cdk.Duration.hours(24),
        )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24, height=3)
        )
        self.dashboard.add_widgets(
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
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="API requests and errors",
                left=[
                    requests,
                    rest_api.metric_client_error(statistic="Sum", period=FIVE_MINUTES, label="4xx"),
                    server_errors,
                ],
                right=[error_rate],
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
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Cold starts and model load time",
                left=[emf(m.COLD_START, m.SEARCH_SERVICE, "Sum", label="cold starts")],
                right=[
                    emf(m.MODEL_LOAD_TIME, m.SEARCH_SERVICE, stat, label=f"load {stat} (s)")
                    for stat in ("p50", "Maximum")
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
                left=[
                    fn.metric("ConcurrentExecutions", statistic="Maximum", label=name) for name, fn in functions.items()
                ],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Throttles",
                left=[fn.metric_throttles(statistic="Sum", label=name) for name, fn in functions.items()],
                width=6,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Ingest backlog",
                left=[
                    ingest.queue.metric_approximate_number_of_messages_visible(
                        statistic="Maximum", label="messages waiting"
                    ),
                    emf(m.PENDING_IMAGES, m.REINDEX_SERVICE, "Maximum", label="photos waiting for a model"),
                ],
                right=[backlog],
                right_annotations=[
                    cloudwatch.HorizontalAnnotation(value=backlog_age.to_seconds(), label="backlog alarm")
                ],
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
        self.dashboard.add_widgets(
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
                left=[emf(m.LIVE_BUILD_AGE, m.REINDEX_SERVICE, "Maximum", label="live build"), stale],
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
        self.dashboard.add_widgets(
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

    def _notify(self, email: str | None, topic_arn: str | None) -> sns.ITopic | None:
        if not email and not topic_arn:
            return None
        if topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", topic_arn)
        else:
            topic = sns.Topic(self, "AlarmTopic", display_name="DeepFood alarms", enforce_ssl=True)
            acknowledge(
                topic,
                {
                    "AwsSolutions-SNS2": "Alarm notifications carry alarm names and states, nothing secret. "
                    "CloudWatch cannot publish to a topic encrypted with the AWS-managed SNS key, and a "
                    "customer-managed key would cost $1 a month, several times this stack's idle cost.",
                },
            )
        if email:
            topic.add_subscription(subscriptions.EmailSubscription(email))
        action = actions.SnsAction(topic)
        for alarm in self.alarms.values():
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
        return topic
