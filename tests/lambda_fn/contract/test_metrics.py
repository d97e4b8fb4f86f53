"""CloudWatch metrics as EMF lines on stdout: a search through the real Lambda handler, an ingest batch and
reindex runs through theirs, each line checked against the EMF specification and the dimension allowlist."""

from __future__ import annotations

import base64
import importlib
import json
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from lambda_fn.collection.reindex import Lease
from lambda_fn.contract import metrics
from lambda_fn.contract.manifest import MANIFEST_FILE, Manifest, read_keys
from lambda_fn.search.schemas import ErrorCode
from support.service import multipart_image, service_env
from tests.deployment import sqs_event, unique_photo
from tests.helpers import SAMPLE_COUNT, load_event

BOUNDARY = "----deepfoodboundary"
UNITS = {unit.value for unit in MetricUnit}
# Every value a dimension may take: closed sets, so no key, id, label or build id can become a metric.
DIMENSION_VALUES = {
    metrics.SERVICE_DIMENSION: {metrics.SEARCH_SERVICE, metrics.INGEST_SERVICE, metrics.REINDEX_SERVICE},
    metrics.ERROR_CODE_DIMENSION: {code.value for code in ErrorCode},
    metrics.STATUS_DIMENSION: {"published", "unchanged", "busy", "no_model", "empty", metrics.REINDEX_FAILED},
}


def emf_lines(text: str) -> list[dict]:
    """The EMF documents among the lines written (log lines are JSON too, without ``_aws``)."""
    docs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            doc = json.loads(line)
            assert_emf(doc)
            docs.append(doc)
    return docs


def assert_emf(doc: dict) -> None:
    """``doc`` follows the embedded metric format specification, and its dimensions the allowlist."""
    aws = doc["_aws"]
    assert isinstance(aws["Timestamp"], int) and abs(aws["Timestamp"] - time.time() * 1000) < 600_000
    assert aws["CloudWatchMetrics"]
    for directive in aws["CloudWatchMetrics"]:
        assert directive["Namespace"] == metrics.NAMESPACE
        assert directive["Dimensions"]
        for dimension_set in directive["Dimensions"]:
            assert 1 <= len(dimension_set) <= 30
            for name in dimension_set:
                assert name in DIMENSION_VALUES, f"{name} is not an allowed dimension"
                assert doc[name] in DIMENSION_VALUES[name], f"{name}={doc[name]!r} is not a closed-set value"
        assert directive["Metrics"]
        for metric in directive["Metrics"]:
            assert 1 <= len(metric["Name"]) <= 255 and metric["Unit"] in UNITS
            values = doc[metric["Name"]] if isinstance(doc[metric["Name"]], list) else [doc[metric["Name"]]]
            assert values and all(isinstance(v, int | float) and math.isfinite(v) for v in values), metric
    assert set(metrics.DIMENSIONS) == set(DIMENSION_VALUES)


