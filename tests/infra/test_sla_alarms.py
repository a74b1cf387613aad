"""SLA alarms: every objective in the stage's settings has its alarms, and every alarm's
metric, namespace, dimensions, statistic, period, threshold (units converted), evaluation
and missing-data treatment is what the settings say. Alarms live in the region of their
metrics and notify topics of that region; one composite per region pages.

Expected values are computed here from StageSettings (and a GPU table of our own), not
copied from the templates.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest

from config.settings import SlaSettings
from config.stages import STAGES
from tests.conftest import ROOT, STAGE_NAMES, WORKSPACE_STAGES

EDGE_REGION = "us-east-1"
# The instance types the stages use, and their GPUs (from the EC2/SageMaker specs).
GPUS = {"ml.g5.2xlarge": 1, "ml.g6e.2xlarge": 1}
PAGE_CHILDREN_EDGE = {"availability-fast-burn", "availability-slow-burn", "edge-origin-latency-p99"}
PAGE_CHILDREN_HOME = {
    "model-latency-p99",
    "origin-adapter-duration-p99",
    "endpoint-5xx-rate",
    "origin-adapter-error-rate",
    "origin-adapter-throttle-rate",
    "embeddings-model-latency-p99",
    "embeddings-endpoint-5xx-rate",
}
TICKETS_EDGE = {"edge-function-errors", "cache-hit-ratio-low", "edge-lookup-failures"}
TICKETS_HOME = {
    "origin-adapter-throttled",
    "endpoint-model-error-rate",
    "capacity-pinned-at-max",
    "gpu-utilization-high",
    "gpu-memory-high",
    "workspace-free-capacity-low",
    "embeddings-endpoint-model-error-rate",
    "embeddings-capacity-pinned-at-max",
}
# Only where the embeddings model runs on GPUs (staging, prod; dev's runs on CPUs).
EMBEDDINGS_GPU_TICKET = "embeddings-gpu-utilization-high"
BURN_WINDOWS = {"fast": (14.4, (3600, 300)), "slow": (6.0, (21_600, 1_800))}
# The objective each alarm enforces; a new SLA setting without an alarm fails below.
SLO_ALARMS = {
    "availability_target": [
        "availability-fast-burn-1h",
        "availability-fast-burn-5m",
        "availability-fast-burn",
        "availability-slow-burn-6h",
        "availability-slow-burn-30m",
        "availability-slow-burn",
    ],
    "edge_origin_latency_p99_ms": ["edge-origin-latency-p99"],
    "model_latency_p99_ms": ["model-latency-p99"],
    "embeddings_model_latency_p99_ms": ["embeddings-model-latency-p99"],
    "origin_adapter_duration_p99_ms": ["origin-adapter-duration-p99"],
    "endpoint_error_rate_max": [
        "endpoint-5xx-rate",
        "endpoint-model-error-rate",
        "embeddings-endpoint-5xx-rate",
        "embeddings-endpoint-model-error-rate",
        "origin-adapter-error-rate",
        "origin-adapter-throttle-rate",
    ],
    "cache_hit_ratio_floor": ["cache-hit-ratio-low"],
    "edge_function_error_rate_max": ["edge-function-errors"],
    "gpu_utilization_high_pct": ["gpu-utilization-high"],
    "gpu_memory_high_pct": ["gpu-memory-high"],
    "gpu_high_minutes": ["gpu-utilization-high", "gpu-memory-high"],
    "capacity_pinned_minutes": ["capacity-pinned-at-max", "embeddings-capacity-pinned-at-max"],
    "fsx_free_capacity_floor": ["workspace-free-capacity-low"],
    "edge_lookup_failure_rate_max": ["edge-lookup-failures"],
}
# Settings that shape alarms without being an objective of their own.
NOT_AN_OBJECTIVE = {"alarm_email", "min_requests_per_5_min"}


# -- helpers -----------------------------------------------------------------------------


def name(stage: str, slug: str) -> str:
    return f"inference-cache-{stage}-{slug}"


def alarms_of(template: dict) -> dict[str, dict]:
    """AlarmName -> properties (+ "_type", "_logical_id") for metric and composite alarms."""
    found = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm"):
            props = dict(resource["Properties"])
            props["_type"] = resource["Type"].split("::")[-1]
            props["_logical_id"] = logical_id
            found[props["AlarmName"]] = props
    return found


def stats(alarm: dict) -> dict[str, dict]:
    """The alarm's metrics, by metric name: namespace, dimensions, stat, period."""
    if "MetricName" in alarm:
        return {
            alarm["MetricName"]: {
                "namespace": alarm["Namespace"],
                "dimensions": {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])},
                "stat": alarm.get("ExtendedStatistic") or alarm.get("Statistic"),
                "period": alarm["Period"],
            }
        }
    out = {}
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            stat = query["MetricStat"]
            metric = stat["Metric"]
            out[metric["MetricName"]] = {
                "namespace": metric["Namespace"],
                "dimensions": {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])},
                "stat": stat["Stat"],
                "period": stat["Period"],
                "id": query["Id"],
            }
    return out


