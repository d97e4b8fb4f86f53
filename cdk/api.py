"""The public REST API: API Gateway (Lambda proxy) in front of the search function."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from cdk.nag import acknowledge
from lambda_fn.contract.config import CORS_MAX_AGE_S

# Request bodies API Gateway must pass base64-encoded (intact) instead of as UTF-8 text. Listed, not "*/*":
# with "*/*" every JSON body is base64-encoded too and the MOCK integration of the CORS preflight breaks
# (its response template would be treated as binary); these are the only binary bodies the API takes.
BINARY_MEDIA_TYPES = ["multipart/form-data", "image/*", "application/octet-stream"]
STAGE = "api"


class SearchApi(Construct):
    """Regional REST API proxying every path to ``handler``; CORS, throttling and logs at the gateway.

    - ``allowed_origin``: the site's origin. API Gateway answers the CORS preflight itself (no Lambda cold
      start for an OPTIONS) and adds the header to its own 4XX/5XX responses (throttled, payload too
      large); the function's CORS middleware covers the responses it produces.
    - ``throttle_rate`` / ``throttle_burst``: steady requests per second and burst for the whole stage; the
      cap on cost and abuse for an API without authentication.
    - ``cloud_watch_role``: API Gateway needs an account-level role to write logs; creates it (one per
      account and region, kept on destroy). Pass False if the account already has one.
    - ``waf_rate_limit``: off by default. A number turns on an AWS WAF web ACL on the stage with one
      rate-based rule: a client (source IP) sending more than that many requests in 5 minutes is blocked
      until its rate drops. Stage throttling caps everyone together, so without it one client can take the
      whole budget and every real user gets 429s. Cost as published in 2026: $5 per month for the web ACL,
      $1 per rule, $0.60 per million requests inspected, so about $6 a month plus $0.60 per million searches.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: lambda_.IFunction,
        allowed_origin: str,
        throttle_rate: float = 20,
        throttle_burst: int = 40,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        cloud_watch_role: bool = True,
        waf_rate_limit: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = logs.LogGroup(
            self, "AccessLogs", retention=log_retention, removal_policy=cdk.RemovalPolicy.DESTROY
        )
        self.rest_api = apigw.LambdaRestApi(
            self,
            "RestApi",
            handler=handler,
            proxy=True,
            rest_api_name=f"{cdk.Stack.of(self).stack_name}-search",
            description="DeepFood search API",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            binary_media_types=BINARY_MEDIA_TYPES,
            cloud_watch_role=cloud_watch_role,
            default_cors_preflight_options=apigw.CorsOptions(
                allow_origins=[allowed_origin],
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Content-Type"],
                max_age=cdk.Duration.seconds(CORS_MAX_AGE_S),
            ),
            deploy_options=apigw.StageOptions(
                stage_name=STAGE,
                throttling_rate_limit=throttle_rate,
                throttling_burst_limit=throttle_burst,
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                access_log_destination=apigw.LogGroupLogDestination(self.access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=False,
                ),
            ),
        )
        # The stage URL output LambdaRestApi adds ends in "/"; the stack outputs ApiUrl (no slash) instead.
        self.rest_api.node.try_remove_child("Endpoint")
        for response_type in (apigw.ResponseType.DEFAULT_4_XX, apigw.ResponseType.DEFAULT_5_XX):
            self.rest_api.add_gateway_response(
                f"Cors{response_type.response_type}",
                type=response_type,
                response_headers={"Access-Control-Allow-Origin": f"'{allowed_origin}'"},
            )
        self.web_acl = self._rate_limit(waf_rate_limit) if waf_rate_limit else None
        self._acknowledge_findings(cloud_watch_role, waf=self.web_acl is not None)

    def _rate_limit(self, limit: int) -> wafv2.CfnWebACL:
        if not 10 <= limit <= 2_000_000_000:
            raise ValueError(f"waf_rate_limit must be 10..2,000,000,000 requests per 5 minutes, got {limit}")
        name = f"{cdk.Stack.of(self).stack_name}-api"
        visibility = {"cloud_watch_metrics_enabled": True, "sampled_requests_enabled": True}
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(metric_name=name, **visibility),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="per-client-rate",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=limit, aggregate_key_type="IP", evaluation_window_sec=300
                        )
                    ),
                    visibility_config=wafv2.CfnWebACL.VisibilityConfigProperty(
                        metric_name=f"{name}-per-client-rate", **visibility
                    ),
                )
            ],
        )
        wafv2.CfnWebACLAssociation(
            self, "WebAclAssociation", resource_arn=self.rest_api.deployment_stage.stage_arn, web_acl_arn=acl.attr_arn
        )
        return acl

    @property
    def url(self) -> str:
        """Base URL of the stage, without a trailing slash (the page appends ``/search`` etc.)."""
        stage = self.rest_api.deployment_stage.stage_name
        return f"https://{self.rest_api.rest_api_id}.execute-api.{cdk.Aws.REGION}.{cdk.Aws.URL_SUFFIX}/{stage}"

    def _acknowledge_findings(self, cloud_watch_role: bool, *, waf: bool) -> None:
        if not waf:
            acknowledge(
                self.rest_api,
                {
                    "AwsSolutions-APIG3": "WAF is off by default (waf_rate_limit): a web ACL costs about $6 a "
                    "month, more than this stack at idle; reserved concurrency and stage throttling bound "
                    "abuse and cost instead. Turn it on for per-client rate limits.",
                },
            )
        acknowledge(
            self.rest_api,
            {
                "AwsSolutions-APIG2": "Lambda proxy integration: FastAPI validates every request against its "
                "pydantic models and answers 422; a gateway request validator would duplicate that contract.",
                "AwsSolutions-APIG4": "A public, anonymous search API by design: the public page calls it from "
                "the browser, where no secret can be kept. Stage throttling caps the cost of abuse.",
                "AwsSolutions-COG4": "The service has no user accounts, so no Cognito user pool authorizes it "
                "(see APIG4).",
            },
        )
        if cloud_watch_role:
            acknowledge(
                self.rest_api,
                {
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AmazonAPIGatewayPushToCloudWatchLogs]": "API Gateway's account-level logging role uses the "
                    "AWS-managed AmazonAPIGatewayPushToCloudWatchLogs policy, which exists for exactly this role.",
                },
            )
