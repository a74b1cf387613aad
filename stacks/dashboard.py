"""The stage's SLA dashboard, in the home region, showing the whole request path.

CloudFront and Lambda@Edge metrics exist only in us-east-1, so their graphs name that
region per metric (CloudWatch dashboards read any region; alarms cannot). Rows, top to
bottom: objectives; traffic, error budget and burn rate; errors by layer; p99 latency
by layer; streaming and coalescing; capacity; GPU time saved and the model workspace;
the embeddings endpoint (where the stage has one); alarm status per region.
docs/sla.md draws the same layout.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from constructs import Construct

from config.settings import EndpointSettings, StageSettings, gpu_count
from lambdas.contract import Metric
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

PERIOD = cdk.Duration.minutes(5)
RED, ORANGE, GREY = "#d62728", "#ff7f0e", "#7f7f7f"
GIB = 1024**3


def _in_ms(metric: cw.Metric, key: str, label: str) -> cw.MathExpression:
    """A SageMaker latency (microseconds) in milliseconds."""
    return cw.MathExpression(expression=f"{key} / 1000", using_metrics={key: metric}, period=PERIOD, label=label)


def _p99_objective(value_ms: int) -> list[cw.HorizontalAnnotation]:
    return [cw.HorizontalAnnotation(value=value_ms, label=f"p99 objective {value_ms} ms", color=RED)]


def _instances_widget(title: str, width: int, endpoint_metrics: HomeMetrics, endpoint: EndpointSettings) -> cw.GraphWidget:
    """An endpoint's instances in service against its scaling bounds."""
    return cw.GraphWidget(
        title=title,
        width=width,
        height=6,
        left=[instances_in_service(endpoint_metrics, PERIOD)],
        left_annotations=[
            cw.HorizontalAnnotation(
                value=endpoint.max_instances, label=f"max_instances {endpoint.max_instances}", color=RED
            ),
            cw.HorizontalAnnotation(
                value=endpoint.min_instances, label=f"min_instances {endpoint.min_instances}", color=GREY
            ),
        ],
        left_y_axis=cw.YAxisProps(min=0, max=endpoint.max_instances + 1, label="instances", show_units=False),
    )


