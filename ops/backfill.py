"""Embed the whole collection again with the current model (the backfill), then reindex; follow it to the end.

    python -m ops.backfill --stack DeepFood [--region R] [--wait/--no-wait] [--poll-s 5]

Run it after announcing a new model (``models/current.json``). It finds the stack's backfill state machine
(the ``BackfillStateMachineArn`` output), starts an execution (or follows the one already running), and shows
the images processed and failed as the Distributed Map run counts them. At the end it prints the reindex
step's report: the new model goes live once its embeddings cover the collection.

When the execution fails (more images failed than the tolerated percentage, or the reindex step failed), it
prints the failed batches' errors, read from the map's results under ``<prefix>/backfill-results/``, and
exits with status 1. Running it again is cheap: batches already embedded are recognised and not embedded
again, so only what is missing is redone.

Exit status: 0 when the backfill succeeded (with ``--no-wait``: once it is started), 1 when it failed, 2 when
it could not be started (the stack is not deployed, has no such output, no credentials, no region).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from tqdm import tqdm

from training.cli import run

OUTPUT = "BackfillStateMachineArn"
EXIT_FAILED = 1
# Failed batches printed one by one; the rest are left to the results files, which hold every one.
SHOWN_FAILURES = 10
_RETRIES = Config(retries={"max_attempts": 5, "mode": "standard"})


class BackfillError(Exception):
    """An expected problem, told in one line (the stack is not there, an output is missing, ...)."""


class Aws:
    """The few AWS calls the command makes. Tests run it against a loopback moto server and script the
    Step Functions calls moto cannot play out (a map run's progress)."""

    def __init__(self, region: str | None = None) -> None:
        session = boto3.Session(region_name=region)
        self.region = session.region_name
        # creating a client without a region raises NoRegionError, which the command reports in one line
        self.cloudformation = session.client("cloudformation", config=_RETRIES)
        self.stepfunctions = session.client("stepfunctions", config=_RETRIES)
        self.s3 = session.client("s3", config=_RETRIES)

    def stack_output(self, stack: str, name: str) -> str:
        try:
            (found,) = self.cloudformation.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            if "does not exist" in str(exc.response.get("Error", {}).get("Message", "")):
                raise BackfillError(
                    f"stack {stack} is not deployed in {self.region}: deploy it (npx cdk deploy), or pass the "
                    "--stack and --region it was deployed with"
                ) from exc
            raise
        outputs = {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}
        if name not in outputs:
            raise BackfillError(
                f"stack {stack} has no output {name}: it was deployed before the backfill existed; "
                "deploy it again (npx cdk deploy)"
            )
        return outputs[name]

    def running_execution(self, state_machine_arn: str) -> str | None:
        running = self.stepfunctions.list_executions(
            stateMachineArn=state_machine_arn, statusFilter="RUNNING", maxResults=1
        )["executions"]
        return running[0]["executionArn"] if running else None

    def start_execution(self, state_machine_arn: str) -> str:
        return self.stepfunctions.start_execution(stateMachineArn=state_machine_arn, input="{}")["executionArn"]

    def describe_execution(self, execution_arn: str) -> dict:
        return self.stepfunctions.describe_execution(executionArn=execution_arn)

    def map_run(self, execution_arn: str) -> dict | None:
        """The execution's map run (``describe_map_run``), or None before it has started."""
        runs = self.stepfunctions.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
        return self.stepfunctions.describe_map_run(mapRunArn=runs[0]["mapRunArn"]) if runs else None

    def result_writer(self, state_machine_arn: str) -> tuple[str, str] | None:
        """(bucket, prefix) the state machine's map writes its results to, from its definition."""
        definition = json.loads(
            self.stepfunctions.describe_state_machine(stateMachineArn=state_machine_arn)["definition"]
        )
        for state in definition.get("States", {}).values():
            parameters = state.get("ResultWriter", {}).get("Parameters", {})
            if "Bucket" in parameters:
                return parameters["Bucket"], parameters.get("Prefix", "").strip("/")
        return None

    def read_json(self, bucket: str, key: str) -> Any | None:
        """The JSON object at ``s3://bucket/key``; None when there is none."""
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body)


