"""SLA alarms. Each alarm lives in the region of its metrics: CloudFront and Lambda@Edge
(as CloudFront reports them) in us-east-1, everything else in the stage's home region.

Per region, one composite alarm pages (the region's "page" topic); it is the only
alarm that pages there, so one incident is one page. Its children have no actions of
their own. Everything else opens a ticket. Every description says what is wrong, what
to look at first, and why missing data is treated the way it is (docs/sla.md has the
same per stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from constructs import Construct

from config.settings import StageSettings, gpu_count
from lambdas.contract import EdgeLogMetric
from stacks.burn_rates import (
    FAST_BURN_RATE,
    FAST_BURN_WINDOWS_SECONDS,
    SLO_WINDOW_DAYS,
    SLOW_BURN_RATE,
    SLOW_BURN_WINDOWS_SECONDS,
)
from stacks.sla_metrics import (
    EdgeMetrics,
    HomeMetrics,
    burn_rate,
    error_ratio,
    instances_in_service,
    min_requests,
    per_gpu,
    throttle_ratio,
    window_tag,
)

# Latency and error-rate alarms look at 5-minute periods: latency must hold above its
# objective for 3 periods in a row, an error rate for 2 of 3.
PERIOD = cdk.Duration.minutes(5)
LATENCY_PERIODS = 3
ERROR_PERIODS, ERROR_DATAPOINTS = 3, 2
# CloudFront's cache hit rate moves with the traffic mix; judge whole hours.
HIT_RATIO_PERIOD = cdk.Duration.hours(1)
HIT_RATIO_PERIODS = 3
# FSx publishes one data point per disk per minute; Sum over one minute is the file
# system's free space. 15 minutes in a row rules out a late disk's missing point.
WORKSPACE_PERIOD = cdk.Duration.minutes(1)
WORKSPACE_PERIODS = 15
GIB = 1024**3
# Throttled in every 5-minute period for 15 minutes: the reservation is reached at peaks.
THROTTLED_PERIODS = 3

GREATER = cw.ComparisonOperator.GREATER_THAN_THRESHOLD
NOT_BREACHING = cw.TreatMissingData.NOT_BREACHING
MISSING = cw.TreatMissingData.MISSING


def alarm_name(settings: StageSettings, slug: str) -> str:
    return f"inference-cache-{settings.name}-{slug}"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:g} %"


@dataclass(frozen=True)
class _Spec:
    slug: str
    metric: cw.IMetric
    threshold: float
    comparison: cw.ComparisonOperator
    evaluation_periods: int
    datapoints: int
    missing: cw.TreatMissingData
    what: str
    first: str
    why_missing: str


# The shapes most alarms share. Missing data is not breaching in all three: no traffic
# is neither slow nor failing.


def _sustained_spec(
    slug: str,
    metric: cw.IMetric,
    threshold: float,
    periods: int,
    *,
    what: str,
    first: str,
    why_missing: str,
    comparison: cw.ComparisonOperator = GREATER,
    missing: cw.TreatMissingData = NOT_BREACHING,
) -> _Spec:
    """Beyond the threshold in every one of `periods` periods in a row."""
    return _Spec(slug, metric, threshold, comparison, periods, periods, missing, what, first, why_missing)


def _latency_spec(slug: str, metric: cw.IMetric, threshold: float, *, what: str, first: str, why_missing: str) -> _Spec:
    """A p99 above its objective for LATENCY_PERIODS periods in a row."""
    return _sustained_spec(slug, metric, threshold, LATENCY_PERIODS, what=what, first=first, why_missing=why_missing)


def _error_rate_spec(
    slug: str, metric: cw.IMetric, threshold: float, *, what: str, first: str, why_missing: str
) -> _Spec:
    """An error ratio above its maximum in ERROR_DATAPOINTS of ERROR_PERIODS periods."""
    return _Spec(
        slug, metric, threshold, GREATER, ERROR_PERIODS, ERROR_DATAPOINTS, NOT_BREACHING, what, first, why_missing
    )


class _SlaAlarmsBase(Construct):
    """Creates metric alarms from specs, routes them, and builds the paging composite."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        page_topic: sns.ITopic,
        ticket_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        self.settings = settings
        self.page_topic = page_topic
        self.ticket_topic = ticket_topic
        # Every alarm this construct made, by slug (metric and composite alarms).
        self.alarms: dict[str, cw.AlarmBase] = {}
        self.paging_children: list[cw.AlarmBase] = []
        self.ticket_alarms: list[cw.AlarmBase] = []

    @property
    def _period_floor(self) -> int:
        """Requests a 5-minute period must carry before an error ratio over it counts."""
        return min_requests(self.settings.sla.min_requests_per_5_min, PERIOD.to_seconds())

    @property
    def page_alarm_slug(self) -> str:
        return f"page-{cdk.Stack.of(self).region}"

    def _alarm(self, spec: _Spec, route: str) -> cw.Alarm:
        """route: "page" (child of this region's paging composite), "ticket", or
        "child" (input to another composite only)."""
        routing = {
            "page": f"PAGES through {alarm_name(self.settings, self.page_alarm_slug)}.",
            "ticket": "TICKET.",
            "child": "",
        }[route]
        description = " ".join(
            part
            for part in (
                routing,
                spec.what,
                f"Look first at: {spec.first}",
                f"Missing data: {_missing_text(spec.missing)} ({spec.why_missing}).",
            )
            if part
        )
        alarm = cw.Alarm(
            self,
            _construct_id(spec.slug),
            alarm_name=alarm_name(self.settings, spec.slug),
            alarm_description=description,
            metric=spec.metric,
            threshold=spec.threshold,
            comparison_operator=spec.comparison,
            evaluation_periods=spec.evaluation_periods,
            datapoints_to_alarm=spec.datapoints,
            treat_missing_data=spec.missing,
        )
        self.alarms[spec.slug] = alarm
        if route == "page":
            self.paging_children.append(alarm)
        elif route == "ticket":
            alarm.add_alarm_action(cw_actions.SnsAction(self.ticket_topic))
            self.ticket_alarms.append(alarm)
        return alarm

    def _composite(self, slug: str, rule: cw.IAlarmRule, description: str) -> cw.CompositeAlarm:
        alarm = cw.CompositeAlarm(
            self,
            _construct_id(slug),
            composite_alarm_name=alarm_name(self.settings, slug),
            alarm_description=description,
            alarm_rule=rule,
        )
        self.alarms[slug] = alarm
        return alarm

    def _page(self, summary: str) -> cw.CompositeAlarm:
        children = ", ".join(alarm_name(self.settings, s) for s, a in self.alarms.items() if a in self.paging_children)
        page = self._composite(
            self.page_alarm_slug,
            cw.AlarmRule.any_of(*(cw.AlarmRule.from_alarm(a, cw.AlarmState.ALARM) for a in self.paging_children)),
            f"PAGE: {summary} Look first at: the child alarm(s) in ALARM, named in the notification (each "
            f"child's description says where to start), and dashboard inference-cache-{self.settings.name}. "
            f"Children: {children}.",
        )
        action = cw_actions.SnsAction(self.page_topic)
        page.add_alarm_action(action)
        page.add_ok_action(action)
        self.page_alarm = page
        return page


