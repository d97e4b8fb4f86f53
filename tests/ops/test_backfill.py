"""``python -m ops.backfill``: finds the stack's state machine, starts it, follows the map run, reports.

CloudFormation, Step Functions and S3 are the loopback moto server (it serves every service on one port): the
stack holds the state machine the Backfill construct defines. moto records executions but does not run them,
so the tests that follow one to its end script the two calls that report its progress (``describe_execution``
and the map run); every other call is real.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Template

from cdk.artifacts import Artifacts
from cdk.backfill import Backfill
from lambda_fn.contract.manifest import BACKFILL_RESULTS_PREFIX, DEFAULT_PREFIX
from ops.backfill import OUTPUT, SHOWN_FAILURES, Aws, cli
from tests.helpers import run_module

ACCOUNT, REGION = "123456789012", "us-east-1"
BUCKET_PLACEHOLDER = "placeholder-bucket-name"


def _rendered(value) -> str:
    """A synthesized ``DefinitionString`` as CloudFormation renders it in ``REGION`` of the ``aws`` partition."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        return delimiter.join(map(_rendered, parts))
    assert value == {"Ref": "AWS::Partition"}, value
    return "aws"


@pytest.fixture(scope="module")
def definition() -> str:
    """The backfill state machine's definition, for a bucket named ``BUCKET_PLACEHOLDER``."""
    stack = cdk.Stack(cdk.App(), "Backfill")
    artifacts = Artifacts(stack, "Artifacts", prefix=DEFAULT_PREFIX, existing_bucket_name=BUCKET_PLACEHOLDER)
    functions = [
        lambda_.Function.from_function_arn(stack, name, f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
        for name in ("ingest", "reindex")
    ]
    Backfill(stack, "Backfill", artifacts=artifacts, ingest_function=functions[0], reindex_function=functions[1])
    (machine,) = Template.from_stack(stack).find_resources("AWS::StepFunctions::StateMachine").values()
    return _rendered(machine["Properties"]["DefinitionString"])


@pytest.fixture
def aws_env(s3_endpoint, monkeypatch):
    """Every boto3 client of the command reaches the loopback server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def stack(aws_env, s3, bucket, definition) -> dict:
    """A deployed stack (a unique name per test) whose output names the backfill state machine."""
    import boto3

    name = f"DeepFood-{uuid.uuid4().hex[:8]}"
    template = {
        "Resources": {
            "StateMachine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "DefinitionString": definition.replace(BUCKET_PLACEHOLDER, bucket),
                    "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/backfill",
                    "StateMachineType": "STANDARD",
                },
            }
        },
        "Outputs": {OUTPUT: {"Value": {"Ref": "StateMachine"}}},
    }
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template))
    (deployed,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    arn = deployed["Outputs"][0]["OutputValue"]
    return {"name": name, "arn": arn, "bucket": bucket, "stepfunctions": boto3.client("stepfunctions")}


def counts(total: int, succeeded: int, failed: int = 0) -> dict:
    running = total - succeeded - failed
    return {
        "pending": 0,
        "running": running,
        "succeeded": succeeded,
        "failed": failed,
        "timedOut": 0,
        "aborted": 0,
        "total": total,
        "resultsWritten": succeeded + failed,
    }


class ScriptedAws(Aws):
    """The real calls, except the two moto cannot play out: each poll takes the next (execution status and
    fields, map run item counts or None) from ``timeline``."""

    def __init__(self, region, timeline: list[tuple[dict, dict | None]], map_run_id: str):
        super().__init__(region)
        self.timeline: Iterator = iter(timeline)
        self.map_run_arn = f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:DeepFood/Backfill:{map_run_id}"
        self.polls = 0
        self.current: tuple[dict, dict | None] | None = None

    def describe_execution(self, execution_arn: str) -> dict:
        self.current = next(self.timeline)
        self.polls += 1
        real = super().describe_execution(execution_arn)  # the execution is real; only its progress is scripted
        return {**real, **self.current[0]}

    def map_run(self, execution_arn: str) -> dict | None:
        items = self.current[1]
        return None if items is None else {"mapRunArn": self.map_run_arn, "itemCounts": items}


def run_cli(stack: dict, *args: str, connect=Aws) -> int:
    return cli(["--stack", stack["name"], "--poll-s", "0", *args], connect=connect)


def test_no_wait_starts_one_execution_and_a_second_run_follows_it(stack, capsys):
    assert run_cli(stack, "--no-wait") == 0
    (execution,) = stack["stepfunctions"].list_executions(stateMachineArn=stack["arn"])["executions"]
    out = capsys.readouterr().out
    assert f"started {execution['executionArn']}" in out
    assert run_cli(stack, "--no-wait") == 0  # one backfill at a time: the running one is followed, not doubled
    assert f"following the backfill already running: {execution['executionArn']}" in capsys.readouterr().out
    assert len(stack["stepfunctions"].list_executions(stateMachineArn=stack["arn"])["executions"]) == 1


def test_progress_follows_the_map_run_and_the_reindex_report_ends_it(stack, capsys):
    run_id = str(uuid.uuid4())
    reindex = {"status": "published", "build_id": "b1d2", "model_sha256": "ab" * 32, "count": 192}
    output = {
        "MapRunArn": f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:DeepFood/Backfill:{run_id}",
        "ResultWriterDetails": {
            "Bucket": stack["bucket"],
            "Key": f"{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}{run_id}/manifest.json",
        },
        "reindex": reindex,
    }
    timeline = [
        ({"status": "RUNNING"}, None),  # the map has not started yet
        ({"status": "RUNNING"}, counts(0, 0)),  # listing
        ({"status": "RUNNING"}, counts(192, 64)),
        ({"status": "RUNNING"}, counts(192, 128)),
        ({"status": "SUCCEEDED", "output": json.dumps(output)}, counts(192, 192)),
    ]
    scripted = {}

    def connect(region):
        scripted["aws"] = ScriptedAws(region, timeline, run_id)
        return scripted["aws"]

    assert run_cli(stack, connect=connect) == 0
    assert scripted["aws"].polls == len(timeline)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("started arn:aws:states:")
    assert lines[1:] == [
        "backfill SUCCEEDED: 192 of 192 images processed, 0 failed",
        f"reindex: published build b1d2 of model {'ab' * 6} with 192 images",
        "per-batch reports (embedded, reused, skipped with reasons): "
        f"s3://{stack['bucket']}/{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}{run_id}/manifest.json",
    ]
    bar = captured.err.replace("\r", "\n").splitlines()
    assert any("images" in line and "192/192" in line and "failed=0" in line for line in bar), captured.err
    assert any("64/192" in line for line in bar)


def failed_entry(stack: dict, first: int, reason: str) -> dict:
    """A failed child execution as the ResultWriter records it (FAILED_<n>.json)."""
    items = [
        {"Key": f"{DEFAULT_PREFIX}/images/dish/{first + i}.jpg", "Etag": '"e"', "Size": 1, "LastModified": 1}
        for i in range(64)
    ]
    return {
        "ExecutionArn": f"arn:aws:states:{REGION}:{ACCOUNT}:execution:DeepFood/Backfill:{uuid.uuid4()}",
        "Input": json.dumps({"Items": items, "BatchInput": {"execution": "backfill"}}),
        "InputDetails": {"Included": True},
        "Name": str(uuid.uuid4()),
        "Status": "FAILED",
        "Error": "BatchFailed",
        "Cause": json.dumps({"errorMessage": reason, "errorType": "BatchFailed", "stackTrace": ["..."]}),
        "StateMachineArn": stack["arn"],
    }


def test_a_failed_run_exits_non_zero_with_the_failed_batches_reasons(stack, s3, capsys):
    run_id = str(uuid.uuid4())
    folder = f"{DEFAULT_PREFIX}/{BACKFILL_RESULTS_PREFIX}{run_id}/"
    failed = [failed_entry(stack, 64 * n, f"{n + 1} images failed transiently: SlowDown") for n in range(12)]
    s3.put_object(Bucket=stack["bucket"], Key=f"{folder}FAILED_0.json", Body=json.dumps(failed))
    manifest = {
        "DestinationBucket": stack["bucket"],
        "MapRunArn": f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:DeepFood/Backfill:{run_id}",
        "ResultFiles": {"FAILED": [{"Key": f"{folder}FAILED_0.json", "Size": 1}], "PENDING": [], "SUCCEEDED": []},
    }
    s3.put_object(Bucket=stack["bucket"], Key=f"{folder}manifest.json", Body=json.dumps(manifest))
    error = {
        "status": "FAILED",
        "error": "States.ExceedToleratedFailureThreshold",
        "cause": "The specified tolerated failure threshold was exceeded",
    }
    timeline = [({"status": "RUNNING"}, counts(1000, 200, 64)), (error, counts(1000, 232, 768))]

    assert run_cli(stack, connect=lambda region: ScriptedAws(region, timeline, run_id)) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line and not line.startswith("images")]
    assert lines[0] == "backfill FAILED: 1000 of 1000 images processed, 768 failed"
    assert lines[1] == (
        "error: States.ExceedToleratedFailureThreshold: The specified tolerated failure threshold was exceeded"
    )
    assert (
        lines[2]
        == f"  {DEFAULT_PREFIX}/images/dish/0.jpg (+63 more): BatchFailed: 1 images failed transiently: SlowDown"
    )
    assert len([line for line in lines if "BatchFailed" in line]) == SHOWN_FAILURES < len(failed)
    assert f"failed batches: s3://{stack['bucket']}/{folder}FAILED_*.json" in lines
    assert lines[-1] == "run it again to redo only what is missing"


def test_a_failed_reindex_step_is_reported_from_the_execution(stack, capsys):
    failed = {"status": "FAILED", "error": "Sandbox.Timedout", "cause": "Task timed out after 900.00 seconds"}
    timeline = [(failed, counts(10, 10))]
    assert run_cli(stack, connect=lambda region: ScriptedAws(region, timeline, str(uuid.uuid4()))) == 1
    err = capsys.readouterr().err
    assert "backfill FAILED: 10 of 10 images processed, 0 failed" in err
    assert "error: Sandbox.Timedout: Task timed out after 900.00 seconds" in err


def test_a_missing_stack_or_output_is_one_clear_line(stack, capsys):
    assert cli(["--stack", "NotDeployed", "--region", REGION]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: stack NotDeployed is not deployed in {REGION}: deploy it (npx cdk deploy), "
        "or pass the --stack and --region it was deployed with\n"
    )

    import boto3

    bare = f"Bare-{uuid.uuid4().hex[:8]}"
    template = {"Resources": {"Queue": {"Type": "AWS::SQS::Queue"}}}
    boto3.client("cloudformation").create_stack(StackName=bare, TemplateBody=json.dumps(template))
    assert cli(["--stack", bare]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: stack {bare} has no output {OUTPUT}") and err.count("\n") == 1


def test_missing_credentials_are_one_clear_line(aws_env, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert cli(["--stack", "DeepFood"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no AWS credentials found") and err.count("\n") == 1


def test_no_region_is_one_clear_line_from_the_command_line(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = run_module("ops.backfill", "--stack", "DeepFood", env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr == (
        "error: no AWS region: pass --region, or set AWS_REGION to the region the stack is deployed in\n"
    )


@pytest.mark.parametrize(
    ("report", "said"),
    [
        ({"live": "model-ab", "switched": True, "missing": 0, "deleted": []}, "model-ab is live now"),
        ({"live": "model-cd", "switched": False, "missing": 7, "deleted": []}, "lacks 7 images"),
        ({"live": "model-cd", "switched": False, "missing": 0, "deleted": []}, "model-cd stays live"),
    ],
)
def test_the_s3_vectors_switch_step_is_described(report, said):
    from ops.backfill import describe_reindex

    lines = describe_reindex(report)
    assert len(lines) == 1 and lines[0].startswith("switch: ") and said in lines[0]
