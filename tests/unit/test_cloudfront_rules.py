"""CloudFront's rules for what a Lambda@Edge function may return (local_run/cloudfront_rules.py),
against the examples of the CloudFront Developer Guide, and the local front answering what
CloudFront answers when an edge function breaks one."""

from __future__ import annotations

import base64
import copy
import json
import types

import pytest

from config.stages import STAGES
from local_run import cloudfront_rules as rules
from local_run.events import origin_request_event, origin_response_event
from local_run.front import LocalFront


def _request_event(**headers) -> dict:
    return origin_request_event(body=b"{}", headers={"content-type": "application/json", **headers}, uri="/v1/chat/completions")


def _response(event: dict) -> dict:
    return event["Records"][0]["cf"]["response"]


def test_the_guides_origin_response_example_is_valid():
    """"Update HTTP responses in origin response triggers": status 200, statusDescription OK
    and a generated body on an error from the origin, every header left as it came."""
    event = origin_response_event(status=500, headers={"content-type": "text/html"})
    result = copy.deepcopy(_response(event))
    result.update(status="200", statusDescription="OK", body="Body generation example")
    assert rules.violations(event, result) == []


def test_the_guides_generated_response_example_is_valid():
    """"Generating HTTP responses in request triggers": status (a string), statusDescription,
    lowercase header names with {key, value}, body and bodyEncoding."""
    result = {
        "status": "200",
        "statusDescription": "OK",
        "headers": {"cache-control": [{"key": "Cache-Control", "value": "max-age=100"}],
                    "content-type": [{"key": "Content-Type", "value": "text/html"}]},
        "body": "<!DOCTYPE html><html><body>Hello</body></html>",
        "bodyEncoding": "text",
    }
    assert rules.violations(_request_event(), result) == []
    assert rules.violations(_request_event(), {**result, "body": base64.b64encode(b"\x00\xff").decode(), "bodyEncoding": "base64"}) == []


@pytest.mark.parametrize("name", ["transfer-encoding", "via"])
def test_an_origin_response_function_may_not_delete_or_change_a_read_only_header(name):
    """What a function URL in RESPONSE_STREAM mode answers is chunked; a function that
    clears the headers and writes its own fails validation: CloudFront answers 502."""
    event = origin_response_event(status=429, headers={"content-type": "application/json"})
    assert _response(event)["headers"][name]
    deleted = copy.deepcopy(_response(event))
    del deleted["headers"][name]
    assert rules.violations(event, deleted) == [f"the read-only header '{name}' was deleted (origin-response)"]
    changed = copy.deepcopy(_response(event))
    changed["headers"][name] = [{"key": name, "value": "other"}]
    assert rules.violations(event, changed) == [f"the read-only header '{name}' was changed (origin-response)"]


def test_an_origin_request_function_may_not_touch_its_read_only_headers_or_the_method():
    event = _request_event(**{"Accept-Encoding": "gzip", "If-None-Match": '"x"'})
    request = event["Records"][0]["cf"]["request"]
    forwarded = copy.deepcopy(request)
    forwarded["headers"]["accept-encoding"] = [{"key": "Accept-Encoding", "value": "br"}]
    del forwarded["headers"]["if-none-match"]
    forwarded["headers"]["content-length"] = [{"key": "Content-Length", "value": "2"}]
    forwarded["method"] = "GET"
    assert sorted(rules.violations(event, forwarded)) == sorted([
        "the read-only header 'accept-encoding' was changed (origin-request)",
        "the read-only header 'if-none-match' was deleted (origin-request)",
        "the read-only header 'content-length' was added (origin-request)",
        "method is read-only ('POST' became 'GET')",
    ])
    assert rules.violations(event, copy.deepcopy(request)) == []


@pytest.mark.parametrize("name", ["x-cache", "connection", "x-amz-cf-pop", "x-edge-location", "x-amzn-requestid", "upgrade"])
def test_a_disallowed_header_may_not_be_added(name):
    event = origin_response_event(status=502, headers={})
    result = copy.deepcopy(_response(event))
    result["headers"][name] = [{"key": name, "value": "1"}]
    assert rules.violations(event, result) == [f"header '{name}' is disallowed: a function cannot add it"]
    assert rules.check_event(origin_request_event(body=b"", headers={name: "1"}, uri="/x")) == []  # never in an event


