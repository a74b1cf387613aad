"""Until the cache logic lands, the handlers only pass requests through unchanged.

The origin adapter's SageMaker call is stubbed at the boto3 boundary (botocore Stubber)."""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import sys
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

LAMBDAS = Path(__file__).resolve().parents[2] / "lambdas"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _origin_request_event() -> dict:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    return {
        "Records": [
            {
                "cf": {
                    "config": {
                        "distributionDomainName": "d111111abcdef8.cloudfront.net",
                        "distributionId": "EDFDVBD6EXAMPLE",
                        "eventType": "origin-request",
                        "requestId": "4TyzHTaYWb1GX1qTfsHhEqV6HUDd_BzoBZnwfnvQc_1oF26ClkoUSEQ==",
                    },
                    "request": {
                        "clientIp": "203.0.113.178",
                        "method": "POST",
                        "uri": "/v1/chat/completions",
                        "querystring": "",
                        "headers": {"content-type": [{"key": "Content-Type", "value": "application/json"}]},
                        "body": {
                            "inputTruncated": False,
                            "action": "read-only",
                            "encoding": "base64",
                            "data": base64.b64encode(body).decode(),
                        },
                        "origin": {"custom": {"domainName": "abc.lambda-url.us-west-2.on.aws", "port": 443}},
                    },
                }
            }
        ]
    }


def test_edge_handler_returns_the_request_unchanged():
    edge = _load("edge_handler", LAMBDAS / "edge" / "handler.py")
    event = _origin_request_event()
    original = copy.deepcopy(event["Records"][0]["cf"]["request"])
    assert edge.handler(event, None) == original


@pytest.fixture
def origin_adapter(monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", "inference-cache-dev")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    module = _load("origin_adapter_handler", LAMBDAS / "origin_adapter" / "handler.py")
    module._runtime = boto3.client("sagemaker-runtime", region_name="us-west-2")
    yield module
    sys.modules.pop("origin_adapter_handler", None)


def test_origin_adapter_sends_the_body_unchanged_and_returns_the_answer_unchanged(origin_adapter):
    body = b'{"model":"m","messages":[{"role":"user","content":"h\xc3\xa9"}]}'
    answer = b'{"choices":[{"message":{"role":"assistant","content":"hello"}}]}'
    event = {
        "rawPath": "/v1/chat/completions",
        "headers": {"content-type": "application/json"},
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
        "requestContext": {"http": {"method": "POST"}},
    }
    with Stubber(origin_adapter._runtime) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
            {"EndpointName": "inference-cache-dev", "ContentType": "application/json", "Body": body},
        )
        response = origin_adapter.handler(event, None)
        stub.assert_no_pending_responses()
    assert response["statusCode"] == 200
    assert base64.b64decode(response["body"]) == answer
    assert response["headers"]["content-type"] == "application/json"
