"""The index keeps itself up to date: S3 events -> queue -> ingest; a schedule -> reindex; each with its own grants."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template
from cdk_support import (
    TUNED_FUNCTION,
    TUNED_INGEST,
    TUNED_REINDEX,
    grants,
    image_function,
    own_logs,
    role_of,
    statements,
)

from cdk.artifacts import Artifacts
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER, SEARCH_HANDLER
from cdk.ingest import VISIBILITY_TIMEOUT_FACTOR
from cdk.reindex import Reindex
from cdk.stack import DEFAULT_PREFIX
from lambda_fn.contract.config import Settings, env_name
from lambda_fn.contract.manifest import (
    BUILDS_PREFIX,
    EMBEDDINGS_PREFIX,
    IMAGES_PREFIX,
    LOCKS_PREFIX,
    MANIFEST_FILE,
    MODELS_PREFIX,
    PENDING_PREFIX,
    PENDING_RECORDS_PREFIX,
    PENDING_STATUS_FILE,
)

# The image limits the ingest applies, and the reindex with it.
EMBEDDING_LIMITS = ("max_ingest_bytes", "max_image_pixels")


def queues(template: Template) -> tuple[str, str]:
    """Logical ids of the ingest queue and of its dead-letter queue."""
    (queue_id, queue), *others = template.find_resources(
        "AWS::SQS::Queue", {"Properties": {"RedrivePolicy": Match.any_value()}}
    ).items()
    assert others == []
    return queue_id, queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]


def function_id(template: Template, handler: str) -> str:
    (found,) = [
        logical_id
        for logical_id, function in template.find_resources("AWS::Lambda::Function").items()
        if function["Properties"].get("ImageConfig", {}).get("Command") == [handler]
    ]
    return found


def bucket(template: Template) -> str:
    """The created artifacts bucket's ARN, as ``cdk_support.text`` writes it."""
    (bucket_id,) = template.find_resources("AWS::S3::Bucket", {"Properties": {"VersioningConfiguration": {}}})
    return f"<{bucket_id}.Arn>"


def objects(template: Template, *keys: str) -> set[str]:
    """The ARNs of ``<prefix>/<key>`` in the created artifacts bucket."""
    return {f"{bucket(template)}/{DEFAULT_PREFIX}/{key}" for key in keys}


def test_three_functions_run_one_image_with_their_own_handlers(template):
    images = {
        str(image_function(template, handler)["Code"]["ImageUri"])
        for handler in (SEARCH_HANDLER, INGEST_HANDLER, REINDEX_HANDLER)
    }
    assert len(images) == 1
    assert len(template.find_resources("AWS::Lambda::Function", {"Properties": {"PackageType": "Image"}})) == 3


def test_queue_has_a_dead_letter_queue_and_six_times_the_timeout(template, tuned_template):
    for tmpl, receives, timeout in (
        (template, 5, 300),
        (tuned_template, TUNED_INGEST["max_receive_count"], TUNED_INGEST["timeout"].to_seconds()),
    ):
        _, dead_letters_id = queues(tmpl)
        assert image_function(tmpl, INGEST_HANDLER)["Timeout"] == timeout
        tmpl.has_resource_properties(
            "AWS::SQS::Queue",
            {
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": [dead_letters_id, "Arn"]},
                    "maxReceiveCount": receives,
                },
                "VisibilityTimeout": VISIBILITY_TIMEOUT_FACTOR * timeout,
                "SqsManagedSseEnabled": True,
            },
        )
        (dead_letters,) = tmpl.find_resources("AWS::SQS::Queue", {"Properties": {"RedrivePolicy": Match.absent()}})
        assert dead_letters == dead_letters_id
    template.has_resource_properties(
        "AWS::SQS::Queue",
        {"MessageRetentionPeriod": 14 * 24 * 3600, "SqsManagedSseEnabled": True, "RedrivePolicy": Match.absent()},
    )
    for queue in queues(template):
        template.has_resource_properties(
            "AWS::SQS::QueuePolicy",
            {
                "Queues": [{"Ref": queue}],
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                    ),
                    "Version": Match.any_value(),
                },
            },
        )