def units(doc: dict) -> dict[str, str]:
    return {m["Name"]: m["Unit"] for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def one(docs: list[dict], **dimensions: str) -> dict:
    (found,) = [d for d in docs if all(d.get(k) == v for k, v in dimensions.items())]
    return found


@pytest.fixture(autouse=True)
def _fresh_metrics():
    """Other tests' apps record too (loads, searches through TestClient) and nothing flushes them."""
    for provider in (metrics.search, metrics.ingest, metrics.reindex):
        provider.clear_metrics()


@pytest.fixture(scope="module")
def handler(artifacts_dir, sample_dir, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    env = service_env(
        artifacts_uri=artifacts_dir,
        images_uri=sample_dir,
        num_threads=1,
        cache_dir=tmp_path_factory.mktemp("lambda-tmp"),
    )
    for name, value in env.items():
        mp.setenv(name, value)
    from lambda_fn.contract.config import get_settings

    get_settings.cache_clear()
    module = importlib.reload(importlib.import_module("lambda_fn.search.main"))
    module.app.state.service.try_load()  # the cold start is its own test; these are warm requests
    yield module.handler
    mp.undo()
    get_settings.cache_clear()


def search_event(data: bytes) -> dict:
    event = load_event("apigw_rest_post_search")
    event["body"] = base64.b64encode(multipart_image(data, BOUNDARY)).decode()
    return event


def test_a_search_writes_its_stage_latencies_and_result_count_as_one_emf_line(
    handler, lambda_context, artifacts_dir, sample_dir, capsys
):
    capsys.readouterr()
    data = (sample_dir / read_keys(artifacts_dir / "keys.json")[21].key).read_bytes()
    response = handler(search_event(data), lambda_context)
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    (doc,) = emf_lines(capsys.readouterr().out)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[metrics.SERVICE_DIMENSION]]
    assert doc[metrics.SERVICE_DIMENSION] == metrics.SEARCH_SERVICE
    assert units(doc) == {
        metrics.DECODE_LATENCY: "Milliseconds",
        metrics.EMBED_LATENCY: "Milliseconds",
        metrics.SEARCH_LATENCY: "Milliseconds",
        metrics.TOTAL_LATENCY: "Milliseconds",
        metrics.RESULT_COUNT: "Count",
    }
    timings = body["timings"]
    assert [doc[metrics.DECODE_LATENCY], doc[metrics.EMBED_LATENCY], doc[metrics.SEARCH_LATENCY]] == [
        [timings["decode_ms"]],
        [timings["embed_ms"]],
        [timings["search_ms"]],
    ]
    assert doc[metrics.TOTAL_LATENCY] == [timings["total_ms"]]
    assert doc[metrics.RESULT_COUNT] == [len(body["results"])] and body["results"]


def test_a_search_by_image_id_records_no_decode_or_embed_stage(handler, lambda_context, capsys):
    capsys.readouterr()
    response = handler(load_event("apigw_rest_get_similar"), lambda_context)
    assert response["statusCode"] == 200
    (doc,) = emf_lines(capsys.readouterr().out)
    assert set(units(doc)) == {metrics.SEARCH_LATENCY, metrics.TOTAL_LATENCY, metrics.RESULT_COUNT}
    assert doc[metrics.RESULT_COUNT] == [len(json.loads(response["body"])["results"])]


def test_a_4xx_is_counted_under_its_error_code(handler, lambda_context, capsys):
    capsys.readouterr()
    response = handler(search_event(b"not an image"), lambda_context)
    assert response["statusCode"] == 400
    (doc,) = emf_lines(capsys.readouterr().out)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        [metrics.SERVICE_DIMENSION, metrics.ERROR_CODE_DIMENSION]
    ]
    assert (doc[metrics.ERROR_CODE_DIMENSION], doc[metrics.CLIENT_ERRORS]) == (ErrorCode.NOT_AN_IMAGE.value, [1])
    assert units(doc) == {metrics.CLIENT_ERRORS: "Count"}


def test_a_path_nobody_serves_is_a_not_found_and_its_path_no_dimension(handler, lambda_context, capsys):
    capsys.readouterr()
    event = load_event("apigw_rest_get_similar")
    event.update(path="/user/1234567/secret", queryStringParameters=None, multiValueQueryStringParameters=None)
    assert handler(event, lambda_context)["statusCode"] == 404
    text = capsys.readouterr().out
    (doc,) = emf_lines(text)
    assert doc[metrics.ERROR_CODE_DIMENSION] == ErrorCode.NOT_FOUND.value
    assert "1234567" not in json.dumps(doc)


def test_a_health_check_writes_no_metrics(handler, lambda_context, capsys):
    capsys.readouterr()
    assert handler(load_event("function_url_get_health"), lambda_context)["statusCode"] == 200
    assert emf_lines(capsys.readouterr().out) == []


