"""The origin adapter's HTTP face: a small web app that AWS Lambda Web Adapter runs behind
the function URL in RESPONSE_STREAM invoke mode (run.sh starts it), so that a streamed
answer reaches CloudFront event by event as the model writes it.

Thin on purpose: turn the HTTP request into an OriginRequest, hand it to InferenceAdapter,
send its answer (whole, or streamed), then, once the response ended, run what is left
(the store, the lease release: OriginResponse.after) and turn the outcome into a log line
and EMF metrics. In Lambda, an internal extension keeps the invocation open until that is
done (invocations.py). The adapter (settings, one boto3 client per service) is built once
per execution environment, on first use. Lambda Web Adapter forwards the function URL
request as it came (path, headers, the body's bytes) and adds the invocation's context as
a header. Every error the app answers itself is in the OpenAI shape.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.to_thread
import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lambdas.contract import HEALTH_ROUTE, METRICS_NAMESPACE, ORIGIN_ADAPTER_SERVICE, Metric, TimingStep
from lambdas.errors import ApiError
from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest, OriginResponse, Outcome, StreamedBody
from lambdas.origin_adapter.coalescing import Coalescer
from lambdas.origin_adapter.embeddings import EmbeddingsService
from lambdas.origin_adapter.endpoint import SageMakerEndpoint
from lambdas.origin_adapter.invocations import Invocations, hold_invocations
from lambdas.origin_adapter.results_store import BucketHealth, ResultsStore, results_bucket_client
from lambdas.origin_adapter.settings import AdapterSettings

logger = Logger(service=ORIGIN_ADAPTER_SERVICE)

# Lambda Web Adapter's JSON of the invocation's Lambda context (request_id, deadline, ...).
_LAMBDA_CONTEXT_HEADER = "x-amzn-lambda-context"
_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]


def build_adapter(settings: AdapterSettings, *, max_connections: int = 10) -> InferenceAdapter:
    """The adapter with one client per service for the process: SageMaker (its budget is
    the answer's), and S3 for the leases and the store (budgets of their own, far below
    the answer's, no retries; docs/decisions.md, "A miss pays only for the model")."""
    bucket = results_bucket_client(
        connect_timeout=settings.cache_connect_timeout_seconds,
        read_timeout=settings.cache_read_timeout_seconds,
        max_connections=max_connections,
    )
    health = BucketHealth(settings.cache_pause_seconds)
    return InferenceAdapter(
        settings.cache,
        SageMakerEndpoint(
            settings.endpoint_name,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            throttle_retries=settings.throttle_retries,
            max_connections=max_connections,
        ),
        ResultsStore(settings.results_bucket, bucket, health),
        logger,
        coalescer=_coalescer(settings, bucket, health) if settings.coalescing else None,
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


def _coalescer(settings: AdapterSettings, client, health: BucketHealth) -> Coalescer:
    return Coalescer(
        settings.results_bucket,
        client,
        lease_seconds=settings.lease_seconds,
        wait_seconds=settings.wait_seconds,
        takeover_window_seconds=settings.takeover_window_seconds,
        logger=logger,
        health=health,
    )


def create_app(
    adapter: Callable[[], InferenceAdapter], *, environments: int, invocations: Invocations | None = None
) -> Starlette:
    """The web app around `adapter()`. Each request holds one of `environments` (an
    execution environment: Lambda gives one a request at a time) from its arrival until its
    answer ended and the work after it was done, a stream included; its synchronous code
    (boto3) runs on a worker thread, one step at a time. Lambda runs one request per
    environment; the local run many. `invocations` (app.state.invocations) tracks each
    request until its after-work is done: what the Lambda extension waits for, and what
    tests wait for before they look at the store or the metrics."""
    invocations = invocations or Invocations()
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
        request_id = context.get("function_request_id") or uuid.uuid4().hex
        invocations.begin(request_id)
        environment = _Environment(limiters()[0])
        try:
            await environment.take()
            response, outcome = await in_thread(lambda: adapter().answer(origin_request))
        except BaseException:
            environment.give_back()
            invocations.end(request_id)
            raise

        async def finish() -> None:
            """After the response's last byte (or the client gone): the store and the lease
            release, then the record; the environment is free again once they are done."""
            try:
                await in_thread(response.finish)
            finally:
                environment.give_back()
                try:
                    record(outcome, response.status, origin_request.path, context)
                finally:
                    invocations.end(request_id)

        if response.stream is None:
            return _Whole(response, finish)
        return _Streamed(response.stream, in_thread, finish, status_code=response.status, headers=response.headers)

    app = Starlette(
        routes=[Route(HEALTH_ROUTE, health, methods=["GET"]), Route("/{path:path}", answer, methods=_METHODS)],
        exception_handlers={Exception: _internal_error},
    )
    app.state.invocations = invocations
    return app


async def _internal_error(request: Request, exc: Exception) -> Response:
    """The adapter's own failure, in the OpenAI error shape (Starlette's default is a
    text/plain 500 that no OpenAI client can read)."""
    logger.exception("answering failed", extra={"path": request.url.path})
    error = ApiError(500, "The origin failed to answer.", None, "origin_error")
    return Response(error.body(), status_code=500, media_type="application/json", headers={"x-inference-cache": "BYPASS"})


class _Whole(Response):
    """A whole answer: sent, then `finish` run once however the sending ended (the client
    may be gone: the answer is complete either way, and may still be stored)."""

    def __init__(self, response: OriginResponse, finish: Callable[[], Awaitable[None]]) -> None:
        super().__init__(response.body, status_code=response.status, headers=response.headers)
        self._finish = finish

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()


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
    ends (its last event and the end of the body, the client gone, cancelled before it
    began), the body is closed (the model's stream) and `finish` run, once, after the
    response's last message: Starlette itself leaves a body iterator suspended when the
    client disconnects."""

    def __init__(self, body: StreamedBody, in_thread, finish: Callable[[], Awaitable[None]], **kwargs) -> None:
        self._body, self._in_thread, self._finish = body, in_thread, finish
        super().__init__(self._chunks(), **kwargs)

    async def _chunks(self) -> AsyncIterator[bytes]:
        chunks = iter(self._body)
        while (chunk := await self._in_thread(next, chunks, None)) is not None:
            yield chunk

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: a client that goes as soon as it has the last event (the openai
            # client after [DONE]) cancels the response, and the stream must still be
            # closed, its answer stored and its outcome recorded, once.
            with anyio.CancelScope(shield=True):
                await self._in_thread(self._body.close)
                await self._finish()


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
            # Where its time went (ms), the store and the release after the answer included.
            "timings": {step: round(ms, 2) for step, ms in outcome.timings.items()},
            **({"stored": not outcome.store_failed} if TimingStep.STORE in outcome.timings else {}),
            **({"store_error": outcome.store_error} if outcome.store_error else {}),
            **({"lease": "results bucket unavailable: not coordinated"} if outcome.lease_unavailable else {}),
            **({"lease_released": False} if outcome.lease_released is False else {}),
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
        (outcome.lease_unavailable, Metric.LEASE_UNAVAILABLE),
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


# What run.sh serves: Lambda gives this execution environment one request at a time, and
# freezes it once the work after each answer is done (invocations.py). Registered now, at
# import, within the Init phase (uvicorn imports the app before it listens).
_invocations = Invocations()
_hold = hold_invocations(os.environ.get("AWS_LAMBDA_RUNTIME_API"), _invocations, logger)
app = create_app(the_adapter, environments=1, invocations=_invocations)
