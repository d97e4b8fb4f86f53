"""Backfill: embed every collection image again (after a new model is announced), then reindex.

A Standard state machine whose first state is a Distributed Map over an S3 listing of ``<prefix>/images/``;
each batch of the listing goes to the ingest function, and the reindex function runs once the map is done.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk.artifacts import Artifacts
from cdk.nag import acknowledge, flat_ref
from lambda_fn.contract.manifest import BACKFILL_RESULTS_PREFIX

# The Lambda errors AWS advises Step Functions to retry, and the ingest handler's "some images failed
# transiently" (lambda_fn.collection.handlers.ingest.BatchFailed: its shards of the images that did work are re-used).
RETRIED_ERRORS = [
    "Lambda.TooManyRequestsException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.ClientExecutionTimeoutException",
    "BatchFailed",
]
MAP_STATE = "Embed images"
BATCH_STATE = "Embed batch"
REINDEX_STATE = "Reindex"
SWITCH_STATE = "SwitchIndex"
# Names the map run and its child executions (``<state machine>/<label>:<id>``); RedriveExecution is scoped to it.
MAP_LABEL = "Backfill"
# Where the reindex step's report goes in the execution's output, beside the map's ResultWriterDetails.
REINDEX_RESULT_PATH = "$.reindex"
# Without it aws-cdk-lib renders the deprecated ``result_writer`` and silently drops ``result_writer_v2``.
RESULT_WRITER_V2_FLAG = "@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2"


class _ImagesReader(sfn.S3ObjectsItemReader):
    """The S3 listing of the images prefix; its grant is ListBucket inside that prefix only (aws-cdk-lib's
    own reader grants ListBucket on the whole bucket)."""

    def __init__(self, artifacts: Artifacts) -> None:
        super().__init__(bucket=artifacts.bucket, prefix=artifacts.images_prefix)
        self._artifacts = artifacts

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        return [
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self._artifacts.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self._artifacts.images_prefix}*"]}},
            )
        ]


class _ResultsWriter(sfn.ResultWriterV2):
    """The map's results under ``<prefix>/backfill-results/``; its grant names that prefix only (aws-cdk-lib's
    own writer grants the whole bucket). The actions are those AWS documents for a ResultWriter, and for a
    bucket encrypted with a customer-managed key (``Artifacts.kms_key_arn``) that key's use through S3."""

    def __init__(self, artifacts: Artifacts) -> None:
        super().__init__(bucket=artifacts.bucket, prefix=f"{artifacts.prefix}/{BACKFILL_RESULTS_PREFIX}".rstrip("/"))
        self.objects_arn = artifacts.key_arn(f"{BACKFILL_RESULTS_PREFIX}*")
        self.kms_key_arn = artifacts.kms_key_arn

    def provide_policy_statements(self) -> list[iam.PolicyStatement]:
        statements = [
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[self.objects_arn],
            )
        ]
        if self.kms_key_arn:
            # GenerateDataKey to write SSE-KMS objects; Decrypt for the parts of a multipart upload
            statements.append(
                iam.PolicyStatement(
                    actions=["kms:Decrypt", "kms:GenerateDataKey"],
                    resources=[self.kms_key_arn],
                    conditions={"StringEquals": {"kms:ViaService": f"s3.{cdk.Aws.REGION}.amazonaws.com"}},
                )
            )
        return statements


