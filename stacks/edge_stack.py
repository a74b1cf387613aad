"""Edge stack, in us-east-1 (CloudFront's region): the home of the Lambda@Edge
function and of the web ACL. The function itself is declared by the CDN stack through
`cloudfront.experimental.EdgeFunction(stack_id=...)`, which places it here and hands
its version ARN across regions through SSM."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from config.settings import RateLimits, StageSettings
from lambdas.contract import METRICS_NAMESPACE, RESULTS_PATH, STATUS_HEADER, EdgeLog, EdgeLogMetric
from lambdas.errors import ApiError
from stacks.common import retention

EDGE_REGION = "us-east-1"


class EdgeStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: StageSettings, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.cache_key_function_name = settings.cache_key_function_name
        self.cache_key_function_role = self._function_role()
        self.replica_log_group = self._replica_logs(settings)
        self.web_acl: wafv2.CfnWebACL | None = None
        if settings.rate_limits is not None:
            self.web_acl = self._web_acl(settings, settings.rate_limits)

    def _function_role(self) -> iam.Role:
        role = iam.Role(
            self,
            "CacheKeyFunctionRole",
            assumed_by=iam.CompositePrincipal(
                iam.ServicePrincipal("lambda.amazonaws.com"), iam.ServicePrincipal("edgelambda.amazonaws.com")
            ),
            description="Lambda@Edge cache-key function: write its own logs, nothing else",
        )
        # Replicas log to /aws/lambda/us-east-1.<name> in whichever region served the request.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[
                    f"arn:{self.partition}:logs:*:{self.account}:log-group:/aws/lambda/{EDGE_REGION}.{self.cache_key_function_name}:*"
                ],
            )
        )
        return role

    def _replica_logs(self, settings: StageSettings) -> logs.LogGroup:
        """The replicas' log group in us-east-1, with the stage's retention, and the metric
        filters the edge alarms read. Lambda creates the same group in every other region
        that serves traffic, never expiring; README "Lambda@Edge logs in other regions"."""
        group = logs.LogGroup(
            self,
            "CacheKeyReplicaLogs",
            log_group_name=f"/aws/lambda/{EDGE_REGION}.{self.cache_key_function_name}",
            retention=retention(settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        patterns = {
            EdgeLogMetric.REQUESTS: logs.FilterPattern.number_value(f"$.{EdgeLog.DURATION}", ">=", 0),
            EdgeLogMetric.LOOKUPS: logs.FilterPattern.exists(f"$.{EdgeLog.LOOKUP}"),
            EdgeLogMetric.LOOKUP_FAILED: logs.FilterPattern.any(
                *(logs.FilterPattern.string_value(f"$.{EdgeLog.LOOKUP}", "=", f"{prefix}*") for prefix in EdgeLog.LOOKUP_FAILURES)
            ),
        }
        for metric_name, pattern in patterns.items():
            group.add_metric_filter(
                metric_name,
                metric_namespace=METRICS_NAMESPACE,
                metric_name=metric_name,
                filter_pattern=pattern,
                metric_value="1",
                unit=cloudwatch.Unit.COUNT,
            )
        return group

    def _web_acl(self, settings: StageSettings, limits: RateLimits) -> wafv2.CfnWebACL:
        """Rate limits per platform API key (a custom aggregation key on each key header;
        WAF counts a request only under a key it carries), per client IP for requests that
        carry no key, IP reputation and known bad inputs; an over-limit caller gets 429 in
        the OpenAI error shape with Retry-After. None of them looks at /_cache/: the edge
        function's lookups are never counted or blocked; /_cache/ is guarded by its
        viewer-request function instead (docs/security.md)."""

        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
            )

        too_many = wafv2.CfnWebACL.RuleActionProperty(
            block=wafv2.CfnWebACL.BlockActionProperty(
                custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                    response_code=429,
                    custom_response_body_key=RATE_LIMITED_BODY,
                    response_headers=[
                        wafv2.CfnWebACL.CustomHTTPHeaderProperty(name="retry-after", value=str(limits.retry_after_seconds)),
                        wafv2.CfnWebACL.CustomHTTPHeaderProperty(name=STATUS_HEADER, value="BYPASS"),
                    ],
                )
            )
        )

        def per_key(name: str, header: str, priority: int) -> wafv2.CfnWebACL.RuleProperty:
            return wafv2.CfnWebACL.RuleProperty(
                name=name,
                priority=priority,
                action=too_many,
                statement=wafv2.CfnWebACL.StatementProperty(
                    rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                        limit=limits.requests_per_key,
                        evaluation_window_sec=limits.window_seconds,
                        aggregate_key_type="CUSTOM_KEYS",
                        custom_keys=[
                            wafv2.CfnWebACL.RateBasedStatementCustomKeyProperty(
                                header=wafv2.CfnWebACL.RateLimitHeaderProperty(
                                    name=header,
                                    text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
                                )
                            )
                        ],
                        scope_down_statement=_not_results_path(),
                    )
                ),
                visibility_config=visibility(name),
            )

        keyless = wafv2.CfnWebACL.StatementProperty(
            and_statement=wafv2.CfnWebACL.AndStatementProperty(
                statements=[_not_results_path(), _without_header("authorization"), _without_header("x-api-key")]
            )
        )
        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="CLOUDFRONT",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility(f"inference-cache-{settings.name}"),
            custom_response_bodies={
                RATE_LIMITED_BODY: wafv2.CfnWebACL.CustomResponseBodyProperty(
                    content_type="APPLICATION_JSON", content=rate_limited_body(limits)
                )
            },
            rules=[
                per_key("RatePerApiKeyBearer", "authorization", 0),
                per_key("RatePerApiKeyHeader", "x-api-key", 1),
                wafv2.CfnWebACL.RuleProperty(
                    name="RatePerClientIpWithoutKey",
                    priority=2,
                    action=too_many,
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=limits.keyless_requests_per_ip,
                            evaluation_window_sec=limits.window_seconds,
                            aggregate_key_type="IP",
                            scope_down_statement=keyless,
                        )
                    ),
                    visibility_config=visibility("rate-per-client-ip-without-key"),
                ),
                _managed_rule("AWSManagedRulesAmazonIpReputationList", 3, visibility),
                _managed_rule("AWSManagedRulesKnownBadInputsRuleSet", 4, visibility),
            ],
        )
        log_group_name = settings.waf_log_group_name
        waf_logs = logs.LogGroup(
            self,
            "WebAclLogs",
            log_group_name=log_group_name,
            retention=retention(settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        logging = wafv2.CfnLoggingConfiguration(
            self,
            "WebAclLogging",
            resource_arn=acl.attr_arn,
            log_destination_configs=[
                self.format_arn(
                    service="logs",
                    resource="log-group",
                    resource_name=log_group_name,
                    arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
        )
        logging.node.add_dependency(waf_logs)
        return acl


def _not_results_path() -> wafv2.CfnWebACL.StatementProperty:
    return wafv2.CfnWebACL.StatementProperty(
        not_statement=wafv2.CfnWebACL.NotStatementProperty(
            statement=wafv2.CfnWebACL.StatementProperty(
                byte_match_statement=wafv2.CfnWebACL.ByteMatchStatementProperty(
                    field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(uri_path={}),
                    positional_constraint="STARTS_WITH",
                    search_string=RESULTS_PATH,
                    text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
                )
            )
        )
    )


def _managed_rule(name: str, priority: int, visibility) -> wafv2.CfnWebACL.RuleProperty:
    """An AWS managed rule group, scoped down to everything but /_cache/ (the edge's lookups)."""
    return wafv2.CfnWebACL.RuleProperty(
        name=name,
        priority=priority,
        override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
        statement=wafv2.CfnWebACL.StatementProperty(
            managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                vendor_name="AWS", name=name, scope_down_statement=_not_results_path()
            )
        ),
        visibility_config=visibility(name),
    )


def _without_header(name: str) -> wafv2.CfnWebACL.StatementProperty:
    """The request has no (or an empty) `name` header: WAF finds no match in a header that
    is absent, so 'size above 0' matches exactly the requests that carry it."""
    return wafv2.CfnWebACL.StatementProperty(
        not_statement=wafv2.CfnWebACL.NotStatementProperty(
            statement=wafv2.CfnWebACL.StatementProperty(
                size_constraint_statement=wafv2.CfnWebACL.SizeConstraintStatementProperty(
                    field_to_match=wafv2.CfnWebACL.FieldToMatchProperty(single_header={"Name": name}),
                    comparison_operator="GT",
                    size=0,
                    text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
                )
            )
        )
    )


# The custom response body WAF answers an over-limit caller with.
RATE_LIMITED_BODY = "rate-limited"


def rate_limited_body(limits: RateLimits) -> str:
    """The OpenAI error shape (the openai client retries a 429, honouring Retry-After)."""
    message = (
        f"Rate limit reached: at most {limits.requests_per_key} requests per API key per {limits.window_seconds} s; "
        f"retry after {limits.retry_after_seconds} s."
    )
    return ApiError(429, message, None, "rate_limit_exceeded").body().decode()