def test_the_first_load_is_a_cold_start_with_its_load_time(make_client, capsys):
    client = make_client()
    capsys.readouterr()
    assert client.get("/images/3/similar").status_code == 200
    metrics.flush(metrics.search)
    (doc,) = emf_lines(capsys.readouterr().out)
    assert units(doc)[metrics.COLD_START] == "Count" and doc[metrics.COLD_START] == [1]
    assert units(doc)[metrics.MODEL_LOAD_TIME] == "Seconds"
    assert doc[metrics.MODEL_LOAD_TIME] == [pytest.approx(client.app.state.service.load_seconds)]
    client.get("/images/3/similar")
    metrics.flush(metrics.search)
    assert metrics.COLD_START not in units(emf_lines(capsys.readouterr().out)[0])


def test_a_503_is_counted(make_client, tmp_path, capsys):
    client = make_client(artifacts_uri=str(tmp_path / "nothing-here"))
    capsys.readouterr()
    assert client.get("/images/3/similar").status_code == 503
    metrics.flush(metrics.search)
    (doc,) = emf_lines(capsys.readouterr().out)
    assert doc[metrics.UNAVAILABLE] == [1] and units(doc) == {metrics.UNAVAILABLE: "Count"}


def test_the_local_server_prints_each_requests_metrics(artifacts_dir, sample_dir, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from lambda_fn.contract.config import Settings
    from lambda_fn.search.local import create_local_app

    settings = Settings(artifacts_uri=str(artifacts_dir), images_uri=str(sample_dir), num_threads=1, cache_dir=tmp_path)
    client = TestClient(create_local_app(settings, frontend=None))
    client.get("/images/3/similar?k=2")  # the first load
    capsys.readouterr()
    assert client.get("/images/3/similar?k=2").status_code == 200
    (doc,) = emf_lines(capsys.readouterr().out)  # printed without anyone flushing
    assert doc[metrics.RESULT_COUNT] == [2]


def test_an_ingest_batch_counts_its_images_and_the_age_of_its_oldest_message(
    deployment, handler_of, lambda_context, capsys
):
    d = deployment
    event = sqs_event(
        d.put_image("metrics/a.jpg", unique_photo(301)),
        d.put_image("metrics/b.jpg", unique_photo(302)),
        d.put_image("metrics/broken.jpg", b"not a jpeg"),
        bucket=d.bucket,
    )
    now_ms = int(time.time() * 1000)
    for n, record in enumerate(event["Records"]):
        record["attributes"]["SentTimestamp"] = str(now_ms - 90_000 + n * 1000)  # the oldest waited 90 s
    handler = handler_of("lambda_fn.collection.handlers.ingest")
    capsys.readouterr()
    assert handler(event, lambda_context) == {"batchItemFailures": []}
    (doc,) = emf_lines(capsys.readouterr().out)
    assert doc[metrics.SERVICE_DIMENSION] == metrics.INGEST_SERVICE
    assert units(doc) == {
        metrics.IMAGES_EMBEDDED: "Count",
        metrics.IMAGES_SKIPPED: "Count",
        metrics.IMAGES_FAILED: "Count",
        metrics.INGEST_DURATION: "Seconds",
        metrics.OLDEST_MESSAGE_AGE: "Seconds",
    }
    assert (doc[metrics.IMAGES_EMBEDDED], doc[metrics.IMAGES_SKIPPED], doc[metrics.IMAGES_FAILED]) == ([2], [1], [0])
    assert 90 <= doc[metrics.OLDEST_MESSAGE_AGE][0] < 150


def _set_built_at(d, when: datetime) -> None:
    """Make the live build look older: the same manifest with an earlier built_at."""
    manifest = Manifest.model_validate_json(d.live_manifest_body())
    manifest.built_at = when.isoformat(timespec="seconds")
    d.client.put_object(Bucket=d.bucket, Key=f"{d.prefix}/{MANIFEST_FILE}", Body=manifest.model_dump_json())


def _run(handler, lambda_context, capsys) -> tuple[dict, dict]:
    """The reindex's run line (Status) and its build line (the live build's metrics)."""
    docs = emf_lines(capsys.readouterr().out)
    run = one(docs, **{metrics.STATUS_DIMENSION: docs[0].get(metrics.STATUS_DIMENSION)})
    (build,) = [d for d in docs if d is not run]
    return run, build


def test_reindex_runs_report_status_size_and_age_and_staleness_only_while_shards_wait(
    deployment, handler_of, lambda_context, capsys
):
    d = deployment
    ingest = handler_of("lambda_fn.collection.handlers.ingest")
    ingest(sqs_event(d.put_image("metrics/c.jpg", unique_photo(303)), bucket=d.bucket), lambda_context)
    reindex = handler_of("lambda_fn.collection.handlers.reindex")
    capsys.readouterr()

    assert reindex({}, lambda_context)["status"] == "published"
    run, build = _run(reindex, lambda_context, capsys)
    assert (run[metrics.STATUS_DIMENSION], run[metrics.REINDEX_RUNS]) == ("published", [1])
    assert run[metrics.SERVICE_DIMENSION] == build[metrics.SERVICE_DIMENSION] == metrics.REINDEX_SERVICE
    assert units(build) == {
        metrics.REINDEX_DURATION: "Seconds",
        metrics.LIVE_BUILD_AGE: "Seconds",
        metrics.STALE_BUILD_AGE: "Seconds",
        metrics.LIVE_VECTORS: "Count",
        metrics.INDEX_SIZE: "Bytes",
    }
    live = Manifest.model_validate_json(d.live_manifest_body())
    index_size = d.client.head_object(Bucket=d.bucket, Key=f"{d.prefix}/{live.index_file}")["ContentLength"]
    assert build[metrics.LIVE_VECTORS] == [SAMPLE_COUNT + 1] and build[metrics.INDEX_SIZE] == [index_size]
    assert build[metrics.LIVE_BUILD_AGE][0] < 120 and build[metrics.STALE_BUILD_AGE] == [0]

    # A quiet collection: an old build, nothing waiting: no metric at all (so no custom-metric charge at rest),
    # and nothing for the stale-build alarm, however old the build.
    _set_built_at(d, datetime.now(UTC) - timedelta(hours=2))
    assert reindex({}, lambda_context)["status"] == "unchanged"
    assert emf_lines(capsys.readouterr().out) == []

    # A new photo waits while another run holds the lease: now the old build is stale.
    ingest(sqs_event(d.put_image("metrics/d.jpg", unique_photo(304)), bucket=d.bucket), lambda_context)
    capsys.readouterr()
    lease = Lease(d.artifacts, 60)
    assert lease.acquire()
    try:
        assert reindex({}, lambda_context)["status"] == "busy"
    finally:
        lease.release()
    run, build = _run(reindex, lambda_context, capsys)
    assert run[metrics.STATUS_DIMENSION] == "busy"
    assert build[metrics.STALE_BUILD_AGE] == build[metrics.LIVE_BUILD_AGE] and build[metrics.STALE_BUILD_AGE][0] >= 7200

    # A run that fails (the live build's collection file is corrupt) is counted as failed, and stale too.
    d.client.put_object(Bucket=d.bucket, Key=f"{d.prefix}/{live.collection_file}", Body=b"corrupt")
    with pytest.raises(Exception, match="sha256"):
        reindex({}, lambda_context)
    run, build = _run(reindex, lambda_context, capsys)
    assert (run[metrics.STATUS_DIMENSION], run[metrics.REINDEX_RUNS]) == (metrics.REINDEX_FAILED, [1])
    assert build[metrics.STALE_BUILD_AGE][0] >= 7200


def test_tracing_wraps_the_handler_only_when_asked():
    def invoke(event, context):
        return {"ok": event}

    assert metrics.traced(invoke, service=metrics.SEARCH_SERVICE, enabled=False) is invoke
    traced = metrics.traced(invoke, service=metrics.SEARCH_SERVICE, enabled=True)
    assert traced is not invoke and traced(1, None) == {"ok": 1}  # outside Lambda the tracer records nothing
