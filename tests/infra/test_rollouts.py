"""Rollouts that undo themselves (issue 23): every endpoint updates blue/green, all at once,
bakes for the stage's baking period, and rolls back on its own alarms, which watch only
the new fleet (the endpoint config the template deploys). Template assertions per stage,
and the settings' bounds."""

from __future__ import annotations

import dataclasses

import pytest
from aws_cdk.assertions import Template

from config.aws_facts import SAGEMAKER_ROLLOUT_TIMEOUT_MAX_SECONDS
from config.settings import (
    MIN_BAKING_MINUTES,
    ROLLBACK_ALARM_DATAPOINTS,
    ROLLBACK_ALARM_PERIODS,
    EndpointSettings,
    SettingsError,
)
from config.stages import STAGES
from stacks.model_endpoint import VARIANT_NAME
from stacks.rollouts import ROLLBACK_SIGNALS, rollback_alarm_name
from stacks.sla_metrics import min_requests
from tests.conftest import STAGE_NAMES


def _template(synthesized, stage) -> Template:
    return Template.from_json(synthesized[stage].templates["Inference"])


def _endpoints(template: Template) -> dict[str, tuple[str, dict]]:
    """endpoint name -> (logical id, properties), every endpoint of the stage."""
    return {
        e["Properties"]["EndpointName"]: (logical_id, e["Properties"])
        for logical_id, e in template.find_resources("AWS::SageMaker::Endpoint").items()
    }


def _endpoint_config_id(endpoint: dict) -> str:
    logical_id, attribute = endpoint["EndpointConfigName"]["Fn::GetAtt"]
    assert attribute == "EndpointConfigName"
    return logical_id


def _rollback_alarms(template: Template, endpoint_name: str) -> dict[str, tuple[str, dict]]:
    """slug -> (logical id, properties) of the endpoint's rollback alarms."""
    by_name = {
        a["Properties"]["AlarmName"]: (logical_id, a["Properties"])
        for logical_id, a in template.find_resources("AWS::CloudWatch::Alarm").items()
    }
    return {slug: by_name[rollback_alarm_name(endpoint_name, slug)] for slug in ROLLBACK_SIGNALS}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_endpoint_of_the_stage_rolls_out_blue_green_all_at_once_with_the_stage_baking_period(
    synthesized, stage
):
    settings = STAGES[stage]
    template = _template(synthesized, stage)
    endpoints = _endpoints(template)
    assert set(endpoints) == set(settings.endpoints) and len(endpoints) == 1 + (settings.embeddings is not None)
    for name, (_, endpoint) in endpoints.items():
        _assert_blue_green(endpoint, settings.endpoints[name])


def _assert_blue_green(endpoint: dict, endpoint_settings: EndpointSettings) -> None:
    policy = endpoint["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "ALL_AT_ONCE",
        "WaitIntervalInSeconds": endpoint_settings.rollout_baking_minutes * 60,
    }
    assert policy["TerminationWaitInSeconds"] == 0
    # The limit covers the new fleet's download and start-up and the baking period.
    waits = (
        endpoint_settings.model_data_download_timeout_seconds
        + endpoint_settings.startup_health_check_timeout_seconds
        + endpoint_settings.rollout_baking_minutes * 60
    )
    assert waits < policy["MaximumExecutionTimeoutInSeconds"] == endpoint_settings.rollout_timeout_seconds <= 28_800
    assert "RollingUpdatePolicy" not in endpoint["DeploymentConfig"]
    # The template decides every rollout; capacity is kept as autoscaling left it.
    assert endpoint["RetainDeploymentConfig"] is False
    assert endpoint["RetainAllVariantProperties"] is True


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_rollback_alarms_are_the_stages_5xx_and_model_error_objectives_on_the_new_fleet(synthesized, stage):
    settings = STAGES[stage]
    template = _template(synthesized, stage)
    floor = min_requests(settings.sla.min_requests_per_5_min, 60)
    for _, endpoint in _endpoints(template).values():
        _assert_rollback_alarms(template, endpoint, settings, floor)
    assert ROLLBACK_SIGNALS["5xx-rate"][0] == "Invocation5XXErrors"
    assert ROLLBACK_SIGNALS["model-error-rate"][0] == "InvocationModelErrors"


