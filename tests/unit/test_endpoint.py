"""SageMakerEndpoint.invoke on its own: which failures it retries (only throttling, with
jittered backoff capped at 2 s), and the status, code, message and Retry-After each
failure becomes. SageMaker at the boto3 boundary with botocore's Stubber (CountingStubber:
every call attempted is counted); a real read timeout and a refused connection against
the local model server and a closed port on 127.0.0.1."""

from __future__ import annotations

import io
import json
import random
import time

import boto3
import pytest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.stub import Stubber

from lambdas.origin_adapter.endpoint import EndpointFailure, SageMakerEndpoint
from local_run.model_server import ModelServer
from local_run.servers import BackgroundServer
from tests.unit.boto_boundary import CountingStubber

LOCAL = {"region_name": "us-east-1", "aws_access_key_id": "local", "aws_secret_access_key": "local"}
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}).encode()


def endpoint(throttle_retries: int = 0, url: str | None = None, read_timeout: float = 5.0) -> SageMakerEndpoint:
    client = boto3.client("sagemaker-runtime", endpoint_url=url,
                          config=Config(read_timeout=read_timeout, connect_timeout=1, retries={"total_max_attempts": 1}), **LOCAL)
    return SageMakerEndpoint("e", connect_timeout=1, read_timeout=read_timeout, throttle_retries=throttle_retries, client=client)


def failure_of(e: SageMakerEndpoint) -> EndpointFailure:
    with pytest.raises(EndpointFailure) as raised:
        e.invoke(CHAT, "application/json")
    return raised.value


def as_tuple(failure: EndpointFailure) -> tuple:
    return failure.status, failure.code, failure.message, failure.retry_after, failure.model_error


def test_throttling_is_retried_with_jittered_backoff_capped_at_two_seconds(monkeypatch):
    e = endpoint(throttle_retries=6)
    pauses, draws = [], []
    monkeypatch.setattr(time, "sleep", pauses.append)  # the pauses asked for, not slept
    monkeypatch.setattr(random, "uniform", lambda low, high: draws.append((low, high)) or 0.75)
    with CountingStubber(e.client) as sagemaker:
        for _ in range(7):
            sagemaker.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
        failure = failure_of(e)
        sagemaker.assert_calls_as_queued()  # 1 call + 6 retries, not one more
    assert as_tuple(failure) == (429, "throttled", "Too many requests to the model; retry shortly.", 2, False)
    assert draws == [(0.5, 1.0)] * 6  # a jitter of half to all of each step
    assert pauses == pytest.approx([0.075, 0.15, 0.3, 0.6, 1.2, 1.5])  # min(2 s, 0.1 s * 2**n) * 0.75


def test_a_throttled_call_that_then_succeeds_answers(monkeypatch):
    e = endpoint(throttle_retries=2)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    payload = b'{"choices": []}'
    with CountingStubber(e.client) as sagemaker:
        sagemaker.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
        sagemaker.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload)),
                                                   "ContentType": "application/json"})
        answer = e.invoke(CHAT, "application/json")
        sagemaker.assert_calls_as_queued()
    assert (answer.body, answer.content_type) == (payload, "application/json") and answer.seconds >= 0


