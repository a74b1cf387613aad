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

from config.settings import StageSettings
from lambdas.contract import METRICS_NAMESPACE, RESULTS_PATH, EdgeLog, EdgeLogMetric
from stacks.common import retention

EDGE_REGION = "us-east-1"


class EdgeStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: StageSettings, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.cache_key_function_name = f"inference-cache-{settings.name}-cache-key"
        self.cache_key_function_role = self._function_role()
        self.replica_log_group = self._replica_logs(settings)
        self.web_acl: wafv2.CfnWebACL | None = None
        if settings.waf_rate_limit_per_5_min is not None:
            self.web_acl = self._web_acl(settings)

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

    def _web_acl(self, settings: StageSettings) -> wafv2.CfnWebACL:
        def visibility(name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=name, sampled_requests_enabled=True
            )

        acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="CLOUDFRONT",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            visibility_config=visibility(f"inference-cache-{settings.name}"),
            rules=[
                wafv2.CfnWebACL.RuleProperty(
                    name="RatePerClientIp",
                    priority=0,
                    action=wafv2.CfnWebACL.RuleActionProperty(block={}),
                    statement=wafv2.CfnWebACL.StatementProperty(
                        rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                            limit=settings.waf_rate_limit_per_5_min,
                            evaluation_window_sec=300,
                            aggregate_key_type="IP",
                            # The edge function's own lookups come from Lambda@Edge's few
                            # egress addresses: counted, they would be blocked under load,
                            # every 403 would read as a miss and all traffic go to the GPU.
                            scope_down_statement=_not_results_path(),
                        )
                    ),
                    visibility_config=visibility("rate-per-client-ip"),
                ),
                # Managed groups chosen for an API that takes large JSON bodies: the
                # common rule set is left out because its 8 KB body-size rule would
                # block ordinary prompts.
                _managed_rule("AWSManagedRulesAmazonIpReputationList", 1, visibility),
                _managed_rule("AWSManagedRulesKnownBadInputsRuleSet", 2, visibility),
            ],
        )
        # WAF only delivers to log groups whose names start with aws-waf-logs-.
        log_group_name = f"aws-waf-logs-inference-cache-{settings.name}"
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
    return wafv2.CfnWebACL.RuleProperty(
        name=name,
        priority=priority,
        override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
        statement=wafv2.CfnWebACL.StatementProperty(
            managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(vendor_name="AWS", name=name)
        ),
        visibility_config=visibility(name),
    )