def _assert_rollback_alarms(template: Template, endpoint: dict, settings, floor: int) -> None:
    config_id = _endpoint_config_id(endpoint)
    alarms = _rollback_alarms(template, endpoint["EndpointName"])
    assert set(alarms) == {"5xx-rate", "model-error-rate"}
    for slug, (_, alarm) in alarms.items():
        assert alarm["Threshold"] == settings.sla.endpoint_error_rate_max
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (ROLLBACK_ALARM_PERIODS, ROLLBACK_ALARM_DATAPOINTS)
        assert alarm["TreatMissingData"] == "notBreaching"
        # SageMaker reads them; nobody is notified by them.
        assert not alarm.get("AlarmActions") and not alarm.get("OKActions")
        (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
        assert expression["Expression"] == f"IF(total >= {floor}, FILL(errors, 0) / total, 0)"
        stats = {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}
        assert stats["errors"]["Metric"]["MetricName"] == ROLLBACK_SIGNALS[slug][0]
        assert stats["total"]["Metric"]["MetricName"] == "Invocations"
        for stat in stats.values():
            assert stat["Period"] == 60 and stat["Stat"] == "Sum"
            assert stat["Metric"]["Namespace"] == "AWS/SageMaker"
            dimensions = {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]}
            # The new fleet only: the endpoint config this template deploys.
            assert dimensions == {
                "EndpointName": endpoint["EndpointName"],
                "VariantName": VARIANT_NAME,
                "EndpointConfigName": {"Fn::GetAtt": [config_id, "EndpointConfigName"]},
            }


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_the_endpoint_rolls_back_on_exactly_its_rollback_alarms_which_exist_before_it(synthesized, stage):
    template = _template(synthesized, stage)
    for _, endpoint in _endpoints(template).values():
        alarms = _rollback_alarms(template, endpoint["EndpointName"])
        named = endpoint["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
        # A Ref: CloudFormation creates (and repoints) the alarms before the endpoint.
        assert named == [{"AlarmName": {"Ref": logical_id}} for logical_id, _ in alarms.values()]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_model_role_may_read_its_own_endpoints_rollback_alarms_and_nothing_else_of_cloudwatch_alarms(
    synthesized, stage
):
    settings = STAGES[stage]
    template = _template(synthesized, stage)
    policies = template.find_resources("AWS::IAM::Policy")
    prefixes = {settings.endpoint_name: "ModelExecutionRole", settings.embeddings_endpoint_name: "EmbeddingsModelExecutionRole"}
    for name in _endpoints(template):
        (policy,) = [p for logical_id, p in policies.items() if logical_id.startswith(prefixes[name])]
        statements = [
            s for s in policy["Properties"]["PolicyDocument"]["Statement"] if "cloudwatch:DescribeAlarms" in str(s["Action"])
        ]
        assert len(statements) == 1 and statements[0]["Action"] == "cloudwatch:DescribeAlarms"
        expected = [
            f"arn:aws:cloudwatch:{settings.home_region}:{settings.account}:alarm:{rollback_alarm_name(name, slug)}"
            for slug in ROLLBACK_SIGNALS
        ]
        assert statements[0]["Resource"] == expected


def test_stages_bake_longer_the_closer_they_are_to_users_and_every_endpoint_of_a_stage_alike():
    baking = [STAGES[s].endpoint.rollout_baking_minutes for s in ("dev", "staging", "prod")]
    assert baking == sorted(baking) and baking[0] >= MIN_BAKING_MINUTES
    for stage in STAGES.values():
        assert {e.rollout_baking_minutes for e in stage.endpoints.values()} == {stage.endpoint.rollout_baking_minutes}


def test_baking_period_and_rollout_limit_are_bounded_by_the_alarms_and_by_sagemaker():
    base = dataclasses.asdict(STAGES["dev"].endpoint)
    base.pop("timeouts")

    def endpoint(**changes) -> EndpointSettings:
        return EndpointSettings(**{**base, **changes})

    assert endpoint(rollout_baking_minutes=MIN_BAKING_MINUTES).rollout_baking_minutes == MIN_BAKING_MINUTES
    assert endpoint(rollout_baking_minutes=60).rollout_timeout_seconds == 1800 + 1800 + 3600 + 600
    with pytest.raises(SettingsError, match="baking period"):
        endpoint(rollout_baking_minutes=MIN_BAKING_MINUTES - 1)  # the alarms could not judge it
    with pytest.raises(SettingsError, match="baking period"):
        endpoint(rollout_baking_minutes=61)  # WaitIntervalInSeconds is at most 3600
    # The longest rollout the bounds allow still fits SageMaker's limit, so no stage can
    # declare a rollout SageMaker would refuse.
    longest = endpoint(
        rollout_baking_minutes=60, model_data_download_timeout_seconds=3600, startup_health_check_timeout_seconds=3600
    )
    assert longest.rollout_timeout_seconds == 3 * 3600 + 600 <= SAGEMAKER_ROLLOUT_TIMEOUT_MAX_SECONDS