def expression(alarm: dict) -> str:
    (expr,) = [q["Expression"] for q in alarm.get("Metrics", []) if "Expression" in q and q.get("ReturnData", True)]
    return expr


def rule_text(template: dict, rule) -> str:
    """A composite alarm rule with child ARNs replaced by the children's names."""
    if isinstance(rule, str):
        return rule
    parts = []
    for part in rule["Fn::Join"][1]:
        if isinstance(part, str):
            parts.append(part)
        else:
            logical_id, attribute = part["Fn::GetAtt"]
            assert attribute == "Arn"
            parts.append(template["Resources"][logical_id]["Properties"]["AlarmName"])
    return "".join(parts)


def imports(value) -> str:
    return str(value)


def floor_for(stage: str, window_seconds: int) -> int:
    return math.ceil(STAGES[stage].sla.min_requests_per_5_min * window_seconds / 300)


def check_common(alarm: dict, *, threshold, comparison: str, evaluation: int, datapoints: int, missing: str) -> None:
    assert alarm["Threshold"] == pytest.approx(threshold), alarm["AlarmName"]
    assert alarm["ComparisonOperator"] == comparison, alarm["AlarmName"]
    assert alarm["EvaluationPeriods"] == evaluation, alarm["AlarmName"]
    assert alarm["DatapointsToAlarm"] == datapoints, alarm["AlarmName"]
    assert alarm["TreatMissingData"] == missing, alarm["AlarmName"]


def edge_alarms(synthesized, stage):
    return alarms_of(synthesized[stage].templates["EdgeMonitoring"])


def home_alarms(synthesized, stage):
    return alarms_of(synthesized[stage].templates["Monitoring"])


def assert_cloudfront_dims(dimensions: dict) -> None:
    assert set(dimensions) == {"DistributionId", "Region"}
    assert dimensions["Region"] == "Global"
    # In us-east-1 the home-region distribution id arrives through CDK's cross-region
    # export reader (SSM), never as a literal.
    assert "ExportsReader" in str(dimensions["DistributionId"]) and "RefDistribution" in str(
        dimensions["DistributionId"]
    )


def assert_endpoint_dims(stage: str, dimensions: dict, endpoint: str = "") -> None:
    assert dimensions == {"EndpointName": f"inference-cache-{stage}{endpoint}", "VariantName": "AllTraffic"}


# -- coverage ----------------------------------------------------------------------------


