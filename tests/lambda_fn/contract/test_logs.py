"""Each function's JSON log lines name the function that wrote them, as its metrics' ``service`` dimension does."""

from __future__ import annotations

import importlib

import pytest

from lambda_fn.contract import metrics
from lambda_fn.contract.logs import configure
from support.service import service_env
from tests.deployment import deploy, sqs_event, unique_photo


@pytest.fixture
def deployment(s3, bucket, artifacts_dir, sample_dir, s3_endpoint, tmp_path, monkeypatch):
    """The session's build and images in the loopback S3 server, and the event functions' environment."""
    d = deploy(s3, bucket, artifacts_dir, sample_dir, tmp_path / "cache")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    env = service_env(artifacts_uri=d.uri, images_uri=f"{d.uri}images/", num_threads=1, cache_dir=tmp_path / "fn")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from lambda_fn.contract.config import get_settings

    get_settings.cache_clear()
    yield d
    get_settings.cache_clear()
    configure("INFO")  # the search service's name again, for the tests that follow in this process


def handler_of(module: str):
    return importlib.reload(importlib.import_module(module)).handler


def services(lines: list[dict]) -> set[str]:
    return {line["service"] for line in lines if "_aws" not in line}  # EMF lines carry it as a dimension


def test_ingest_and_reindex_log_lines_name_their_own_service_not_search(deployment, lambda_context, log_lines):
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
