"""The public REST API: API Gateway (Lambda proxy) in front of the search function."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.nag import acknowledge
from lambda_fn.config import CORS_MAX_AGE_S

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
        self._acknowledge_findings(cloud_watch_role)

    @property
    def url(self) -> str:
        """Base URL of the stage, without a trailing slash (the page appends ``/search`` etc.)."""
        stage = self.rest_api.deployment_stage.stage_name
        return f"https://{self.rest_api.rest_api_id}.execute-api.{cdk.Aws.REGION}.{cdk.Aws.URL_SUFFIX}/{stage}"

    def _acknowledge_findings(self, cloud_watch_role: bool) -> None:
        acknowledge(
            self.rest_api,
            {
                "AwsSolutions-APIG2": "Lambda proxy integration: FastAPI validates every request against its "
                "pydantic models and answers 422; a gateway request validator would duplicate that contract.",
                "AwsSolutions-APIG3": "No WAF: a web ACL costs more per month than this whole stack at idle; "
                "stage throttling (rate and burst) bounds abuse and cost instead.",
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