@dataclass(frozen=True)
class Counts:
    """A map run's ``itemCounts``: images, not batches (a failed batch counts each of its images)."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0

    @classmethod
    def of(cls, map_run: dict | None) -> Counts:
        items = (map_run or {}).get("itemCounts", {})
        failed = sum(items.get(k, 0) for k in ("failed", "timedOut", "aborted"))
        return cls(items.get("total", 0), items.get("succeeded", 0), failed)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


def follow(
    aws: Aws,
    execution_arn: str,
    *,
    poll_s: float,
    bar: tqdm,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict, dict | None]:
    """Poll until the execution ends, moving ``bar`` with the map run's counters; returns the final
    ``describe_execution`` and ``describe_map_run``."""
    while True:
        execution = aws.describe_execution(execution_arn)
        map_run = aws.map_run(execution_arn)
        counts = Counts.of(map_run)
        if counts.total != bar.total:
            bar.total = counts.total
        bar.update(counts.done - bar.n)
        bar.set_postfix(failed=counts.failed, refresh=False)
        bar.refresh()
        if execution["status"] not in ("RUNNING", "PENDING_REDRIVE"):
            return execution, map_run
        sleep(poll_s)


def _cause_message(cause: str | None) -> str:
    """A Lambda error's ``errorMessage`` when ``cause`` is its JSON, else ``cause`` itself."""
    try:
        parsed = json.loads(cause or "")
    except ValueError:
        return cause or ""
    return str(parsed.get("errorMessage", cause)) if isinstance(parsed, dict) else str(cause)


def _batch(entry: dict) -> str:
    """The images of a failed child execution, as ``first key (+N more)``."""
    try:
        items = json.loads(entry.get("Input") or "{}").get("Items", [])
    except ValueError:
        items = []
    if not items:
        return entry.get("Name", "a batch")
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"{items[0].get('Key', '?')}{more}"


def failed_batches(aws: Aws, state_machine_arn: str, map_run: dict | None) -> tuple[str | None, Iterator[str]]:
    """Where the map run's results are (``s3://...``), and one line per failed batch: its images and error."""
    location = aws.result_writer(state_machine_arn)
    if map_run is None or location is None:
        return None, iter(())
    bucket, prefix = location
    # Step Functions writes them under <prefix>/<map run id>/, the id being the ARN's last part
    folder = f"{prefix}/{map_run['mapRunArn'].rsplit(':', 1)[-1]}/"
    manifest = aws.read_json(bucket, f"{folder}manifest.json")
    if manifest is None:
        return None, iter(())

    def lines() -> Iterator[str]:
        for result in manifest.get("ResultFiles", {}).get("FAILED", []):
            for entry in aws.read_json(bucket, result["Key"]) or []:
                yield f"{_batch(entry)}: {entry.get('Error', 'failed')}: {_cause_message(entry.get('Cause'))}"

    return f"s3://{bucket}/{folder}", lines()


