"""The metrics the SLA alarms and the dashboard are built from, in one place.

Names, namespaces, dimensions, statistics and units follow the service guides:
- CloudFront (AWS/CloudFront, DistributionId + Region=Global, stored in us-east-1 only):
  Requests (Sum), 4xxErrorRate / 5xxErrorRate (Average, percent); with additional
  metrics enabled, CacheHitRate (Average, percent) and OriginLatency (percentiles, ms).
  Lambda@Edge failures as CloudFront counts them: LambdaExecutionError,
  LambdaValidationError and LambdaLimitExceededErrors (Sum).
- SageMaker invocations (AWS/SageMaker, EndpointName + VariantName): Invocations,
  Invocation5XXErrors, InvocationModelErrors, InvocationsPerInstance (Sum);
  ModelLatency and OverheadLatency in MICROSECONDS.
- SageMaker instances (/aws/sagemaker/Endpoints, same dimensions): GPUUtilization and
  GPUMemoryUtilization in percent, summed over an instance's GPUs.
- Lambda (AWS/Lambda, FunctionName): Invocations, Errors, Throttles (Sum), Duration (ms).
- FSx for Lustre (AWS/FSx, FileSystemId): FreeDataStorageCapacity, DataReadBytes,
  DataWriteBytes in bytes, one data point per disk per minute (Sum = file system).
- The origin adapter's embedded metric format (namespace InferenceCache, dimension
  service=origin-adapter): CacheMiss, CacheStore, CacheBypass, ModelError (counts),
  InferenceLatency (ms), StoredBytes, GpuSecondsOnMiss (seconds). Namespace, service
  and metric names come from lambdas.contract, which the adapter emits with.

Metric-math identifiers must start with a lower-case letter; the ones used here are
named for what they hold so that an expression reads on its own in the console.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw

from lambdas.contract import METRICS_NAMESPACE, ORIGIN_ADAPTER_SERVICE, EdgeLogMetric

CLOUDFRONT_NAMESPACE = "AWS/CloudFront"
SAGEMAKER_NAMESPACE = "AWS/SageMaker"
SAGEMAKER_INSTANCE_NAMESPACE = "/aws/sagemaker/Endpoints"
LAMBDA_NAMESPACE = "AWS/Lambda"
FSX_NAMESPACE = "AWS/FSx"
LAMBDA_EDGE_ERROR_METRICS = ("LambdaExecutionError", "LambdaValidationError", "LambdaLimitExceededErrors")

FIVE_MINUTES = cdk.Duration.minutes(5)
ONE_MINUTE = cdk.Duration.minutes(1)


def min_requests(settings_min_per_5_min: int, window_seconds: int) -> int:
    """Requests a window must carry before a ratio over it is evidence."""
    return max(1, math.ceil(settings_min_per_5_min * window_seconds / 300))


def number(value: float) -> str:
    """A constant for a metric-math expression: no float noise, no exponent."""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(frozen=True)
class EdgeMetrics:
    """CloudFront's metrics for one distribution. `region` is set when the metrics are
    graphed from another region (the home-region dashboard); alarms leave it unset
    and live in us-east-1 themselves."""

    distribution_id: str
    region: str | None = None

    def metric(
        self, name: str, statistic: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=CLOUDFRONT_NAMESPACE,
            metric_name=name,
            dimensions_map={"DistributionId": self.distribution_id, "Region": "Global"},
            statistic=statistic,
            period=period,
            region=self.region,
            label=label,
        )

    def requests(self, period: cdk.Duration = FIVE_MINUTES) -> cw.Metric:
        return self.metric("Requests", "Sum", period, "CloudFront requests")

    def error_rate_5xx(self, period: cdk.Duration = FIVE_MINUTES) -> cw.Metric:
        return self.metric("5xxErrorRate", "Average", period, "5xx error rate (%)")

    def error_rate_4xx(self, period: cdk.Duration = FIVE_MINUTES) -> cw.Metric:
        return self.metric("4xxErrorRate", "Average", period, "4xx error rate (%)")

    def cache_hit_rate(self, period: cdk.Duration = FIVE_MINUTES) -> cw.Metric:
        return self.metric("CacheHitRate", "Average", period, "CloudFront cache hit rate (%)")

    def origin_latency(self, statistic: str = "p99", period: cdk.Duration = FIVE_MINUTES) -> cw.Metric:
        return self.metric("OriginLatency", statistic, period, f"Origin latency {statistic} (ms)")

    def edge_log(self, name: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None) -> cw.Metric:
        """A count from the edge function's log lines in us-east-1 (the Edge stack's metric
        filters; no dimensions: one stage per account). Replicas in other regions log
        there, so this is a sample: what us-east-1's edge locations served."""
        return cw.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=name,
            statistic="Sum",
            period=period,
            region=self.region,
            label=label,
        )

    def lambda_edge_errors(self, period: cdk.Duration = FIVE_MINUTES) -> dict[str, cw.Metric]:
        ids = ("execution", "validation", "limit")
        return {
            i: self.metric(name, "Sum", period, name) for i, name in zip(ids, LAMBDA_EDGE_ERROR_METRICS, strict=True)
        }


