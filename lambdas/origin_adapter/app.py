"""The origin adapter's HTTP face: a small web app that AWS Lambda Web Adapter runs behind
the function URL in RESPONSE_STREAM invoke mode (run.sh starts it), so that a streamed
answer reaches CloudFront event by event as the model writes it.

Thin on purpose: turn the HTTP request into an OriginRequest, hand it to InferenceAdapter,
send its answer (whole, or streamed), turn the outcome into a log line and EMF metrics once
the answer ended. The adapter (settings, boto3 clients) is built once per execution
environment, on first use. Lambda Web Adapter forwards the function URL request as it came
(path, headers, the body's bytes) and adds the invocation's context as a header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread
import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lambdas.contract import HEALTH_ROUTE, METRICS_NAMESPACE, ORIGIN_ADAPTER_SERVICE, Metric
from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest, Outcome, StreamedBody
from lambdas.origin_adapter.coalescing import Coalescer
from lambdas.origin_adapter.embeddings import EmbeddingsService
from lambdas.origin_adapter.endpoint import SageMakerEndpoint
from lambdas.origin_adapter.results_store import ResultsStore
from lambdas.origin_adapter.settings import AdapterSettings

logger = Logger(service=ORIGIN_ADAPTER_SERVICE)

# Lambda Web Adapter's JSON of the invocation's Lambda context (request_id, deadline, ...).
_LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]


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
        stream_seconds=settings.stream_seconds,
        stream_lease_seconds=settings.stream_lease_seconds,
        embeddings=_embeddings(settings) if settings.embeddings else None,
    )


def _embeddings(settings: AdapterSettings) -> EmbeddingsService:
    model = settings.embeddings
    bucket, _, key = model.tokenizer_uri.removeprefix("s3://").partition("/")

    def tokenizer() -> bytes:  # the model version's own tokenizer.json, from the model bucket
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    return EmbeddingsService(
        model,
        settings.cache.embeddings_model_id,
        # One call is one batch: its read timeout is the batch's, not the whole answer's.
        SageMakerEndpoint(
            model.endpoint_name,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=model.batch_read_seconds,
            throttle_retries=settings.throttle_retries,
        ),
        tokenizer,
        read_seconds=settings.read_timeout_seconds,
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


def create_app(adapter: Callable[[], InferenceAdapter], *, environments: int) -> Starlette:
    """The web app around `adapter()`. Each request holds one of `environments` (an
    execution environment: Lambda gives one a request at a time) from its arrival until its
    answer ended, a stream included; its synchronous code (boto3) runs on a worker thread,
    one step at a time. Lambda runs one request per environment; the local run many."""
    limits: list[anyio.CapacityLimiter] = []  # made on the server's event loop

    def limiters() -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        if not limits:
            # Only requests that hold an environment take a thread, one at a time each: a
            # stream's next step never waits behind a coalescing waiter's polls.
            limits.extend((anyio.CapacityLimiter(environments), anyio.CapacityLimiter(environments)))
        return limits[0], limits[1]

    async def in_thread(function, *args):
        return await anyio.to_thread.run_sync(function, *args, limiter=limiters()[1])

    async def health(request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")  # Lambda Web Adapter's readiness check

    async def answer(request: Request) -> Response:
        origin_request = OriginRequest(
            method=request.method,
            path=request.url.path,
            headers={name: ", ".join(request.headers.getlist(name)) for name in request.headers.keys()},
            body=await request.body(),
        )
        context = _invocation(origin_request.headers)
        environment = _Environment(limiters()[0])
        await environment.take()
        try:
            response, outcome = await in_thread(lambda: adapter().answer(origin_request))
        except BaseException:
            environment.give_back()
            raise
        if response.stream is None:
            environment.give_back()
            record(outcome, response.status, origin_request.path, context)
            return Response(response.body, status_code=response.status, headers=response.headers)

        def ended() -> None:
            environment.give_back()
            record(outcome, response.status, origin_request.path, context)

        return _Streamed(response.stream, in_thread, ended, status_code=response.status, headers=response.headers)

    return Starlette(routes=[Route(HEALTH_ROUTE, health, methods=["GET"]), Route("/{path:path}", answer, methods=_METHODS)])


class _Environment:
    """One request's hold on an execution environment, given back once."""

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter, self._held = limiter, False

    async def take(self) -> None:
        await self._limiter.acquire_on_behalf_of(self)  # on behalf of: a stream ends in another task
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)


