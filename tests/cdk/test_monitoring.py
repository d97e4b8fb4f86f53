"""The operations dashboard (its DashboardBody parsed), the alarms with their metrics, thresholds and actions,
the optional SNS topic and X-Ray tracing, and cdk-nag with both turned on."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Annotations, Match, Template
from cdk_nag import AwsSolutionsChecks
from cdk_support import TUNED_REINDEX, build_stack, image_function, role_of, statements, text

from cdk.dashboard import PRICE_PER_GB_SECOND
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER, SEARCH_HANDLER
from lambda_fn.contract import metrics as m
from lambda_fn.contract.config import env_name

EMAIL = "ops@example.com"
TOPIC_ARN = "arn:aws:sns:eu-west-1:123456789012:existing-alarms"
HANDLERS = (SEARCH_HANDLER, INGEST_HANDLER, REINDEX_HANDLER)
# Every metric lambda_fn.contract.metrics writes, under the service that writes it.
EMF_METRICS = {
    m.SEARCH_SERVICE: {
        m.DECODE_LATENCY,
        m.EMBED_LATENCY,
        m.SEARCH_LATENCY,
        m.TOTAL_LATENCY,
        m.RESULT_COUNT,
        m.COLD_START,
        m.MODEL_LOAD_TIME,
        m.UNAVAILABLE,
    },
    m.INGEST_SERVICE: {
        m.IMAGES_EMBEDDED,
        m.IMAGES_SKIPPED,
        m.IMAGES_FAILED,
        m.OLDEST_MESSAGE_AGE,
        m.INGEST_DURATION,
        m.CHANGES_PENDING,
    },
    m.REINDEX_SERVICE: {
        m.REINDEX_DURATION,
        m.LIVE_VECTORS,
        m.INDEX_SIZE,
        m.LIVE_BUILD_AGE,
        m.STALE_BUILD_AGE,
        m.PENDING_IMAGES,
    },
}


@pytest.fixture(scope="module")
def monitored_stack(tmp_path_factory):
    """Alarms notifying a new topic with an email subscription, and tracing on."""
    return build_stack(
        tmp_path_factory.mktemp("cdk-monitored"),
        monitoring_options={"alarm_email": EMAIL, "latency_p95_ms": 800, "pending_after": cdk.Duration.hours(2)},
        tracing=True,
    )


@pytest.fixture(scope="module")
def monitored(monitored_stack) -> Template:
    return Template.from_stack(monitored_stack)


@pytest.fixture(scope="module")
def existing_topic(tmp_path_factory) -> Template:
    stack = build_stack(tmp_path_factory.mktemp("cdk-topic"), monitoring_options={"alarm_topic_arn": TOPIC_ARN})
    return Template.from_stack(stack)


def dashboard(template: Template) -> dict:
    (resource,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    return json.loads(text(resource["Properties"]["DashboardBody"]))


def widget(body: dict, title: str) -> dict:
    (found,) = [w for w in body["widgets"] if w["properties"].get("title", "").startswith(title)]
    return found


def metric_lines(w: dict) -> list[tuple[str, str, dict, dict]]:
    """(namespace, name, dimensions, options) of each metric line; math expressions as ("", "", {}, options)."""
    lines = []
    for line in w["properties"]["metrics"]:
        *fields, options = line if isinstance(line[-1], dict) else [*line, {}]
        if not fields:
            lines.append(("", "", {}, options))
            continue
        namespace, name, *dims = fields
        lines.append((namespace, name, dict(zip(dims[::2], dims[1::2], strict=True)), options))
    return lines


def function_ref(template: Template, handler: str) -> str:
    (logical_id,) = [
        lid
        for lid, fn in template.find_resources("AWS::Lambda::Function").items()
        if fn["Properties"].get("ImageConfig", {}).get("Command") == [handler]
    ]
    return f"<{logical_id}>"


def test_the_grid_is_full_width_rows_without_overlap(template):
    body = dashboard(template)
    cells = set()
    for w in body["widgets"]:
        assert w["x"] + w["width"] <= 24
        area = {(x, y) for x in range(w["x"], w["x"] + w["width"]) for y in range(w["y"], w["y"] + w["height"])}
        assert not cells & area, w["properties"].get("title")
        cells |= area
    rows = {}
    for w in body["widgets"]:
        rows[w["y"]] = rows.get(w["y"], 0) + w["width"]
    assert set(rows.values()) == {24}


def test_every_metric_the_code_writes_is_on_the_dashboard_with_its_exact_dimensions(template):
    shown: dict[str, set[str]] = {}
    searches = []
    for w in dashboard(template)["widgets"]:
        if w["type"] != "metric":
            continue
        for namespace, name, dims, options in metric_lines(w):
            if namespace == m.NAMESPACE:
                assert set(dims) == {m.SERVICE_DIMENSION}, (name, dims)
                shown.setdefault(dims[m.SERVICE_DIMENSION], set()).add(name)
            if "SEARCH(" in options.get("expression", ""):
                searches.append(options["expression"])
    assert shown == EMF_METRICS
    # The two metrics with a second dimension: one line per error code / reindex status, as they occur.
    assert searches == [
        f"SEARCH('{{{m.NAMESPACE},{m.ERROR_CODE_DIMENSION},{m.SERVICE_DIMENSION}}} "
        f'MetricName="{m.CLIENT_ERRORS}" {m.SERVICE_DIMENSION}="{m.SEARCH_SERVICE}"\', \'Sum\', 300)',
        f"SEARCH('{{{m.NAMESPACE},{m.STATUS_DIMENSION},{m.SERVICE_DIMENSION}}} "
        f'MetricName="{m.REINDEX_RUNS}" {m.SERVICE_DIMENSION}="{m.REINDEX_SERVICE}"\', \'Sum\', 300)',
    ]


def test_latency_widgets_show_p50_p95_p99_per_stage(template):
    body = dashboard(template)
    for title, name in (
        ("Decode", m.DECODE_LATENCY),
        ("Embed", m.EMBED_LATENCY),
        ("Neighbour search", m.SEARCH_LATENCY),
        ("Total", m.TOTAL_LATENCY),
    ):
        lines = metric_lines(widget(body, title))
        assert [(ns, n, o["stat"]) for ns, n, _, o in lines] == [(m.NAMESPACE, name, p) for p in ("p50", "p95", "p99")]
    total = widget(body, "Total")["properties"]
    assert total["annotations"]["horizontal"][0]["value"] == 1000  # the alarm's threshold


def test_aws_metrics_requests_errors_concurrency_throttles_backlog(template):
    body = dashboard(template)
    functions = {function_ref(template, h) for h in HANDLERS}
    api = {(n, d["ApiName"]) for ns, n, d, _ in metric_lines(widget(body, "API requests")) if ns == "AWS/ApiGateway"}
    assert api == {("Count", "DeepFood-search"), ("4XXError", "DeepFood-search"), ("5XXError", "DeepFood-search")}
    for title, name in (("Concurrent executions", "ConcurrentExecutions"), ("Throttles", "Throttles")):
        lines = metric_lines(widget(body, title))
        assert {(ns, n) for ns, n, _, _ in lines} == {("AWS/Lambda", name)}
        assert {d["FunctionName"] for _, _, d, _ in lines} == functions
    search_fn = {(n, d["FunctionName"]) for _, n, d, _ in metric_lines(widget(body, "Search function"))}
    assert {n for n, _ in search_fn} == {"Invocations", "Errors", "Duration"}
    assert {f for _, f in search_fn} == {function_ref(template, SEARCH_HANDLER)}
    backlog = {(ns, n) for ns, n, _, _ in metric_lines(widget(body, "Ingest backlog"))}
    assert backlog == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        (m.NAMESPACE, m.PENDING_IMAGES),  # photos that wait for a model rather than in the queue
    }
    ((ns, name, _, _),) = metric_lines(widget(body, "Dead-letter queue"))
    assert (ns, name) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    dead_letters, queue = (
        {d["QueueName"] for ns, _, d, _ in metric_lines(widget(body, t)) if ns == "AWS/SQS"}
        for t in ("Dead-letter", "Ingest backlog")
    )
    assert dead_letters != queue and len(queue) == 1


def test_cost_is_duration_times_memory_times_the_price_plus_requests(template, tuned_template):
    for tmpl in (template, tuned_template):
        lines = metric_lines(widget(dashboard(tmpl), "Estimated Lambda cost"))
        expressions = {o["id"]: o["expression"] for ns, _, _, o in lines if not ns and "id" in o}
        for handler, fn_id in zip(HANDLERS, ("search", "ingest", "reindex"), strict=True):
            memory_gb = image_function(tmpl, handler)["MemorySize"] / 1024
            price = PRICE_PER_GB_SECOND[image_function(tmpl, handler)["Architectures"][0]]
            assert expressions[fn_id] == (
                f"{fn_id}_ms / 1000 * {memory_gb:.4f} * {price:.10f} + {fn_id}_requests * 0.0000002"
            )
            used = {o["id"]: (ns, n, d["FunctionName"], o["stat"], o["period"]) for ns, n, d, o in lines if ns}
            ref = function_ref(tmpl, handler)
            assert used[f"{fn_id}_ms"] == ("AWS/Lambda", "Duration", ref, "Sum", 86400)
            assert used[f"{fn_id}_requests"] == ("AWS/Lambda", "Invocations", ref, "Sum", 86400)
        assert [o["expression"] for ns, _, _, o in lines if not ns and "id" not in o] == ["search + ingest + reindex"]
    assert image_function(tuned_template, SEARCH_HANDLER)["MemorySize"] == 4096  # so the two differ


def alarms(template: Template) -> dict[str, dict]:
    """Each alarm's properties, by the one metric (or the expression) it watches."""
    found = {}
    for alarm in template.find_resources("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        if "MetricName" in props:
            key = props["MetricName"]
        else:
            returned = next(q for q in props["Metrics"] if q.get("ReturnData", True))
            key = returned.get("Expression") or returned["MetricStat"]["Metric"]["MetricName"]
        assert key not in found, key
        found[key] = props
    return found


def watched(props: dict) -> list[tuple[str, str, dict, str, int]]:
    """(namespace, name, dimensions, stat, period) of every metric an alarm reads."""
    if "MetricName" in props:
        dims = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
        return [(props["Namespace"], props["MetricName"], dims, props["Statistic"], props["Period"])]
    out = []
    for query in props["Metrics"]:
        if "MetricStat" in query:
            stat, metric = query["MetricStat"], query["MetricStat"]["Metric"]
            dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            out.append((metric["Namespace"], metric["MetricName"], dims, stat["Stat"], stat["Period"]))
    return out


def test_each_alarm_watches_its_metric_with_its_threshold(monitored):
    found = alarms(monitored)
    assert len(found) == 9
    rate = found["IF(requests >= 20, 100 * errors / requests, 0)"]
    assert {(n, s) for _, n, _, s, _ in watched(rate)} == {("Count", "Sum"), ("5XXError", "Sum")}
    assert (rate["Threshold"], rate["EvaluationPeriods"], rate["DatapointsToAlarm"]) == (5, 3, 2)

    latency = found[m.TOTAL_LATENCY]
    assert watched(latency) == [(m.NAMESPACE, m.TOTAL_LATENCY, {"service": m.SEARCH_SERVICE}, "p95", 300)]
    assert (latency["Threshold"], latency["EvaluationPeriods"], latency["DatapointsToAlarm"]) == (800, 3, 3)

    throttles = found["FILL(search, 0) + FILL(ingest, 0) + FILL(reindex, 0)"]
    functions = {text(d["FunctionName"]) for _, n, d, _, _ in watched(throttles) if n == "Throttles"}
    assert functions == {function_ref(monitored, h) for h in HANDLERS} and throttles["Threshold"] == 0

    (dead,) = watched(found["ApproximateNumberOfMessagesVisible"])
    assert (dead[0], dead[3]) == ("AWS/SQS", "Maximum") and found["ApproximateNumberOfMessagesVisible"][
        "Threshold"
    ] == 0

    backlog = found["ApproximateAgeOfOldestMessage"]
    assert backlog["Threshold"] == 3600 and watched(backlog)[0][3] == "Maximum"

    errors = found["Errors"]
    assert text(watched(errors)[0][2]["FunctionName"]) == function_ref(monitored, REINDEX_HANDLER)
    assert (errors["Threshold"], errors["EvaluationPeriods"], errors["DatapointsToAlarm"]) == (0, 2, 2)

    stale = found[m.STALE_BUILD_AGE]
    assert watched(stale) == [(m.NAMESPACE, m.STALE_BUILD_AGE, {"service": m.REINDEX_SERVICE}, "Maximum", 300)]
    assert stale["Threshold"] == 15 * 60 + 3 * 5 * 60  # the reindex timeout plus three schedule periods

    waiting = found[m.PENDING_IMAGES]
    assert watched(waiting) == [(m.NAMESPACE, m.PENDING_IMAGES, {"service": m.REINDEX_SERVICE}, "Maximum", 300)]
    # any photo waiting through the runs of 2 hours (pending_after), one late tick allowed for
    assert (waiting["Threshold"], waiting["DatapointsToAlarm"], waiting["EvaluationPeriods"]) == (0, 25, 26)
    assert "Publish a model" in waiting["AlarmDescription"]

    size = found[m.LIVE_VECTORS]
    assert watched(size) == [(m.NAMESPACE, m.LIVE_VECTORS, {"service": m.REINDEX_SERVICE}, "Maximum", 86400)]
    assert 0 < size["Threshold"] < 310_000  # 90% of what the default sizes hold (tests/cdk/test_sizing.py)

    for props in found.values():
        assert props["ComparisonOperator"] == "GreaterThanThreshold"
        assert props["TreatMissingData"] == "notBreaching"  # a quiet service is not a broken one


@pytest.mark.parametrize(("which", "runs"), [("template", 13), ("tuned_template", 3)])
def test_photos_waiting_for_a_model_alarm_after_an_hour_of_reindex_runs(which, runs, request):
    # Runs every 5 minutes by default, every 30 in the tuned stack: the runs that span an hour, and one more.
    tmpl = request.getfixturevalue(which)
    waiting = alarms(tmpl)[m.PENDING_IMAGES]
    every = (TUNED_REINDEX["every"] if which == "tuned_template" else cdk.Duration.minutes(5)).to_seconds()
    assert watched(waiting)[0][4] == every and (runs - 1) * every == 3600
    assert (waiting["DatapointsToAlarm"], waiting["EvaluationPeriods"]) == (runs, runs + 1)
    assert "1 hour" in waiting["AlarmDescription"]


def test_the_stale_build_threshold_follows_the_reindex_schedule(tuned_template):
    stale = alarms(tuned_template)[m.STALE_BUILD_AGE]
    every, timeout = TUNED_REINDEX["every"].to_seconds(), TUNED_REINDEX["timeout"].to_seconds()
    assert stale["Threshold"] == timeout + 3 * every and watched(stale)[0][4] == every
    assert watched(alarms(tuned_template)["Errors"])[0][4] == every


def test_alarms_notify_the_topic_only_when_asked(template, monitored, existing_topic):
    for props in alarms(template).values():
        assert "AlarmActions" not in props and "OKActions" not in props
    template.resource_count_is("AWS::SNS::Topic", 0)

    (topic_id,) = monitored.find_resources("AWS::SNS::Topic")
    for props in alarms(monitored).values():
        assert props["AlarmActions"] == props["OKActions"] == [{"Ref": topic_id}]
    monitored.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": EMAIL, "TopicArn": {"Ref": topic_id}}
    )
    monitored.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": [
                    Match.object_like(
                        {
                            "Effect": "Deny",
                            "Action": "sns:Publish",
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    )
                ]
            }
        },
    )

    existing_topic.resource_count_is("AWS::SNS::Topic", 0)
    for props in alarms(existing_topic).values():
        assert props["AlarmActions"] == props["OKActions"] == [TOPIC_ARN]