def describe_reindex(report: dict | None) -> list[str]:
    """The last step's report in a few lines: the reindex's (``lambda_fn.collection.reindex.ReindexReport``), or on
    the S3 Vectors store the index switch's (``lambda_fn.collection.vectors.SwitchReport``)."""
    if not report:
        return ["reindex: no report (the execution's output has none)"]
    if "switched" in report:
        if report["switched"]:
            return [f"switch: the new model's vector index {report.get('live')} is live now"]
        if report.get("missing"):
            return [
                f"switch: the new model's vector index lacks {report['missing']} images of the live one; "
                "run the backfill again"
            ]
        return [f"switch: nothing to switch; {report.get('live') or 'no index'} stays live"]
    status = report.get("status")
    if status == "published":
        lines = [
            f"reindex: published build {report.get('build_id')} of model {str(report.get('model_sha256'))[:12]} "
            f"with {report.get('count')} images"
        ]
    elif status == "busy":
        lines = ["reindex: another reindex held the lease; the scheduled reindex publishes the new embeddings"]
    else:
        lines = [f"reindex: {status}"]
    pending = report.get("pending_model")
    if pending:
        lines.append(
            f"the new model {str(pending.get('model_sha256'))[:12]} is not live yet: {pending.get('missing')} images "
            f"of the live build have no embedding with it (e.g. {', '.join(pending.get('example', [])[:3])}); "
            "run the backfill again"
        )
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stack", default="DeepFood", help="CloudFormation stack name (default: DeepFood)")
    p.add_argument(
        "--region", default=None, help="AWS region of the stack (default: AWS_REGION or the AWS config's region)"
    )
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the execution to its end with a progress bar (default: --wait); --no-wait only starts it",
    )
    p.add_argument("--poll-s", type=float, default=5.0, help="seconds between progress checks (default: 5)")
    return p


def main(args: argparse.Namespace, connect: Callable[[str | None], Aws] = Aws) -> int:
    aws = connect(args.region)
    state_machine = aws.stack_output(args.stack, OUTPUT)
    execution_arn = aws.running_execution(state_machine)
    if execution_arn:
        print(f"following the backfill already running: {execution_arn}")
    else:
        execution_arn = aws.start_execution(state_machine)
        print(f"started {execution_arn}")
    if not args.wait:
        print(f"follow it with: aws stepfunctions describe-execution --execution-arn {execution_arn}")
        return 0

    with tqdm(total=0, desc="images", unit="img", dynamic_ncols=True) as bar:
        execution, map_run = follow(aws, execution_arn, poll_s=args.poll_s, bar=bar)
    counts = Counts.of(map_run)
    status = execution["status"]
    summary = f"backfill {status}: {counts.done} of {counts.total} images processed, {counts.failed} failed"
    if status == "SUCCEEDED":
        print(summary)
        output = json.loads(execution.get("output") or "{}")
        for line in describe_reindex(output.get("reindex")):
            print(line)
        details = output.get("ResultWriterDetails") or {}
        if details:
            print(
                f"per-batch reports (embedded, reused, skipped with reasons): s3://{details['Bucket']}/{details['Key']}"
            )
        if counts.failed:
            print("some batches failed (within the tolerated percentage):", file=sys.stderr)
            print_failures(aws, state_machine, map_run)
        return 0
    print(summary, file=sys.stderr)
    error = ": ".join(part for part in (execution.get("error"), execution.get("cause")) if part)
    print(f"error: {error or 'the execution ' + status.lower()}", file=sys.stderr)
    print_failures(aws, state_machine, map_run)
    print("run it again to redo only what is missing", file=sys.stderr)
    return EXIT_FAILED


def print_failures(aws: Aws, state_machine_arn: str, map_run: dict | None) -> None:
    """The first failed batches' errors, and where all of them are, on stderr."""
    location, failures = failed_batches(aws, state_machine_arn, map_run)
    shown = list(itertools.islice(failures, SHOWN_FAILURES + 1))
    for line in shown[:SHOWN_FAILURES]:
        print(f"  {line}", file=sys.stderr)
    if len(shown) > SHOWN_FAILURES:
        print("  ...", file=sys.stderr)
    if location:
        print(f"failed batches: {location}FAILED_*.json", file=sys.stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found: run `aws configure` or `aws sso login`, or set AWS_PROFILE"
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region, or set AWS_REGION to the region the stack is deployed in"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}"
    return str(exc)


def cli(argv: list[str] | None = None, connect: Callable[[str | None], Aws] = Aws) -> int:
    return run(
        lambda args: main(args, connect),
        get_args_parser(),
        argv,
        (BackfillError, ClientError, BotoCoreError),
        _describe,
    )


if __name__ == "__main__":
    sys.exit(cli())
