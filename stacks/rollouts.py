"""Rollouts that undo themselves: every endpoint update is blue/green, all traffic moves
to the new fleet at once, and the new fleet bakes under its own rollback alarms; an
alarm in ALARM during the baking period moves the traffic back to the old fleet, which
is kept until the baking period ends (docs/decisions.md, "Rollouts that undo themselves").

The rollback alarms watch the NEW fleet only: SageMaker publishes a rollout's metrics with
the dimension EndpointConfigName = the new endpoint config once that fleet takes traffic
(SageMaker Developer Guide, "Auto-Rollback Configuration and Monitoring"). An alarm on the
whole endpoint would also fire on the old fleet's errors, and SageMaker stops a rollout
whose alarm trips on the old fleet: the fix for a failing model could never roll out.
The alarms take the endpoint config's name from the template, so CloudFormation points
them at the new config before it updates the endpoint.

Each alarm is an error ratio over 1-minute periods with the stage's own objective
(SlaSettings.endpoint_error_rate_max) and its own evidence floor (min_requests_per_5_min,
per minute): a rollout baked without traffic is not judged, it is not rolled back either.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from config.aws_facts import SAGEMAKER_ROLLBACK_ALARMS_MAX
from config.settings import ROLLBACK_ALARM_DATAPOINTS, ROLLBACK_ALARM_PERIODS, EndpointSettings, SlaSettings
from stacks.sla_metrics import SAGEMAKER_NAMESPACE, error_ratio, min_requests

ROLLBACK_PERIOD = cdk.Duration.minutes(1)
# slug -> (SageMaker error metric, what it catches). 5XX: the container fails or times out;
# model errors: every non-2xx the container answers, a new version that refuses every
# request with a 4xx (a broken chat template, a missing tokenizer) included.
ROLLBACK_SIGNALS = {
    "5xx-rate": ("Invocation5XXErrors", "invocations failed with 5XX (container errors, timeouts)"),
    "model-error-rate": ("InvocationModelErrors", "invocations answered with a non-2xx by the container"),
}
assert len(ROLLBACK_SIGNALS) <= SAGEMAKER_ROLLBACK_ALARMS_MAX


def rollback_alarm_name(endpoint_name: str, slug: str) -> str:
    return f"{endpoint_name}-rollback-{slug}"


class RolloutGuard(Construct):
    """The rollback alarms of one endpoint and the DeploymentConfig that uses them."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint_name: str,
        variant_name: str,
        endpoint_config_name: str,
        endpoint: EndpointSettings,
        sla: SlaSettings,
    ) -> None:
        super().__init__(scope, construct_id)
        self.endpoint_name = endpoint_name
        floor = min_requests(sla.min_requests_per_5_min, ROLLBACK_PERIOD.to_seconds())
        dimensions = {"EndpointName": endpoint_name, "VariantName": variant_name, "EndpointConfigName": endpoint_config_name}

        def metric(name: str) -> cw.Metric:
            return cw.Metric(
                namespace=SAGEMAKER_NAMESPACE,
                metric_name=name,
                dimensions_map=dimensions,
                statistic="Sum",
                period=ROLLBACK_PERIOD,
            )

        self.alarms: dict[str, cw.Alarm] = {}
        for slug, (metric_name, what) in ROLLBACK_SIGNALS.items():
            name = rollback_alarm_name(endpoint_name, slug)
            self.alarms[slug] = cw.Alarm(
                self,
                "".join(part.capitalize() for part in slug.split("-")),
                alarm_name=name,
                alarm_description=(
                    f"ROLLBACK of {endpoint_name} (no notification: SageMaker reads it during a rollout's "
                    f"{endpoint.rollout_baking_minutes}-minute baking period and moves traffic back to the old "
                    f"fleet). The new fleet's {what} above {sla.endpoint_error_rate_max * 100:g} % of its "
                    f"invocations in {ROLLBACK_ALARM_DATAPOINTS} of {ROLLBACK_ALARM_PERIODS} minutes; minutes under "
                    f"{floor} invocations read 0. Watches the endpoint config the template deploys "
                    "(EndpointConfigName), never the old fleet. Look first at: the endpoint's logs for the new "
                    "model version's errors, then the failed deploy's events."
                ),
                metric=error_ratio(
                    metric(metric_name),
                    metric("Invocations"),
                    floor,
                    f"new fleet {metric_name} per invocation",
                    period=ROLLBACK_PERIOD,
                ),
                threshold=sla.endpoint_error_rate_max,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=ROLLBACK_ALARM_PERIODS,
                datapoints_to_alarm=ROLLBACK_ALARM_DATAPOINTS,
                # No invocations on the new fleet is no evidence against it.
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            )

        self.deployment_config = sagemaker.CfnEndpoint.DeploymentConfigProperty(
            blue_green_update_policy=sagemaker.CfnEndpoint.BlueGreenUpdatePolicyProperty(
                # All at once: a canary must be at most half the variant's instances, and dev
                # and staging run one. The old fleet stays up while the new one bakes, so a
                # rollback is a traffic shift, not a re-provisioning.
                traffic_routing_configuration=sagemaker.CfnEndpoint.TrafficRoutingConfigProperty(
                    type="ALL_AT_ONCE", wait_interval_in_seconds=endpoint.rollout_baking_minutes * 60
                ),
                # The old fleet goes as soon as the baking period passed: two GPU fleets cost twice.
                termination_wait_in_seconds=0,
                maximum_execution_timeout_in_seconds=endpoint.rollout_timeout_seconds,
            ),
            auto_rollback_configuration=sagemaker.CfnEndpoint.AutoRollbackConfigProperty(
                alarms=[sagemaker.CfnEndpoint.AlarmProperty(alarm_name=a.alarm_name) for a in self.alarms.values()]
            ),
        )

    @property
    def alarm_names(self) -> list[str]:
        """Plain names, not tokens: a role's policy can name them without depending on the
        alarms (which depend on the endpoint config, which depends on that role)."""
        return [rollback_alarm_name(self.endpoint_name, slug) for slug in self.alarms]

    def grant_describe(self, role: iam.IRole) -> None:
        """SageMaker reads the rollback alarms with the model's execution role (the guide:
        "Ensure that your IAM execution role has permission to perform the
        cloudwatch:DescribeAlarms action on the auto-rollback alarms you specify")."""
        stack = cdk.Stack.of(self)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:DescribeAlarms"],
                resources=[
                    stack.format_arn(
                        service="cloudwatch",
                        resource="alarm",
                        resource_name=name,
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                    for name in self.alarm_names
                ],
            )
        )
