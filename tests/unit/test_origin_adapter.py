"""Origin adapter handler tests: function URL events as CloudFront forwards them,
SageMaker and S3 stubbed at the boto3 boundary with botocore's Stubber."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from config.stages import STAGES
from inference_cache import cache_decision
from inference_cache.contract import (
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    METRICS_NAMESPACE,
    ORIGIN_ADAPTER_SERVICE,
    RESULTS_BUCKET_ENV,
    SETTINGS_ENV,
    SETTINGS_FILE,
)
from inference_cache.origin_adapter import handler as origin_handler
from inference_cache.origin_adapter.settings import AdapterSettings
from local_run.events import function_url_event

ENDPOINT = "inference-cache-dev"
BUCKET = "results-bucket"
GREEDY = {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}
CHAT_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


@dataclass
class LambdaContext:
    function_name: str = "origin-adapter"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-west-2:111111111111:function:origin-adapter"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"


@pytest.fixture
def lambda_context():
    return LambdaContext()


@pytest.fixture
def origin(tmp_path, monkeypatch):
    """The handler module with an adapter built afresh from the dev stage's settings (the
    environment the Inference stack sets), put where the handler finds it."""
    settings = tmp_path / SETTINGS_FILE
    settings.write_text(STAGES["dev"].edge_cache_settings().to_json())
    for name, value in {
        SETTINGS_ENV: str(settings),
        ENDPOINT_NAME_ENV: ENDPOINT,
        RESULTS_BUCKET_ENV: BUCKET,
        ENDPOINT_READ_TIMEOUT_ENV: str(STAGES["dev"].endpoint.timeouts.model_read_seconds),
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "POWERTOOLS_SERVICE_NAME": ORIGIN_ADAPTER_SERVICE,
        "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    adapter_settings = AdapterSettings.from_environment()
    adapter = origin_handler.build_adapter(adapter_settings)
    monkeypatch.setattr(origin_handler, "_adapter", adapter)
    yield SimpleNamespace(handler=origin_handler.handler, ADAPTER=adapter, SETTINGS=adapter_settings)
    origin_handler.metrics.clear_metrics()


@pytest.fixture
def stubs(origin):
    sagemaker = Stubber(origin.ADAPTER.endpoint.client)
    s3 = Stubber(origin.ADAPTER.store.client)
    with sagemaker, s3:
        yield sagemaker, s3
        sagemaker.assert_no_pending_responses()
        s3.assert_no_pending_responses()


def url_event(body=GREEDY, path="/v1/chat/completions", method="POST", headers=None) -> dict:
    """The recorded function URL event (tests/events) with this request in it."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return function_url_event(body=raw, headers={"content-type": "application/json", **(headers or {})}, path=path, method=method)


def endpoint_answer(sagemaker, answer=CHAT_ANSWER, expected_body=None):
    payload = json.dumps(answer).encode()
    expected = {"EndpointName": ENDPOINT, "Body": expected_body or ANY, "ContentType": "application/json", "Accept": "application/json"}
    sagemaker.add_response(
        "invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"}, expected
    )
    return payload


def decoded(response) -> bytes:
    return base64.b64decode(response["body"])


def emitted_metrics(capsys) -> dict:
    """Metric name -> values from the EMF line the handler printed."""
    found = {}
    for line in capsys.readouterr().out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "_aws" in record:
            for definition in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                value = record[definition["Name"]]
                found[definition["Name"]] = sum(value) if isinstance(value, list) else value
    return found


