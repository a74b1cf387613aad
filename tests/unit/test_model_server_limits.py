"""The local model server holds the deployed container's rules (local_run/lmi_container.py:
LMI 18 with vLLM 0.12.0) and answers a refusal as that container does, and the origin
adapter's endpoint client turns the container's own refusals into the client's 4xx.
The model server runs on 127.0.0.1; the adapter side uses boto3's real sagemaker-runtime
client against it (the SageMaker runtime facade), as the local run does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from lambdas.origin_adapter.endpoint import EndpointFailure, SageMakerEndpoint
from local_run.model_server import ModelServer
from local_run.servers import BackgroundServer

MAX_MODEL_LEN = 256


@pytest.fixture(scope="module")
def model_server():
    server = BackgroundServer(ModelServer(max_model_len=MAX_MODEL_LEN).app, name="limits").start()
    yield server.url
    server.stop()


def _container(url: str, body: dict | bytes) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/invocations", data=raw, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _endpoint(url: str) -> SageMakerEndpoint:
    client = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-west-2", aws_access_key_id="local",
                          aws_secret_access_key="local", config=Config(retries={"total_max_attempts": 1}))
    return SageMakerEndpoint("e", connect_timeout=2, read_timeout=10, throttle_retries=0, client=client)


def chat(content: str, **extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


def test_prompt_plus_max_tokens_past_the_served_context_gets_vllms_refusal_as_lmi_18_passes_it(model_server):
    body = chat("hello", max_tokens=MAX_MODEL_LEN)
    status, raw = _container(model_server, body)
    tokens = len(json.dumps(body["messages"]).encode())  # the stand-in's upper bound of the prompt's tokens
    message = (f"'max_tokens' or 'max_completion_tokens' is too large: {MAX_MODEL_LEN}. This model's maximum context "
               f"length is {MAX_MODEL_LEN} tokens and your request has {tokens} input tokens ({MAX_MODEL_LEN} > "
               f"{MAX_MODEL_LEN} - {tokens}). None")
    assert status == 500  # LMI 18's formatter misreads vLLM's ErrorResponse
    assert json.loads(raw) == {"error": f"error=ErrorInfo(message={message!r}, type='BadRequestError', param=None, code=400)",
                               "code": 500}
    with pytest.raises(EndpointFailure) as refused:
        _endpoint(model_server).invoke(json.dumps(body).encode(), "application/json")
    assert (refused.value.status, refused.value.code, refused.value.message, refused.value.model_error) == (
        400, "model_rejected_request", message, False)
    assert _container(model_server, chat("hello", max_tokens=MAX_MODEL_LEN - tokens))[0] == 200  # exactly fits


def test_a_completion_prompt_longer_than_the_context_less_max_tokens_is_refused():
    server = BackgroundServer(ModelServer(max_model_len=MAX_MODEL_LEN).app).start()
    try:
        prompt = "x" * (MAX_MODEL_LEN - 16 - 2)  # json.dumps adds the quotes
        assert _container(server.url, {"model": "m", "prompt": prompt, "temperature": 0})[0] == 200
        status, raw = _container(server.url, {"model": "m", "prompt": prompt + "x", "temperature": 0})
        assert status == 500 and "This model's maximum context length is 240 tokens" in json.loads(raw)["error"]
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "expected"), [
    (chat("hi", n="abc"), "Input parsing failed: 1 validation error for ChatCompletionRequest; n; Input should be a valid integer"),
    (b'{"model":"m","messages":[{"role":"user","content":"a\\ud800b"}],"temperature":0}',
     "TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]] None"),
    ({"model": "m", "temperature": 0}, "Input parsing failed: invalid payload. must contain prompt, inputs, or messages"),
    (chat("hi", max_tokens=0), "max_tokens must be at least 1, got 0."),
    (chat("hi", temperature=-1), "temperature must be non-negative, got -1.0."),
], ids=["n not an int", "lone surrogate", "no prompt, inputs or messages", "max_tokens 0", "negative temperature"])
def test_a_client_mistake_is_the_clients_4xx_never_a_model_error(model_server, body, expected):
    """What came back as 502 endpoint_error with a traceback in the model server's log: the
    container refuses it (with a 5xx or LMI's 424), and the adapter answers 400."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _ = _container(model_server, raw)
    assert status in (424, 500)
    with pytest.raises(EndpointFailure) as refused:
        _endpoint(model_server).invoke(raw, "application/json")
    assert (refused.value.status, refused.value.model_error) == (400, False)
    assert refused.value.message.startswith(expected), refused.value.message


def test_a_chat_body_with_prompt_is_served_as_a_completion_as_lmi_dispatches_it(model_server):
    status, raw = _container(model_server, {**chat("hi"), "prompt": "a completion"})
    assert status == 200 and json.loads(raw)["object"] == "text_completion"
    status, raw = _container(model_server, {**chat("hi"), "inputs": "tgi"})
    assert status == 200 and "generated_text" in json.loads(raw)


def test_a_real_model_failure_stays_a_model_error(model_server):
    with pytest.raises(EndpointFailure) as failed:
        _endpoint(model_server).invoke(json.dumps(chat("[[model-error]]")).encode(), "application/json")
    assert (failed.value.status, failed.value.code, failed.value.model_error) == (502, "model_error", True)