def test_every_sla_setting_is_an_objective_with_alarms_or_declared_otherwise():
    fields = {f.name for f in dataclasses.fields(SlaSettings)}
    assert fields == set(SLO_ALARMS) | NOT_AN_OBJECTIVE


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_slo_has_its_alarms(synthesized, stage):
    present = set(edge_alarms(synthesized, stage)) | set(home_alarms(synthesized, stage))
    for objective, slugs in SLO_ALARMS.items():
        if objective == "fsx_free_capacity_floor" and not STAGES[stage].workspace.enabled:
            assert name(stage, "workspace-free-capacity-low") not in present  # no file system to watch
            continue
        for slug in slugs:
            assert name(stage, slug) in present, f"{objective}: {slug} missing"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_no_unexpected_alarms(synthesized, stage):
    expected_edge = {name(stage, s) for s in TICKETS_EDGE | {"edge-origin-latency-p99", f"page-{EDGE_REGION}"}}
    for speed, (_, windows) in BURN_WINDOWS.items():
        expected_edge.add(name(stage, f"availability-{speed}-burn"))
        expected_edge |= {name(stage, f"availability-{speed}-burn-{_tag(w)}") for w in windows}
    tickets_home = TICKETS_HOME if STAGES[stage].workspace.enabled else TICKETS_HOME - {"workspace-free-capacity-low"}
    expected_home = {name(stage, s) for s in tickets_home | PAGE_CHILDREN_HOME | {f"page-{STAGES[stage].home_region}"}}
    if STAGES[stage].embeddings.endpoint.gpus:
        expected_home.add(name(stage, EMBEDDINGS_GPU_TICKET))
    assert set(edge_alarms(synthesized, stage)) == expected_edge
    assert set(home_alarms(synthesized, stage)) == expected_home


# -- availability: multi-window, multi-burn-rate ------------------------------------------


@pytest.mark.parametrize("speed", sorted(BURN_WINDOWS))
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_burn_rate_window_alarms(synthesized, stage, speed):
    sla = STAGES[stage].sla
    rate, windows = BURN_WINDOWS[speed]
    alarms = edge_alarms(synthesized, stage)
    for window in windows:
        alarm = alarms[name(stage, f"availability-{speed}-burn-{_tag(window)}")]
        check_common(
            alarm, threshold=rate, comparison="GreaterThanThreshold", evaluation=1, datapoints=1, missing="notBreaching"
        )
        metrics = stats(alarm)
        # CloudFront's counts, and the edge function's log counts that take its own
        # /_cache/ lookups out of the denominator (docs/sla.md, "Availability").
        assert set(metrics) == {"Requests", "5xxErrorRate", "EdgeRequests", "EdgeLookups"}
        assert metrics["Requests"]["stat"] == "Sum"
        assert metrics["5xxErrorRate"]["stat"] == "Average"
        for metric_name in ("Requests", "5xxErrorRate"):
            metric = metrics[metric_name]
            assert metric["namespace"] == "AWS/CloudFront"
            assert metric["period"] == window
            assert_cloudfront_dims(metric["dimensions"])
        for metric_name in ("EdgeRequests", "EdgeLookups"):
            metric = metrics[metric_name]
            assert metric["namespace"] == "InferenceCache" and metric["dimensions"] == {}
            assert metric["stat"] == "Sum" and metric["period"] == window
        # burn = 5xx share of viewer requests / budget, judged only with enough viewer
        # requests in the window; viewer requests = Requests / (1 + lookups per request).
        match = re.fullmatch(
            r"IF\((\w+) / \(1 \+ (\w+)\) >= (\d+), (\w+) \* \(1 \+ (\w+)\) / ([\d.]+), 0\)", expression(alarm)
        )
        assert match, expression(alarm)
        requests_id, share_id, floor, errors_id, share_again, divisor = match.groups()
        assert requests_id == metrics["Requests"]["id"] and errors_id == metrics["5xxErrorRate"]["id"]
        assert share_id == share_again
        (share,) = [q for q in alarm["Metrics"] if q["Id"] == share_id]
        er, el = metrics["EdgeRequests"]["id"], metrics["EdgeLookups"]["id"]
        assert share["Expression"] == f"IF(FILL({er}, 0) > 0, FILL({el}, 0) / FILL({er}, 0), 1)"
        assert int(floor) == floor_for(stage, window)
        assert float(divisor) == pytest.approx(100 * (1 - sla.availability_target))


