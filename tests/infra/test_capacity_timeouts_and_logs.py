"""Issue 10: rollouts keep the scaled instance count, the origin adapter's reserved
concurrency and timeout budget, the WAF rate rule's scope, the edge lookup metrics, log
retention of the log groups AWS services would otherwise create, FSx backups."""

from __future__ import annotations

import math

import pytest
from aws_cdk.assertions import Template

from config.stages import STAGES
from stacks.bundles import ORIGIN_ADAPTER_HANDLER
from tests.conftest import STAGE_NAMES, WORKSPACE_STAGES

EDGE_REGION = "us-east-1"


def _resources(synthesized, stage, stack, resource_type) -> dict[str, dict]:
    return {
        k: r["Properties"]
        for k, r in synthesized[stage].templates[stack]["Resources"].items()
        if r["Type"] == resource_type
    }


def _adapter(synthesized, stage) -> dict:
    (function,) = [
        f
        for f in _resources(synthesized, stage, "Inference", "AWS::Lambda::Function").values()
        if f.get("Handler") == ORIGIN_ADAPTER_HANDLER
    ]
    return function


# -- 1. rollouts keep what autoscaling reached -----------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_endpoint_updates_retain_the_scaled_instance_count(synthesized, stage):
    endpoints = _resources(synthesized, stage, "Inference", "AWS::SageMaker::Endpoint").values()
    assert len(endpoints) == 2  # the LLM's and the embeddings model's: the same rollout rules
    for endpoint in endpoints:
        assert endpoint["RetainAllVariantProperties"] is True
        # Instance count and weight are retained; nothing is excluded (DataCaptureConfig is
        # documented as not supported there, and no capture is configured).
        assert "ExcludeRetainedVariantProperties" not in endpoint
        assert endpoint.get("RetainDeploymentConfig", False) is False
    assert "DataCaptureConfig" not in str(_resources(synthesized, stage, "Inference", "AWS::SageMaker::EndpointConfig"))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_stage_scales_its_endpoints(synthesized, stage):
    # Autoscaling off is only for the first deploy of an instance-type change.
    assert STAGES[stage].endpoint.autoscaling is True and STAGES[stage].embeddings.endpoint.autoscaling is True
    assert len(_resources(synthesized, stage, "Inference", "AWS::ApplicationAutoScaling::ScalableTarget")) == 2


# -- 2. reserved concurrency for the origin adapter -------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_reserves_the_fleets_concurrency_with_headroom(synthesized, stage):
    settings = STAGES[stage]
    fleets = (settings.endpoint, settings.embeddings.endpoint)  # one adapter serves both endpoints
    expected = sum(
        math.ceil(e.max_instances * e.concurrent_requests_per_instance * e.adapter_concurrency_headroom) for e in fleets
    )
    reserved = _adapter(synthesized, stage)["ReservedConcurrentExecutions"]
    assert reserved == expected
    # At least the fleets' own capacity, and Lambda's minimum left unreserved.
    assert reserved >= sum(e.max_instances * e.concurrent_requests_per_instance for e in fleets)
    assert reserved <= settings.lambda_concurrency_quota - 100


# -- 5. timeout budget ------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_timeout_budget_is_ordered_model_read_adapter_origin_read(synthesized, stage):
    """A whole answer: model read < the adapter's budget < CloudFront's origin read timeout.
    A stream: its own budget, the function's Lambda timeout that budget and the store after
    it (at most Lambda's 15 min); CloudFront's origin read timeout bounds the gap between
    the stream's bytes, and the model read (the gap between the model's parts) stays below it."""
    timeouts = STAGES[stage].endpoint.timeouts
    function = _adapter(synthesized, stage)
    variables = function["Environment"]["Variables"]
    model_read = int(variables["ENDPOINT_READ_TIMEOUT_SECONDS"])
    adapter = int(variables["ADAPTER_TIMEOUT_SECONDS"])
    stream = int(variables["STREAM_BUDGET_SECONDS"])
    (distribution,) = _resources(synthesized, stage, "Cdn", "AWS::CloudFront::Distribution").values()
    read_timeouts = {
        o["CustomOriginConfig"]["OriginReadTimeout"]
        for o in distribution["DistributionConfig"]["Origins"]
        if "CustomOriginConfig" in o
    }
    (origin_read,) = read_timeouts
    assert (model_read, adapter, origin_read, stream) == (
        timeouts.model_read_seconds,
        timeouts.adapter_seconds,
        timeouts.origin_read_seconds,
        timeouts.stream_seconds,
    )
    # Connect, throttle back-off and the result store fit between model read and the
    # adapter's budget; a cold start between that and CloudFront's.
    assert model_read + 6 <= adapter and adapter + 5 <= origin_read <= 60
    assert function["Timeout"] == stream + 6 <= 900 and stream >= adapter
    assert model_read < origin_read


# -- 3. WAF rate rule and edge lookup metrics -------------------------------------------