@pytest.mark.parametrize("which", ["template", "existing_bucket_template"])
def test_only_images_created_or_removed_reach_the_queue(which, request):
    template = request.getfixturevalue(which)
    queue_id, _ = queues(template)
    rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{DEFAULT_PREFIX}/{IMAGES_PREFIX}"}]}}
    (notifications,) = template.find_resources("Custom::S3BucketNotifications").values()
    assert notifications["Properties"]["NotificationConfiguration"] == {
        "QueueConfigurations": [
            {"Events": [event], "Filter": rule, "QueueArn": {"Fn::GetAtt": [queue_id, "Arn"]}}
            for event in ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")
        ]
    }
    # S3 may send to the queue only for this bucket, and only while this account owns it (names are global).
    template.has_resource_properties(
        "AWS::SQS::QueuePolicy",
        {
            "Queues": [{"Ref": queue_id}],
            "PolicyDocument": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Allow",
                                    "Principal": {"Service": "s3.amazonaws.com"},
                                    "Action": Match.array_with(["sqs:SendMessage"]),
                                    "Condition": {
                                        "ArnLike": {"aws:SourceArn": Match.any_value()},
                                        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
                                    },
                                }
                            )
                        ]
                    )
                }
            ),
        },
    )


def test_existing_bucket_keeps_its_own_notifications(existing_bucket_template):
    (notifications,) = existing_bucket_template.find_resources("Custom::S3BucketNotifications").values()
    assert notifications["Properties"]["BucketName"] == "my-existing-artifacts"
    assert notifications["Properties"]["Managed"] is False


def test_queue_feeds_ingest_in_batches_with_partial_failures(template, tuned_template):
    for tmpl, batch, window, concurrency in (
        (template, 32, 20, 2),
        (
            tuned_template,
            TUNED_INGEST["batch_size"],
            TUNED_INGEST["max_batching_window"].to_seconds(),
            TUNED_INGEST["max_concurrency"],
        ),
    ):
        queue_id, _ = queues(tmpl)
        tmpl.resource_count_is("AWS::Lambda::EventSourceMapping", 1)
        tmpl.has_resource_properties(
            "AWS::Lambda::EventSourceMapping",
            {
                "EventSourceArn": {"Fn::GetAtt": [queue_id, "Arn"]},
                "FunctionName": {"Ref": function_id(tmpl, INGEST_HANDLER)},
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "BatchSize": batch,
                "MaximumBatchingWindowInSeconds": window,
                "ScalingConfig": {"MaximumConcurrency": concurrency},
            },
        )


def test_ingest_and_reindex_sizes(template, tuned_template):
    ingest = image_function(template, INGEST_HANDLER)
    assert (ingest["MemorySize"], ingest["Timeout"], ingest["EphemeralStorage"]) == (3008, 300, {"Size": 2048})
    assert "ReservedConcurrentExecutions" not in ingest
    reindex = image_function(template, REINDEX_HANDLER)
    assert (reindex["MemorySize"], reindex["Timeout"], reindex["EphemeralStorage"]) == (3008, 900, {"Size": 10240})
    assert "ReservedConcurrentExecutions" not in reindex  # a new account cannot reserve any; the lease suffices
    tuned = image_function(tuned_template, REINDEX_HANDLER)
    assert tuned["MemorySize"] == TUNED_REINDEX["memory_mb"]
    assert tuned["Timeout"] == TUNED_REINDEX["timeout"].to_seconds()
    assert tuned["ReservedConcurrentExecutions"] == TUNED_REINDEX["reserved_concurrency"]
    assert image_function(tuned_template, INGEST_HANDLER)["MemorySize"] == TUNED_INGEST["memory_mb"]


