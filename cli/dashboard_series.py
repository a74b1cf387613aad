"""Series for `make dashboard`'s charts: a synthetic traffic model that gives every metric
the stage dashboards graph a plausible curve (a day's shape, fixed seed), and CloudWatch
metric math evaluated over them, so each widget is drawn as the chart it will be: the
same metrics, statistics, periods and expressions. Every value here is synthetic and
labelled so; the real curves come from CloudWatch once the stage serves traffic.

Metric math: the operators and functions the dashboards use (+ - * /, comparisons,
IF, FILL, PERIOD), point by point; a missing point stays missing (None), as in
CloudWatch, and a division by zero gives none.
"""

from __future__ import annotations

import ast
import math
import random

RANGE_SECONDS = 6 * 3600  # the dashboards' default range (PT6H)
VIEWER_REQUESTS_PER_5_MIN = 3_000.0

# The traffic model: per metric name, (kind, level). kind "sum": a count per 5 minutes
# that follows the traffic (scaled by the period); "gauge": a level that does not grow
# with the period (averages, percentiles, percentages).
_TRAFFIC_SHARE = {
    # CloudFront (viewer requests + the edge's /_cache/ lookups) and the edge's log metrics
    "Requests": 1.85, "EdgeRequests": 1.0, "EdgeLookups": 0.85, "EdgeLookupFailed": 0.0004,
    "LambdaExecutionError": 0.0002, "LambdaValidationError": 0.00005, "LambdaLimitExceededErrors": 0.0001,
    # the origin adapter: the requests the edge did not answer
    "Invocations": 0.6, "Errors": 0.0006, "Throttles": 0.0002, "CacheMiss": 0.45, "CacheBypass": 0.15,
    "CacheStore": 0.44, "CacheStoreFailed": 0.001, "ModelError": 0.0005, "GpuSecondsOnMiss": 0.6 * 1.8,
    "StreamCutOff": 0.002, "CoalescedWaiter": 0.03, "LeaseWon": 0.44, "LeaseTakeover": 0.002,
    "LeaseExpired": 0.0005, "CoalesceGaveUp": 0.0002, "StoredBytes": 0.44 * 2_400,
    # SageMaker
    "Invocation5XXErrors": 0.0004, "InvocationModelErrors": 0.0005,
    # FSx: bytes moved per 5 minutes (each disk's data points summed)
    "DataReadBytes": 40e6 / VIEWER_REQUESTS_PER_5_MIN, "DataWriteBytes": 8e6 / VIEWER_REQUESTS_PER_5_MIN,
}
_GAUGES = {
    ("CacheHitRate", None): 47.0, ("4xxErrorRate", None): 0.6, ("5xxErrorRate", None): 0.03,
    ("OriginLatency", "p50"): 850.0, ("OriginLatency", "p90"): 2_400.0, ("OriginLatency", "p99"): 4_300.0,
    ("Duration", "p50"): 820.0, ("Duration", "p99"): 4_100.0, ("InferenceLatency", "p99"): 3_800.0,
    ("ModelLatency", "p50"): 760_000.0, ("ModelLatency", "p99"): 3_600_000.0,  # microseconds
    ("OverheadLatency", "p50"): 4_000.0, ("OverheadLatency", "p99"): 18_000.0,
    ("TimeToFirstToken", "p50"): 240.0, ("TimeToFirstToken", "p99"): 880.0,
    ("GPUUtilization", "Average"): 52.0, ("GPUUtilization", "Maximum"): 78.0,  # per GPU; times the GPU count
    ("GPUMemoryUtilization", "Average"): 71.0, ("GPUMemoryUtilization", "Maximum"): 86.0,
}
_PER_INSTANCE = {"InvocationsPerInstance"}


