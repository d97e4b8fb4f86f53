"""The backfill state machine: Distributed Map over the images listing -> ingest in batches -> reindex; its grants."""

from __future__ import annotations

import ast
import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Template
from cdk_support import EXISTING_BUCKET_KEY, REPO_ROOT, as_list, build_stack, image_function, statements, text

from cdk.artifacts import Artifacts
from cdk.backfill import MAP_LABEL, RETRIED_ERRORS, Backfill
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER
from lambda_fn.contract.manifest import BACKFILL_RESULTS_PREFIX, DEFAULT_PREFIX, IMAGES_PREFIX

TUNED_BACKFILL = {
    "max_concurrency": 40,
    "items_per_batch": 16,
    "max_batch_bytes": 200_000,
    "tolerated_failure_percentage": 12.5,
    "retry_attempts": 4,
    "retry_interval": cdk.Duration.seconds(5),
    "retry_max_delay": cdk.Duration.seconds(30),
}
LOG_DELIVERY = {
    "logs:CreateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:DescribeLogGroups",
    "logs:DescribeResourcePolicies",
    "logs:GetLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:UpdateLogDelivery",
}
RESULT_WRITER = {"s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"}


@pytest.fixture(scope="module")
def tuned_backfill_template(tmp_path_factory) -> Template:
    outdir = tmp_path_factory.mktemp("cdk-backfill")
    return Template.from_stack(build_stack(outdir, artifacts_prefix="food/v2", backfill_options=TUNED_BACKFILL))


def state_machine(template: Template) -> tuple[str, dict]:
    (found,) = template.find_resources("AWS::StepFunctions::StateMachine").items()
    return found


def definition(template: Template) -> dict:
    """The state machine's definition, with ``{"Ref": X}`` as ``<X>`` and ``{"Fn::GetAtt": [X, A]}`` as ``<X.A>``."""
    _, machine = state_machine(template)
    return json.loads(text(machine["Properties"]["DefinitionString"]))


def function_arn(template: Template, handler: str) -> str:
    (logical_id,) = [
        logical_id
        for logical_id, function in template.find_resources("AWS::Lambda::Function").items()
        if function["Properties"] == image_function(template, handler)
    ]
    return f"<{logical_id}.Arn>"


def bucket_id(template: Template) -> str:
    """The created artifacts bucket's logical id."""
    (found,) = template.find_resources("AWS::S3::Bucket", {"Properties": {"VersioningConfiguration": {}}})
    return found


def arn_text(value) -> str:
    """``text``, plus the state machine name that aws-cdk-lib cuts out of its ARN, as ``<Id.Name>``."""
    if isinstance(value, dict) and "Fn::Select" in value:
        index, split = value["Fn::Select"]
        delimiter, source = split["Fn::Split"]
        assert (index, delimiter) == (6, ":")  # arn:partition:states:region:account:stateMachine:<name>
        return f"<{source['Ref']}.Name>"
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return delimiter.join(map(arn_text, parts))
    return text(value)


def machine_grants(template: Template) -> tuple[dict[str, set[str]], list[dict]]:
    """Action -> resources the state machine's role is allowed, and the statements themselves."""
    _, machine = state_machine(template)
    role = {"Ref": machine["Properties"]["RoleArn"]["Fn::GetAtt"][0]}
    found = statements(template, role)
    granted: dict[str, set[str]] = {}
    for statement in found:
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            granted.setdefault(action, set()).update(arn_text(r) for r in as_list(statement["Resource"]))
    return granted, found