@dataclass(frozen=True)
class HomeMetrics:
    """The home region's metrics: endpoint, origin adapter, workspace, EMF."""

    endpoint_name: str
    variant_name: str
    function_name: str
    # None: the stage runs no model workspace (ModelWorkspaceSettings.enabled).
    file_system_id: str | None

    def _endpoint_dims(self) -> dict[str, str]:
        return {"EndpointName": self.endpoint_name, "VariantName": self.variant_name}

    def sagemaker(
        self, name: str, statistic: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=SAGEMAKER_NAMESPACE,
            metric_name=name,
            dimensions_map=self._endpoint_dims(),
            statistic=statistic,
            period=period,
            label=label,
        )

    def instance(
        self, name: str, statistic: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=SAGEMAKER_INSTANCE_NAMESPACE,
            metric_name=name,
            dimensions_map=self._endpoint_dims(),
            statistic=statistic,
            period=period,
            label=label,
        )

    def adapter(
        self, name: str, statistic: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=LAMBDA_NAMESPACE,
            metric_name=name,
            dimensions_map={"FunctionName": self.function_name},
            statistic=statistic,
            period=period,
            label=label,
        )

    def workspace(
        self, name: str, statistic: str, period: cdk.Duration = ONE_MINUTE, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=FSX_NAMESPACE,
            metric_name=name,
            dimensions_map={"FileSystemId": self.file_system_id},
            statistic=statistic,
            period=period,
            label=label,
        )

    def emf(
        self, name: str, statistic: str, period: cdk.Duration = FIVE_MINUTES, label: str | None = None
    ) -> cw.Metric:
        return cw.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=name,
            dimensions_map={"service": ORIGIN_ADAPTER_SERVICE},
            statistic=statistic,
            period=period,
            label=label,
        )


# -- expressions shared by alarms and the dashboard ------------------------------------
# Identifiers inside an expression are unique per alarm or graph, so builders that may
# share a graph take a prefix.


def burn_rate(
    edge: EdgeMetrics, window_seconds: int, error_budget: float, min_requests_per_5_min: int
) -> cw.MathExpression:
    """Error-budget burn rate over one window: (5xx share of viewer requests) / budget.

    CloudFront's Requests and 5xxErrorRate include the edge function's own /_cache/
    lookups (one per cacheable POST, never 5xx), which dilute the rate. With
    s = lookups per edge-function request (sampled from the edge log lines in
    us-east-1), viewer requests = Requests / (1 + s) and their 5xx share is
    5xxErrorRate × (1 + s). With no sample in the window s = 1, as if every request
    looked up: the alarm errs early, at most 2x, never late. Windows with fewer viewer
    requests than the stage's minimum read 0: no evidence, no page (docs/sla.md)."""
    period = cdk.Duration.seconds(window_seconds)
    floor = min_requests(min_requests_per_5_min, window_seconds)
    tag = window_tag(window_seconds)
    lookups_per_request = cw.MathExpression(
        expression=f"IF(FILL(edgeRequests{tag}, 0) > 0, FILL(edgeLookups{tag}, 0) / FILL(edgeRequests{tag}, 0), 1)",
        using_metrics={
            f"edgeRequests{tag}": edge.edge_log(EdgeLogMetric.REQUESTS, period),
            f"edgeLookups{tag}": edge.edge_log(EdgeLogMetric.LOOKUPS, period),
        },
        period=period,
        label=f"lookups per edge request over {tag}",
    )
    return cw.MathExpression(
        expression=(
            f"IF(requests{tag} / (1 + lookupShare{tag}) >= {floor}, "
            f"errorRate{tag} * (1 + lookupShare{tag}) / {number(100 * error_budget)}, 0)"
        ),
        using_metrics={
            f"requests{tag}": edge.requests(period),
            f"errorRate{tag}": edge.error_rate_5xx(period),
            f"lookupShare{tag}": lookups_per_request,
        },
        period=period,
        label=f"burn rate over {tag} (x budget)",
    )