@pytest.mark.parametrize("speed", sorted(BURN_WINDOWS))
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_burn_rate_composite_needs_long_and_short_window(synthesized, stage, speed):
    template = synthesized[stage].templates["EdgeMonitoring"]
    _, (long_window, short_window) = BURN_WINDOWS[speed]
    composite = alarms_of(template)[name(stage, f"availability-{speed}-burn")]
    assert composite["_type"] == "CompositeAlarm"
    assert rule_text(template, composite["AlarmRule"]) == (
        f'(ALARM("{name(stage, f"availability-{speed}-burn-{_tag(long_window)}")}") AND '
        f'ALARM("{name(stage, f"availability-{speed}-burn-{_tag(short_window)}")}"))'
    )
    # Burn composites page through the region's page composite, not on their own.
    assert "AlarmActions" not in composite


# -- latency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_origin_latency_p99_in_milliseconds(synthesized, stage):
    alarm = edge_alarms(synthesized, stage)[name(stage, "edge-origin-latency-p99")]
    (metric,) = stats(alarm).items()
    metric_name, metric = metric
    assert metric_name == "OriginLatency" and metric["namespace"] == "AWS/CloudFront"
    assert metric["stat"] == "p99" and metric["period"] == 300
    assert_cloudfront_dims(metric["dimensions"])
    check_common(
        alarm,
        threshold=STAGES[stage].sla.edge_origin_latency_p99_ms,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=3,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_model_latency_p99_threshold_in_microseconds(synthesized, stage):
    alarm = home_alarms(synthesized, stage)[name(stage, "model-latency-p99")]
    ((metric_name, metric),) = stats(alarm).items()
    assert metric_name == "ModelLatency" and metric["namespace"] == "AWS/SageMaker"
    assert metric["stat"] == "p99" and metric["period"] == 300
    assert_endpoint_dims(stage, metric["dimensions"])
    # ModelLatency is reported in microseconds; the objective is in milliseconds.
    check_common(
        alarm,
        threshold=STAGES[stage].sla.model_latency_p99_ms * 1000,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=3,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_duration_p99_in_milliseconds(synthesized, stage):
    alarm = home_alarms(synthesized, stage)[name(stage, "origin-adapter-duration-p99")]
    ((metric_name, metric),) = stats(alarm).items()
    assert metric_name == "Duration" and metric["namespace"] == "AWS/Lambda"
    assert metric["stat"] == "p99" and metric["period"] == 300
    assert set(metric["dimensions"]) == {"FunctionName"}
    assert metric["dimensions"]["FunctionName"] == f"inference-cache-{stage}-origin-adapter"
    check_common(
        alarm,
        threshold=STAGES[stage].sla.origin_adapter_duration_p99_ms,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=3,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_embeddings_model_latency_p99_against_its_own_objective(synthesized, stage):
    alarm = home_alarms(synthesized, stage)[name(stage, "embeddings-model-latency-p99")]
    ((metric_name, metric),) = stats(alarm).items()
    assert (metric_name, metric["namespace"], metric["stat"]) == ("ModelLatency", "AWS/SageMaker", "p99")
    assert_endpoint_dims(stage, metric["dimensions"], "-embeddings")
    check_common(
        alarm,
        threshold=STAGES[stage].sla.embeddings_model_latency_p99_ms * 1000,  # microseconds
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=3,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_embeddings_endpoint_error_rates_capacity_and_gpu(synthesized, stage):
    settings, alarms = STAGES[stage], home_alarms(synthesized, stage)
    for slug, errors in (("embeddings-endpoint-5xx-rate", "Invocation5XXErrors"),
                         ("embeddings-endpoint-model-error-rate", "InvocationModelErrors")):
        metrics = stats(alarms[name(stage, slug)])
        assert set(metrics) == {errors, "Invocations"}
        for metric in metrics.values():
            assert_endpoint_dims(stage, metric["dimensions"], "-embeddings")
        check_common(alarms[name(stage, slug)], threshold=settings.sla.endpoint_error_rate_max,
                     comparison="GreaterThanThreshold", evaluation=3, datapoints=2, missing="notBreaching")
    pinned = alarms[name(stage, "embeddings-capacity-pinned-at-max")]
    assert pinned["Threshold"] == settings.embeddings.endpoint.max_instances - 0.5
    for metric in stats(pinned).values():
        assert_endpoint_dims(stage, metric["dimensions"], "-embeddings")
    gpu = alarms.get(name(stage, EMBEDDINGS_GPU_TICKET))
    assert (gpu is not None) is (settings.embeddings.endpoint.gpus > 0)
    if gpu is not None:
        ((metric_name, metric),) = stats(gpu).items()
        assert metric_name == "GPUUtilization" and metric["namespace"] == "/aws/sagemaker/Endpoints"
        assert_endpoint_dims(stage, metric["dimensions"], "-embeddings")
        assert expression(gpu) == f"{metric['id']} / {settings.embeddings.endpoint.gpus}"
        assert gpu["Threshold"] == settings.sla.gpu_utilization_high_pct


# -- error rates ------------------------------------------------------------------------------

ERROR_RATE_ALARMS = {
    # slug: (namespace, errors metric, total metric, dimensions kind)
    "endpoint-5xx-rate": ("AWS/SageMaker", "Invocation5XXErrors", "Invocations", "endpoint"),
    "endpoint-model-error-rate": ("AWS/SageMaker", "InvocationModelErrors", "Invocations", "endpoint"),
    "origin-adapter-error-rate": ("AWS/Lambda", "Errors", "Invocations", "adapter"),
}


@pytest.mark.parametrize("slug", sorted(ERROR_RATE_ALARMS))
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_error_rate_alarms_are_ratios_over_invocations(synthesized, stage, slug):
    namespace, errors, total, dims = ERROR_RATE_ALARMS[slug]
    alarm = home_alarms(synthesized, stage)[name(stage, slug)]
    metrics = stats(alarm)
    assert set(metrics) == {errors, total}
    for metric in metrics.values():
        assert metric["namespace"] == namespace and metric["stat"] == "Sum" and metric["period"] == 300
        if dims == "endpoint":
            assert_endpoint_dims(stage, metric["dimensions"])
        else:
            assert metric["dimensions"]["FunctionName"] == f"inference-cache-{stage}-origin-adapter"
    e, t = metrics[errors]["id"], metrics[total]["id"]
    assert expression(alarm) == f"IF({t} >= {floor_for(stage, 300)}, FILL({e}, 0) / {t}, 0)"
    check_common(
        alarm,
        threshold=STAGES[stage].sla.endpoint_error_rate_max,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=2,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_throttle_rate_counts_throttled_requests_in_the_total(synthesized, stage):
    alarm = home_alarms(synthesized, stage)[name(stage, "origin-adapter-throttle-rate")]
    metrics = stats(alarm)
    assert set(metrics) == {"Throttles", "Invocations"}
    assert all(m["namespace"] == "AWS/Lambda" and m["stat"] == "Sum" and m["period"] == 300 for m in metrics.values())
    i, t = metrics["Invocations"]["id"], metrics["Throttles"]["id"]
    total = f"(FILL({i}, 0) + FILL({t}, 0))"
    assert expression(alarm) == f"IF({total} >= {floor_for(stage, 300)}, FILL({t}, 0) / {total}, 0)"
    check_common(
        alarm,
        threshold=STAGES[stage].sla.endpoint_error_rate_max,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=2,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_lambda_edge_errors_as_cloudfront_reports_them(synthesized, stage):
    alarm = edge_alarms(synthesized, stage)[name(stage, "edge-function-errors")]
    metrics = stats(alarm)
    assert set(metrics) == {"Requests", "LambdaExecutionError", "LambdaValidationError", "LambdaLimitExceededErrors"}
    for metric in metrics.values():
        assert metric["namespace"] == "AWS/CloudFront" and metric["stat"] == "Sum" and metric["period"] == 300
        assert_cloudfront_dims(metric["dimensions"])
    r = metrics["Requests"]["id"]
    errors = " + ".join(
        f"FILL({metrics[m]['id']}, 0)"
        for m in ("LambdaExecutionError", "LambdaValidationError", "LambdaLimitExceededErrors")
    )
    assert expression(alarm) == f"IF({r} >= {floor_for(stage, 300)}, ({errors}) / {r}, 0)"
    check_common(
        alarm,
        threshold=STAGES[stage].sla.edge_function_error_rate_max,
        comparison="GreaterThanThreshold",
        evaluation=3,
        datapoints=2,
        missing="notBreaching",
    )


# -- cache, capacity, workspace ---------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_cache_hit_ratio_below_floor_opens_a_ticket(synthesized, stage):
    alarm = edge_alarms(synthesized, stage)[name(stage, "cache-hit-ratio-low")]
    metrics = stats(alarm)
    assert set(metrics) == {"Requests", "CacheHitRate"}
    assert metrics["CacheHitRate"]["stat"] == "Average" and metrics["Requests"]["stat"] == "Sum"
    for metric in metrics.values():
        assert metric["namespace"] == "AWS/CloudFront" and metric["period"] == 3600
        assert_cloudfront_dims(metric["dimensions"])
    r, h = metrics["Requests"]["id"], metrics["CacheHitRate"]["id"]
    # Hours with too little traffic read as healthy (100 %), not as a low ratio.
    assert expression(alarm) == f"IF({r} >= {floor_for(stage, 3600)}, {h}, 100)"
    check_common(
        alarm,
        threshold=STAGES[stage].sla.cache_hit_ratio_floor * 100,  # CacheHitRate is a percentage
        comparison="LessThanThreshold",
        evaluation=3,
        datapoints=3,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_capacity_pinned_at_the_endpoint_maximum(synthesized, stage):
    settings = STAGES[stage]
    alarm = home_alarms(synthesized, stage)[name(stage, "capacity-pinned-at-max")]
    metrics = stats(alarm)
    assert set(metrics) == {"Invocations", "InvocationsPerInstance"}
    for metric in metrics.values():
        assert metric["namespace"] == "AWS/SageMaker" and metric["stat"] == "Sum" and metric["period"] == 300
        assert_endpoint_dims(stage, metric["dimensions"])
    i, p = metrics["Invocations"]["id"], metrics["InvocationsPerInstance"]["id"]
    assert expression(alarm) == f"IF({p} > 0, {i} / {p}, 0)"
    periods = settings.sla.capacity_pinned_minutes // 5
    check_common(
        alarm,
        threshold=settings.endpoint.max_instances - 0.5,
        comparison="GreaterThanOrEqualToThreshold",
        evaluation=periods,
        datapoints=periods,
        missing="notBreaching",
    )


@pytest.mark.parametrize(
    ("slug", "metric_name", "statistic", "setting"),
    [
        ("gpu-utilization-high", "GPUUtilization", "Average", "gpu_utilization_high_pct"),
        ("gpu-memory-high", "GPUMemoryUtilization", "Maximum", "gpu_memory_high_pct"),
    ],
)
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_gpu_alarms_are_normalized_per_gpu(synthesized, stage, slug, metric_name, statistic, setting):
    settings = STAGES[stage]
    alarm = home_alarms(synthesized, stage)[name(stage, slug)]
    ((found, metric),) = stats(alarm).items()
    assert found == metric_name
    assert metric["namespace"] == "/aws/sagemaker/Endpoints"
    assert metric["stat"] == statistic and metric["period"] == 300
    assert_endpoint_dims(stage, metric["dimensions"])
    # SageMaker sums the percentage over the instance's GPUs.
    assert expression(alarm) == f"{metric['id']} / {GPUS[settings.endpoint.instance_type]}"
    periods = settings.sla.gpu_high_minutes // 5
    check_common(
        alarm,
        threshold=getattr(settings.sla, setting),
        comparison="GreaterThanThreshold",
        evaluation=periods,
        datapoints=periods,
        missing="notBreaching",
    )


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_workspace_free_capacity_floor_in_bytes(synthesized, stage):
    settings = STAGES[stage]
    alarm = home_alarms(synthesized, stage)[name(stage, "workspace-free-capacity-low")]
    ((metric_name, metric),) = stats(alarm).items()
    assert metric_name == "FreeDataStorageCapacity" and metric["namespace"] == "AWS/FSx"
    # One data point per disk per minute: Sum over one minute is the file system.
    assert metric["stat"] == "Sum" and metric["period"] == 60
    assert set(metric["dimensions"]) == {"FileSystemId"}
    assert "ModelStorage:ExportsOutputRefWorkspace" in imports(metric["dimensions"]["FileSystemId"])
    check_common(
        alarm,
        threshold=settings.sla.fsx_free_capacity_floor * settings.workspace.capacity_gib * 1024**3,
        comparison="LessThanThreshold",
        evaluation=15,
        datapoints=15,
        missing="missing",
    )


# -- regions, routing, descriptions --------------------------------------------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_alarms_live_in_the_region_of_their_metrics(synthesized, stage):
    built = synthesized[stage].stage
    assert built.edge_monitoring.region == EDGE_REGION and built.edge_alerting.region == EDGE_REGION
    assert built.monitoring.region == STAGES[stage].home_region
    # us-east-1 metrics: CloudFront's, and the counts the us-east-1 metric filters take
    # from the edge function's log lines (InferenceCache Edge*, no dimensions).
    edge_log_metrics = {"EdgeRequests", "EdgeLookups", "EdgeLookupFailed"}
    for alarm in edge_alarms(synthesized, stage).values():
        if alarm["_type"] == "Alarm":
            metrics = stats(alarm)
            assert "AWS/CloudFront" in {m["namespace"] for m in metrics.values()} or set(metrics) <= edge_log_metrics
            for metric_name, metric in metrics.items():
                assert metric["namespace"] in ("AWS/CloudFront", "InferenceCache"), alarm["AlarmName"]
                if metric["namespace"] == "InferenceCache":
                    assert metric_name in edge_log_metrics and metric["dimensions"] == {}, alarm["AlarmName"]
    for alarm in home_alarms(synthesized, stage).values():
        if alarm["_type"] == "Alarm":
            assert "AWS/CloudFront" not in {m["namespace"] for m in stats(alarm).values()}, alarm["AlarmName"]
            assert not set(stats(alarm)) & edge_log_metrics, alarm["AlarmName"]
    for stack in synthesized[stage].templates:
        if stack == "Inference":
            # The endpoint's rollback alarms (tests/infra/test_rollouts.py): home-region SageMaker metrics.
            for alarm in alarms_of(synthesized[stage].templates[stack]).values():
                assert "-rollback-" in alarm["AlarmName"], alarm["AlarmName"]
                assert {m["namespace"] for m in stats(alarm).values()} == {"AWS/SageMaker"}
        elif stack not in ("EdgeMonitoring", "Monitoring"):
            assert alarms_of(synthesized[stage].templates[stack]) == {}, stack


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_one_composite_per_region_pages_through_that_regions_topic(synthesized, stage):
    home_region = STAGES[stage].home_region
    for stack, topic_stack, region, children in (
        ("EdgeMonitoring", "EdgeAlerting", EDGE_REGION, PAGE_CHILDREN_EDGE),
        ("Monitoring", "Alerting", home_region, PAGE_CHILDREN_HOME),
    ):
        template = synthesized[stage].templates[stack]
        alarms = alarms_of(template)
        page_topic = {"Fn::ImportValue": _export(synthesized, stage, topic_stack, "PageTopic")}
        ticket_topic = {"Fn::ImportValue": _export(synthesized, stage, topic_stack, "TicketTopic")}
        paging = [a for a in alarms.values() if page_topic in a.get("AlarmActions", [])]
        assert [a["AlarmName"] for a in paging] == [name(stage, f"page-{region}")]
        (page,) = paging
        assert page["_type"] == "CompositeAlarm"
        assert page["AlarmActions"] == [page_topic] and page["OKActions"] == [page_topic]
        rule = rule_text(template, page["AlarmRule"])
        assert set(re.findall(r'ALARM\("([^"]+)"\)', rule)) == {name(stage, c) for c in children}
        assert " AND " not in rule
        tickets = TICKETS_EDGE if stack == "EdgeMonitoring" else TICKETS_HOME | {EMBEDDINGS_GPU_TICKET}
        for alarm in alarms.values():
            slug = alarm["AlarmName"].removeprefix(f"inference-cache-{stage}-")
            if slug in tickets:
                assert alarm["AlarmActions"] == [ticket_topic], slug
                assert alarm["AlarmDescription"].startswith("TICKET."), slug
            elif alarm is not page:
                assert "AlarmActions" not in alarm and "OKActions" not in alarm, slug


def _export(synthesized, stage, topic_stack, topic) -> str:
    """The export name the topic's stack publishes for `topic` (same region as the alarms)."""
    outputs = synthesized[stage].templates[topic_stack].get("Outputs", {})
    (export,) = [o["Export"]["Name"] for key, o in outputs.items() if key.startswith(f"ExportsOutputRef{topic}")]
    assert export.startswith(f"{stage}-{topic_stack}:")
    return export


MISSING_DATA = {
    "workspace-free-capacity-low": "missing",
}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_alarm_says_what_is_wrong_what_to_look_at_and_why_missing_data_is_treated_so(synthesized, stage):
    for alarm in {**edge_alarms(synthesized, stage), **home_alarms(synthesized, stage)}.values():
        description = alarm["AlarmDescription"]
        assert 80 <= len(description) <= 1024, alarm["AlarmName"]
        assert "Look first at" in description, alarm["AlarmName"]
        if alarm["_type"] == "Alarm":
            slug = alarm["AlarmName"].removeprefix(f"inference-cache-{stage}-")
            # An idle stage must not page: every alarm but the workspace one reads
            # missing data as "not breaching"; the workspace always publishes.
            assert alarm["TreatMissingData"] == MISSING_DATA.get(slug, "notBreaching"), slug
            assert f"Missing data: {alarm['TreatMissingData']} (" in description, slug


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_both_regions_topics_email_the_stage_alarm_address(synthesized, stage):
    email = STAGES[stage].sla.alarm_email
    for stack in ("Alerting", "EdgeAlerting"):
        template = synthesized[stage].templates[stack]
        subscriptions = [
            r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Subscription"
        ]
        if email is None:
            assert subscriptions == [], stack
        else:
            assert len(subscriptions) == 2, stack
            assert all(s["Protocol"] == "email" and s["Endpoint"] == email for s in subscriptions), stack
        topics = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Topic"]
        assert len(topics) == 2 and all("KmsMasterKeyId" in t for t in topics), stack


def _tag(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_docs_describe_every_alarm(synthesized, stage):
    docs = (ROOT / "docs" / "sla.md").read_text()
    home_region = STAGES[stage].home_region
    for alarm_name in {**edge_alarms(synthesized, stage), **home_alarms(synthesized, stage)}:
        slug = alarm_name.removeprefix(f"inference-cache-{stage}-").replace(home_region, "<home>")
        assert f"`{slug}`" in docs, slug
