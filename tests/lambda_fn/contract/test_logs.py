"""Each function's JSON log lines name the function that wrote them, as its metrics' ``service`` dimension does."""

from __future__ import annotations

from lambda_fn.contract import metrics
from tests.deployment import sqs_event, unique_photo


def services(lines: list[dict]) -> set[str]:
    return {line["service"] for line in lines if "_aws" not in line}  # EMF lines carry it as a dimension


def test_ingest_and_reindex_log_lines_name_their_own_service_not_search(
    deployment, handler_of, lambda_context, log_lines
):
    d = deployment
    ingest = handler_of("lambda_fn.collection.handlers.ingest")
    assert ingest(sqs_event(d.put_image("logs/a.jpg", unique_photo(401)), bucket=d.bucket), lambda_context) == {
        "batchItemFailures": []
    }
    ingested = log_lines()
    assert ingested and services(ingested) == {metrics.INGEST_SERVICE}
    # inject_lambda_context(clear_state=True) restores the default keys on every invocation: the service holds.
    assert all(line.get("function_request_id") == lambda_context.aws_request_id for line in ingested)

    reindex = handler_of("lambda_fn.collection.handlers.reindex")
    assert reindex({}, lambda_context)["status"] == "published"
    reindexed = log_lines()[len(ingested) :]
    assert reindexed and services(reindexed) == {metrics.REINDEX_SERVICE}