def error_ratio(
    errors: cw.Metric,
    total: cw.Metric,
    floor: int,
    label: str,
    prefix: str = "",
    scale: float = 1,
    period: cdk.Duration = FIVE_MINUTES,
) -> cw.MathExpression:
    """errors / total (times `scale`); 0 when the window carries fewer than `floor`
    requests. Error counts are sparse (no data point when nothing failed), so they
    are filled with 0 where the total has data."""
    e, t = f"{prefix}Errors" if prefix else "errors", f"{prefix}Total" if prefix else "total"
    factor = "" if scale == 1 else f"{number(scale)} * "
    return cw.MathExpression(
        expression=f"IF({t} >= {floor}, {factor}FILL({e}, 0) / {t}, 0)",
        using_metrics={e: errors, t: total},
        period=period,
        label=label,
    )


def throttle_ratio(
    invocations: cw.Metric,
    throttles: cw.Metric,
    floor: int,
    label: str,
    scale: float = 1,
    period: cdk.Duration = FIVE_MINUTES,
) -> cw.MathExpression:
    """Throttles / (Invocations + Throttles): Lambda's Invocations exclude throttled
    requests, and when everything is throttled Invocations has no data at all."""
    total = "(FILL(invocations, 0) + FILL(throttles, 0))"
    factor = "" if scale == 1 else f"{number(scale)} * "
    return cw.MathExpression(
        expression=f"IF({total} >= {floor}, {factor}FILL(throttles, 0) / {total}, 0)",
        using_metrics={"invocations": invocations, "throttles": throttles},
        period=period,
        label=label,
    )


def instances_in_service(home: HomeMetrics, period: cdk.Duration = FIVE_MINUTES) -> cw.MathExpression:
    """Instances behind the variant: every request adds 1/instances to
    InvocationsPerInstance, so Invocations / InvocationsPerInstance is the instance
    count (request-weighted over the period). No traffic, no data."""
    return cw.MathExpression(
        expression="IF(perInstance > 0, invocations / perInstance, 0)",
        using_metrics={
            "invocations": home.sagemaker("Invocations", "Sum", period),
            "perInstance": home.sagemaker("InvocationsPerInstance", "Sum", period),
        },
        period=period,
        label="instances in service",
    )


def per_gpu(
    metric: cw.Metric, gpus: int, label: str, key: str = "gpuSum", period: cdk.Duration = FIVE_MINUTES
) -> cw.MathExpression:
    """A SageMaker GPU percentage (summed over the instance's GPUs) per GPU."""
    return cw.MathExpression(
        expression=f"{key} / {gpus}", using_metrics={key: metric.with_(period=period)}, period=period, label=label
    )


def edge_hits_estimate(edge: EdgeMetrics, home: HomeMetrics, period: cdk.Duration = FIVE_MINUTES) -> cw.MathExpression:
    """Inference requests answered at the edge (x-inference-cache: HIT), estimated.

    A hit never reaches the origin and CloudFront does not count hits by behavior, so
    the count is derived. Each cacheable POST makes one /_cache/ lookup through the
    same distribution: a hit is 2 CloudFront requests (POST + lookup), none at the
    origin, no 4xx; a miss is 2 requests, 1 origin call, 1 4xx (the lookup's 403); a
    bypass, an edge-rejected request or a GET is 1 request with either 1 origin call
    or 1 4xx. So hits = (Requests - 4xx - origin adapter invocations) / 2.
    CloudFront metrics are in us-east-1 and the adapter's in the home region: this
    is dashboard math only (alarms cannot combine regions)."""
    hits = cw.MathExpression(
        expression="(cfRequests - cfRequests * cf4xxRate / 100 - FILL(adapterInvocations, 0)) / 2",
        using_metrics={
            "cfRequests": edge.requests(period),
            "cf4xxRate": edge.error_rate_4xx(period),
            "adapterInvocations": home.adapter("Invocations", "Sum", period),
        },
        period=period,
        label="edge hits (raw estimate)",
    )
    return cw.MathExpression(
        expression="IF(rawHits > 0, rawHits, 0)",
        using_metrics={"rawHits": hits},
        period=period,
        label="edge hits (estimate)",
    )


def window_tag(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"
