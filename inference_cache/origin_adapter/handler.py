"""Origin adapter: the Lambda function URL CloudFront forwards cache misses to.

Thin on purpose: parse the function URL event, hand it to InferenceAdapter, turn the
outcome into logs and EMF metrics. One Logger, Metrics and Tracer per process; the
adapter (settings, boto3 clients) is built once per execution environment, on first use.
"""

from __future__ import annotations

import base64

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from botocore.config import Config

from inference_cache.contract import METRICS_NAMESPACE, ORIGIN_ADAPTER_SERVICE, Metric
from inference_cache.origin_adapter.adapter import InferenceAdapter, OriginRequest, Outcome
from inference_cache.origin_adapter.coalescing import Coalescer
from inference_cache.origin_adapter.endpoint import SageMakerEndpoint
from inference_cache.origin_adapter.results_store import ResultsStore
from inference_cache.origin_adapter.settings import AdapterSettings

# Service and namespace from the contract (the alarms and dashboard read the same names).
logger = Logger(service=ORIGIN_ADAPTER_SERVICE)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=ORIGIN_ADAPTER_SERVICE)
tracer = Tracer(service=ORIGIN_ADAPTER_SERVICE)

_adapter: InferenceAdapter | None = None


def build_adapter(settings: AdapterSettings) -> InferenceAdapter:
    return InferenceAdapter(
        settings.cache,
        SageMakerEndpoint(
            settings.endpoint_name,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            throttle_retries=settings.throttle_retries,
        ),
        ResultsStore(settings.results_bucket),
        logger,
        coalescer=_coalescer(settings) if settings.coalescing else None,
    )


def _coalescer(settings: AdapterSettings) -> Coalescer:
    # Its own S3 client: short timeouts (a lease call that hangs must not eat the
    # request's minute; it fails open), a pool for the polls.
    client = boto3.client(
        "s3", config=Config(connect_timeout=1, read_timeout=3, retries={"mode": "standard", "total_max_attempts": 2})
    )
    return Coalescer(
        settings.results_bucket,
        client,
        lease_seconds=settings.lease_seconds,
        wait_seconds=settings.wait_seconds,
        takeover_window_seconds=settings.takeover_window_seconds,
        logger=logger,
    )


def _the_adapter() -> InferenceAdapter:
    global _adapter
    if _adapter is None:
        _adapter = build_adapter(AdapterSettings.from_environment())
    return _adapter


@logger.inject_lambda_context(correlation_id_path='headers."x-amz-cf-id"')
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event, context):
    request = _request_of(event)
    response, outcome = _the_adapter().answer(request)
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
    metrics.add_metric(name=Metric.REQUESTS, unit=MetricUnit.Count, value=1)
    if outcome.inference_seconds is not None:  # the request ran on the GPU
        metrics.add_metric(name=Metric.CACHE_MISS if outcome.cache == "MISS" else Metric.CACHE_BYPASS, unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=Metric.INFERENCE_LATENCY, unit=MetricUnit.Milliseconds, value=outcome.inference_seconds * 1000)
        # Wall-clock of the invocation: the GPU time a hit on this key will save.
        metrics.add_metric(name=Metric.GPU_SECONDS_ON_MISS, unit=MetricUnit.Seconds, value=outcome.inference_seconds)
    if outcome.stored_bytes:
        metrics.add_metric(name=Metric.CACHE_STORE, unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=Metric.STORED_BYTES, unit=MetricUnit.Bytes, value=outcome.stored_bytes)
    if outcome.store_failed:
        metrics.add_metric(name=Metric.CACHE_STORE_FAILED, unit=MetricUnit.Count, value=1)
    if outcome.model_error:
        metrics.add_metric(name=Metric.MODEL_ERROR, unit=MetricUnit.Count, value=1)
    if outcome.key_mismatch:
        metrics.add_metric(name=Metric.CACHE_KEY_MISMATCH, unit=MetricUnit.Count, value=1)
    for happened, name in (
        (outcome.coalesced, Metric.COALESCED),
        (outcome.lease_won, Metric.LEASE_WON),
        (outcome.lease_takeover, Metric.LEASE_TAKEOVER),
        (outcome.coalesce_gave_up, Metric.COALESCE_GAVE_UP),
    ):
        if happened:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