@pytest.mark.parametrize(("change", "problem"), [
    ({"status": "100"}, "status '100' is not a 3-digit code 200-599 as a string"),
    ({"status": "600"}, "status '600' is not a 3-digit code 200-599 as a string"),
    ({"status": 200}, "status 200 is not a 3-digit code 200-599 as a string"),
    ({"bodyEncoding": "gzip"}, "bodyEncoding 'gzip' is not text or base64"),
    ({"body": "not base64!", "bodyEncoding": "base64"}, "body is not valid base64"),
    ({"headers": {"Content-Type": [{"key": "Content-Type", "value": "text/plain"}]}}, "header name 'Content-Type' is not lowercase"),
    ({"headers": {"content-type": [{"key": "X-Other", "value": "text/plain"}]}}, "header 'content-type' has the key 'X-Other', not the same name"),
    ({"headers": {"content-type": {"key": "Content-Type", "value": "text/plain"}}}, "header 'content-type' is not a non-empty list of {key, value}"),
])
def test_a_malformed_generated_response_fails_validation(change, problem):
    result = {"status": "200", "headers": {}, "body": "ok", "bodyEncoding": "text", **change}
    assert problem in rules.violations(_request_event(), result)


def test_a_generated_response_is_at_most_1_mb_at_origin_request_and_40_kb_at_viewer_request():
    event = _request_event()
    fits = {"status": "200", "headers": {}, "body": "x" * (1024 * 1024 - 10), "bodyEncoding": "text"}
    assert rules.violations(event, fits) == []
    over = {**fits, "body": "x" * (1024 * 1024 + 1)}
    assert rules.violations(event, over) == [
        f"the generated response is {1024 * 1024 + 1} bytes, over the 1048576 bytes of a origin-request response"]
    viewer = copy.deepcopy(event)
    viewer["Records"][0]["cf"]["config"]["eventType"] = "viewer-request"
    assert rules.violations(viewer, {**fits, "body": "x" * (40 * 1024 + 1)}) != []
    assert rules.violations(viewer, {"status": "204", "headers": {}, "body": "x"}) == [
        "a viewer-request response with status 204 has a body"]


def _front_with(edge_handler) -> LocalFront:
    front = LocalFront(settings=STAGES["dev"], results_url="http://127.0.0.1:9", bucket="b",
                       key_check=None, cache_read_check=None, origin_read_seconds=60, quiet=True)
    front.attach(types.SimpleNamespace(handler=edge_handler), "http://127.0.0.1:9")
    front.url = "http://127.0.0.1:9"
    return front


def test_the_local_front_answers_cloudfronts_502_when_the_edge_function_breaks_a_rule(capfd):
    """A deliberately broken edge function (it clears the origin response's headers, as the
    edge handler once did) gets what CloudFront gives it: a 502 LambdaValidationError."""

    def clears_the_headers(event, context):
        response = event["Records"][0]["cf"]["response"]
        response["headers"] = {"content-type": [{"key": "Content-Type", "value": "application/json"}]}
        response["body"] = json.dumps({"error": {"message": "busy"}})
        return response

    front = _front_with(clears_the_headers)
    answer = front.run_edge_function(origin_response_event(status=429, headers={"content-type": "application/json"}))
    assert answer["status"] == "502"
    assert answer["headers"]["x-cache"] == [{"key": "X-Cache", "value": "LambdaValidationError from cloudfront"}]
    assert "failed validation" in answer["body"] and "transfer-encoding" in answer["body"]
    assert "LAMBDA VALIDATION ERROR (origin-response)" in capfd.readouterr().err
    # The same broken result at origin request: the front's own path answers 502 too.
    status, headers, body = _front_with(lambda event, context: {"status": "200", "headers": {"x-cache": [{"value": "HIT"}]}}).inference(
        "POST", "/v1/chat/completions", "", {"content-type": "application/json"}, b"{}")
    assert status == 502 and headers["x-cache"] == "LambdaValidationError from cloudfront"