class EdgeSlaAlarms(_SlaAlarmsBase):
    """us-east-1: availability burn rates, edge latency, Lambda@Edge errors, hit ratio."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        distribution_id: str,
        edge_function_name: str,
        page_topic: sns.ITopic,
        ticket_topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id, settings=settings, page_topic=page_topic, ticket_topic=ticket_topic)
        self.edge = EdgeMetrics(distribution_id)
        # Creation order reaches the template: resource order, the page's children and
        # rule, and the dashboard's list of us-east-1 alarms.
        self._availability_burn_rates()
        self._edge_latency()
        self._edge_function_errors(edge_function_name)
        self._hit_ratio()
        self._lookup_failures(edge_function_name)
        self._page(
            f"stage {settings.name}, us-east-1 (CloudFront): the availability SLO "
            f"({_pct(settings.sla.availability_target)} over {SLO_WINDOW_DAYS} days) is burning fast or the edge is slow."
        )

    def _availability_burn_rates(self) -> None:
        """Page: the availability SLO's fast and slow multi-window burn rates."""
        fast = self._burn_rate_rule("fast", FAST_BURN_RATE, FAST_BURN_WINDOWS_SECONDS)
        slow = self._burn_rate_rule("slow", SLOW_BURN_RATE, SLOW_BURN_WINDOWS_SECONDS)
        self.paging_children.extend([fast, slow])

    def _burn_rate_rule(self, speed: str, rate: float, windows: tuple[int, int]) -> cw.CompositeAlarm:
        """Burning faster than `rate` over the long window AND still over the short one."""
        sla = self.settings.sla
        long_seconds, short_seconds = windows
        spent = rate * long_seconds / (SLO_WINDOW_DAYS * 86_400)
        slug = f"availability-{speed}-burn"
        window_alarms = []
        for seconds in windows:
            text = window_tag(seconds)
            floor = min_requests(sla.min_requests_per_5_min, seconds)
            window_alarms.append(
                self._alarm(
                    # One evaluation: the burn-rate window is itself the duration.
                    _sustained_spec(
                        f"{slug}-{text}",
                        burn_rate(self.edge, seconds, sla.error_budget, sla.min_requests_per_5_min),
                        rate,
                        1,
                        what=(
                            f"Input to {alarm_name(self.settings, slug)}. 5xx share of viewer requests (CloudFront "
                            "5xx, the edge function's own /_cache/ lookups taken out of the denominator) over the "
                            f"last {text} is above {rate:g}x the error budget ({_pct(sla.error_budget)} allowed, so "
                            f"above {_pct(rate * sla.error_budget)}). Windows under {floor} viewer requests read 0."
                        ),
                        first=(
                            "dashboard 'Error rates': which layer's errors rise with CloudFront 5xx (Lambda@Edge "
                            "errors, origin adapter errors or throttles, endpoint 5XX)."
                        ),
                        why_missing="no traffic, no errors",
                    ),
                    "child",
                )
            )
        long_alarm, short_alarm = window_alarms
        return self._composite(
            slug,
            cw.AlarmRule.all_of(
                cw.AlarmRule.from_alarm(long_alarm, cw.AlarmState.ALARM),
                cw.AlarmRule.from_alarm(short_alarm, cw.AlarmState.ALARM),
            ),
            f"Child of {alarm_name(self.settings, self.page_alarm_slug)}. Availability SLO {_pct(sla.availability_target)}: "
            f"errors are burning the {SLO_WINDOW_DAYS}-day budget at more than {rate:g}x over {window_tag(long_seconds)} "
            f"(~{spent * 100:.0f} % of the budget) AND are still doing so over the last {window_tag(short_seconds)}. "
            "Look first at: dashboard 'Error rates' to find the failing layer, then 'Error budget remaining'.",
        )

    def _edge_latency(self) -> None:
        """Page: CloudFront's origin latency p99."""
        sla = self.settings.sla
        self._alarm(
            _latency_spec(
                "edge-origin-latency-p99",
                self.edge.origin_latency("p99", PERIOD),
                sla.edge_origin_latency_p99_ms,
                what=(
                    f"CloudFront OriginLatency p99 above {sla.edge_origin_latency_p99_ms} ms for "
                    f"{LATENCY_PERIODS} x 5 min: requests that reach the origin (cache misses, lookups) "
                    "are slower than the SLO and users wait."
                ),
                first=(
                    "dashboard 'Latency p99 by layer'. SageMaker ModelLatency up too: GPUs slow or saturated "
                    "(instances vs max, GPU utilization). Only the origin adapter: its Duration and throttles. "
                    "Only OriginLatency: the edge lookup (results bucket, Origin Shield) or Lambda@Edge."
                ),
                why_missing="no origin traffic, nothing slow",
            ),
            "page",
        )

    def _edge_function_errors(self, edge_function_name: str) -> None:
        """Ticket: Lambda@Edge failures per request, as CloudFront counts them."""
        sla = self.settings.sla
        floor = self._period_floor
        self._alarm(
            _error_rate_spec(
                "edge-function-errors",
                cw.MathExpression(
                    expression=(
                        f"IF(requests >= {floor}, (FILL(execution, 0) + FILL(validation, 0) + FILL(limit, 0)) / requests, 0)"
                    ),
                    using_metrics={"requests": self.edge.requests(PERIOD), **self.edge.lambda_edge_errors(PERIOD)},
                    period=PERIOD,
                    label="Lambda@Edge errors per request",
                ),
                sla.edge_function_error_rate_max,
                what=(
                    "Lambda@Edge failures as CloudFront counts them (LambdaExecutionError + LambdaValidationError + "
                    f"LambdaLimitExceededErrors) above {_pct(sla.edge_function_error_rate_max)} of requests in "
                    f"{ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min; viewers get 5xx for them. Execution: the "
                    "cache-key function raised or timed out. Validation: it returned a malformed response (often "
                    "right after a deploy). Limit: Lambda throttled it in a serving region."
                ),
                first=(
                    f"the function's logs, /aws/lambda/us-east-1.{edge_function_name}, in the "
                    "regions that serve the traffic (CloudFront console, Monitoring, Lambda@Edge), and the last edge deploy. "
                    f"Windows under {floor} requests read 0."
                ),
                why_missing="no traffic, no errors",
            ),
            "ticket",
        )

    def _hit_ratio(self) -> None:
        """Ticket: CloudFront's cache hit rate (the /_cache/ lookups) below its floor."""
        sla = self.settings.sla
        hit_floor = min_requests(sla.min_requests_per_5_min, HIT_RATIO_PERIOD.to_seconds())
        self._alarm(
            _sustained_spec(
                "cache-hit-ratio-low",
                cw.MathExpression(
                    expression=f"IF(requests >= {hit_floor}, hitRate, 100)",
                    using_metrics={
                        "requests": self.edge.requests(HIT_RATIO_PERIOD),
                        "hitRate": self.edge.cache_hit_rate(HIT_RATIO_PERIOD),
                    },
                    period=HIT_RATIO_PERIOD,
                    label="CloudFront cache hit rate (%)",
                ),
                sla.cache_hit_ratio_floor * 100,
                HIT_RATIO_PERIODS,
                comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                what=(
                    f"CloudFront CacheHitRate below {_pct(sla.cache_hit_ratio_floor)} for {HIT_RATIO_PERIODS} hours "
                    "in a row. Only the /_cache/ lookups are cacheable here, so this is the share of stored results "
                    "that the edge served without going to S3: results expire early or are not cached "
                    "(Cache-Control, TTL, results cache policy)."
                ),
                first=(
                    "dashboard 'Requests and hit ratio': CacheStore vs CacheMiss from the origin adapter (stores "
                    "failing leave nothing to hit), the inference hit-ratio estimate, and the Cache-Control of "
                    f"stored objects. Hours under {hit_floor} requests read as healthy."
                ),
                why_missing="no traffic, nothing to judge",
            ),
            "ticket",
        )

    def _lookup_failures(self, edge_function_name: str) -> None:
        """Ticket: edge /_cache/ lookups that neither hit nor cleanly missed."""
        sla, floor = self.settings.sla, self._period_floor
        self._alarm(
            _error_rate_spec(
                "edge-lookup-failures",
                error_ratio(
                    self.edge.edge_log(EdgeLogMetric.LOOKUP_FAILED, PERIOD),
                    self.edge.edge_log(EdgeLogMetric.LOOKUPS, PERIOD),
                    floor,
                    "edge lookups failed per lookup (us-east-1 sample)",
                ),
                sla.edge_lookup_failure_rate_max,
                what=(
                    f"Edge /_cache/ lookups answered with neither 200 nor 403/404, or failed outright (timeout, "
                    f"refused), above {_pct(sla.edge_lookup_failure_rate_max)} of lookups in {ERROR_DATAPOINTS} of "
                    f"{ERROR_PERIODS} x 5 min, counted from the edge function's log lines in us-east-1 (a sample: "
                    "replicas elsewhere log in their own region). Each one sends a request that might have hit to "
                    "the GPU; a WAF block (403) is not counted here, it reads as a miss."
                ),
                first=(
                    f"the 'lookup' field in /aws/lambda/us-east-1.{edge_function_name} (lookup-status-<code>, "
                    "lookup-failed-<exception>), the results bucket and Origin Shield, the lookup timeout setting. "
                    f"Windows under {floor} lookups read 0."
                ),
                why_missing="no lookups logged in us-east-1, nothing failing",
            ),
            "ticket",
        )


