"""Operating the stack: the alarms, where they notify, and the dashboard (``cdk.dashboard``) that shows them.

Each alarm is a row of ``_alarm_specs`` (``cdk.alarms``): what it watches, its threshold, and what to do.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from cdk.alarms import AlarmSpec, alarm
from cdk.dashboard import operations_dashboard
from cdk.metrics import ONE_DAY, Signals, emf
from cdk.nag import acknowledge
from lambda_fn.contract import metric_names as m

if TYPE_CHECKING:
    from cdk.api import SearchApi
    from cdk.ingest import Ingest
    from cdk.reindex import Reindex
    from cdk.search_function import SearchFunction


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
        vector_queries: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        backlog_age = backlog_age or cdk.Duration.hours(1)
        pending_after = pending_after or cdk.Duration.hours(1)
        every = reindex.every
        stale_build_after = stale_build_after or cdk.Duration.seconds(
            reindex.function.timeout.to_seconds() + 3 * every.to_seconds()
        )
        functions = {"search": search.function, "ingest": ingest.function, "reindex": reindex.function}
        signals = Signals.of(api=api, ingest=ingest, functions=functions, every=every, min_requests=min_requests)
        specs = _alarm_specs(
            signals,
            reindex=reindex,
            error_rate_percent=error_rate_percent,
            latency_p95_ms=latency_p95_ms,
            backlog_age=backlog_age,
            stale_build_after=stale_build_after,
            pending_after=pending_after,
            collection_capacity=collection_capacity,
            collection_alarm_fraction=collection_alarm_fraction,
        )
        if vector_queries:  # the S3 Vectors store: its queries, as the search service measures them
            specs.append(
                AlarmSpec(
                    "VectorQueryErrors",
                    "DeepFood search: S3 Vectors queries failed (after their retries) in two of the last three "
                    "5-minute periods. See the search function's logs and the S3 Vectors service health.",
                    emf(m.VECTOR_QUERY_ERRORS, m.SEARCH_SERVICE, "Sum", label="failed queries"),
                    0,
                    evaluation_periods=3,
                    datapoints_to_alarm=2,
                )
            )
        # The ingest's own dead-letter alarm joins the others after the throttles, as the dashboard lists them.
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for spec in specs:
            self.alarms[spec.id] = alarm(self, spec)
            if spec.id == "Throttles":
                self.alarms["DeadLetters"] = ingest.dead_letter_alarm
        self.topic = self._notify(alarm_email, alarm_topic_arn)

        # Dashboard names are global to the account: the region keeps one stack per region apart.
        stack = cdk.Stack.of(self)
        self.dashboard_name = f"{stack.stack_name}-operations-{stack.region}"
        self.dashboard = operations_dashboard(
            self,
            dashboard_name=self.dashboard_name,
            alarms=list(self.alarms.values()),
            signals=signals,
            api=api,
            search=search,
            ingest=ingest,
            reindex=reindex,
            error_rate_percent=error_rate_percent,
            latency_p95_ms=latency_p95_ms,
            backlog_age=backlog_age,
            stale_build_after=stale_build_after,
            collection_capacity=collection_capacity,
        )
        if vector_queries:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title="S3 Vectors queries: latency (ms) and failures",
                    left=[emf(m.VECTOR_QUERY_LATENCY, m.SEARCH_SERVICE, p, label=p) for p in ("p50", "p95", "p99")],
                    right=[emf(m.VECTOR_QUERY_ERRORS, m.SEARCH_SERVICE, "Sum", label="failed")],
                    width=24,
                )
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
        for each in self.alarms.values():
            each.add_alarm_action(action)
            each.add_ok_action(action)
        return topic


def _alarm_specs(
    signals: Signals,
    *,
    reindex: Reindex,
    error_rate_percent: float,
    latency_p95_ms: float,
    backlog_age: cdk.Duration,
    stale_build_after: cdk.Duration,
    pending_after: cdk.Duration,
    collection_capacity: int | None,
    collection_alarm_fraction: float,
) -> list[AlarmSpec]:
    """The stack's alarms, in the order the dashboard shows them."""
    every = reindex.every
    # Each run reports the photos while they wait: the alarm needs the runs that span pending_after, out of one
    # period more, so a tick that lands late and leaves a period empty does not start the count again.
    waiting_runs = math.ceil(pending_after.to_seconds() / every.to_seconds()) + 1
    specs = [
        AlarmSpec(
            "ApiErrorRate",
            f"DeepFood API: over {error_rate_percent}% of requests answered 5xx. "
            "See the search function's logs (level ERROR) and /health.",
            signals.error_rate,
            error_rate_percent,
            evaluation_periods=3,
            datapoints_to_alarm=2,
        ),
        AlarmSpec(
            "SearchLatency",
            f"DeepFood search: p95 of the server-side work over {latency_p95_ms:g} ms for "
            "15 minutes. See the dashboard's stage latencies for which stage grew.",
            emf(m.TOTAL_LATENCY, m.SEARCH_SERVICE, "p95", label="total p95"),
            latency_p95_ms,
            evaluation_periods=3,
            datapoints_to_alarm=3,
        ),
        AlarmSpec(
            "Throttles",
            "DeepFood: Lambda throttled search, ingest or reindex invocations in two of the "
            "last three 5-minute periods; the dashboard's throttles widget names the function.",
            signals.throttles,
            0,
            evaluation_periods=3,
            datapoints_to_alarm=2,
        ),
        AlarmSpec(
            "IngestBacklog",
            f"DeepFood ingest: a photo has waited over {backlog_age.to_human_string()} "
            "to be embedded. See the ingest function's logs and its errors and throttles.",
            signals.backlog,
            backlog_age.to_seconds(),
        ),
        AlarmSpec(
            "ReindexErrors",
            "DeepFood reindex failed two runs in a row. See its logs; the live build "
            "keeps serving, new photos are not searchable until a run succeeds.",
            reindex.function.metric_errors(statistic="Sum", period=every),
            0,
            evaluation_periods=2,
            datapoints_to_alarm=2,
        ),
        AlarmSpec(
            "StaleBuild",
            f"DeepFood reindex: new embeddings have waited while the live build is over "
            f"{stale_build_after.to_human_string()} old. See the reindex runs by status (busy, failed, "
            "empty) and its logs.",
            signals.stale,
            stale_build_after.to_seconds(),
        ),
        AlarmSpec(
            "PendingImages",
            f"DeepFood: photos uploaded before any model was published have waited over "
            f"{pending_after.to_human_string()}. Publish a model (ops.upload): the next reindex embeds "
            "them. If one is published, the reindex function's logs say why they were not embedded.",
            emf(m.PENDING_IMAGES, m.REINDEX_SERVICE, "Maximum", label="photos waiting for a model", period=every),
            0,
            evaluation_periods=waiting_runs + 1,
            datapoints_to_alarm=waiting_runs,
        ),
    ]
    if collection_capacity is not None:
        threshold = int(collection_capacity * collection_alarm_fraction)
        specs.append(
            AlarmSpec(
                "CollectionSize",
                f"DeepFood: the live build holds over {threshold:,} images, "
                f"{collection_alarm_fraction:.0%} of the {collection_capacity:,} the functions are sized for; "
                "past it the reindex runs out of memory. Redeploy with -c collectionImages=<expected images> "
                "(docs/scaling.md).",
                emf(m.LIVE_VECTORS, m.REINDEX_SERVICE, "Maximum", label="images", period=ONE_DAY),
                threshold,
            )
        )
    return specs
