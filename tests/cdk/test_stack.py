"""The synthesized template: search function, settings' env names, API, buckets, outputs, cdk-nag."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Annotations, Match, Template
from cdk_nag import AwsSolutionsChecks
from cdk_support import (
    EXISTING_BUCKET_KEY,
    TUNED_API,
    TUNED_FUNCTION,
    as_list,
    grants,
    image_function,
    own_logs,
    role_of,
    statements,
)

from cdk.artifacts import Artifacts
from cdk.image import INGEST_HANDLER, REINDEX_HANDLER, SEARCH_HANDLER
from cdk.search_function import DEFAULT_TIMEOUT
from cdk.stack import DEFAULT_PREFIX
from lambda_fn.contract.config import ENV_PREFIX, Settings, env_name


def search_function(template: Template) -> dict:
    return image_function(template, SEARCH_HANDLER)


def site_domain(template: Template) -> dict:
    (distribution_id,) = template.find_resources("AWS::CloudFront::Distribution")
    return {"Fn::GetAtt": [distribution_id, "DomainName"]}


def test_function_is_a_container_image_with_default_sizes(template):
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "PackageType": "Image",
            "MemorySize": 3008,
            "Timeout": DEFAULT_TIMEOUT.to_seconds(),
            "EphemeralStorage": {"Size": 2048},
            "Architectures": ["x86_64"],
        },
    )
    template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 30, "LogGroupName": Match.absent()})


def test_function_tunables_reach_the_template(tuned_template):
    function = search_function(tuned_template)
    assert function["MemorySize"] == TUNED_FUNCTION["memory_mb"]
    assert function["Timeout"] == TUNED_FUNCTION["timeout"].to_seconds()
    assert function["EphemeralStorage"] == {"Size": TUNED_FUNCTION["ephemeral_storage_mb"]}
    uri = function["Environment"]["Variables"][env_name("artifacts_uri")]
    assert uri["Fn::Join"][1][-1] == "/food/v2/"


def test_provisioned_concurrency_puts_the_api_on_a_warm_alias(tuned_template):
    tuned_template.has_resource_properties(
        "AWS::Lambda::Alias",
        {"Name": "live", "ProvisionedConcurrencyConfig": {"ProvisionedConcurrentExecutions": 2}},
    )
    # Warm containers initialise before traffic, so they load the model during init.
    assert search_function(tuned_template)["Environment"]["Variables"][env_name("load_on_import")] == "true"
    (alias_id,) = tuned_template.find_resources("AWS::Lambda::Alias")
    methods = tuned_template.find_resources("AWS::ApiGateway::Method", {"Properties": {"HttpMethod": "ANY"}})
    assert len(methods) == 2
    for method in methods.values():
        assert alias_id in str(method["Properties"]["Integration"]["Uri"])


def test_environment_uses_the_settings_names(template):
    variables = search_function(template)["Environment"]["Variables"]
    fields = [
        "artifacts_uri",
        "cors_origins",
        "cache_dir",
        "presign_expires_s",
        "manifest_check_s",
        "log_level",
        "load_on_import",
    ]
    assert set(variables) == {env_name(f) for f in fields}
    assert all(name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields for name in variables)
    assert variables[env_name("cache_dir")] == "/tmp/deepfood"
    assert variables[env_name("load_on_import")] == "false"
    assert variables[env_name("presign_expires_s")] == "900"
    assert float(variables[env_name("manifest_check_s")]) == Settings.model_fields["manifest_check_s"].default
    (bucket_id,) = template.find_resources("AWS::S3::Bucket", {"Properties": {"VersioningConfiguration": {}}})
    assert variables[env_name("artifacts_uri")] == {
        "Fn::Join": ["", ["s3://", {"Ref": bucket_id}, f"/{DEFAULT_PREFIX}/"]]
    }


def test_cors_allows_only_the_site_origin(template):
    origin = {"Fn::Join": ["", ["https://", site_domain(template)]]}
    assert search_function(template)["Environment"]["Variables"][env_name("cors_origins")] == origin
    quoted = {"Fn::Join": ["", ["'https://", site_domain(template), "'"]]}
    preflights = template.find_resources("AWS::ApiGateway::Method", {"Properties": {"HttpMethod": "OPTIONS"}})
    assert len(preflights) == 2  # "/" and "/{proxy+}"
    for method in preflights.values():
        (response,) = method["Properties"]["Integration"]["IntegrationResponses"]
        assert response["ResponseParameters"]["method.response.header.Access-Control-Allow-Origin"] == quoted
    for kind in ("DEFAULT_4XX", "DEFAULT_5XX"):
        template.has_resource_properties(
            "AWS::ApiGateway::GatewayResponse",
            {
                "ResponseType": kind,
                "ResponseParameters": {"gatewayresponse.header.Access-Control-Allow-Origin": quoted},
            },
        )


def test_binary_bodies_arrive_intact(template):
    template.has_resource_properties(
        "AWS::ApiGateway::RestApi",
        {
            "BinaryMediaTypes": ["multipart/form-data", "image/*", "application/octet-stream"],
            "EndpointConfiguration": {"Types": ["REGIONAL"]},
        },
    )


def test_stage_throttles_and_logs(template, tuned_template):
    for tmpl, rate, burst in (
        (template, 20, 40),
        (tuned_template, TUNED_API["throttle_rate"], TUNED_API["throttle_burst"]),
    ):
        tmpl.has_resource_properties(
            "AWS::ApiGateway::Stage",
            {
                "MethodSettings": [
                    Match.object_like(
                        {
                            "HttpMethod": "*",
                            "ResourcePath": "/*",
                            "ThrottlingRateLimit": rate,
                            "ThrottlingBurstLimit": burst,
                            "LoggingLevel": "ERROR",
                        }
                    )
                ],
                "AccessLogSetting": {
                    "DestinationArn": Match.any_value(),
                    "Format": Match.string_like_regexp("requestId"),
                },
            },
        )


def test_buckets_are_private_and_ssl_only(template):
    buckets = template.find_resources("AWS::S3::Bucket")
    assert len(buckets) == 3  # artifacts, site, access logs
    policies = template.find_resources("AWS::S3::BucketPolicy").values()
    for bucket_id, bucket in buckets.items():
        assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert "BucketEncryption" in bucket["Properties"]
        (policy,) = [p for p in policies if p["Properties"]["Bucket"] == {"Ref": bucket_id}]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
        ), bucket_id
    template.has_resource_properties(
        "AWS::S3::Bucket", {"VersioningConfiguration": {"Status": "Enabled"}, "LoggingConfiguration": Match.any_value()}
    )


def test_search_may_only_read_its_prefix(template):
    (bucket_id,) = template.find_resources("AWS::S3::Bucket", {"Properties": {"VersioningConfiguration": {}}})
    granted = grants(template, SEARCH_HANDLER)
    assert granted == {
        "s3:GetObject": {f"<{bucket_id}.Arn>/{DEFAULT_PREFIX}/*"},
        "s3:ListBucket": {f"<{bucket_id}.Arn>"},
        **own_logs(search_function(template)),
    }
    # Reindex publishes builds, search only loads them: nothing it may write or delete, anywhere.
    assert not [a for a in granted if a.startswith(("s3:Put", "s3:Delete", "s3:Abort", "s3:Restore"))]


def test_site_is_private_behind_cloudfront(template):
    template.resource_count_is("AWS::CloudFront::OriginAccessControl", 1)
    template.has_resource_properties(
        "AWS::CloudFront::Distribution",
        {
            "DistributionConfig": Match.object_like(
                {
                    "DefaultRootObject": "index.html",
                    "DefaultCacheBehavior": Match.object_like({"ViewerProtocolPolicy": "redirect-to-https"}),
                    "Logging": Match.any_value(),
                }
            )
        },
    )


def test_deployment_writes_config_json_with_the_api_url(template):
    (deployment,) = template.find_resources("Custom::CDKBucketDeployment").values()
    props = deployment["Properties"]
    assert props["DistributionPaths"] == ["/*"]
    assert props["SystemMetadata"] == {"cache-control": "no-cache"}
    (api_url,) = template.find_outputs("ApiUrl").values()
    scheme, *rest = api_url["Value"]["Fn::Join"][1]
    markers = [value for marker in props["SourceMarkers"] for value in marker.values()]
    # config.json is {"apiBaseUrl": <ApiUrl>}: its deploy-time marker holds that URL as a JSON string.
    assert {"Fn::Join": ["", ['"' + scheme, *rest, '"']]} in markers


def test_outputs(template):
    for name in ("SiteUrl", "ApiUrl", "ArtifactsBucketName", "UploadCommand", "SearchFunctionName"):
        assert template.find_outputs(name), name
    (search_name,) = template.find_outputs("SearchFunctionName").values()
    assert env_name("manifest_check_s") in search_name["Description"]
    (api_url,) = template.find_outputs("ApiUrl").values()
    assert api_url["Value"]["Fn::Join"][1][-1] != "/"  # the page appends "/search"
    (upload,) = template.find_outputs("UploadCommand").values()
    parts = upload["Value"]["Fn::Join"][1]
    assert parts[0] == "python -m ops.upload --artifacts artifacts/ --images <DIR> --bucket "
    assert parts[-1] == f" --prefix {DEFAULT_PREFIX}"


def test_existing_artifacts_bucket_is_used_not_created(existing_bucket_template):
    template = existing_bucket_template
    template.resource_count_is("AWS::S3::Bucket", 2)  # site and logs only
    variables = search_function(template)["Environment"]["Variables"]
    assert variables[env_name("artifacts_uri")] == f"s3://my-existing-artifacts/{DEFAULT_PREFIX}/"
    (output,) = template.find_outputs("ArtifactsBucketName").values()
    assert output["Value"] == "my-existing-artifacts"
    objects = [
        resource
        for handler in (SEARCH_HANDLER, INGEST_HANDLER, REINDEX_HANDLER)
        for action, resources in grants(template, handler).items()
        if action.endswith("Object")
        for resource in resources
    ]
    assert len(objects) > 3
    assert all(r.startswith(f"arn:<AWS::Partition>:s3:::my-existing-artifacts/{DEFAULT_PREFIX}/") for r in objects)


def test_empty_prefix_is_refused():
    with pytest.raises(ValueError, match="prefix"):
        Artifacts(cdk.Stack(cdk.App(), "S"), "Artifacts", prefix="/")


@pytest.mark.parametrize("which", ["stack", "existing_bucket_stack"])
def test_no_unacknowledged_cdk_nag_findings(which, request):
    stack = request.getfixturevalue(which)
    report = AwsSolutionsChecks(verbose=True).validate_scope(stack)
    findings = [
        f"{v.severity} {v.rule_name}: {[r.construct_path for r in v.violating_resources]}" for v in report.violations
    ]
    # Warnings count too: cdk-nag 3 fails `cdk synth` on any unacknowledged finding.
    assert findings == []
    assert Annotations.from_stack(stack).find_error("*", Match.string_like_regexp("AwsSolutions-.*")) == []


def test_cdk_nag_check_does_report_findings():
    """Guards the test above against a check that passes vacuously."""
    stack = cdk.Stack(cdk.App(), "Bare")
    cdk.aws_s3.Bucket(stack, "Bucket")
    report = AwsSolutionsChecks().validate_scope(stack)
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= {v.rule_name for v in report.violations}


def test_every_acknowledgment_carries_a_reason(stack):
    acknowledged = {
        rule: reason
        for construct in stack.node.find_all()
        for entry in construct.node.metadata
        if entry.type == cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY
        for rule, reason in entry.data.items()
    }
    assert acknowledged
    for rule, reason in acknowledged.items():
        assert len(reason.split()) >= 8, rule


def test_nothing_is_public_or_wildcard(template):
    # No bucket policy lets anyone (Principal "*") in: the page is served through CloudFront's origin access
    # control, images through short-lived presigned URLs; nobody can list or write a bucket publicly.
    for policy in template.find_resources("AWS::S3::BucketPolicy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            if statement["Effect"] == "Allow":
                assert statement.get("Principal") not in ("*", {"AWS": "*"}), statement
    # No IAM statement grants every action, or every action of a service.
    for statement in statements(template):
        for action in as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), statement


def test_waf_is_off_by_default_and_rate_limits_each_client_when_on(template, tuned_template):
    template.resource_count_is("AWS::WAFv2::WebACL", 0)
    (acl,) = tuned_template.find_resources("AWS::WAFv2::WebACL").values()
    (rule,) = acl["Properties"]["Rules"]
    assert rule["Action"] == {"Block": {}}
    assert rule["Statement"]["RateBasedStatement"]["Limit"] == TUNED_API["waf_rate_limit"]
    assert rule["Statement"]["RateBasedStatement"]["AggregateKeyType"] == "IP"
    (association,) = tuned_template.find_resources("AWS::WAFv2::WebACLAssociation").values()
    assert "Stage" in str(association["Properties"]["ResourceArn"]) or "stages" in str(
        association["Properties"]["ResourceArn"]
    )


def test_no_function_reserves_concurrency_by_default(template):
    # An account may reserve only up to its unreserved concurrency minus 100: a new one (quota 10) none at all.
    functions = template.find_resources("AWS::Lambda::Function", {"Properties": {"PackageType": "Image"}})
    assert len(functions) == 3
    assert [f for f in functions.values() if "ReservedConcurrentExecutions" in f["Properties"]] == []


def test_search_reserved_concurrency_is_an_option(tuned_template):
    assert search_function(tuned_template)["ReservedConcurrentExecutions"] == TUNED_FUNCTION["reserved_concurrency"]


def test_an_sse_kms_bucket_gets_its_key_granted_to_readers_and_writers(template, existing_bucket_template):
    def kms_actions(tpl, handler):
        found = set()
        for statement in statements(tpl, role_of(image_function(tpl, handler))):
            actions = as_list(statement["Action"])
            if any(a.startswith("kms:") for a in actions):
                assert statement["Resource"] == EXISTING_BUCKET_KEY
                assert "kms:ViaService" in str(statement["Condition"])
                found |= set(actions)
        return found

    assert kms_actions(existing_bucket_template, SEARCH_HANDLER) == {"kms:Decrypt"}
    assert kms_actions(existing_bucket_template, INGEST_HANDLER) == {"kms:Decrypt", "kms:GenerateDataKey"}
    assert kms_actions(existing_bucket_template, REINDEX_HANDLER) == {"kms:Decrypt", "kms:GenerateDataKey"}
    assert kms_actions(template, SEARCH_HANDLER) == set()  # the created bucket uses SSE-S3


def test_a_pinned_model_reaches_the_service_and_none_is_pinned_by_default(template, tuned_template):
    name = env_name("trusted_model_sha256")
    assert name not in search_function(template)["Environment"]["Variables"]
    assert search_function(tuned_template)["Environment"]["Variables"][name] == TUNED_FUNCTION["trusted_model_sha256"]


def test_a_pinned_model_binds_ingest_too(tuned_template):
    variables = image_function(tuned_template, INGEST_HANDLER)["Environment"]["Variables"]
    assert variables[env_name("trusted_model_sha256")] == TUNED_FUNCTION["trusted_model_sha256"]
