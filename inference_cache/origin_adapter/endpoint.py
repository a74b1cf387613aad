"""The SageMaker endpoint, through boto3: explicit timeouts, retries only on throttling,
and every failure turned into an EndpointFailure with the status the client gets."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)


@dataclass(frozen=True)
class EndpointAnswer:
    body: bytes
    content_type: str
    seconds: float


@dataclass(frozen=True)
class EndpointFailure(Exception):
    status: int
    code: str
    message: str
    retry_after: int | None = None
    model_error: bool = False


class SageMakerEndpoint:
    def __init__(self, name: str, *, connect_timeout: float, read_timeout: float, throttle_retries: int, client=None):
        self.name = name
        self.throttle_retries = throttle_retries
        # botocore's own retries are off: they would also retry model errors and
        # timeouts, which only burn GPU time and the client's minute.
        self.client = client or boto3.client(
            "sagemaker-runtime",
            config=Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout, retries={"total_max_attempts": 1}
            ),
        )

    def invoke(self, body: bytes, content_type: str) -> EndpointAnswer:
        for attempt in range(self.throttle_retries + 1):
            started = time.perf_counter()
            try:
                response = self.client.invoke_endpoint(
                    EndpointName=self.name, Body=body, ContentType=content_type, Accept="application/json"
                )
                payload = response["Body"].read()
                return EndpointAnswer(payload, response.get("ContentType") or "application/json", time.perf_counter() - started)
            except ClientError as exc:
                failure = _failure_of(exc)
                if failure.code != "throttled" or attempt == self.throttle_retries:
                    raise failure from exc
                time.sleep(min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))
            except ReadTimeoutError as exc:
                raise EndpointFailure(504, "model_timeout", "The model did not answer in time.") from exc
            except (ConnectTimeoutError, EndpointConnectionError) as exc:
                raise EndpointFailure(503, "endpoint_unreachable", "The model endpoint cannot be reached.", 5) from exc
            except BotoCoreError as exc:
                raise EndpointFailure(502, "endpoint_error", f"Calling the model failed: {type(exc).__name__}.") from exc
        raise AssertionError("unreachable")


def _failure_of(exc: ClientError) -> EndpointFailure:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ModelError":
        return _model_failure(exc.response.get("OriginalStatusCode"), exc.response.get("OriginalMessage") or message)
    if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
        return EndpointFailure(429, "throttled", "Too many requests to the model; retry shortly.", 2)
    if code in ("ModelNotReadyException", "ServiceUnavailable"):
        return EndpointFailure(503, "no_capacity", "The model has no capacity right now; retry shortly.", 10)
    if code == "ValidationError" and "not found" in message.lower():
        return EndpointFailure(503, "endpoint_unavailable", "The model endpoint is not available.", 30)
    if code == "ValidationError":
        return EndpointFailure(400, "invalid_request", f"The model rejected the request: {message}")
    return EndpointFailure(502, "endpoint_error", f"The model endpoint failed ({code or status}).")


def _model_failure(original_status, original_message: str) -> EndpointFailure:
    """The container answered non-2xx. Its own 4xx (context too long, an invalid
    parameter) is the request's fault: the client gets the same 4xx, and the openai client
    does not retry it. A timeout is 504 however it is reported; the rest is a model failure."""
    status = original_status if type(original_status) is int else 0
    text = _container_message(original_message)
    if status == 408 or "timed out" in original_message.lower():
        return EndpointFailure(504, "model_timeout", "The model did not answer in time.")
    if status == 429:
        return EndpointFailure(429, "throttled", f"The model is busy: {text}", 2)
    if 400 <= status < 500:
        return EndpointFailure(status, "model_rejected_request", text)
    return EndpointFailure(502, "model_error", f"The model failed: {original_message}", model_error=True)


def _container_message(text: str) -> str:
    """The message inside an OpenAI-style error body (vLLM, TGI, LMI), else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        for field in ("message", "error"):
            if isinstance(body.get(field), str):
                return body[field]
    return text
