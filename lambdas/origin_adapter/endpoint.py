"""The SageMaker endpoint, through boto3: explicit timeouts, retries only on throttling,
and every failure turned into an EndpointFailure with the status the client gets."""

from __future__ import annotations

import ast
import json
import random
import re
import time
from dataclasses import dataclass

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    EventStreamError,
    ReadTimeoutError,
)


@dataclass(frozen=True)
class EndpointAnswer:
    body: bytes
    content_type: str
    seconds: float


class EndpointStream:
    """The model's stream: iterate for its bytes (PayloadParts, cut anywhere). A failure
    mid-stream raises EndpointFailure: SageMaker's ModelStreamError or
    InternalStreamFailure (botocore raises them as EventStreamError), a gap between parts
    longer than the read timeout, a broken connection."""

    def __init__(self, events, content_type: str, started: float) -> None:
        self._events = events
        self.content_type = content_type
        self.started = started  # perf_counter() when the call was made

    def __iter__(self):
        try:
            for event in self._events:
                part = event.get("PayloadPart")
                if part and part.get("Bytes"):
                    yield part["Bytes"]
        except EventStreamError as exc:
            error = exc.response.get("Error", {})
            code, message = error.get("Code", ""), error.get("Message", "")
            # ModelStreamError's ErrorCode (ModelInvocationTimeExceeded, StreamBroken) does
            # not reach us: botocore's event-stream parser keeps only Code and Message.
            if "timed out" in message.lower():
                raise EndpointFailure(504, "model_timeout", "The model did not finish in time.") from exc
            raise EndpointFailure(502, "model_stream_error", f"The model failed mid-stream ({code}): {message}",
                                  model_error=code == "ModelStreamError") from exc
        except (ReadTimeoutError, urllib3.exceptions.ReadTimeoutError) as exc:  # a gap longer than the read timeout
            raise EndpointFailure(504, "model_timeout", "The model stopped sending tokens.") from exc
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise EndpointFailure(502, "model_stream_broken", f"The model's stream broke: {type(exc).__name__}.") from exc

    def close(self) -> None:
        """Stop reading (the client is gone, or the adapter's time is up)."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class EndpointFailure(Exception):
    status: int
    code: str
    message: str
    retry_after: int | None = None
    model_error: bool = False
    param: str | None = None  # the request field at fault, for a 4xx of the adapter's own


class SageMakerEndpoint:
    def __init__(
        self, name: str, *, connect_timeout: float, read_timeout: float, throttle_retries: int, client=None,
        max_connections: int = 10,
    ):
        self.name = name
        self.throttle_retries = throttle_retries
        # One client per process, its connections kept alive between requests. botocore's
        # own retries are off: they would also retry model errors and timeouts, which only
        # burn GPU time and the client's minute.
        self.client = client or boto3.client(
            "sagemaker-runtime",
            config=Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout, retries={"total_max_attempts": 1},
                max_pool_connections=max_connections, tcp_keepalive=True,
            ),
        )

    def invoke(self, body: bytes, content_type: str) -> EndpointAnswer:
        def call():
            response = self.client.invoke_endpoint(
                EndpointName=self.name, Body=body, ContentType=content_type, Accept="application/json"
            )
            return response["Body"].read(), response.get("ContentType") or "application/json"

        started, (payload, answer_type) = self._with_retries(call)
        return EndpointAnswer(payload, answer_type, time.perf_counter() - started)

    def invoke_stream(self, body: bytes, content_type: str) -> EndpointStream:
        """InvokeEndpointWithResponseStream. What fails before the stream starts (the
        container's 4xx, throttling, no capacity) raises EndpointFailure as invoke() does;
        what fails after it started is raised by EndpointStream's iteration."""

        def call():
            return self.client.invoke_endpoint_with_response_stream(EndpointName=self.name, Body=body, ContentType=content_type)

        started, response = self._with_retries(call)
        return EndpointStream(response["Body"], response.get("ContentType") or "application/jsonlines", started)

    def _with_retries(self, call):
        """(when the successful attempt started, its result); throttling retried with
        jittered backoff, every failure as an EndpointFailure."""
        for attempt in range(self.throttle_retries + 1):
            started = time.perf_counter()
            try:
                return started, call()
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
    refused = _client_error_in_lmi_answer(original_message)
    if refused is not None:  # the request's fault, whatever status LMI put on it
        status, text = refused
        return EndpointFailure(status, "model_rejected_request", text)
    text = _container_message(original_message)
    if status == 408 or "timed out" in original_message.lower():
        return EndpointFailure(504, "model_timeout", "The model did not answer in time.")
    if status == 429:
        return EndpointFailure(429, "throttled", f"The model is busy: {text}", 2)
    if 400 <= status < 500:
        return EndpointFailure(status, "model_rejected_request", text)
    return EndpointFailure(502, "model_error", f"The model failed: {original_message}", model_error=True)


# vLLM's ErrorResponse as LMI 18 passes it on: its repr, as the error of a 500 body.
_LMI_WRAPPED_VLLM_ERROR = re.compile(
    r"ErrorInfo\(message=(?P<message>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"), type='(?P<type>\w+)', "
    r"param=(?:None|'[^']*'), code=(?P<code>4\d\d)\)"
)


def _client_error_in_lmi_answer(text: str) -> tuple[int, str] | None:
    """(status, message) when the container refused the request itself, though its answer
    says 5xx: LMI 18 (djl-serving 0.36.0) turns vLLM's 400s into a 500 whose error is the
    repr of vLLM's ErrorInfo, and a body it cannot parse into "Input parsing failed" (424,
    or a 500 when the text has line breaks). Client mistakes are 4xx, never model errors.
    docs/decisions.md, "The local run refuses what AWS refuses"."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error") if isinstance(body.get("error"), str) else body.get("message")
    if not isinstance(error, str):
        return None
    wrapped = _LMI_WRAPPED_VLLM_ERROR.search(error)
    if wrapped is not None:
        try:
            message = ast.literal_eval(wrapped["message"])
        except (ValueError, SyntaxError):
            return None
        return int(wrapped["code"]), str(message)
    parsing = error.find("Input parsing failed: ")
    if parsing >= 0:
        lines = [line.strip() for line in error[parsing:].splitlines() if line.strip() and "errors.pydantic.dev" not in line]
        return 400, "; ".join(lines)[:1000]
    return None


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
