"""The stage's SLA dashboard, in the home region, showing the whole request path.

CloudFront and Lambda@Edge metrics exist only in us-east-1, so their graphs name that
region per metric (CloudWatch dashboards read any region; alarms cannot). Rows, top to
bottom: objectives; traffic, error budget and burn rate; errors by layer; p99 latency
by layer; capacity; GPU time saved and the model workspace; alarm status per region.
docs/sla.md draws the same layout.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from constructs import Construct

from config.settings import StageSettings, gpu_count
from stacks.burn_rates import FAST_BURN_RATE, SLO_WINDOW_DAYS, SLOW_BURN_RATE
from stacks.sla_metrics import (
    EdgeMetrics,
    HomeMetrics,
    burn_rate,
    edge_hits_estimate,
    error_ratio,
    instances_in_service,
    number,
    per_gpu,
    throttle_ratio,
)

P = cdk.Duration.minutes(5)
RED, ORANGE, GREY = "#d62728", "#ff7f0e", "#7f7f7f"
MIB = 1024**2
GIB = 1024**3


class SlaDashboard(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        edge: EdgeMetrics,
        home: HomeMetrics,
        home_alarms: list[cw.IAlarm],
        edge_alarm_names: list[str],
        edge_region: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        sla, endpoint = settings.sla, settings.endpoint
        stack = cdk.Stack.of(self)
        gpus = gpu_count(endpoint.instance_type)

        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"inference-cache-{settings.name}",
            default_interval=cdk.Duration.hours(6),
        )
        d = self.dashboard

        d.add_widgets(cw.TextWidget(markdown=self._objectives_markdown(edge_region), width=24, height=6))

        # -- traffic, error budget, burn rate ---------------------------------------------
        hits = edge_hits_estimate(edge, home, P)
        misses = home.emf("CacheMiss", "Sum", P, "cache misses (origin adapter)")
        d.add_widgets(
            cw.GraphWidget(
                title="Requests and hit ratio",
                width=12,
                height=6,
                left=[
                    edge.requests(P).with_(label="CloudFront requests (viewer + /_cache/ lookups)"),
                    home.adapter("Invocations", "Sum", P, "origin adapter invocations"),
                    misses,
                    home.emf("CacheBypass", "Sum", P, "cache bypasses"),
                    home.emf("CacheStore", "Sum", P, "results stored"),
                    hits,
                ],
                right=[
                    edge.cache_hit_rate(P).with_(label="CloudFront cache hit rate, lookups (%)"),
                    cw.MathExpression(
                        expression="100 * edgeHits / (edgeHits + FILL(cacheMisses, 0))",
                        using_metrics={"edgeHits": hits, "cacheMisses": misses},
                        period=P,
                        label="inference hit ratio, estimate (%)",
                    ),
                ],
                right_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.cache_hit_ratio_floor * 100, label="hit-ratio floor (ticket)", color=ORANGE
                    )
                ],
                right_y_axis=cw.YAxisProps(min=0, max=100, label="%", show_units=False),
                left_y_axis=cw.YAxisProps(min=0, label="requests / 5 min", show_units=False),
            ),
            cw.SingleValueWidget(
                title=f"Error budget remaining ({SLO_WINDOW_DAYS} days)",
                width=6,
                height=6,
                metrics=[
                    cw.MathExpression(
                        expression=f"100 - budgetErrorRate / {number(sla.error_budget)}",
                        using_metrics={"budgetErrorRate": edge.error_rate_5xx(P)},
                        period=P,
                        label="error budget remaining (%)",
                    ),
                    edge.requests(P).with_(label=f"requests ({SLO_WINDOW_DAYS} days)"),
                ],
                set_period_to_time_range=True,
                start=f"-P{SLO_WINDOW_DAYS}D",
            ),
            cw.GraphWidget(
                title="Error-budget burn rate (x budget)",
                width=6,
                height=6,
                left=[
                    burn_rate(edge, seconds, sla.error_budget, sla.min_requests_per_5_min)
                    for seconds in (300, 3600, 21_600)
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=FAST_BURN_RATE, label=f"fast burn {FAST_BURN_RATE:g}x (1h & 5m)", color=RED
                    ),
                    cw.HorizontalAnnotation(
                        value=SLOW_BURN_RATE, label=f"slow burn {SLOW_BURN_RATE:g}x (6h & 30m)", color=ORANGE
                    ),
                ],
                left_y_axis=cw.YAxisProps(min=0, show_units=False),
            ),
        )

        # -- errors by layer ------------------------------------------------------------
        invocations = home.sagemaker("Invocations", "Sum", P)
        adapter_invocations = home.adapter("Invocations", "Sum", P)
        lambda_edge = edge.lambda_edge_errors(P)
        d.add_widgets(
            cw.GraphWidget(
                title="Error rates by layer (%)",
                width=12,
                height=6,
                left=[
                    edge.error_rate_5xx(P).with_(label="CloudFront 5xx (%)"),
                    edge.error_rate_4xx(P).with_(label="CloudFront 4xx (%)"),
                    error_ratio(
                        home.sagemaker("Invocation5XXErrors", "Sum", P),
                        invocations,
                        1,
                        "endpoint 5XX (%)",
                        "endpoint5xx",
                        100,
                    ),
                    error_ratio(
                        home.sagemaker("InvocationModelErrors", "Sum", P),
                        invocations,
                        1,
                        "endpoint model errors (%)",
                        "model",
                        100,
                    ),
                    error_ratio(
                        home.adapter("Errors", "Sum", P),
                        adapter_invocations,
                        1,
                        "origin adapter errors (%)",
                        "adapter",
                        100,
                    ),
                    throttle_ratio(
                        adapter_invocations, home.adapter("Throttles", "Sum", P), 1, "origin adapter throttles (%)", 100
                    ),
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.endpoint_error_rate_max * 100, label="endpoint/adapter error objective", color=RED
                    ),
                    cw.HorizontalAnnotation(value=sla.error_budget * 100, label="error budget (5xx)", color=GREY),
                ],
                left_y_axis=cw.YAxisProps(min=0, label="%", show_units=False),
            ),
            cw.GraphWidget(
                title="Lambda@Edge errors (as CloudFront counts them)",
                width=6,
                height=6,
                left=list(lambda_edge.values()),
                left_y_axis=cw.YAxisProps(min=0, label="count / 5 min", show_units=False),
            ),
            cw.GraphWidget(
                title="Origin adapter failures (count)",
                width=6,
                height=6,
                left=[
                    home.adapter("Errors", "Sum", P, "Lambda errors"),
                    home.adapter("Throttles", "Sum", P, "Lambda throttles"),
                    home.emf("ModelError", "Sum", P, "model errors seen by the adapter"),
                ],
                left_y_axis=cw.YAxisProps(min=0, label="count / 5 min", show_units=False),
            ),
        )

        # -- p99 latency by layer -------------------------------------------------------
        def ms(metric: cw.Metric, key: str, label: str) -> cw.MathExpression:
            return cw.MathExpression(expression=f"{key} / 1000", using_metrics={key: metric}, period=P, label=label)

        def slo(value_ms: int) -> list[cw.HorizontalAnnotation]:
            return [cw.HorizontalAnnotation(value=value_ms, label=f"p99 objective {value_ms} ms", color=RED)]

        ms_axis = cw.YAxisProps(min=0, label="ms", show_units=False)
        d.add_widgets(
            cw.GraphWidget(
                title="Edge: CloudFront origin latency (ms)",
                width=6,
                height=6,
                left=[edge.origin_latency(stat, P) for stat in ("p50", "p90", "p99")],
                left_annotations=slo(sla.edge_origin_latency_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="Origin adapter duration (ms)",
                width=6,
                height=6,
                left=[
                    home.adapter("Duration", "p50", P, "Duration p50"),
                    home.adapter("Duration", "p99", P, "Duration p99"),
                    home.emf("InferenceLatency", "p99", P, "endpoint call p99 (EMF)"),
                ],
                left_annotations=slo(sla.origin_adapter_duration_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="SageMaker model latency (ms)",
                width=6,
                height=6,
                left=[
                    ms(home.sagemaker("ModelLatency", "p50", P), "modelP50", "ModelLatency p50"),
                    ms(home.sagemaker("ModelLatency", "p99", P), "modelP99", "ModelLatency p99"),
                ],
                left_annotations=slo(sla.model_latency_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="SageMaker overhead latency (ms)",
                width=6,
                height=6,
                left=[
                    ms(home.sagemaker("OverheadLatency", "p50", P), "overheadP50", "OverheadLatency p50"),
                    ms(home.sagemaker("OverheadLatency", "p99", P), "overheadP99", "OverheadLatency p99"),
                ],
                left_y_axis=ms_axis,
            ),
        )

        # -- capacity -----------------------------------------------------------------
        pct_axis = cw.YAxisProps(min=0, max=100, label="% per GPU", show_units=False)
        d.add_widgets(
            cw.GraphWidget(
                title="Instances in service vs maximum",
                width=8,
                height=6,
                left=[instances_in_service(home, P)],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=endpoint.max_instances, label=f"max_instances {endpoint.max_instances}", color=RED
                    ),
                    cw.HorizontalAnnotation(
                        value=endpoint.min_instances, label=f"min_instances {endpoint.min_instances}", color=GREY
                    ),
                ],
                left_y_axis=cw.YAxisProps(min=0, max=endpoint.max_instances + 1, label="instances", show_units=False),
            ),
            cw.GraphWidget(
                title=f"GPU utilization per GPU (%), {gpus} GPU(s) per {endpoint.instance_type}",
                width=8,
                height=6,
                left=[
                    per_gpu(home.instance("GPUUtilization", "Average"), gpus, "fleet average", "gpuAverage", P),
                    per_gpu(home.instance("GPUUtilization", "Maximum"), gpus, "busiest instance", "gpuMaximum", P),
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.gpu_utilization_high_pct, label="sustained-high threshold (ticket)", color=ORANGE
                    )
                ],
                left_y_axis=pct_axis,
            ),
            cw.GraphWidget(
                title="GPU memory per GPU (%)",
                width=8,
                height=6,
                left=[
                    per_gpu(home.instance("GPUMemoryUtilization", "Average"), gpus, "fleet average", "memAverage", P),
                    per_gpu(home.instance("GPUMemoryUtilization", "Maximum"), gpus, "worst instance", "memMaximum", P),
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.gpu_memory_high_pct, label="near out-of-memory (ticket)", color=ORANGE
                    )
                ],
                left_y_axis=pct_axis,
            ),
        )

        # -- GPU time saved, model workspace ----------------------------------------------
        workspace = settings.workspace
        throughput_mb_s = workspace.capacity_gib / 1024 * workspace.throughput_per_tib
        d.add_widgets(
            cw.GraphWidget(
                title="GPU seconds: saved by edge hits vs spent on misses",
                width=8,
                height=6,
                left=[
                    cw.MathExpression(
                        # hits x (GPU seconds per miss): a hit costs the GPU what a miss would have.
                        expression="edgeHits * gpuSecondsOnMiss / cacheMisses",
                        using_metrics={
                            "edgeHits": hits,
                            "gpuSecondsOnMiss": home.emf("GpuSecondsOnMiss", "Sum", P),
                            "cacheMisses": misses,
                        },
                        period=P,
                        label="GPU seconds saved by hits (estimate)",
                    ),
                    home.emf("GpuSecondsOnMiss", "Sum", P, "GPU seconds spent on misses"),
                ],
                left_y_axis=cw.YAxisProps(min=0, label="GPU s / 5 min", show_units=False),
            ),
            cw.GraphWidget(
                title="Model workspace (FSx for Lustre) throughput (MB/s)",
                width=8,
                height=6,
                left=[
                    cw.MathExpression(
                        expression=f"{key} / PERIOD({key}) / 1000000",
                        using_metrics={key: home.workspace(name, "Sum", P)},
                        period=P,
                        label=label,
                    )
                    for key, name, label in (
                        ("readBytes", "DataReadBytes", "read"),
                        ("writeBytes", "DataWriteBytes", "write"),
                    )
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=throughput_mb_s, label=f"provisioned {throughput_mb_s:g} MB/s", color=GREY
                    )
                ],
                left_y_axis=cw.YAxisProps(min=0, label="MB/s", show_units=False),
            ),
            cw.GraphWidget(
                title="Model workspace free capacity (GiB)",
                width=8,
                height=6,
                left=[
                    cw.MathExpression(
                        # One data point per disk per minute: Sum over a period holds PERIOD/60 of them.
                        expression=f"freeBytes / (PERIOD(freeBytes) / 60) / {GIB}",
                        using_metrics={"freeBytes": home.workspace("FreeDataStorageCapacity", "Sum", P)},
                        period=P,
                        label="free",
                    )
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.fsx_free_capacity_floor * workspace.capacity_gib,
                        label="free-capacity floor (ticket)",
                        color=ORANGE,
                    )
                ],
                left_y_axis=cw.YAxisProps(min=0, max=workspace.capacity_gib, label="GiB", show_units=False),
            ),
        )

        # -- alarms ---------------------------------------------------------------------
        edge_alarms = [
            cw.Alarm.from_alarm_arn(
                self,
                f"EdgeAlarm{i}",
                f"arn:{stack.partition}:cloudwatch:{edge_region}:{stack.account}:alarm:{name}",
            )
            for i, name in enumerate(edge_alarm_names)
        ]
        height = 2 + max(len(home_alarms), len(edge_alarms)) // 2
        d.add_widgets(
            cw.AlarmStatusWidget(title=f"Alarms, {settings.home_region}", alarms=home_alarms, width=12, height=height),
            cw.AlarmStatusWidget(
                title=f"Alarms, {edge_region} (CloudFront, Lambda@Edge)", alarms=edge_alarms, width=12, height=height
            ),
        )

    def _objectives_markdown(self, edge_region: str) -> str:
        s = self.settings
        sla = s.sla
        return "\n".join(
            [
                f"# inference-cache {s.name}: SLOs and the whole request path",
                f"Home region **{s.home_region}**; CloudFront and Lambda@Edge metrics are read from **{edge_region}**. "
                "Alarm thresholds, missing-data choices and what each alarm pages: `docs/sla.md`.",
                "",
                "| objective | target | alarm |",
                "| --- | --- | --- |",
                f"| availability, CloudFront non-5xx, {SLO_WINDOW_DAYS} days | {sla.availability_target * 100:g} % "
                f"| burn {FAST_BURN_RATE:g}x (1h & 5m) or {SLOW_BURN_RATE:g}x (6h & 30m): page |",
                f"| edge origin latency p99 | {sla.edge_origin_latency_p99_ms} ms | page |",
                f"| origin adapter duration p99 | {sla.origin_adapter_duration_p99_ms} ms | page |",
                f"| model latency p99 | {sla.model_latency_p99_ms} ms | page |",
                f"| endpoint 5XX, adapter errors and throttles | {sla.endpoint_error_rate_max * 100:g} % | page |",
                f"| cache hit rate floor | {sla.cache_hit_ratio_floor * 100:g} % | ticket |",
            ]
        )