class HomeSlaAlarms(_SlaAlarmsBase):
    """Home region: endpoint, origin adapter, capacity and the model workspace."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        metrics: HomeMetrics,
        page_topic: sns.ITopic,
        ticket_topic: sns.ITopic,
        embeddings: HomeMetrics | None = None,
    ) -> None:
        super().__init__(scope, construct_id, settings=settings, page_topic=page_topic, ticket_topic=ticket_topic)
        self.home = metrics
        # The embeddings endpoint's metrics (None: the stage serves no embeddings model).
        self.embeddings = embeddings
        # Creation order reaches the template: resource order, the page's children and
        # rule, and the dashboard's alarm status widget.
        self._latency_alarms()
        self._error_rate_alarms()
        self._throttled_sustained()
        self._model_error_alarm()
        self._capacity_alarm()
        self._gpu_alarms()
        if settings.workspace.enabled:
            self._workspace_alarm()
        if embeddings is not None:
            self._embeddings_alarms()
        self._page(
            f"stage {settings.name}, {settings.home_region}: an endpoint (the LLM's"
            f"{' or the embeddings model' + chr(39) + 's' if embeddings is not None else ''}) or the origin adapter is "
            "failing or slower than its objective."
        )

    @property
    def _endpoint_logs(self) -> str:
        return f"/aws/sagemaker/Endpoints/inference-cache-{self.settings.name}"

    @property
    def _look_at_the_fleet(self) -> str:
        """Where to start when the GPU fleet is slow, pinned or hot."""
        return (
            "dashboard 'Capacity': instances in service vs the maximum and GPU utilization. At the maximum "
            "and hot: raise max_instances or the instance type. Not at the maximum: the model container "
            f"({self._endpoint_logs} logs)."
        )

    def _latency_alarms(self) -> None:
        """Page: the p99 objectives of the model and of the origin adapter."""
        sla = self.settings.sla
        self._alarm(
            _latency_spec(
                "model-latency-p99",
                self.home.sagemaker("ModelLatency", "p99", PERIOD, "ModelLatency p99 (us)"),
                # ModelLatency is in microseconds.
                sla.model_latency_p99_ms * 1000,
                what=(
                    f"SageMaker ModelLatency p99 above {sla.model_latency_p99_ms} ms (the metric is in microseconds: "
                    f"{sla.model_latency_p99_ms * 1000} us) for {LATENCY_PERIODS} x 5 min. The GPU answers slower "
                    "than the innermost latency objective; edge latency follows."
                ),
                first=self._look_at_the_fleet,
                why_missing="no invocations, nothing slow",
            ),
            "page",
        )
        self._alarm(
            _latency_spec(
                "origin-adapter-duration-p99",
                self.home.adapter("Duration", "p99", PERIOD, "origin adapter Duration p99 (ms)"),
                sla.origin_adapter_duration_p99_ms,
                what=(
                    f"Origin adapter Duration p99 above {sla.origin_adapter_duration_p99_ms} ms for "
                    f"{LATENCY_PERIODS} x 5 min: cache misses take longer than the SLO at the origin."
                ),
                first=(
                    "dashboard 'Latency p99 by layer': if ModelLatency rose with it, follow the model alarm; if not, "
                    "the adapter itself (OverheadLatency, retries, results-bucket writes, cold starts) in its logs "
                    "and X-Ray traces."
                ),
                why_missing="no invocations, nothing slow",
            ),
            "page",
        )

    def _error_rate_alarms(self) -> None:
        """Page: the error objective, endpoint 5XX and origin adapter errors and throttles."""
        sla, home, floor = self.settings.sla, self.home, self._period_floor
        self._alarm(
            _error_rate_spec(
                "endpoint-5xx-rate",
                error_ratio(
                    home.sagemaker("Invocation5XXErrors", "Sum", PERIOD),
                    home.sagemaker("Invocations", "Sum", PERIOD),
                    floor,
                    "endpoint 5XX errors per invocation",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"SageMaker Invocation5XXErrors / Invocations above {_pct(sla.endpoint_error_rate_max)} in "
                    f"{ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min: the endpoint fails requests (container errors, "
                    f"timeouts, no capacity). Windows under {floor} invocations read 0."
                ),
                first=(
                    f"the endpoint's logs ({self._endpoint_logs}), instances in "
                    "service vs max, and whether a model or endpoint-config deploy just happened."
                ),
                why_missing="no invocations, no errors",
            ),
            "page",
        )
        self._alarm(
            _error_rate_spec(
                "origin-adapter-error-rate",
                error_ratio(
                    home.adapter("Errors", "Sum", PERIOD),
                    home.adapter("Invocations", "Sum", PERIOD),
                    floor,
                    "origin adapter errors per invocation",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"Origin adapter Lambda Errors / Invocations above {_pct(sla.endpoint_error_rate_max)} in "
                    f"{ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min: unhandled exceptions or timeouts, which "
                    f"CloudFront turns into 5xx. Windows under {floor} invocations read 0."
                ),
                first="the adapter's log group and X-Ray traces; the last deploy of the adapter; endpoint 5XX next to it.",
                why_missing="no invocations, no errors",
            ),
            "page",
        )
        self._alarm(
            _error_rate_spec(
                "origin-adapter-throttle-rate",
                throttle_ratio(
                    home.adapter("Invocations", "Sum", PERIOD),
                    home.adapter("Throttles", "Sum", PERIOD),
                    floor,
                    "origin adapter throttles per request",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"Origin adapter Throttles / (Invocations + Throttles) above {_pct(sla.endpoint_error_rate_max)} "
                    f"in {ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min: the adapter is at its reserved concurrency "
                    f"({self.settings.adapter_reserved_concurrency} = max instances x concurrent requests "
                    "per instance x headroom, of each endpoint) and Lambda refuses the misses beyond it; viewers get 429."
                ),
                first=(
                    "instances in service vs max and ModelLatency (slow answers hold concurrency longer); raise "
                    "max_instances (the reservation follows) or the headroom."
                ),
                why_missing="no requests, no throttles",
            ),
            "page",
        )

    def _throttled_sustained(self) -> None:
        """Ticket: any throttling of the adapter, sustained below the paging ratio."""
        reserved = self.settings.adapter_reserved_concurrency
        self._alarm(
            _sustained_spec(
                "origin-adapter-throttled",
                self.home.adapter("Throttles", "Sum", PERIOD),
                0,
                THROTTLED_PERIODS,
                what=(
                    f"The origin adapter was throttled in each of {THROTTLED_PERIODS} x 5 min: it keeps reaching its "
                    f"reserved concurrency of {reserved}, which is sized from the fleets' maximum. Below the paging "
                    "ratio, but the fleet has no headroom left at peaks."
                ),
                first=(
                    "dashboard 'Capacity' (pinned at max?) and ModelLatency; raise max_instances, or "
                    "concurrent_requests_per_instance / adapter_concurrency_headroom if the GPUs have room."
                ),
                why_missing="no throttles published, none happened",
            ),
            "ticket",
        )

    def _model_error_alarm(self) -> None:
        """Ticket: every non-2xx from the model container, client errors included."""
        sla, home, floor = self.settings.sla, self.home, self._period_floor
        self._alarm(
            _error_rate_spec(
                "endpoint-model-error-rate",
                error_ratio(
                    home.sagemaker("InvocationModelErrors", "Sum", PERIOD),
                    home.sagemaker("Invocations", "Sum", PERIOD),
                    floor,
                    "endpoint model errors per invocation",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"SageMaker InvocationModelErrors / Invocations above {_pct(sla.endpoint_error_rate_max)} in "
                    f"{ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min. Counts every non-2xx from the container, "
                    "client errors (context too long, bad parameters) included, so it opens a ticket; 5XX pages."
                ),
                first=(
                    f"the container's logs ({self._endpoint_logs}) for the error "
                    "messages, and the origin adapter's ModelError metric by route."
                ),
                why_missing="no invocations, no errors",
            ),
            "ticket",
        )

    def _capacity_alarm(self) -> None:
        """Ticket: the fleet pinned at its maximum instance count."""
        sla, endpoint = self.settings.sla, self.settings.endpoint
        # The instance count is derived (request-weighted), not a whole number: half an
        # instance below the maximum counts as at it.
        pinned_at = endpoint.max_instances - 0.5
        self._alarm(
            _sustained_spec(
                "capacity-pinned-at-max",
                instances_in_service(self.home, PERIOD),
                pinned_at,
                sla.capacity_pinned_minutes // 5,
                comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                what=(
                    f"The endpoint has served from its maximum of {endpoint.max_instances} instances for "
                    f"{sla.capacity_pinned_minutes} min (Invocations / InvocationsPerInstance >= "
                    f"{pinned_at:g}): autoscaling has no headroom left, the next burst queues."
                ),
                first=self._look_at_the_fleet,
                why_missing="no traffic, the fleet is not pinned",
            ),
            "ticket",
        )

    def _gpu_alarms(self) -> None:
        """Ticket: GPU utilization and GPU memory per GPU, sustained high."""
        sla, endpoint = self.settings.sla, self.settings.endpoint
        gpus = gpu_count(endpoint.instance_type)
        gpu_periods = sla.gpu_high_minutes // 5
        self._alarm(
            _sustained_spec(
                "gpu-utilization-high",
                per_gpu(
                    self.home.instance("GPUUtilization", "Average", PERIOD),
                    gpus,
                    "GPU utilization per GPU (%)",
                    period=PERIOD,
                ),
                sla.gpu_utilization_high_pct,
                gpu_periods,
                what=(
                    f"Average GPU utilization across the fleet above {sla.gpu_utilization_high_pct:g} % per GPU for "
                    f"{sla.gpu_high_minutes} min (GPUUtilization is summed over the {gpus} GPU(s) of an "
                    f"{endpoint.instance_type}; the alarm divides by {gpus})."
                ),
                first=self._look_at_the_fleet,
                why_missing="no instance reporting; endpoint-down is the 5XX alarm's job",
            ),
            "ticket",
        )
        self._alarm(
            _sustained_spec(
                "gpu-memory-high",
                per_gpu(
                    self.home.instance("GPUMemoryUtilization", "Maximum", PERIOD),
                    gpus,
                    "GPU memory per GPU, worst instance (%)",
                    period=PERIOD,
                ),
                sla.gpu_memory_high_pct,
                gpu_periods,
                what=(
                    f"GPU memory on the worst instance above {sla.gpu_memory_high_pct:g} % per GPU for "
                    f"{sla.gpu_high_minutes} min. vLLM reserves ~90 % for its KV cache at start, so this is beyond "
                    "the reservation: close to out-of-memory."
                ),
                first=(
                    "the container logs for CUDA out-of-memory or KV-cache preemption, the rolling batch size "
                    "(max_num_seqs) and the quantization setting."
                ),
                why_missing="no instance reporting; endpoint-down is the 5XX alarm's job",
            ),
            "ticket",
        )

    def _embeddings_alarms(self) -> None:
        """The embeddings endpoint, as the LLM's: latency and 5XX page; model errors, a
        pinned fleet and (on GPUs) sustained GPU utilization open tickets."""
        sla, embeddings, metrics = self.settings.sla, self.settings.embeddings, self.embeddings
        endpoint, floor = embeddings.endpoint, self._period_floor
        logs = f"/aws/sagemaker/Endpoints/{metrics.endpoint_name}"
        look_at_the_fleet = (
            "dashboard 'Embeddings': instances in service vs the maximum, model latency and invocations. At the "
            f"maximum: raise its max_instances or instance type. Not at the maximum: the TEI container ({logs} logs), "
            "and whether large batches (many inputs per request) arrived."
        )
        self._alarm(
            _latency_spec(
                "embeddings-model-latency-p99",
                metrics.sagemaker("ModelLatency", "p99", PERIOD, "embeddings ModelLatency p99 (us)"),
                sla.embeddings_model_latency_p99_ms * 1000,
                what=(
                    f"Embeddings endpoint ModelLatency p99 above {sla.embeddings_model_latency_p99_ms} ms (microseconds: "
                    f"{sla.embeddings_model_latency_p99_ms * 1000} us) for {LATENCY_PERIODS} x 5 min. One call is one "
                    f"batch of at most {embeddings.max_client_batch_size} inputs; a request's batches queue behind it."
                ),
                first=look_at_the_fleet,
                why_missing="no invocations, nothing slow",
            ),
            "page",
        )
        self._alarm(
            _error_rate_spec(
                "embeddings-endpoint-5xx-rate",
                error_ratio(
                    metrics.sagemaker("Invocation5XXErrors", "Sum", PERIOD),
                    metrics.sagemaker("Invocations", "Sum", PERIOD),
                    floor,
                    "embeddings endpoint 5XX errors per invocation",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"Embeddings endpoint Invocation5XXErrors / Invocations above {_pct(sla.endpoint_error_rate_max)} in "
                    f"{ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min: /v1/embeddings misses fail (container errors, "
                    f"timeouts, no capacity). Windows under {floor} invocations read 0."
                ),
                first=f"the endpoint's logs ({logs}), instances in service vs max, and the last embeddings deploy.",
                why_missing="no invocations, no errors",
            ),
            "page",
        )
        self._alarm(
            _error_rate_spec(
                "embeddings-endpoint-model-error-rate",
                error_ratio(
                    metrics.sagemaker("InvocationModelErrors", "Sum", PERIOD),
                    metrics.sagemaker("Invocations", "Sum", PERIOD),
                    floor,
                    "embeddings endpoint model errors per invocation",
                ),
                sla.endpoint_error_rate_max,
                what=(
                    f"Embeddings endpoint InvocationModelErrors / Invocations above {_pct(sla.endpoint_error_rate_max)} "
                    f"in {ERROR_DATAPOINTS} of {ERROR_PERIODS} x 5 min. Counts TEI's client errors too (an input "
                    "longer than the model reads is its 422; an overloaded queue its 429), so it opens a ticket."
                ),
                first=f"the container's logs ({logs}) for TEI's error messages, and the adapter's ModelError metric.",
                why_missing="no invocations, no errors",
            ),
            "ticket",
        )
        pinned_at = endpoint.max_instances - 0.5
        self._alarm(
            _sustained_spec(
                "embeddings-capacity-pinned-at-max",
                instances_in_service(metrics, PERIOD),
                pinned_at,
                sla.capacity_pinned_minutes // 5,
                comparison=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                what=(
                    f"The embeddings endpoint has served from its maximum of {endpoint.max_instances} instances for "
                    f"{sla.capacity_pinned_minutes} min (Invocations / InvocationsPerInstance >= {pinned_at:g}): "
                    "autoscaling has no headroom left, the next re-indexing burst queues."
                ),
                first=look_at_the_fleet,
                why_missing="no traffic, the fleet is not pinned",
            ),
            "ticket",
        )
        if endpoint.gpus:
            self._alarm(
                _sustained_spec(
                    "embeddings-gpu-utilization-high",
                    per_gpu(
                        metrics.instance("GPUUtilization", "Average", PERIOD),
                        endpoint.gpus,
                        "embeddings GPU utilization per GPU (%)",
                        period=PERIOD,
                    ),
                    sla.gpu_utilization_high_pct,
                    sla.gpu_high_minutes // 5,
                    what=(
                        f"Average GPU utilization of the embeddings fleet above {sla.gpu_utilization_high_pct:g} % per "
                        f"GPU for {sla.gpu_high_minutes} min (summed over the {endpoint.gpus} GPU(s) of an "
                        f"{endpoint.instance_type}; the alarm divides by {endpoint.gpus})."
                    ),
                    first=look_at_the_fleet,
                    why_missing="no instance reporting; endpoint-down is the 5XX alarm's job",
                ),
                "ticket",
            )

    def _workspace_alarm(self) -> None:
        """Ticket: the FSx for Lustre model workspace running out of space."""
        sla, workspace = self.settings.sla, self.settings.workspace
        capacity_bytes = workspace.capacity_gib * GIB
        self._alarm(
            _sustained_spec(
                "workspace-free-capacity-low",
                self.home.workspace("FreeDataStorageCapacity", "Sum", WORKSPACE_PERIOD, "FSx free capacity (bytes)"),
                round(sla.fsx_free_capacity_floor * capacity_bytes),
                WORKSPACE_PERIODS,
                comparison=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                missing=MISSING,
                what=(
                    f"The FSx for Lustre model workspace has less than {_pct(sla.fsx_free_capacity_floor)} of its "
                    f"{workspace.capacity_gib} GiB free for {WORKSPACE_PERIODS} min: model preparation "
                    "jobs will fail with ENOSPC."
                ),
                first=(
                    "old model versions under /models on the workspace (the data repository association exports "
                    "them to S3, so they can be released with lfs hsm_release), or grow the capacity in settings."
                ),
                why_missing="FSx always publishes while the file system exists; no data shows INSUFFICIENT_DATA, no ticket",
            ),
            "ticket",
        )


def _missing_text(missing: cw.TreatMissingData) -> str:
    return {
        cw.TreatMissingData.NOT_BREACHING: "notBreaching",
        cw.TreatMissingData.BREACHING: "breaching",
        cw.TreatMissingData.IGNORE: "ignore",
        cw.TreatMissingData.MISSING: "missing",
    }[missing]


def _construct_id(slug: str) -> str:
    return "".join(part.capitalize() for part in slug.replace("_", "-").split("-"))