class SlaDashboard(Construct):
    """The stage's dashboard: one method per row, `__init__` adds them top to bottom."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        edge: EdgeMetrics,
        home: HomeMetrics,
        home_alarms: list[cw.IAlarm],
        embeddings: HomeMetrics | None = None,
        edge_alarm_names: list[str],
        edge_region: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.edge = edge
        self.home = home
        self.embeddings = embeddings  # the embeddings endpoint's metrics, if the stage has one
        self.edge_region = edge_region
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"inference-cache-{settings.name}",
            default_interval=cdk.Duration.hours(6),
        )
        # One call per row, top to bottom (widgets flow in the order they are added).
        self._objectives_row()
        self._traffic_and_error_budget_row()
        self._errors_by_layer_row()
        self._latency_by_layer_row()
        self._streaming_and_coalescing_row()
        self._capacity_row()
        self._gpu_time_and_workspace_row()
        if embeddings is not None:
            self._embeddings_row()
        self._alarm_status_row(home_alarms, edge_alarm_names)

    # -- metrics more than one row graphs ----------------------------------------------

    def _edge_hits(self) -> cw.MathExpression:
        return edge_hits_estimate(self.edge, self.home, PERIOD)

    def _cache_misses(self) -> cw.Metric:
        return self.home.emf(Metric.CACHE_MISS, "Sum", PERIOD, "cache misses (origin adapter)")

    # -- rows ------------------------------------------------------------------------

    def _objectives_row(self) -> None:
        self.dashboard.add_widgets(cw.TextWidget(markdown=self._objectives_markdown(), width=24, height=6))

    def _traffic_and_error_budget_row(self) -> None:
        """Requests and hit ratio, error budget remaining, burn rate."""
        sla, edge, home = self.settings.sla, self.edge, self.home
        hits, misses = self._edge_hits(), self._cache_misses()
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Requests and hit ratio",
                width=12,
                height=6,
                left=[
                    edge.requests(PERIOD).with_(label="CloudFront requests (viewer + /_cache/ lookups)"),
                    home.adapter("Invocations", "Sum", PERIOD, "origin adapter invocations"),
                    misses,
                    home.emf(Metric.CACHE_BYPASS, "Sum", PERIOD, "cache bypasses"),
                    home.emf(Metric.CACHE_STORE, "Sum", PERIOD, "results stored"),
                    hits,
                ],
                right=[
                    edge.cache_hit_rate(PERIOD).with_(label="CloudFront cache hit rate, lookups (%)"),
                    cw.MathExpression(
                        expression="100 * edgeHits / (edgeHits + FILL(cacheMisses, 0))",
                        using_metrics={"edgeHits": hits, "cacheMisses": misses},
                        period=PERIOD,
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
                        using_metrics={"budgetErrorRate": edge.error_rate_5xx(PERIOD)},
                        period=PERIOD,
                        label="error budget remaining (%)",
                    ),
                    edge.requests(PERIOD).with_(label=f"requests ({SLO_WINDOW_DAYS} days)"),
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

    def _errors_by_layer_row(self) -> None:
        """Error rates of every layer against the objectives, then the raw failure counts."""
        sla, edge, home = self.settings.sla, self.edge, self.home
        invocations = home.sagemaker("Invocations", "Sum", PERIOD)
        adapter_invocations = home.adapter("Invocations", "Sum", PERIOD)
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Error rates by layer (%)",
                width=12,
                height=6,
                left=[
                    edge.error_rate_5xx(PERIOD).with_(label="CloudFront 5xx (%)"),
                    edge.error_rate_4xx(PERIOD).with_(label="CloudFront 4xx (%)"),
                    error_ratio(
                        home.sagemaker("Invocation5XXErrors", "Sum", PERIOD),
                        invocations,
                        1,
                        "endpoint 5XX (%)",
                        "endpoint5xx",
                        100,
                    ),
                    error_ratio(
                        home.sagemaker("InvocationModelErrors", "Sum", PERIOD),
                        invocations,
                        1,
                        "endpoint model errors (%)",
                        "model",
                        100,
                    ),
                    error_ratio(
                        home.adapter("Errors", "Sum", PERIOD),
                        adapter_invocations,
                        1,
                        "origin adapter errors (%)",
                        "adapter",
                        100,
                    ),
                    throttle_ratio(
                        adapter_invocations,
                        home.adapter("Throttles", "Sum", PERIOD),
                        1,
                        "origin adapter throttles (%)",
                        100,
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
                left=list(edge.lambda_edge_errors(PERIOD).values()),
                left_y_axis=cw.YAxisProps(min=0, label="count / 5 min", show_units=False),
            ),
            cw.GraphWidget(
                title="Origin adapter failures (count)",
                width=6,
                height=6,
                left=[
                    home.adapter("Errors", "Sum", PERIOD, "Lambda errors"),
                    home.adapter("Throttles", "Sum", PERIOD, "Lambda throttles"),
                    home.emf(Metric.MODEL_ERROR, "Sum", PERIOD, "model errors seen by the adapter"),
                ],
                left_y_axis=cw.YAxisProps(min=0, label="count / 5 min", show_units=False),
            ),
        )

    def _latency_by_layer_row(self) -> None:
        """p50 to p99 of each layer, outside in, against its p99 objective."""
        sla, edge, home = self.settings.sla, self.edge, self.home
        ms_axis = cw.YAxisProps(min=0, label="ms", show_units=False)
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Edge: CloudFront origin latency (ms)",
                width=6,
                height=6,
                left=[edge.origin_latency(stat, PERIOD) for stat in ("p50", "p90", "p99")],
                left_annotations=_p99_objective(sla.edge_origin_latency_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="Origin adapter duration (ms)",
                width=6,
                height=6,
                left=[
                    home.adapter("Duration", "p50", PERIOD, "Duration p50"),
                    home.adapter("Duration", "p99", PERIOD, "Duration p99"),
                    home.emf(Metric.INFERENCE_LATENCY, "p99", PERIOD, "endpoint call p99 (EMF)"),
                ],
                left_annotations=_p99_objective(sla.origin_adapter_duration_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="SageMaker model latency (ms)",
                width=6,
                height=6,
                left=[
                    _in_ms(home.sagemaker("ModelLatency", "p50", PERIOD), "modelP50", "ModelLatency p50"),
                    _in_ms(home.sagemaker("ModelLatency", "p99", PERIOD), "modelP99", "ModelLatency p99"),
                ],
                left_annotations=_p99_objective(sla.model_latency_p99_ms),
                left_y_axis=ms_axis,
            ),
            cw.GraphWidget(
                title="SageMaker overhead latency (ms)",
                width=6,
                height=6,
                left=[
                    _in_ms(home.sagemaker("OverheadLatency", "p50", PERIOD), "overheadP50", "OverheadLatency p50"),
                    _in_ms(home.sagemaker("OverheadLatency", "p99", PERIOD), "overheadP99", "OverheadLatency p99"),
                ],
                left_y_axis=ms_axis,
            ),
        )

    def _streaming_and_coalescing_row(self) -> None:
        """Time to first token of streamed misses, streams cut short, and what coalescing
        saved: waiters answered from an identical request's result instead of the GPU."""
        home = self.home
        requests_axis = cw.YAxisProps(min=0, label="requests", show_units=False)

        def graph(title: str, left: list, axis: cw.YAxisProps = requests_axis) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, width=8, height=6, left=left, left_y_axis=axis)

        self.dashboard.add_widgets(
            graph(
                "Streamed misses: time to first token (ms)",
                [
                    home.emf(Metric.TIME_TO_FIRST_TOKEN, "p50", PERIOD, "TTFT p50"),
                    home.emf(Metric.TIME_TO_FIRST_TOKEN, "p99", PERIOD, "TTFT p99"),
                ],
                cw.YAxisProps(min=0, label="ms", show_units=False),
            ),
            graph(
                "Streams cut short (never stored)",
                [
                    home.emf(Metric.STREAM_CUT_OFF, "Sum", PERIOD, "streams cut off (client gone, model error, timeout)"),
                    home.emf(Metric.TIME_TO_FIRST_TOKEN, "SampleCount", PERIOD, "streamed misses"),
                ],
            ),
            graph(
                "Coalesced identical misses",
                [
                    home.emf(Metric.COALESCED, "Sum", PERIOD, "answered from an identical request's result"),
                    home.emf(Metric.LEASE_WON, "Sum", PERIOD, "model calls that held the lease"),
                    home.emf(Metric.LEASE_TAKEOVER, "Sum", PERIOD, "leases taken over (holder failed or expired)"),
                    home.emf(Metric.LEASE_EXPIRED, "Sum", PERIOD, "of those, expired leases (holder died)"),
                    home.emf(Metric.COALESCE_GAVE_UP, "Sum", PERIOD, "waits given up (503, retry)"),
                ],
            ),
        )

    def _capacity_row(self) -> None:
        """Instances in service against the scaling bounds, GPU and GPU memory per GPU."""
        sla, endpoint, home = self.settings.sla, self.settings.endpoint, self.home
        gpus = gpu_count(endpoint.instance_type)
        pct_axis = cw.YAxisProps(min=0, max=100, label="% per GPU", show_units=False)
        self.dashboard.add_widgets(
            _instances_widget("Instances in service vs maximum", 8, home, endpoint),
            cw.GraphWidget(
                title=f"GPU utilization per GPU (%), {gpus} GPU(s) per {endpoint.instance_type}",
                width=8,
                height=6,
                left=[
                    per_gpu(home.instance("GPUUtilization", "Average"), gpus, "fleet average", "gpuAverage", PERIOD),
                    per_gpu(home.instance("GPUUtilization", "Maximum"), gpus, "busiest instance", "gpuMaximum", PERIOD),
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
                    per_gpu(
                        home.instance("GPUMemoryUtilization", "Average"), gpus, "fleet average", "memAverage", PERIOD
                    ),
                    per_gpu(
                        home.instance("GPUMemoryUtilization", "Maximum"), gpus, "worst instance", "memMaximum", PERIOD
                    ),
                ],
                left_annotations=[
                    cw.HorizontalAnnotation(
                        value=sla.gpu_memory_high_pct, label="near out-of-memory (ticket)", color=ORANGE
                    )
                ],
                left_y_axis=pct_axis,
            ),
        )

    def _gpu_time_and_workspace_row(self) -> None:
        """GPU seconds saved by edge hits, then the model workspace's throughput and free space."""
        sla, workspace, home = self.settings.sla, self.settings.workspace, self.home
        throughput_mb_s = workspace.capacity_gib / 1024 * workspace.throughput_per_tib
        gpu_seconds = cw.GraphWidget(
            title="GPU seconds: saved by edge hits vs spent on misses",
            width=8,
            height=6,
            left=[
                cw.MathExpression(
                    # hits x (GPU seconds per miss): a hit costs the GPU what a miss would have.
                    expression="edgeHits * gpuSecondsOnMiss / cacheMisses",
                    using_metrics={
                        "edgeHits": self._edge_hits(),
                        "gpuSecondsOnMiss": home.emf(Metric.GPU_SECONDS_ON_MISS, "Sum", PERIOD),
                        "cacheMisses": self._cache_misses(),
                    },
                    period=PERIOD,
                    label="GPU seconds saved by hits (estimate)",
                ),
                home.emf(Metric.GPU_SECONDS_ON_MISS, "Sum", PERIOD, "GPU seconds spent on misses"),
            ],
            left_y_axis=cw.YAxisProps(min=0, label="GPU s / 5 min", show_units=False),
        )
        if not workspace.enabled:
            self.dashboard.add_widgets(
                gpu_seconds,
                cw.TextWidget(
                    markdown=f"**Model workspace (FSx for Lustre): off in this stage.** {workspace.off_reason}",
                    width=16,
                    height=6,
                ),
            )
            return
        self.dashboard.add_widgets(
            gpu_seconds,
            cw.GraphWidget(
                title="Model workspace (FSx for Lustre) throughput (MB/s)",
                width=8,
                height=6,
                left=[
                    cw.MathExpression(
                        expression=f"{key} / PERIOD({key}) / 1000000",
                        using_metrics={key: home.workspace(name, "Sum", PERIOD)},
                        period=PERIOD,
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
                        using_metrics={"freeBytes": home.workspace("FreeDataStorageCapacity", "Sum", PERIOD)},
                        period=PERIOD,
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

    def _embeddings_row(self) -> None:
        """The embeddings endpoint: calls (one per batch) and their failures, model latency
        against its objective, instances against the scaling bounds, and how busy they are."""
        sla, embeddings, metrics = self.settings.sla, self.settings.embeddings, self.embeddings
        endpoint = embeddings.endpoint
        if endpoint.gpus:
            busy = [
                per_gpu(metrics.instance("GPUUtilization", "Average"), endpoint.gpus, "fleet average", "embGpuAverage", PERIOD),
                per_gpu(metrics.instance("GPUUtilization", "Maximum"), endpoint.gpus, "busiest instance", "embGpuMaximum", PERIOD),
            ]
            busy_title, busy_axis = f"Embeddings: GPU utilization per GPU (%), {endpoint.instance_type}", "% per GPU"
        else:
            busy = [
                metrics.instance("CPUUtilization", "Average", PERIOD, "fleet average"),
                metrics.instance("CPUUtilization", "Maximum", PERIOD, "busiest instance"),
            ]
            busy_title, busy_axis = f"Embeddings: CPU utilization (%, summed over vCPUs), {endpoint.instance_type}", "%"
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title=f"Embeddings: calls (batches of <= {embeddings.max_client_batch_size} inputs) and failures",
                width=6,
                height=6,
                left=[metrics.sagemaker("Invocations", "Sum", PERIOD, "calls")],
                right=[
                    metrics.sagemaker("Invocation5XXErrors", "Sum", PERIOD, "5XX"),
                    metrics.sagemaker("InvocationModelErrors", "Sum", PERIOD, "model errors (TEI 4xx included)"),
                ],
                left_y_axis=cw.YAxisProps(min=0, label="calls / 5 min", show_units=False),
                right_y_axis=cw.YAxisProps(min=0, label="errors / 5 min", show_units=False),
            ),
            cw.GraphWidget(
                title=f"Embeddings: model latency (ms), {embeddings.model_id}",
                width=6,
                height=6,
                left=[
                    _in_ms(metrics.sagemaker("ModelLatency", "p50", PERIOD), "embModelP50", "ModelLatency p50"),
                    _in_ms(metrics.sagemaker("ModelLatency", "p99", PERIOD), "embModelP99", "ModelLatency p99"),
                ],
                left_annotations=_p99_objective(sla.embeddings_model_latency_p99_ms),
                left_y_axis=cw.YAxisProps(min=0, label="ms", show_units=False),
            ),
            _instances_widget("Embeddings: instances in service vs maximum", 6, metrics, endpoint),
            cw.GraphWidget(
                title=busy_title,
                width=6,
                height=6,
                left=busy,
                left_annotations=(
                    [cw.HorizontalAnnotation(value=sla.gpu_utilization_high_pct, label="sustained-high (ticket)", color=ORANGE)]
                    if endpoint.gpus
                    else []
                ),
                left_y_axis=cw.YAxisProps(min=0, label=busy_axis, show_units=False),
            ),
        )

    def _alarm_status_row(self, home_alarms: list[cw.IAlarm], edge_alarm_names: list[str]) -> None:
        """Alarm status per region. The us-east-1 alarms live in another region's stack, so
        they are referred to by an ARN built from their plain names (no cross-stack reference)."""
        stack = cdk.Stack.of(self)
        edge_alarms = [
            cw.Alarm.from_alarm_arn(
                self,
                f"EdgeAlarm{i}",
                f"arn:{stack.partition}:cloudwatch:{self.edge_region}:{stack.account}:alarm:{name}",
            )
            for i, name in enumerate(edge_alarm_names)
        ]
        height = 2 + max(len(home_alarms), len(edge_alarms)) // 2
        self.dashboard.add_widgets(
            cw.AlarmStatusWidget(
                title=f"Alarms, {self.settings.home_region}", alarms=home_alarms, width=12, height=height
            ),
            cw.AlarmStatusWidget(
                title=f"Alarms, {self.edge_region} (CloudFront, Lambda@Edge)",
                alarms=edge_alarms,
                width=12,
                height=height,
            ),
        )

    def _objectives_markdown(self) -> str:
        s = self.settings
        sla = s.sla
        return "\n".join(
            [
                f"# inference-cache {s.name}: SLOs and the whole request path",
                f"Home region **{s.home_region}**; CloudFront and Lambda@Edge metrics are read from **{self.edge_region}**. "
                "Alarm thresholds, missing-data choices and what each alarm pages: `docs/sla.md`.",
                "",
                "| objective | target | alarm |",
                "| --- | --- | --- |",
                f"| availability, CloudFront non-5xx, {SLO_WINDOW_DAYS} days | {sla.availability_target * 100:g} % "
                f"| burn {FAST_BURN_RATE:g}x (1h & 5m) or {SLOW_BURN_RATE:g}x (6h & 30m): page |",
                f"| edge origin latency p99 | {sla.edge_origin_latency_p99_ms} ms | page |",
                f"| origin adapter duration p99 | {sla.origin_adapter_duration_p99_ms} ms | page |",
                f"| model latency p99 | {sla.model_latency_p99_ms} ms | page |",
                *(
                    [f"| embeddings model latency p99 ({s.embeddings.model_id}) | {sla.embeddings_model_latency_p99_ms} ms | page |"]
                    if s.embeddings
                    else []
                ),
                f"| endpoint 5XX, adapter errors and throttles | {sla.endpoint_error_rate_max * 100:g} % | page |",
                f"| cache hit rate floor | {sla.cache_hit_ratio_floor * 100:g} % | ticket |",
            ]
        )