VLLM_400 = json.dumps({"object": "error", "message": "This model's maximum context length is 8192 tokens.",
                       "type": "BadRequestError", "param": None, "code": 400})


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        # The container's own 4xx stays that 4xx, with the message inside its error body.
        ({"OriginalStatusCode": 400, "OriginalMessage": VLLM_400},
         (400, "model_rejected_request", "This model's maximum context length is 8192 tokens.", None, False)),
        ({"OriginalStatusCode": 499, "OriginalMessage": "client closed"}, (499, "model_rejected_request", "client closed", None, False)),
        # LMI 18 wraps vLLM's 400 in a 500, and a body it cannot parse in a 424: still the request's fault.
        ({"OriginalStatusCode": 500, "OriginalMessage": json.dumps({
            "error": "error=ErrorInfo(message='top_p must be in (0, 1], got 2.0.', type='BadRequestError', param=None, code=400)",
            "code": 500})},
         (400, "model_rejected_request", "top_p must be in (0, 1], got 2.0.", None, False)),
        ({"OriginalStatusCode": 424, "OriginalMessage": json.dumps({
            "error": "Input parsing failed: invalid payload. must contain prompt, inputs, or messages", "code": 424})},
         (400, "model_rejected_request", "Input parsing failed: invalid payload. must contain prompt, inputs, or messages", None,
          False)),
        # A timeout is 504 however it is reported.
        ({"OriginalStatusCode": 408, "OriginalMessage": "Request timeout"},
         (504, "model_timeout", "The model did not answer in time.", None, False)),
        ({"OriginalMessage": "Your invocation Timed Out while waiting for container primary."},
         (504, "model_timeout", "The model did not answer in time.", None, False)),
        # The container's 429: busy, retry shortly (and retried like SageMaker's throttling).
        ({"OriginalStatusCode": 429, "OriginalMessage": '{"error": "queue full"}'},
         (429, "throttled", "The model is busy: queue full", 2, False)),
        # Anything else is the model's failure: 502, and counted as a model error.
        ({"OriginalStatusCode": 500, "OriginalMessage": "CUDA out of memory"},
         (502, "model_error", "The model failed: CUDA out of memory", None, True)),
        ({"OriginalStatusCode": 399, "OriginalMessage": "odd"}, (502, "model_error", "The model failed: odd", None, True)),
        ({"OriginalStatusCode": 500}, (502, "model_error", "The model failed: it failed", None, True)),
        ({}, (502, "model_error", "The model failed: it failed", None, True)),
    ],
)
def test_a_containers_error_becomes_the_same_kind_of_error(original, expected):
    e = endpoint(throttle_retries=0)
    with CountingStubber(e.client) as sagemaker:
        sagemaker.add_client_error("invoke_endpoint", service_error_code="ModelError", service_message="it failed",
                                   http_status_code=424, modeled_fields=original)
        failure = failure_of(e)
        sagemaker.assert_calls_as_queued()
    assert as_tuple(failure) == expected


def test_a_container_429_is_retried_as_throttling(monkeypatch):
    e = endpoint(throttle_retries=1)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with CountingStubber(e.client) as sagemaker:
        for _ in range(2):
            sagemaker.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                                       modeled_fields={"OriginalStatusCode": 429, "OriginalMessage": "busy"})
        assert failure_of(e).status == 429
        sagemaker.assert_calls_as_queued()


def test_any_other_botocore_error_is_a_502_naming_it():
    e = endpoint()
    with Stubber(e.client) as sagemaker:  # nothing queued: the Stubber's refusal is a BotoCoreError
        failure = failure_of(e)
        sagemaker.assert_no_pending_responses()
    assert as_tuple(failure) == (502, "endpoint_error", "Calling the model failed: UnStubbedResponseError.", None, False)


def test_a_refused_connection_is_a_503_with_retry_after():
    failure = failure_of(endpoint(url="http://127.0.0.1:9"))  # the discard port: nothing listens
    assert as_tuple(failure) == (503, "endpoint_unreachable", "The model endpoint cannot be reached.", 5, False)


def test_a_model_slower_than_the_read_timeout_is_a_504_and_not_retried():
    model = ModelServer()
    running = BackgroundServer(model.app, name="model-under-test").start()
    try:
        slow = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[[slow-ms:3000]]"}], "temperature": 0})
        with pytest.raises(EndpointFailure) as raised:
            endpoint(throttle_retries=2, url=running.url, read_timeout=0.3).invoke(slow.encode(), "application/json")
    finally:
        running.stop()
    assert as_tuple(raised.value) == (504, "model_timeout", "The model did not answer in time.", None, False)
    assert model.invocations == 1
