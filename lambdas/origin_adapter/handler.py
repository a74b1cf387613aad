"""Origin adapter: the Lambda function URL CloudFront forwards cache misses to.

Thin on purpose: parse the function URL event, hand it to InferenceAdapter, turn the
outcome into logs and EMF metrics. One Logger, Metrics and Tracer per process."""

from __future__ import annotations

import base64

from adapter import InferenceAdapter, OriginRequest, Outcome
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from endpoint import SageMakerEndpoint
from results_store import ResultsStore
from settings import AdapterSettings

logger = Logger()
metrics = Metrics()
tracer = Tracer()

SETTINGS = AdapterSettings.from_environment()
ADAPTER = InferenceAdapter(
    SETTINGS.cache,
    SageMakerEndpoint(
        SETTINGS.endpoint_name,
        connect_timeout=SETTINGS.connect_timeout_seconds,
        read_timeout=SETTINGS.read_timeout_seconds,
        throttle_retries=SETTINGS.throttle_retries,
    ),
    ResultsStore(SETTINGS.results_bucket),
    logger,
)


@logger.inject_lambda_context(correlation_id_path='headers."x-amz-cf-id"')
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event, context):
    request = _request_of(event)
    response, outcome = ADAPTER.answer(request)
    _record(outcome, response.status, request.path)
    return {
        "statusCode": response.status,
        "headers": response.headers,
        "body": base64.b64encode(response.body).decode(),
        "isBase64Encoded": True,
    }


def _request_of(event: dict) -> OriginRequest:
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET")
    return OriginRequest(method=method, path=event.get("rawPath", "/"), headers=headers, body=raw)


def _record(outcome: Outcome, status: int, path: str) -> None:
    logger.info(
        "answered",
        extra={"status": status, "path": path, "cache": outcome.cache, "cache_key": outcome.key, "reason": outcome.reason},
    )
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    if outcome.inference_seconds is not None:  # the request ran on the GPU
        metrics.add_metric(name="CacheMiss" if outcome.cache == "MISS" else "CacheBypass", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="InferenceLatency", unit=MetricUnit.Milliseconds, value=outcome.inference_seconds * 1000)
        # Wall-clock of the invocation: the GPU time a hit on this key will save.
        metrics.add_metric(name="GpuSecondsOnMiss", unit=MetricUnit.Seconds, value=outcome.inference_seconds)
    if outcome.stored_bytes:
        metrics.add_metric(name="CacheStore", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="StoredBytes", unit=MetricUnit.Bytes, value=outcome.stored_bytes)
    if outcome.store_failed:
        metrics.add_metric(name="CacheStoreFailed", unit=MetricUnit.Count, value=1)
    if outcome.model_error:
        metrics.add_metric(name="ModelError", unit=MetricUnit.Count, value=1)
    if outcome.key_mismatch:
        metrics.add_metric(name="CacheKeyMismatch", unit=MetricUnit.Count, value=1)