def test_the_map_lists_the_images_prefix_in_batches(template, tuned_backfill_template):
    for tmpl, prefix, batch, batch_bytes, concurrency, tolerated in (
        (template, DEFAULT_PREFIX, 64, 128 * 1024, 5, 5),
        (
            tuned_backfill_template,
            "food/v2",
            TUNED_BACKFILL["items_per_batch"],
            TUNED_BACKFILL["max_batch_bytes"],
            TUNED_BACKFILL["max_concurrency"],
            TUNED_BACKFILL["tolerated_failure_percentage"],
        ),
    ):
        states = definition(tmpl)
        first = states["States"][states["StartAt"]]
        assert first["Type"] == "Map" and first["Label"] == MAP_LABEL
        assert first["ItemReader"] == {
            "Resource": "arn:<AWS::Partition>:states:::s3:listObjectsV2",
            "Parameters": {"Bucket": f"<{bucket_id(tmpl)}>", "Prefix": f"{prefix}/{IMAGES_PREFIX}"},
        }
        assert first["ItemBatcher"]["MaxItemsPerBatch"] == batch
        assert first["ItemBatcher"]["MaxInputBytesPerBatch"] == batch_bytes
        assert first["MaxConcurrency"] == concurrency
        assert first["ToleratedFailurePercentage"] == tolerated
        results = f"{prefix}/{BACKFILL_RESULTS_PREFIX}".rstrip("/")  # Step Functions adds "/<map run id>/"
        assert first["ResultWriter"] == {
            "Resource": "arn:<AWS::Partition>:states:::s3:putObject",
            "Parameters": {"Bucket": f"<{bucket_id(tmpl)}>", "Prefix": results},
        }


def test_each_batch_goes_to_the_ingest_function_with_retries(template, tuned_backfill_template):
    for tmpl, attempts, interval, max_delay in (
        (template, 6, 2, 60),
        (
            tuned_backfill_template,
            TUNED_BACKFILL["retry_attempts"],
            TUNED_BACKFILL["retry_interval"].to_seconds(),
            TUNED_BACKFILL["retry_max_delay"].to_seconds(),
        ),
    ):
        states = definition(tmpl)
        processor = states["States"][states["StartAt"]]["ItemProcessor"]
        # STANDARD children: no 5-minute cap on a batch and its retries, exactly-once (cdk/backfill.py says why).
        assert processor["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        (task,) = processor["States"].values()
        assert processor["States"][processor["StartAt"]] is task
        # payload_response_only: the batch ({"Items": [...], "BatchInput": ...}) is the function's event as it is
        assert task["Type"] == "Task" and task["Resource"] == function_arn(tmpl, INGEST_HANDLER)
        assert "Parameters" not in task and task["End"] is True
        (retry,) = task["Retry"]
        assert retry == {
            "ErrorEquals": RETRIED_ERRORS,
            "IntervalSeconds": interval,
            "MaxAttempts": attempts,
            "BackoffRate": 2,
            "MaxDelaySeconds": max_delay,
            "JitterStrategy": "FULL",
        }
    assert set(RETRIED_ERRORS) == {
        "Lambda.TooManyRequestsException",
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.ClientExecutionTimeoutException",
        "BatchFailed",
    }


def test_the_retried_error_is_the_one_the_handler_raises():
    """Step Functions matches a Lambda error by its exception class name: a renamed BatchFailed would stop the
    retries silently. (The handler module reads its settings at import, so its source is read instead.)"""
    tree = ast.parse((REPO_ROOT / "lambda_fn" / "collection" / "handlers" / "ingest.py").read_text())
    raised = {
        node.exc.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name)
    }
    assert raised == {"BatchFailed"}
    assert "BatchFailed" in RETRIED_ERRORS


def test_reindex_runs_after_the_map_and_its_report_is_the_output(template):
    states = definition(template)
    first = states["States"][states["StartAt"]]
    reindex = states["States"][first["Next"]]
    assert reindex["Type"] == "Task" and reindex["Resource"] == function_arn(template, REINDEX_HANDLER)
    assert reindex["ResultPath"] == "$.reindex" and reindex["End"] is True
    assert set(reindex["Retry"][0]["ErrorEquals"]) == set(RETRIED_ERRORS) - {"BatchFailed"}
    assert set(states["States"]) == {states["StartAt"], first["Next"]}


def test_state_machine_is_standard_and_logs_errors(template):
    _, machine = state_machine(template)
    props = machine["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": False}
    logging = props["LoggingConfiguration"]
    assert (logging["Level"], logging["IncludeExecutionData"]) == ("ERROR", True)
    (destination,) = logging["Destinations"]
    log_group_id = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    log_group = template.find_resources("AWS::Logs::LogGroup")[log_group_id]["Properties"]
    assert log_group["RetentionInDays"] == 30
    assert text(log_group["LogGroupName"]) == "/aws/vendedlogs/states/<AWS::StackName>-backfill"


