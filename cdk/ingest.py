"""Ingest: photos put under ``<prefix>/images/`` reach an SQS queue, and the ingest function embeds them."""

from __future__ import annotations

import aws_cdk as cdk
import jsii
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.alarms import AlarmSpec, alarm
from cdk.artifacts import Artifacts
from cdk.function import image_function
from cdk.image import (
    INGEST_HANDLER,
    SETTINGS_DEFAULTS,
    embedding_environment,
    pinned_model,
    worker_environment,
)
from cdk.nag import acknowledge

# AWS's advice for an SQS event source: a visibility timeout of six times the function's timeout, so a
# batch that is retried after throttling is not handed out again while it is still being worked on.
VISIBILITY_TIMEOUT_FACTOR = 6
# The id prefix aws-cdk-lib gives its stack-wide handler of bucket notification custom resources.
_NOTIFICATIONS_HANDLER_ID = "BucketNotificationsHandler"


@jsii.implements(s3.IBucketNotificationDestination)
class _OwnBucketQueue:
    """``s3_notifications.SqsDestination``, whose grant to S3 names the bucket (``aws:SourceArn``) but not its
    owner: bucket names are global and can be re-created in another account, so ``aws:SourceAccount`` too."""

    def __init__(self, queue: sqs.Queue) -> None:
        self.queue = queue

    def bind(self, scope: Construct, bucket: s3.IBucketRef) -> s3.BucketNotificationDestinationConfig:
        self.queue.grant_send_messages(
            iam.ServicePrincipal(
                "s3.amazonaws.com",
                conditions={
                    "ArnLike": {"aws:SourceArn": bucket.bucket_ref.bucket_arn},
                    "StringEquals": {"aws:SourceAccount": cdk.Stack.of(scope).account},
                },
            )
        )
        return s3.BucketNotificationDestinationConfig(
            arn=self.queue.queue_arn, type=s3.BucketNotificationDestinationType.QUEUE, dependencies=[self.queue]
        )


class Ingest(Construct):
    """S3 ``ObjectCreated`` and ``ObjectRemoved`` events under ``<prefix>/images/`` -> queue -> ingest function.

    The function (``lambda_fn.collection.handlers.ingest.handler``, same image as search) writes embedding shards under
    ``embeddings/``; reindex merges them. It reports failed messages one by one
    (``batchItemFailures``), so only those are retried; a message that fails ``max_receive_count`` times
    moves to the dead-letter queue, and ``dead_letter_alarm`` goes off.

    The notification works for a created bucket and for an existing one: aws-cdk-lib's notifications
    custom resource adds these two configurations next to the bucket's own (S3 refuses a configuration
    whose prefix overlaps an existing one for the same event type).

    Tunables:
    - ``memory_mb`` (3008) and ``timeout`` (5 minutes): one batch of images through ResNet34 on the CPU.
      The queue's visibility timeout is six times ``timeout``.
    - ``ephemeral_storage_mb``: ``/tmp`` caches the model; 2048 MB, as for search.
    - ``batch_size`` (32) and ``max_batching_window`` (20 s): how many images one invocation embeds, and
      how long the queue collects them first; larger batches amortise the model load of a cold start.
    - ``max_concurrency`` (2, the least SQS allows): how many functions the queue may keep busy, so a
      burst of uploads cannot take the account's concurrency away from search.
    - ``max_receive_count`` (5): attempts before a message goes to the dead-letter queue (kept 14 days).
    - ``max_ingest_bytes`` and ``max_image_pixels`` (the runtime's defaults): larger images are skipped.
    - ``trusted_model_sha256``: the only model it embeds with (the search function's pin, ``cdk.image``).
    - ``tracing``: off by default; on, X-Ray active tracing and ``DEEPFOOD_TRACING`` (``cdk.function``).

    ``embedding_options`` holds the pin and the two limits, for the reindex: it embeds the photos that waited
    for a model with the ingest's code, so it must apply the same.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        artifacts: Artifacts,
        memory_mb: int = 3008,
        timeout: cdk.Duration | None = None,
        ephemeral_storage_mb: int = 2048,
        architecture: lambda_.Architecture = lambda_.Architecture.X86_64,
        batch_size: int = 32,
        max_batching_window: cdk.Duration | None = None,
        max_concurrency: int = 2,
        max_receive_count: int = 5,
        max_ingest_bytes: int = SETTINGS_DEFAULTS["max_ingest_bytes"],
        max_image_pixels: int = SETTINGS_DEFAULTS["max_image_pixels"],
        num_threads: int | None = SETTINGS_DEFAULTS["num_threads"],
        log_level: str = SETTINGS_DEFAULTS["log_level"],
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        tracing: bool = False,
        trusted_model_sha256: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        timeout = timeout or cdk.Duration.minutes(5)
        self.memory_mb = memory_mb
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=cdk.Duration.seconds(timeout.to_seconds() * VISIBILITY_TIMEOUT_FACTOR),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=max_receive_count),
        )
        for event in (s3.EventType.OBJECT_CREATED, s3.EventType.OBJECT_REMOVED):
            artifacts.bucket.add_event_notification(
                event, _OwnBucketQueue(self.queue), s3.NotificationKeyFilter(prefix=artifacts.images_prefix)
            )

        self.embedding_options = {
            "trusted_model_sha256": pinned_model(trusted_model_sha256) if trusted_model_sha256 else None,
            "max_ingest_bytes": max_ingest_bytes,
            "max_image_pixels": max_image_pixels,
        }
        self.function = image_function(
            self,
            handler=INGEST_HANDLER,
            description="DeepFood ingest: embeds images added to the collection into embedding shards",
            role_description="DeepFood ingest function: write its own logs, read images, write embedding shards",
            grant=artifacts.grant_ingest,
            environment=worker_environment(
                artifacts.uri,
                log_level=log_level,
                num_threads=num_threads,
                **embedding_environment(**self.embedding_options),
            ),
            memory_mb=memory_mb,
            timeout=timeout,
            ephemeral_storage_mb=ephemeral_storage_mb,
            architecture=architecture,
            log_retention=log_retention,
            tracing=tracing,
        )
        self.function.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=batch_size,
                max_batching_window=max_batching_window or cdk.Duration.seconds(20),
                max_concurrency=max_concurrency,
                report_batch_item_failures=True,
            )
        )

        self.dead_letter_alarm = alarm(
            self,
            AlarmSpec(
                id="DeadLettersAlarm",
                description="DeepFood ingest gave up on some images: see the dead-letter queue and the logs",
                metric=self.dead_letter_queue.metric_approximate_number_of_messages_visible(
                    period=cdk.Duration.minutes(5), statistic=cloudwatch.Stats.MAXIMUM
                ),
                threshold=0,
                datapoints_to_alarm=1,
            ),
        )
        self._acknowledge_notifications_handler()

    def _acknowledge_notifications_handler(self) -> None:
        # aws-cdk-lib writes the notifications handler (code, runtime, role) once per stack, beside the stack's
        # constructs rather than under this one, so the acknowledgment goes on it there. Its one grant,
        # s3:PutBucketNotification, aws-cdk-lib scopes to the artifacts bucket (no wildcard to acknowledge).
        stack = cdk.Stack.of(self)
        (handler,) = (c for c in stack.node.children if c.node.id.startswith(_NOTIFICATIONS_HANDLER_ID))
        acknowledge(
            handler,
            {
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaBasicExecutionRole]": "aws-cdk-lib's bucket notifications handler (runs only during "
                "deploy) writes its logs through the AWS-managed basic execution policy; aws-cdk-lib generates "
                "the role.",
            },
        )
