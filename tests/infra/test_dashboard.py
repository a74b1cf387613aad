"""The stage dashboard: valid JSON once CloudFormation's tokens are filled in, in the
home region, graphing CloudFront and Lambda@Edge from us-east-1, and showing every
part of the path the SLA issue asks for with the stage's own thresholds."""

from __future__ import annotations

import json

import pytest

from config.stages import STAGES
from lambdas.contract import EdgeLogMetric
from tests.conftest import STAGE_NAMES

EDGE_REGION = "us-east-1"


def _token(value) -> str:
    if isinstance(value, str):
        return value
    ((fn, arg),) = value.items()
    if fn == "Fn::Join":
        return arg[0].join(_token(p) for p in arg[1])
    if fn == "Ref":
        return "${" + arg + "}"
    if fn == "Fn::ImportValue":
        return "${import:" + arg + "}"
    if fn == "Fn::GetAtt":
        return "${" + ".".join(arg) + "}"
    raise AssertionError(f"unexpected token {value}")


def dashboard(synthesized, stage) -> dict:
    template = synthesized[stage].templates["Monitoring"]
    (board,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    assert board["DashboardName"] == f"inference-cache-{stage}"
    return json.loads(_token(board["DashboardBody"]))


def widget(body: dict, title: str) -> dict:
    (found,) = [w for w in body["widgets"] if w.get("properties", {}).get("title") == title]
    return found


def metric_rows(w: dict) -> list[tuple[list, dict]]:
    rows = []
    for row in w["properties"].get("metrics", []):
        options = row[-1] if isinstance(row[-1], dict) else {}
        rows.append(([p for p in row if not isinstance(p, dict)], options))
    return rows


def annotations(w: dict) -> dict[float, str]:
    return {a["value"]: a.get("label", "") for a in w["properties"].get("annotations", {}).get("horizontal", [])}


EDGE_LOG_METRICS = {EdgeLogMetric.REQUESTS, EdgeLogMetric.LOOKUPS, EdgeLogMetric.LOOKUP_FAILED}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_dashboard_lives_in_the_home_region_and_reads_cloudfront_from_us_east_1(synthesized, stage):
    assert synthesized[stage].stage.monitoring.region == STAGES[stage].home_region
    body = dashboard(synthesized, stage)
    regions = set()
    for w in body["widgets"]:
        if w["type"] != "metric":
            continue
        assert w["properties"]["region"] == "${AWS::Region}"  # the dashboard stack's region
        for names, options in metric_rows(w):
            if names and names[0] == "AWS/CloudFront":
                assert options.get("region") == EDGE_REGION, (w["properties"]["title"], names)
                dims = dict(zip(names[2::2], names[3::2], strict=True))
                assert dims["Region"] == "Global" and "Cdn:ExportsOutputRefDistribution" in dims["DistributionId"]
            elif names and names[0] == "InferenceCache" and names[1] in EDGE_LOG_METRICS:
                # Counted from the edge function's log lines by metric filters in us-east-1.
                assert options.get("region") == EDGE_REGION, (w["properties"]["title"], names)
                assert len(names) == 2  # no dimensions
            elif names:
                assert "region" not in options, (w["properties"]["title"], names)
            regions.add(options.get("region", "home"))
    assert regions == {"home", EDGE_REGION}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_widgets_fit_the_24_column_grid_without_overlapping(synthesized, stage):
    cells = set()
    for w in dashboard(synthesized, stage)["widgets"]:
        assert 0 <= w["x"] and w["x"] + w["width"] <= 24 and w["height"] >= 1
        for x in range(w["x"], w["x"] + w["width"]):
            for y in range(w["y"], w["y"] + w["height"]):
                assert (x, y) not in cells, w
                cells.add((x, y))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_requests_hit_ratio_error_budget_and_burn_rate(synthesized, stage):
    sla = STAGES[stage].sla
    body = dashboard(synthesized, stage)
    traffic = widget(body, "Requests and hit ratio")
    names = {tuple(n[:2]) for n, _ in metric_rows(traffic) if n}
    assert {
        ("AWS/CloudFront", "Requests"),
        ("AWS/CloudFront", "CacheHitRate"),
        ("InferenceCache", "CacheMiss"),
    } <= names
    assert sla.cache_hit_ratio_floor * 100 in annotations(traffic)

    budget = widget(body, "Error budget remaining (30 days)")
    assert budget["properties"]["view"] == "singleValue" and budget["properties"]["setPeriodToTimeRange"] is True
    assert budget["properties"]["start"] == "-P30D"
    (remaining,) = [o for _, o in metric_rows(budget) if "expression" in o]
    left, _, divisor = remaining["expression"].partition(" / ")
    assert left.startswith("100 - ") and float(divisor) == pytest.approx(1 - sla.availability_target)

    burn = widget(body, "Error-budget burn rate (x budget)")
    assert set(annotations(burn)) == {14.4, 6.0}
    periods = {o.get("period", 300) for _, o in metric_rows(burn) if "expression" in o}
    assert periods == {300, 3600, 21_600}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_error_rates_and_lambda_edge_errors(synthesized, stage):
    body = dashboard(synthesized, stage)
    errors = widget(body, "Error rates by layer (%)")
    names = {n[1] for n, _ in metric_rows(errors) if n}
    assert {
        "5xxErrorRate",
        "4xxErrorRate",
        "Invocation5XXErrors",
        "InvocationModelErrors",
        "Errors",
        "Throttles",
    } <= names
    assert STAGES[stage].sla.endpoint_error_rate_max * 100 in annotations(errors)
    edge = widget(body, "Lambda@Edge errors (as CloudFront counts them)")
    assert {n[1] for n, _ in metric_rows(edge)} == {
        "LambdaExecutionError",
        "LambdaValidationError",
        "LambdaLimitExceededErrors",
    }


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_p99_latency_at_each_layer_against_its_objective(synthesized, stage):
    sla = STAGES[stage].sla
    body = dashboard(synthesized, stage)
    for title, metric_name, objective in (
        ("Edge: CloudFront origin latency (ms)", "OriginLatency", sla.edge_origin_latency_p99_ms),
        ("Origin adapter duration (ms)", "Duration", sla.origin_adapter_duration_p99_ms),
        ("SageMaker model latency (ms)", "ModelLatency", sla.model_latency_p99_ms),
    ):
        w = widget(body, title)
        rows = metric_rows(w)
        assert any(n and n[1] == metric_name and o.get("stat") == "p99" for n, o in rows), title
        assert objective in annotations(w), title
    # ModelLatency is in microseconds; the graph shows milliseconds.
    model = widget(body, "SageMaker model latency (ms)")
    expressions = [o["expression"] for _, o in metric_rows(model) if "expression" in o]
    assert expressions and all(e.endswith(" / 1000") for e in expressions)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_streamed_misses_time_to_first_token_cut_offs_and_coalescing(synthesized, stage):
    body = dashboard(synthesized, stage)
    emf = ("InferenceCache", "service", "origin-adapter")

    def series(title: str) -> set[tuple[str, str]]:
        rows = metric_rows(widget(body, title))
        assert all((n[0], n[2], n[3]) == emf for n, _ in rows), title  # the adapter's EMF, its one dimension
        return {(n[1], o.get("stat", "Average")) for n, o in rows}

    assert series("Streamed misses: time to first token (ms)") == {("TimeToFirstToken", "p50"), ("TimeToFirstToken", "p99")}
    assert series("Streams cut short (never stored)") == {("StreamCutOff", "Sum"), ("TimeToFirstToken", "SampleCount")}
    assert series("Coalesced identical misses") == {
        (name, "Sum") for name in ("CoalescedWaiter", "LeaseWon", "LeaseTakeover", "LeaseExpired", "CoalesceGaveUp")
    }


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_capacity_gpu_time_saved_and_workspace(synthesized, stage):
    settings = STAGES[stage]
    body = dashboard(synthesized, stage)
    instances = widget(body, "Instances in service vs maximum")
    assert settings.endpoint.max_instances in annotations(instances)
    assert any("InvocationsPerInstance" in n for n, _ in metric_rows(instances))

    gpu = [w for w in body["widgets"] if w["properties"].get("title", "").startswith("GPU utilization per GPU")]
    assert len(gpu) == 1 and settings.sla.gpu_utilization_high_pct in annotations(gpu[0])

    saved = widget(body, "GPU seconds: saved by edge hits vs spent on misses")
    rows = metric_rows(saved)
    emf = {n[1]: dict(zip(n[2::2], n[3::2], strict=True)) for n, _ in rows if n and n[0] == "InferenceCache"}
    assert emf["GpuSecondsOnMiss"] == {"service": "origin-adapter"} and emf["CacheMiss"] == {
        "service": "origin-adapter"
    }
    (saved_expr,) = [o for _, o in rows if o.get("label") == "GPU seconds saved by hits (estimate)"]
    ids = {o.get("id"): n for n, o in rows}
    assert saved_expr["expression"] == "edgeHits * gpuSecondsOnMiss / cacheMisses"
    assert ids["gpuSecondsOnMiss"][1] == "GpuSecondsOnMiss" and ids["cacheMisses"][1] == "CacheMiss"
    # Hits are estimated from CloudFront (us-east-1) and the origin adapter (home).
    assert ids["cfRequests"][:2] == ["AWS/CloudFront", "Requests"]
    assert ids["adapterInvocations"][:2] == ["AWS/Lambda", "Invocations"]

    if not settings.workspace.enabled:
        # No file system to graph: the row says the workspace is off, and why.
        assert "AWS/FSx" not in json.dumps(body)
        (note,) = [w for w in body["widgets"] if "Model workspace" in w["properties"].get("markdown", "")]
        assert settings.workspace.off_reason in note["properties"]["markdown"]
        return
    throughput = widget(body, "Model workspace (FSx for Lustre) throughput (MB/s)")
    assert {n[1] for n, _ in metric_rows(throughput) if n} == {"DataReadBytes", "DataWriteBytes"}
    provisioned = settings.workspace.capacity_gib / 1024 * settings.workspace.throughput_per_tib
    assert provisioned in annotations(throughput)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_the_embeddings_endpoint_has_its_own_row(synthesized, stage):
    settings = STAGES[stage]
    embeddings = settings.embeddings
    body = dashboard(synthesized, stage)
    endpoint = [f"inference-cache-{stage}-embeddings", "VariantName", "AllTraffic"]

    def reads_the_embeddings_endpoint(w: dict) -> None:
        rows = [n for n, _ in metric_rows(w) if n and n[0] in ("AWS/SageMaker", "/aws/sagemaker/Endpoints")]
        assert rows and all(n[2:6] == ["EndpointName", *endpoint] for n in rows), rows

    calls = widget(body, f"Embeddings: calls (batches of <= {embeddings.max_client_batch_size} inputs) and failures")
    reads_the_embeddings_endpoint(calls)
    assert {n[1] for n, _ in metric_rows(calls)} == {"Invocations", "Invocation5XXErrors", "InvocationModelErrors"}
    latency = widget(body, f"Embeddings: model latency (ms), {embeddings.model_id}")
    reads_the_embeddings_endpoint(latency)
    assert settings.sla.embeddings_model_latency_p99_ms in annotations(latency)
    instances = widget(body, "Embeddings: instances in service vs maximum")
    reads_the_embeddings_endpoint(instances)
    assert embeddings.endpoint.max_instances in annotations(instances)
    (busy,) = [w for w in body["widgets"] if w["properties"].get("title", "").startswith("Embeddings: " + (
        "GPU" if embeddings.endpoint.gpus else "CPU"))]
    reads_the_embeddings_endpoint(busy)
    assert {n[1] for n, _ in metric_rows(busy) if n} == {"GPUUtilization" if embeddings.endpoint.gpus else "CPUUtilization"}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_alarm_status_shows_every_alarm_of_both_regions(synthesized, stage):
    body = dashboard(synthesized, stage)
    shown = {}
    for w in body["widgets"]:
        if w["type"] == "alarm":
            for arn in w["properties"]["alarms"]:
                shown[arn] = w["properties"]["title"]
    edge_names = {
        r["Properties"]["AlarmName"]
        for r in synthesized[stage].templates["EdgeMonitoring"]["Resources"].values()
        if r["Type"].startswith("AWS::CloudWatch::") and "Alarm" in r["Type"]
    }
    account = STAGES[stage].account
    edge_arns = {f"arn:aws:cloudwatch:{EDGE_REGION}:{account}:alarm:{n}" for n in edge_names}
    assert edge_arns <= set(shown)
    home_count = sum(
        1
        for r in synthesized[stage].templates["Monitoring"]["Resources"].values()
        if r["Type"] in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm")
    )
    assert len(shown) == len(edge_arns) + home_count