def test_environment_uses_the_settings_names(template, tuned_template):
    for handler in (INGEST_HANDLER, REINDEX_HANDLER):
        variables = image_function(template, handler)["Environment"]["Variables"]
        assert (
            variables[env_name("artifacts_uri")]
            == image_function(template, SEARCH_HANDLER)["Environment"]["Variables"][env_name("artifacts_uri")]
        )
        assert variables[env_name("cache_dir")] == str(Settings.model_fields["cache_dir"].default)
        assert variables[env_name("log_level")] == Settings.model_fields["log_level"].default
        assert env_name("num_threads") not in variables  # unset: the runtime uses the CPUs Lambda gives it
    assert set(image_function(template, INGEST_HANDLER)["Environment"]["Variables"]) == {
        env_name(f) for f in ("artifacts_uri", "cache_dir", "log_level", *EMBEDDING_LIMITS)
    }
    for tmpl in (template, tuned_template):
        reindex = image_function(tmpl, REINDEX_HANDLER)
        # The lease outlives any run that holds it: a run is killed at its timeout.
        assert int(reindex["Environment"]["Variables"][env_name("reindex_lease_s")]) >= reindex["Timeout"]
    tuned = image_function(tuned_template, REINDEX_HANDLER)["Environment"]["Variables"]
    assert tuned[env_name("num_threads")] == str(TUNED_REINDEX["num_threads"])
    assert tuned[env_name("artifacts_uri")]["Fn::Join"][1][-1] == "/food/v2/"


def test_reindex_embeds_the_photos_that_waited_with_the_ingests_pin_and_limits(template, tuned_template):
    # It drains them with the ingest's code: any other model or limits would embed a photo that waited
    # differently from one that did not.
    embedding = ("trusted_model_sha256", *EMBEDDING_LIMITS)
    for tmpl in (template, tuned_template):
        ingest, reindex = (
            image_function(tmpl, h)["Environment"]["Variables"] for h in (INGEST_HANDLER, REINDEX_HANDLER)
        )
        assert {f: reindex.get(env_name(f)) for f in embedding} == {f: ingest.get(env_name(f)) for f in embedding}
    default = image_function(template, REINDEX_HANDLER)["Environment"]["Variables"]
    assert {f: default[env_name(f)] for f in EMBEDDING_LIMITS} == {
        f: str(Settings.model_fields[f].default) for f in EMBEDDING_LIMITS
    }
    assert env_name("trusted_model_sha256") not in default
    tuned = image_function(tuned_template, REINDEX_HANDLER)["Environment"]["Variables"]
    assert tuned[env_name("trusted_model_sha256")] == TUNED_FUNCTION["trusted_model_sha256"]
    assert {f: tuned[env_name(f)] for f in EMBEDDING_LIMITS} == {f: str(TUNED_INGEST[f]) for f in EMBEDDING_LIMITS}


def test_reindex_timeout_shorter_than_the_least_lease_is_refused():
    stack = cdk.Stack(cdk.App(), "S")
    artifacts = Artifacts(stack, "Artifacts", prefix=DEFAULT_PREFIX)
    with pytest.raises(ValueError, match="lease"):
        Reindex(stack, "Reindex", artifacts=artifacts, timeout=cdk.Duration.seconds(10))


def test_schedule_runs_reindex_without_retries(template, tuned_template):
    for tmpl, rate in ((template, "rate(5 minutes)"), (tuned_template, "rate(30 minutes)")):
        tmpl.resource_count_is("AWS::Events::Rule", 1)
        reindex_id = function_id(tmpl, REINDEX_HANDLER)
        tmpl.has_resource_properties(
            "AWS::Events::Rule",
            {
                "ScheduleExpression": rate,
                "State": "ENABLED",
                "Targets": [
                    Match.object_like(
                        {"Arn": {"Fn::GetAtt": [reindex_id, "Arn"]}, "RetryPolicy": {"MaximumRetryAttempts": 0}}
                    )
                ],
            },
        )
        tmpl.has_resource_properties(
            "AWS::Lambda::EventInvokeConfig", {"FunctionName": {"Ref": reindex_id}, "MaximumRetryAttempts": 0}
        )
        (rule_id,) = tmpl.find_resources("AWS::Events::Rule")
        tmpl.has_resource_properties(
            "AWS::Lambda::Permission",
            {
                "Action": "lambda:InvokeFunction",
                "Principal": "events.amazonaws.com",
                "FunctionName": {"Fn::GetAtt": [reindex_id, "Arn"]},
                "SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]},
            },
        )