class Backfill(Construct):
    """A Standard state machine: Distributed Map (S3 listing of ``<prefix>/images/`` -> batches -> ingest
    function), then the reindex function; the map's per-batch results go to ``<prefix>/backfill-results/``.

    Run it after announcing a new model (``models/current.json``): ingest embeds each batch with every target
    model, a batch whose shards already exist is recognised ("reused") and not embedded again, and the
    reindex publishes a build for the new model once its embeddings cover the live collection. A run can be
    started again at any time; it embeds only what is missing. ``python -m ops.backfill`` starts it.

    Child executions are STANDARD, not EXPRESS. Per 10^6 images at 64 per batch (15,625 child executions of
    one Task state, about 3 state transitions each at $0.025 per 1,000) STANDARD costs about $1.20; EXPRESS
    about $0.35 ($1 per million requests plus 64 MB billed for ~20 s each). Both are small beside the ingest
    function itself (~$5 per 10^6 images at 0.1 s and 3 GB each). EXPRESS children, though, end at 5
    minutes, which one batch with retries can pass (the ingest timeout alone is 5 minutes), and run
    at-least-once; STANDARD children have no such limit, run exactly once, and keep a history per batch
    in the console.

    Tunables:
    - ``max_concurrency`` (5): batches in flight, i.e. ingest containers. A new account's Lambda concurrency
      quota is 10 and search shares it, so 5 leaves it room. Raise it after raising the quota (Service
      Quotas, Lambda "Concurrent executions"): 1,000 needs a quota of about 1,000 plus search's peak
      (or reserved concurrency for search), and Lambda adds at most 1,000 containers per 10 s per function;
      throttled invocations are retried with backoff.
    - ``items_per_batch`` (64) and ``max_batch_bytes`` (128 KiB; the payload limit is 256 KiB): images per
      ingest invocation; larger batches amortise a cold start, smaller ones lose less to a failed batch.
    - ``tolerated_failure_percentage`` (5): images (in failed batches) the map may lose before the run
      fails; the failed batches' errors are in the results either way.
    - ``retry_attempts`` (6), ``retry_interval`` (2 s) and ``retry_max_delay`` (60 s): the invoke's retries,
      exponential (rate 2) with full jitter, so throttled batches do not come back in step.
    - ``log_level`` (ERROR) and ``log_retention``: the state machine's execution log.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        artifacts: Artifacts,
        ingest_function: lambda_.IFunction,
        reindex_function: lambda_.IFunction,
        max_concurrency: int = 5,
        items_per_batch: int = 64,
        max_batch_bytes: int = 128 * 1024,
        tolerated_failure_percentage: float = 5,
        retry_attempts: int = 6,
        retry_interval: cdk.Duration | None = None,
        retry_max_delay: cdk.Duration | None = None,
        log_level: sfn.LogLevel = sfn.LogLevel.ERROR,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        switch_index: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        # set here, not only in cdk.json, so the construct writes its results in any app
        self.node.set_context(RESULT_WRITER_V2_FLAG, True)
        embed = tasks.LambdaInvoke(
            self,
            "EmbedBatch",
            state_name=BATCH_STATE,
            comment="Embeds one batch of the listing ({Items: [{Key, Etag, Size, LastModified}]}); "
            "raises BatchFailed when some images failed transiently",
            lambda_function=ingest_function,
            payload_response_only=True,
            retry_on_service_exceptions=False,
        )
        embed.add_retry(
            errors=RETRIED_ERRORS,
            interval=retry_interval or cdk.Duration.seconds(2),
            backoff_rate=2,
            max_attempts=retry_attempts,
            max_delay=retry_max_delay or cdk.Duration.seconds(60),
            jitter_strategy=sfn.JitterType.FULL,
        )
        embed_all = sfn.DistributedMap(
            self,
            "EmbedImages",
            state_name=MAP_STATE,
            comment=f"Every object under {artifacts.images_prefix}, in batches, through the ingest function",
            label=MAP_LABEL,
            item_reader=_ImagesReader(artifacts),
            item_batcher=sfn.ItemBatcher(
                max_items_per_batch=items_per_batch,
                max_input_bytes_per_batch=max_batch_bytes,
                batch_input={"execution": "backfill"},
            ),
            max_concurrency=max_concurrency,
            tolerated_failure_percentage=tolerated_failure_percentage,
            map_execution_type=sfn.StateMachineType.STANDARD,
            result_writer_v2=_ResultsWriter(artifacts),
        )
        embed_all.item_processor(embed)
        reindex = tasks.LambdaInvoke(
            self,
            "Reindex",
            state_name=REINDEX_STATE,
            comment="Merges the new shards and publishes a build (for the new model once it covers the collection)",
            lambda_function=reindex_function,
            payload_response_only=True,
            retry_on_service_exceptions=False,
            result_path=REINDEX_RESULT_PATH,
        )
        if switch_index:  # the S3 Vectors store: the batches wrote the index; make it live once it covers
            reindex = tasks.LambdaInvoke(
                self,
                "SwitchIndex",
                state_name=SWITCH_STATE,
                comment="Makes the new model's S3 Vectors index live once it covers the live one",
                lambda_function=ingest_function,
                payload=sfn.TaskInput.from_object({"Switch": {}}),
                payload_response_only=True,
                retry_on_service_exceptions=False,
                result_path=REINDEX_RESULT_PATH,
            )
        reindex.add_retry(
            errors=RETRIED_ERRORS[:-1],
            interval=cdk.Duration.seconds(2),
            backoff_rate=2,
            max_attempts=3,
            jitter_strategy=sfn.JitterType.FULL,
        )

        # /aws/vendedlogs/: CloudWatch Logs then needs no resource-policy entry per log group (that policy
        # has a size limit shared by the account).
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/vendedlogs/states/{cdk.Aws.STACK_NAME}-backfill",
            retention=log_retention,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            comment="DeepFood backfill: embed every collection image with the target models, then reindex",
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_chainable(embed_all.next(reindex)),
            logs=sfn.LogOptions(destination=self.log_group, level=log_level, include_execution_data=True),
            tracing_enabled=False,
        )
        self._acknowledge(artifacts, ingest_function, reindex_function)

    def _acknowledge(
        self, artifacts: Artifacts, ingest_function: lambda_.IFunction, reindex_function: lambda_.IFunction
    ) -> None:
        role = self.state_machine.role
        invoke_versions = (
            "Step Functions invokes the unqualified ingest and reindex functions; aws-cdk-lib's LambdaInvoke "
            "grant also names their versions and aliases (<function ARN>:*), of these two functions only."
        )
        acknowledge(
            self.state_machine,
            {
                "AwsSolutions-SF1": "The execution log is kept at ERROR (with the failing state's input): ALL "
                "would log every state of up to 15,625 child executions per million images, while the map run's "
                "counters and the ResultWriter files under backfill-results/ already record each batch.",
                "AwsSolutions-SF2": "No X-Ray: the two steps are Lambda invocations whose durations and errors "
                "are in the map run, the results files and the functions' logs; tracing would add cost and an "
                "xray:Put* grant on every resource for no new information.",
            },
        )
        acknowledge(
            role,
            {
                f"AwsSolutions-IAM5[Resource::{flat_ref(self, ingest_function.function_arn)}:*]": invoke_versions,
                f"AwsSolutions-IAM5[Resource::{flat_ref(self, reindex_function.function_arn)}:*]": invoke_versions,
                f"AwsSolutions-IAM5[Resource::{flat_ref(self, artifacts.key_arn(BACKFILL_RESULTS_PREFIX + '*'))}]": (
                    "The map writes its results (one folder per map run, named by Step Functions at run time) "
                    "under backfill-results/ only."
                ),
                "AwsSolutions-IAM5[Resource::*]": "CloudWatch Logs' log delivery actions (logs:CreateLogDelivery "
                "and the rest, which aws-cdk-lib grants for the execution log) support no resource-level "
                "permissions; AWS documents Resource * for them.",
            },
        )
        # aws-cdk-lib's own grants for the child executions (StartExecution on this state machine, Describe-,
        # Stop- and RedriveExecution on its executions), in a policy of their own: the ARNs name the state
        # machine, so they cannot sit in the role's default policy, which the state machine depends on.
        policy = self.state_machine.node.find_child("DistributedMapPolicy")
        document = cdk.Stack.of(self).resolve(policy.document)
        executions = {
            flat_ref(self, resource)
            for statement in document["Statement"]
            for resource in _as_list(statement["Resource"])
            if "*" in flat_ref(self, resource)
        }
        acknowledge(
            policy,
            {
                f"AwsSolutions-IAM5[Resource::{arn}]": "The Distributed Map describes, stops and redrives its own "
                "child executions, whose names Step Functions makes up at run time; the ARNs name this state "
                "machine's executions only."
                for arn in sorted(executions)
            },
        )


def _as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]
