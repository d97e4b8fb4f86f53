"""The stack with ``-c vectorStore=s3vectors``: a vector bucket (and the pinned model's index), grants per
function, no scheduled reindex, a small /tmp for search, the switch at the end of the backfill, cdk-nag clean."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Annotations, Match, Template
from cdk_nag import AwsSolutionsChecks
from cdk_support import build_stack, image_function, role_of, statements

from cdk.backfill import REINDEX_STATE, SWITCH_STATE
from cdk.stack import VECTORS_SEARCH_EPHEMERAL_MB
from cdk.vectors import INGEST_ACTIONS, SEARCH_ACTIONS
from lambda_fn.contract import metric_names as m
from lambda_fn.contract.config import env_name
from lambda_fn.contract.vectors import NON_FILTERABLE, index_name

PINNED = "c0ffee" * 10 + "abcd"


@pytest.fixture(scope="module")
def vectors_stack(tmp_path_factory):
    return build_stack(
        tmp_path_factory.mktemp("cdk-vectors"),
        vector_store="s3vectors",
        collection_images=5_000_000,  # past one Annoy index: no refusal on this store
        function_options={"trusted_model_sha256": PINNED},
    )


@pytest.fixture(scope="module")
def vectors_template(vectors_stack) -> Template:
    return Template.from_stack(vectors_stack)


def vector_actions(template: Template, handler: str) -> set[str]:
    found = set()
    for s in statements(template, role_of(image_function(template, handler))):
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        if any(a.startswith("s3vectors:") for a in actions):
            assert "/index/*" in json.dumps(s["Resource"])  # this bucket's indexes only
            found |= set(actions)
    return found


def test_a_vector_bucket_and_the_pinned_models_index(vectors_template):
    vectors_template.resource_count_is("AWS::S3Vectors::VectorBucket", 1)
    vectors_template.has_resource_properties(
        "AWS::S3Vectors::Index",
        {
            "IndexName": index_name(PINNED),
            "Dimension": 512,
            "DistanceMetric": "cosine",
            "DataType": "float32",
            "MetadataConfiguration": {"NonFilterableMetadataKeys": list(NON_FILTERABLE)},
        },
    )


def test_each_function_gets_only_its_vector_actions_and_the_settings(vectors_template):
    search = "lambda_fn.search.main.handler"
    ingest = "lambda_fn.collection.handlers.ingest.handler"
    assert vector_actions(vectors_template, search) == set(SEARCH_ACTIONS)
    assert vector_actions(vectors_template, ingest) == set(INGEST_ACTIONS)
    assert vector_actions(vectors_template, "lambda_fn.collection.handlers.reindex.handler") == set()
    for handler in (search, ingest):
        env = image_function(vectors_template, handler)["Environment"]["Variables"]
        assert env[env_name("vector_store")] == "s3vectors" and env[env_name("vector_bucket")] == "deepfood-vectors"
    search_fn = image_function(vectors_template, search)
    assert search_fn["EphemeralStorage"] == {"Size": VECTORS_SEARCH_EPHEMERAL_MB}


def test_no_scheduled_reindex_and_the_backfill_ends_with_the_switch(vectors_template, template):
    rules = vectors_template.find_resources("AWS::Events::Rule")
    assert len(rules) == 1 and "rate(1 day)" in json.dumps(rules)  # the daily switch check only
    assert '{"Switch":{}}' in json.dumps(rules).replace("\\", "").replace(" ", "")
    definition = json.dumps(vectors_template.find_resources("AWS::StepFunctions::StateMachine"))
    assert SWITCH_STATE in definition and f'\\"{REINDEX_STATE}\\"' not in definition
    assert len(template.find_resources("AWS::Events::Rule")) >= 1  # the Annoy stack keeps its schedule
    assert SWITCH_STATE not in json.dumps(template.find_resources("AWS::StepFunctions::StateMachine"))
    template.resource_count_is("AWS::S3Vectors::VectorBucket", 0)


def test_no_unacknowledged_cdk_nag_findings_on_s3_vectors(vectors_stack):
    report = AwsSolutionsChecks(verbose=True).validate_scope(vectors_stack)
    findings = [
        f"{v.severity} {v.rule_name}: {[r.construct_path for r in v.violating_resources]}" for v in report.violations
    ]
    assert findings == []
    assert Annotations.from_stack(vectors_stack).find_error("*", Match.string_like_regexp("AwsSolutions-.*")) == []


def test_an_unknown_vector_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vectorStore"):
        build_stack(tmp_path, vector_store="faiss")


def test_the_dashboard_and_an_alarm_watch_the_vector_queries(vectors_template, template):
    alarms = [
        a["Properties"]
        for a in vectors_template.find_resources("AWS::CloudWatch::Alarm").values()
        if m.VECTOR_QUERY_ERRORS in json.dumps(a)
    ]
    assert len(alarms) == 1 and alarms[0]["Threshold"] == 0 and alarms[0]["EvaluationPeriods"] == 3
    body = json.dumps(vectors_template.find_resources("AWS::CloudWatch::Dashboard"))
    assert m.VECTOR_QUERY_LATENCY in body and m.VECTOR_QUERY_ERRORS in body
    assert m.VECTOR_QUERY_ERRORS not in json.dumps(template.find_resources("AWS::CloudWatch::Alarm"))