def test_dead_letters_raise_an_alarm(stack, template):
    _, dead_letters_id = queues(template)
    # one alarm on the dead letters (the stack's other alarms are cdk/monitoring.py's, tested there)
    dead_letter_alarms = {"Properties": {"MetricName": "ApproximateNumberOfMessagesVisible", "Namespace": "AWS/SQS"}}
    assert len(template.find_resources("AWS::CloudWatch::Alarm", dead_letter_alarms)) == 1
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": "AWS/SQS",
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dead_letters_id, "QueueName"]}}],
            "ComparisonOperator": "GreaterThanThreshold",
            "Threshold": 0,
            "EvaluationPeriods": 1,
            "DatapointsToAlarm": 1,
            "Period": 300,
        },
    )
    assert stack.ingest.dead_letter_alarm.alarm_arn


def test_ingest_reads_images_and_writes_only_embeddings_and_pending_records(template):
    queue_id, _ = queues(template)
    ingest = image_function(template, INGEST_HANDLER)
    queue = {f"<{queue_id}.Arn>"}
    assert grants(template, INGEST_HANDLER) == {
        "s3:GetObject": objects(
            template,
            f"{IMAGES_PREFIX}*",
            f"{MODELS_PREFIX}*",
            f"{BUILDS_PREFIX}*",
            f"{EMBEDDINGS_PREFIX}*",  # a HEAD of a shard already there (a repeated event) needs s3:GetObject
            MANIFEST_FILE,
        ),
        # before any model is published, the changes are recorded for the reindex to embed
        "s3:PutObject": objects(template, f"{EMBEDDINGS_PREFIX}*", f"{PENDING_RECORDS_PREFIX}*"),
        "s3:ListBucket": {bucket(template)},
        # What the SQS event source needs to receive and delete the queue's messages, on that queue only.
        **dict.fromkeys(
            [
                "sqs:ReceiveMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueUrl",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
            ],
            queue,
        ),
        **own_logs(ingest),
    }


def test_reindex_publishes_builds_holds_its_lease_and_embeds_the_photos_that_waited(template):
    reindex = image_function(template, REINDEX_HANDLER)
    assert grants(template, REINDEX_HANDLER) == {
        "s3:GetObject": objects(
            template,
            f"{EMBEDDINGS_PREFIX}*",
            f"{BUILDS_PREFIX}*",
            f"{MODELS_PREFIX}*",
            f"{LOCKS_PREFIX}*",
            MANIFEST_FILE,
            # the photos that arrived before any model: their records, the count, and the images themselves
            f"{PENDING_PREFIX}*",
            f"{IMAGES_PREFIX}*",
        ),
        "s3:PutObject": objects(
            template,
            f"{BUILDS_PREFIX}*",
            f"{LOCKS_PREFIX}*",
            MANIFEST_FILE,
            PENDING_STATUS_FILE,
            f"{EMBEDDINGS_PREFIX}*",  # the shards of the photos it embeds, as ingest writes them
        ),
        "s3:DeleteObject": objects(template, f"{BUILDS_PREFIX}*", f"{LOCKS_PREFIX}*", f"{PENDING_RECORDS_PREFIX}*"),
        "s3:ListBucket": {bucket(template)},
        **own_logs(reindex),
    }


@pytest.mark.parametrize("handler", [SEARCH_HANDLER, INGEST_HANDLER, REINDEX_HANDLER])
def test_every_function_lists_only_inside_its_prefix(template, handler):
    (listing,) = [
        s for s in statements(template, role_of(image_function(template, handler))) if s["Action"] == "s3:ListBucket"
    ]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{DEFAULT_PREFIX}/*"]}}


def test_outputs(template):
    queue_id, dead_letters_id = queues(template)
    expected = {
        "IngestQueueUrl": {"Ref": queue_id},
        "DeadLetterQueueUrl": {"Ref": dead_letters_id},
        "ReindexFunctionName": {"Ref": function_id(template, REINDEX_HANDLER)},
    }
    for name, value in expected.items():
        (output,) = template.find_outputs(name).values()
        assert output["Value"] == value, name