@pytest.mark.parametrize("stage", [s for s in STAGE_NAMES if STAGES[s].rate_limits is not None])
def test_no_waf_rule_counts_or_blocks_the_edge_functions_own_lookups(synthesized, stage):
    """Every rate rule and every managed rule group is scoped down to everything but
    /_cache/: the edge's lookups come from Lambda@Edge's few egress addresses and carry no
    API key; /_cache/ is guarded by its viewer-request function instead."""
    (acl,) = _resources(synthesized, stage, "Edge", "AWS::WAFv2::WebACL").values()
    for rule in acl["Rules"]:
        statement = rule["Statement"]
        inner = statement.get("RateBasedStatement") or statement.get("ManagedRuleGroupStatement")
        scope = inner["ScopeDownStatement"]
        scopes = scope["AndStatement"]["Statements"] if "AndStatement" in scope else [scope]
        (not_results,) = [s for s in scopes if "ByteMatchStatement" in s.get("NotStatement", {}).get("Statement", {})]
        match = not_results["NotStatement"]["Statement"]["ByteMatchStatement"]
        assert match["FieldToMatch"] == {"UriPath": {}}, rule["Name"]
        assert match["PositionalConstraint"] == "STARTS_WITH"
        assert match["SearchString"] == "/_cache/"
        assert match["TextTransformations"] == [{"Priority": 0, "Type": "NONE"}]


def _replica_log_group(synthesized, stage) -> tuple[str, dict]:
    name = f"/aws/lambda/{EDGE_REGION}.inference-cache-{stage}-cache-key"
    groups = _resources(synthesized, stage, "Edge", "AWS::Logs::LogGroup")
    ((logical_id, group),) = [(k, g) for k, g in groups.items() if g.get("LogGroupName") == name]
    return logical_id, group


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_log_metric_filters_count_requests_lookups_and_failed_lookups(synthesized, stage):
    logical_id, _ = _replica_log_group(synthesized, stage)
    filters = _resources(synthesized, stage, "Edge", "AWS::Logs::MetricFilter").values()
    by_metric = {}
    for f in filters:
        assert f["LogGroupName"] == {"Ref": logical_id}
        (transformation,) = f["MetricTransformations"]
        assert transformation["MetricNamespace"] == "InferenceCache"
        assert transformation["MetricValue"] == "1"
        by_metric[transformation["MetricName"]] = f["FilterPattern"]
    assert set(by_metric) == {"EdgeRequests", "EdgeLookups", "EdgeLookupFailed"}
    assert "$.ms >= 0" in by_metric["EdgeRequests"]
    # Any string value: a line with a lookup field.
    assert by_metric["EdgeLookups"] == '{ $.lookup = "*" }'
    failed = by_metric["EdgeLookupFailed"]
    assert '$.lookup = "lookup-status-*"' in failed and '$.lookup = "lookup-failed-*"' in failed and "||" in failed
    # A clean miss (403/404) and a hit are not failures.
    assert "miss" not in failed.replace("lookup-", "")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_lookup_failures_alarm_on_the_filtered_metrics(synthesized, stage):
    sla = STAGES[stage].sla
    alarms = _resources(synthesized, stage, "EdgeMonitoring", "AWS::CloudWatch::Alarm").values()
    (alarm,) = [a for a in alarms if a["AlarmName"] == f"inference-cache-{stage}-edge-lookup-failures"]
    assert alarm["Threshold"] == pytest.approx(sla.edge_lookup_failure_rate_max)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 2)
    metrics = {q["MetricStat"]["Metric"]["MetricName"]: q for q in alarm["Metrics"] if "MetricStat" in q}
    assert set(metrics) == {"EdgeLookupFailed", "EdgeLookups"}
    for query in metrics.values():
        assert query["MetricStat"]["Metric"]["Namespace"] == "InferenceCache"
        assert query["MetricStat"]["Stat"] == "Sum" and query["MetricStat"]["Period"] == 300
    (expression,) = [q["Expression"] for q in alarm["Metrics"] if "Expression" in q]
    floor = math.ceil(sla.min_requests_per_5_min)
    failed, total = metrics["EdgeLookupFailed"]["Id"], metrics["EdgeLookups"]["Id"]
    assert expression == f"IF({total} >= {floor}, FILL({failed}, 0) / {total}, 0)"
    assert "TICKET" in alarm["AlarmDescription"] and len(alarm["AlarmActions"]) == 1


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_sustained_adapter_throttling_opens_a_ticket(synthesized, stage):
    alarms = _resources(synthesized, stage, "Monitoring", "AWS::CloudWatch::Alarm").values()
    (alarm,) = [a for a in alarms if a["AlarmName"] == f"inference-cache-{stage}-origin-adapter-throttled"]
    assert alarm["MetricName"] == "Throttles" and alarm["Namespace"] == "AWS/Lambda"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": f"inference-cache-{stage}-origin-adapter"}]
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 300
    assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 3)
    assert alarm["TreatMissingData"] == "notBreaching"
    assert "TICKET" in alarm["AlarmDescription"]
    assert str(STAGES[stage].adapter_reserved_concurrency) in alarm["AlarmDescription"]