def test_the_role_may_do_exactly_what_the_backfill_needs(template):
    granted, found = machine_grants(template)
    machine_id, _ = state_machine(template)
    ingest, reindex = function_arn(template, INGEST_HANDLER), function_arn(template, REINDEX_HANDLER)
    bucket = f"<{bucket_id(template)}.Arn>"
    results = f"{bucket}/{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}*"
    executions = f"arn:<AWS::Partition>:states:<AWS::Region>:<AWS::AccountId>:execution:<{machine_id}.Name>"
    assert granted == {
        "s3:ListBucket": {bucket},
        **{action: {results} for action in RESULT_WRITER},
        # the two functions, unqualified and their versions/aliases: nothing else may be invoked
        "lambda:InvokeFunction": {ingest, f"{ingest}:*", reindex, f"{reindex}:*"},
        **{action: {"*"} for action in LOG_DELIVERY},
        # the Distributed Map's child executions: this state machine's only
        "states:StartExecution": {f"<{machine_id}>"},
        "states:DescribeExecution": {f"{executions}:*"},
        "states:StopExecution": {f"{executions}:*"},
        "states:RedriveExecution": {f"{executions}/{MAP_LABEL}:*"},
    }
    (listing,) = [s for s in found if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{DEFAULT_PREFIX}/{IMAGES_PREFIX}*"]}}
    # the images themselves are read by the ingest function, never by the state machine
    assert not [a for a in granted if a.startswith("s3:") and a not in RESULT_WRITER | {"s3:ListBucket"}]


def test_existing_bucket_is_listed_and_written_by_name(existing_bucket_template):
    states = definition(existing_bucket_template)
    first = states["States"][states["StartAt"]]
    assert first["ItemReader"]["Parameters"]["Bucket"] == "my-existing-artifacts"
    assert first["ResultWriter"]["Parameters"]["Bucket"] == "my-existing-artifacts"
    granted, found = machine_grants(existing_bucket_template)
    bucket = "arn:<AWS::Partition>:s3:::my-existing-artifacts"
    assert granted["s3:ListBucket"] == {bucket}
    assert granted["s3:PutObject"] == {f"{bucket}/{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}*"}
    # its SSE-KMS key, through S3 only: without it the ResultWriter's PUTs are refused
    (kms,) = [s for s in found if any(a.startswith("kms:") for a in as_list(s["Action"]))]
    assert set(kms["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"} and kms["Resource"] == EXISTING_BUCKET_KEY
    assert text(kms["Condition"]["StringEquals"]["kms:ViaService"]) == "s3.<AWS::Region>.amazonaws.com"


def test_results_are_written_whatever_the_apps_feature_flags():
    """aws-cdk-lib drops ``result_writer_v2`` unless a feature flag is set; the construct sets it for itself."""
    stack = cdk.Stack(cdk.App(), "Bare")  # no cdk.json context
    artifacts = Artifacts(stack, "Artifacts", prefix=DEFAULT_PREFIX, existing_bucket_name="bare-bucket")
    function = lambda_.Function.from_function_arn(stack, "F", "arn:aws:lambda:us-east-1:123456789012:function:f")
    Backfill(stack, "Backfill", artifacts=artifacts, ingest_function=function, reindex_function=function)
    states = definition(Template.from_stack(stack))
    writer = states["States"][states["StartAt"]]["ResultWriter"]
    prefix = f"{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}".rstrip("/")
    assert writer["Parameters"] == {"Bucket": "bare-bucket", "Prefix": prefix}


def test_output_names_the_state_machine(template):
    machine_id, _ = state_machine(template)
    (output,) = template.find_outputs("BackfillStateMachineArn").values()
    assert output["Value"] == {"Ref": machine_id}
    assert "python -m ops.backfill --stack DeepFood" in output["Description"]