class _Streamed(StreamingResponse):
    """A streamed answer: each step of its body on a worker thread. However the response
    ends (its last event, the client gone, cancelled before it began), the body is closed
    (the model's stream, the lease) and `ended` called, once: Starlette itself leaves a
    body iterator suspended when the client disconnects."""

    def __init__(self, body: StreamedBody, in_thread, ended: Callable[[], None], **kwargs) -> None:
        self._body, self._in_thread, self._ended = body, in_thread, ended
        super().__init__(self._chunks(), **kwargs)

    async def _chunks(self) -> AsyncIterator[bytes]:
        chunks = iter(self._body)
        while (chunk := await self._in_thread(next, chunks, None)) is not None:
            yield chunk
        await self._end()  # before the response's last message: the outcome is on record when the client sees the end

    async def _end(self) -> None:
        if self._ended is not None:
            ended, self._ended = self._ended, None
            # Shielded: a client that goes as soon as it has the last event (the openai
            # client after [DONE]) cancels the response here, and the outcome must still
            # be closed and recorded once.
            with anyio.CancelScope(shield=True):
                await self._in_thread(self._body.close)
                ended()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # the client may be gone: finish anyway
                await self._end()


def _invocation(headers: dict) -> dict:
    """Who is asking, for the log line: CloudFront's request id and the Lambda request id."""
    out = {"correlation_id": headers.get("x-amz-cf-id")}
    try:
        context = json.loads(headers.get(_LAMBDA_CONTEXT_HEADER) or "{}")
        out["function_request_id"] = context.get("request_id")
    except (ValueError, AttributeError):
        pass
    return out


def record(outcome: Outcome, status: int, path: str, context: dict) -> None:
    """One log line and one EMF record per request, once its answer ended."""
    logger.info(
        "answered",
        extra={
            **context,
            "status": status,
            "path": path,
            "cache": outcome.cache,
            "cache_key": outcome.key,
            "reason": outcome.reason,
            **({"streamed": True, "stream_cut_off": outcome.stream_cut_off} if outcome.streamed else {}),
        },
    )
    # Per request, not the process-wide Metrics: a stream ends in its own time.
    metrics = EphemeralMetrics(namespace=METRICS_NAMESPACE, service=ORIGIN_ADAPTER_SERVICE)
    count = MetricUnit.Count
    metrics.add_metric(name=Metric.REQUESTS, unit=count, value=1)
    if outcome.inference_seconds is not None:  # the request ran on the GPU
        metrics.add_metric(name=Metric.CACHE_MISS if outcome.cache == "MISS" else Metric.CACHE_BYPASS, unit=count, value=1)
        metrics.add_metric(name=Metric.INFERENCE_LATENCY, unit=MetricUnit.Milliseconds, value=outcome.inference_seconds * 1000)
        # Wall-clock of the invocation: the GPU time a hit on this key will save.
        metrics.add_metric(name=Metric.GPU_SECONDS_ON_MISS, unit=MetricUnit.Seconds, value=outcome.inference_seconds)
    if outcome.first_token_seconds is not None:
        metrics.add_metric(
            name=Metric.TIME_TO_FIRST_TOKEN, unit=MetricUnit.Milliseconds, value=outcome.first_token_seconds * 1000
        )
    if outcome.stored_bytes:
        metrics.add_metric(name=Metric.CACHE_STORE, unit=count, value=1)
        metrics.add_metric(name=Metric.STORED_BYTES, unit=MetricUnit.Bytes, value=outcome.stored_bytes)
    for happened, name in (
        (outcome.store_failed, Metric.CACHE_STORE_FAILED),
        (outcome.model_error, Metric.MODEL_ERROR),
        (outcome.key_mismatch, Metric.CACHE_KEY_MISMATCH),
        (outcome.stream_cut_off is not None, Metric.STREAM_CUT_OFF),
        (outcome.coalesced, Metric.COALESCED),
        (outcome.lease_won, Metric.LEASE_WON),
        (outcome.lease_takeover, Metric.LEASE_TAKEOVER),
        (outcome.lease_expired, Metric.LEASE_EXPIRED),
        (outcome.coalesce_gave_up, Metric.COALESCE_GAVE_UP),
    ):
        if happened:
            metrics.add_metric(name=name, unit=count, value=1)
    metrics.flush_metrics()


_adapter: InferenceAdapter | None = None


def the_adapter() -> InferenceAdapter:
    """This execution environment's adapter, built from its environment on first use."""
    global _adapter
    if _adapter is None:
        _adapter = build_adapter(AdapterSettings.from_environment())
    return _adapter


# What run.sh serves: Lambda gives this execution environment one request at a time.
app = create_app(the_adapter, environments=1)