# -- 6. log retention and FSx backups ---------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_replica_log_group_in_us_east_1_has_the_stage_retention(synthesized, stage):
    _, group = _replica_log_group(synthesized, stage)
    assert group["RetentionInDays"] == STAGES[stage].log_retention_days
    assert synthesized[stage].stage.edge.region == EDGE_REGION


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_endpoint_log_group_is_owned_with_retention_before_the_endpoint(synthesized, stage):
    template = synthesized[stage].templates["Inference"]
    groups = _resources(synthesized, stage, "Inference", "AWS::Logs::LogGroup")
    endpoints = {
        r["Properties"]["EndpointName"]: r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::Endpoint"
    }
    for name in (f"inference-cache-{stage}", f"inference-cache-{stage}-embeddings"):
        ((logical_id, group),) = [
            (k, g) for k, g in groups.items() if g.get("LogGroupName") == f"/aws/sagemaker/Endpoints/{name}"
        ]
        assert group["RetentionInDays"] == STAGES[stage].log_retention_days
        assert logical_id in endpoints[name]["DependsOn"]


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_fsx_backups_are_set_explicitly(synthesized, stage):
    (fs,) = _resources(synthesized, stage, "ModelStorage", "AWS::FSx::FileSystem").values()
    assert fs["LustreConfiguration"]["AutomaticBackupRetentionDays"] == STAGES[stage].workspace.backup_retention_days


# -- 7. the availability SLI counts viewer requests, not the edge's own lookups ----------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_availability_sli_takes_the_lookups_out_of_the_denominator(synthesized, stage):
    budget = 1 - STAGES[stage].sla.availability_target
    template = Template.from_json(synthesized[stage].templates["EdgeMonitoring"])
    alarms = template.find_resources("AWS::CloudWatch::Alarm")
    (alarm,) = [
        a["Properties"]
        for a in alarms.values()
        if a["Properties"]["AlarmName"] == f"inference-cache-{stage}-availability-fast-burn-5m"
    ]
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    metric_names = {q["MetricStat"]["Metric"]["MetricName"]: q["Id"] for q in queries.values() if "MetricStat" in q}
    assert set(metric_names) == {"Requests", "5xxErrorRate", "EdgeRequests", "EdgeLookups"}
    (share_id,) = [i for i, q in queries.items() if "Expression" in q and not q.get("ReturnData", True)]
    r, e = metric_names["Requests"], metric_names["5xxErrorRate"]
    er, el = metric_names["EdgeRequests"], metric_names["EdgeLookups"]
    # Lookups per edge request; none sampled: as if every request looked up (early, never late).
    assert queries[share_id]["Expression"] == f"IF(FILL({er}, 0) > 0, FILL({el}, 0) / FILL({er}, 0), 1)"
    (result,) = [q for q in queries.values() if "Expression" in q and q.get("ReturnData", True)]
    floor = STAGES[stage].sla.min_requests_per_5_min
    divisor = f"{100 * budget:.10f}".rstrip("0").rstrip(".")
    assert result["Expression"] == (f"IF({r} / (1 + {share_id}) >= {floor}, {e} * (1 + {share_id}) / {divisor}, 0)")


def test_first_deploy_of_an_instance_type_change_deregisters_the_scalable_target():
    """EndpointSettings(autoscaling=False): no scalable target or policy, the endpoint
    still keeps the count it has (README, "Changing the instance type")."""
    import dataclasses

    import aws_cdk as cdk

    from stacks.foundation_stack import FoundationStack
    from stacks.inference_stack import InferenceStack
    from stacks.model_storage_stack import ModelStorageStack

    dev = STAGES["dev"]
    # The LLM's instance type changes; the embeddings endpoint keeps scaling (each has its own flag).
    settings = dataclasses.replace(dev, endpoint=dataclasses.replace(dev.endpoint, autoscaling=False))
    app = cdk.App()
    env = cdk.Environment(account=settings.account, region=settings.home_region)
    foundation = FoundationStack(app, "Foundation", settings=settings, env=env)
    storage = ModelStorageStack(
        app,
        "ModelStorage",
        settings=settings,
        vpc=foundation.vpc,
        subnets=foundation.private_subnets,
        log_bucket=foundation.log_bucket,
        env=env,
    )
    inference = InferenceStack(
        app,
        "Inference",
        settings=settings,
        vpc=foundation.vpc,
        subnets=foundation.private_subnets,
        log_bucket=foundation.log_bucket,
        model_bucket=storage.model_bucket,
        env=env,
    )
    template = Template.from_stack(inference)
    (target,) = template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget").values()
    assert "EmbeddingsEndpoint" in str(target["Properties"]["ResourceId"])
    template.resource_count_is("AWS::ApplicationAutoScaling::ScalingPolicy", 1)
    template.has_resource_properties(
        "AWS::SageMaker::Endpoint", {"EndpointName": "inference-cache-dev", "RetainAllVariantProperties": True}
    )