def test_tracing_is_off_by_default_and_turns_on_xray_and_the_setting(template, monitored):
    for handler in HANDLERS:
        off, on = image_function(template, handler), image_function(monitored, handler)
        assert "TracingConfig" not in off and env_name("tracing") not in off["Environment"]["Variables"]
        assert on["TracingConfig"] == {"Mode": "Active"}
        assert on["Environment"]["Variables"][env_name("tracing")] == "true"
        xray = [s for s in statements(monitored, role_of(on)) if "xray:PutTraceSegments" in s["Action"]]
        assert xray and not [s for s in statements(template, role_of(off)) if "xray:PutTraceSegments" in s["Action"]]


def test_no_unacknowledged_cdk_nag_findings_with_alarms_and_tracing_on(monitored_stack):
    report = AwsSolutionsChecks(verbose=True).validate_scope(monitored_stack)
    findings = [
        f"{v.severity} {v.rule_name}: {[r.construct_path for r in v.violating_resources]}" for v in report.violations
    ]
    assert findings == []
    assert Annotations.from_stack(monitored_stack).find_error("*", Match.string_like_regexp("AwsSolutions-.*")) == []


def test_the_dashboard_url_is_an_output(template):
    (output,) = template.find_outputs("DashboardUrl").values()
    assert text(output["Value"]).endswith("#dashboards/dashboard/DeepFood-operations-<AWS::Region>")


def test_the_dashboard_name_holds_the_region_so_a_second_region_does_not_collide(template):
    # Dashboard names are global to the account; the region is resolved by CloudFormation at deploy.
    (dashboard_resource,) = template.find_resources("AWS::CloudWatch::Dashboard").values()
    assert text(dashboard_resource["Properties"]["DashboardName"]) == "DeepFood-operations-<AWS::Region>"


def test_every_throttles_series_is_filled_before_the_sum(monitored):
    # Throttles is sparse: a period where one function has no datapoint must not drop the others' throttles.
    (throttles,) = [a for key, a in alarms(monitored).items() if "Throttles" in {n for _, n, *_ in watched(a)}]
    expression = next(q for q in throttles["Metrics"] if q.get("ReturnData", True))["Expression"]
    series = [q["Id"] for q in throttles["Metrics"] if "MetricStat" in q]
    assert len(series) == 3
    assert expression == " + ".join(f"FILL({s}, 0)" for s in series)