def test_cacheable_miss_invokes_stores_and_answers_miss(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    request_body = json.dumps(GREEDY).encode()
    payload = endpoint_answer(sagemaker, expected_body=request_body)
    key = cache_decision.decide("/v1/chat/completions", {}, request_body, origin.SETTINGS.cache).key
    s3.add_response(
        "put_object",
        {},
        {
            "Bucket": BUCKET,
            "Key": f"_cache/{key}",
            "Body": payload,
            "ContentType": "application/json",
            "CacheControl": f"max-age={STAGES['dev'].cache.default_ttl_seconds}",
            "Metadata": {"model": GREEDY["model"], "model-version": STAGES["dev"].model.model_version, "created": ANY, "expires": ANY},
        },
    )
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == 200
    assert decoded(response) == payload
    assert response["headers"]["x-inference-cache"] == "MISS"
    assert response["headers"]["x-inference-cache-key"] == key
    metrics = emitted_metrics(capsys)
    assert metrics["CacheMiss"] == 1.0 and metrics["CacheStore"] == 1.0
    assert metrics["StoredBytes"] == float(len(payload))
    assert metrics["GpuSecondsOnMiss"] >= 0 and "InferenceLatency" in metrics


def test_sampling_request_is_a_bypass_and_not_stored(origin, stubs, lambda_context, capsys):
    sagemaker, _ = stubs
    endpoint_answer(sagemaker)
    response = origin.handler(url_event({**GREEDY, "temperature": 0.8}), lambda_context)
    assert response["statusCode"] == 200 and response["headers"]["x-inference-cache"] == "BYPASS"
    assert emitted_metrics(capsys)["CacheBypass"] == 1.0


def test_no_store_is_a_bypass_and_not_stored(origin, stubs, lambda_context):
    sagemaker, _ = stubs
    endpoint_answer(sagemaker)
    response = origin.handler(url_event(headers={"cache-control": "no-store"}), lambda_context)
    assert response["headers"]["x-inference-cache"] == "BYPASS"


def test_forged_key_header_is_ignored_and_counted(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    response = origin.handler(url_event(headers={"x-inference-cache-key": "0" * 64}), lambda_context)
    assert response["headers"]["x-inference-cache-key"] != "0" * 64
    assert emitted_metrics(capsys)["CacheKeyMismatch"] == 1.0


def test_storage_failure_never_fails_the_request(origin, stubs, lambda_context, capsys):
    sagemaker, s3 = stubs
    payload = endpoint_answer(sagemaker)
    s3.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == 200 and decoded(response) == payload
    assert emitted_metrics(capsys)["CacheStoreFailed"] == 1.0


def test_stream_request_gets_one_event_stream_and_is_cached_that_way(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    # The endpoint is asked for the whole answer.
    expected = json.dumps({**GREEDY, "stream": False}).encode()
    endpoint_answer(sagemaker, expected_body=expected)
    s3.add_response("put_object", {}, {"Bucket": BUCKET, "Key": ANY, "Body": ANY, "ContentType": "text/event-stream",
                                       "CacheControl": ANY, "Metadata": ANY})
    response = origin.handler(url_event({**GREEDY, "stream": True}), lambda_context)
    assert response["headers"]["content-type"] == "text/event-stream"
    events = [line[len("data: "):] for line in decoded(response).decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "4"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("code", "http", "status", "retry_after", "extra"),
    [
        ("ModelError", 424, 502, None, {"OriginalStatusCode": 500, "OriginalMessage": "CUDA out of memory"}),
        ("ValidationError", 400, 400, None, {}),
        ("ThrottlingException", 400, 429, "2", {}),
        ("ModelNotReadyException", 429, 503, "10", {}),
        ("ServiceUnavailable", 503, 503, "10", {}),
        ("InternalFailure", 500, 502, None, {}),
    ],
)
def test_endpoint_errors_map_to_openai_errors(origin, stubs, lambda_context, capsys, code, http, status, retry_after, extra):
    sagemaker, _ = stubs
    attempts = 1 + (origin.SETTINGS.throttle_retries if code == "ThrottlingException" else 0)
    for _ in range(attempts):
        sagemaker.add_client_error(
            "invoke_endpoint", service_error_code=code, service_message="it failed", http_status_code=http, modeled_fields=extra
        )
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == status
    assert response["headers"].get("retry-after") == retry_after
    error = json.loads(decoded(response))["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    expected_type = {429: "rate_limit_error"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    assert error["type"] == expected_type
    if code == "ModelError":
        assert "CUDA out of memory" in error["message"]
        assert emitted_metrics(capsys)["ModelError"] == 1.0


def test_throttling_is_retried_then_succeeds(origin, stubs, lambda_context):
    sagemaker, s3 = stubs
    sagemaker.add_client_error("invoke_endpoint", service_error_code="ThrottlingException", http_status_code=400)
    payload = endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == 200 and decoded(response) == payload


def test_model_error_is_not_retried(origin, stubs, lambda_context):
    sagemaker, _ = stubs
    sagemaker.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424)
    assert origin.handler(url_event(), lambda_context)["statusCode"] == 502  # one call: the Stubber has no second


def test_unknown_endpoint_is_503(origin, stubs, lambda_context):
    sagemaker, _ = stubs
    sagemaker.add_client_error(
        "invoke_endpoint",
        service_error_code="ValidationError",
        service_message="Endpoint inference-cache-dev of account 111111111111 not found.",
        http_status_code=400,
    )
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == 503 and response["headers"]["retry-after"] == "30"


def test_invalid_body_is_refused_without_calling_the_model(origin, stubs, lambda_context):
    response = origin.handler(url_event(b"{not json"), lambda_context)
    assert response["statusCode"] == 400
    assert json.loads(decoded(response))["error"]["type"] == "invalid_request_error"


def test_models_route_and_unknown_route(origin, stubs, lambda_context):
    models = origin.handler(url_event(path="/v1/models", method="GET", body=b""), lambda_context)
    assert json.loads(decoded(models))["data"][0]["id"] == STAGES["dev"].model.model_id
    unknown = origin.handler(url_event(path="/v1/files", body=b"{}"), lambda_context)
    assert unknown["statusCode"] == 404


def test_tenant_comes_from_the_edge_header_not_the_signature(origin, stubs, lambda_context, monkeypatch):
    origin.ADAPTER.cache = origin.ADAPTER.cache._replace(tenant_scoped=True)
    sagemaker, s3 = stubs
    endpoint_answer(sagemaker)  # no tenant: not cacheable, not stored
    response = origin.handler(url_event(), lambda_context)
    assert response["headers"]["x-inference-cache"] == "BYPASS"
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    tenant_a = origin.handler(url_event(headers={"x-inference-tenant": "a" * 32}), lambda_context)
    endpoint_answer(sagemaker)
    s3.add_response("put_object", {}, None)
    tenant_b = origin.handler(url_event(headers={"x-inference-tenant": "b" * 32}), lambda_context)
    assert tenant_a["headers"]["x-inference-cache"] == "MISS"
    assert tenant_a["headers"]["x-inference-cache-key"] != tenant_b["headers"]["x-inference-cache-key"]


VLLM_400 = json.dumps({"object": "error", "message": "This model's maximum context length is 8192 tokens.",
                       "type": "BadRequestError", "param": None, "code": 400})


@pytest.mark.parametrize(
    ("extra", "status", "code", "in_message"),
    [
        # The container's own 4xx (vLLM's error body) stays that 4xx: the openai client does not retry it.
        ({"OriginalStatusCode": 400, "OriginalMessage": VLLM_400}, 400, "model_rejected_request", "maximum context length"),
        ({"OriginalStatusCode": 422, "OriginalMessage": "Input validation error: `top_p` must be > 0.0"}, 422,
         "model_rejected_request", "top_p"),
        # A timeout is 504, however it is reported.
        ({"OriginalStatusCode": 408, "OriginalMessage": "Request timeout"}, 504, "model_timeout", "in time"),
        ({"OriginalMessage": "Your invocation timed out while waiting for a response from container primary."}, 504,
         "model_timeout", "in time"),
        ({"OriginalStatusCode": 503, "OriginalMessage": "engine dead"}, 502, "model_error", "engine dead"),
    ],
)
def test_container_status_passes_through_as_the_same_kind_of_error(
    origin, stubs, lambda_context, capsys, extra, status, code, in_message
):
    sagemaker, _ = stubs
    sagemaker.add_client_error(
        "invoke_endpoint", service_error_code="ModelError", service_message="it failed", http_status_code=424,
        modeled_fields=extra,
    )
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == status
    error = json.loads(decoded(response))["error"]
    assert error["code"] == code and in_message in error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert emitted_metrics(capsys).get("ModelError") == (1.0 if code == "model_error" else None)


def test_an_answer_too_large_for_the_edge_is_not_stored(origin, stubs, lambda_context):
    sagemaker, _ = stubs  # no put_object expected: the Stubber fails on an unexpected call
    big = {**CHAT_ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 1_100_000},
                                       "finish_reason": "length"}]}
    endpoint_answer(sagemaker, answer=big)
    response = origin.handler(url_event(), lambda_context)
    assert response["statusCode"] == 200 and len(decoded(response)) > 1_048_576
    assert response["headers"]["x-inference-cache"] == "MISS"