def times(period: int, range_seconds: int = RANGE_SECONDS, end: float = 1_764_000_000.0) -> list[float]:
    """The points a widget shows: one per period over its range, ending at `end` (fixed,
    so the preview is the same on every run)."""
    end = end - end % period
    count = max(1, range_seconds // period)
    return [end - (count - 1 - i) * period for i in range(count)]


def _shape(t: float) -> float:
    """Traffic through the day: quiet at night, a morning and an afternoon peak (1.0 = mean)."""
    hour = (t / 3600) % 24
    return 0.55 + 0.45 * math.sin((hour - 8) / 24 * 2 * math.pi) + 0.25 * math.exp(-((hour - 15) ** 2) / 6)


class TrafficModel:
    """Synthetic values for any metric the dashboards name, at any statistic and period."""

    def __init__(self, *, gpus: int = 1, instances: float = 2.0, free_gib: float = 800.0, seed: int = 24) -> None:
        self.gpus, self.instances, self.free_gib, self.seed = gpus, instances, free_gib, seed

    def series(self, namespace: str, metric: str, stat: str, period: int, at: list[float]) -> list[float | None]:
        rng = random.Random(f"{self.seed}:{namespace}:{metric}:{stat}:{period}")
        out = []
        for t in at:
            noise = 1 + rng.uniform(-0.08, 0.08)
            traffic = VIEWER_REQUESTS_PER_5_MIN * _shape(t) * period / 300 * noise
            out.append(round(self._value(metric, stat, period, traffic, noise), 6))
        return out

    def _value(self, metric: str, stat: str, period: int, traffic: float, noise: float) -> float:
        if metric == "FreeDataStorageCapacity":  # one point per disk per minute: Sum grows with the period
            return self.free_gib * 1024**3 * (period / 60) * (1 - 0.002 * noise)
        if metric in _PER_INSTANCE:
            return traffic * _TRAFFIC_SHARE["Invocations"] / self.instances
        if metric == "TimeToFirstToken" and stat == "SampleCount":
            return traffic * 0.2 * 0.45
        if metric in _TRAFFIC_SHARE and stat in ("Sum", "SampleCount"):
            return traffic * _TRAFFIC_SHARE[metric]
        if metric == "Invocations" and stat in ("Sum", "SampleCount"):
            return traffic * 0.6
        level = _GAUGES.get((metric, stat), _GAUGES.get((metric, None)))
        if level is not None:
            if metric.startswith("GPU"):
                level *= self.gpus
            return level * noise
        if stat in ("Sum", "SampleCount"):  # a count the model does not know: a trickle
            return traffic * 0.001
        return 10.0 * noise


# -- metric math ------------------------------------------------------------------------------


class MathError(ValueError):
    pass


def evaluate(expression: str, inputs: dict[str, list], periods: dict[str, int]) -> list[float | None]:
    """A CloudWatch metric-math expression over the series in `inputs` (by id)."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise MathError(f"cannot read {expression!r}: {e.msg}") from None
    length = max((len(v) for v in inputs.values()), default=1)

    def point(node: ast.AST, i: int):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in inputs:
                raise MathError(f"{expression!r} names {node.id}, which the widget does not define")
            series = inputs[node.id]
            return series[i] if i < len(series) else series[-1]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = point(node.operand, i)
            return None if value is None else -value
        if isinstance(node, ast.BinOp):
            a, b = point(node.left, i), point(node.right, i)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return None if b == 0 else a / b
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            a, b = point(node.left, i), point(node.comparators[0], i)
            if a is None or b is None:
                return None
            compare = {ast.Gt: a > b, ast.GtE: a >= b, ast.Lt: a < b, ast.LtE: a <= b, ast.Eq: a == b, ast.NotEq: a != b}
            return 1.0 if compare[type(node.ops[0])] else 0.0
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name, args = node.func.id, node.args
            if name == "IF" and len(args) == 3:
                condition = point(args[0], i)
                if condition is None:
                    return None
                return point(args[1] if condition else args[2], i)
            if name == "FILL" and len(args) == 2:
                value = point(args[0], i)
                return point(args[1], i) if value is None else value
            if name == "PERIOD" and len(args) == 1 and isinstance(args[0], ast.Name):
                return float(periods.get(args[0].id, 300))
        raise MathError(f"{expression!r}: {ast.dump(node)[:80]} is not metric math this preview evaluates")

    out = []
    for i in range(length):
        value = point(tree.body, i)
        out.append(None if value is None or not math.isfinite(value) else round(value, 6))
    return out
