"""Lambda events in the shapes AWS delivers them, built from the recordings in
tests/events/: a CloudFront origin-request event (Lambda@Edge, with the body) and a
function URL event as CloudFront forwards it through OAC. The local front and the unit
tests build their events here, from the same recordings."""

from __future__ import annotations

import base64
import json
import pickle
from functools import cache
from pathlib import Path

from local_run.cloudfront_rules import is_disallowed

EVENTS_DIR = Path(__file__).resolve().parent.parent / "tests" / "events"


def recorded(name: str) -> dict:
    """A fresh copy of the recording (the caller may change it): unpickled from bytes kept
    once, a third of copy.deepcopy's time on every request of the local run."""
    return pickle.loads(_recording(name))


@cache
def _recording(name: str) -> bytes:
    return pickle.dumps(json.loads((EVENTS_DIR / f"{name}.json").read_text()), pickle.HIGHEST_PROTOCOL)


def origin_request_event(
    *,
    body: bytes,
    headers: dict[str, str],
    uri: str,
    method: str = "POST",
    querystring: str = "",
    truncated: bool = False,
    distribution_domain: str | None = None,
    request_id: str | None = None,
) -> dict:
    """The recorded origin-request event with this request in it. `headers` by name as the
    viewer sent them; CloudFront lowercases the keys and keeps the name in "key", and leaves
    out the headers it never exposes to a function (cloudfront_rules). `body`
    is what CloudFront hands over: at most 1 MB, `truncated` beyond."""
    event = recorded("cloudfront_origin_request")
    cf = event["Records"][0]["cf"]
    if distribution_domain:
        cf["config"]["distributionDomainName"] = distribution_domain
    if request_id:
        cf["config"]["requestId"] = request_id
    request = cf["request"]
    request.update(method=method, uri=uri, querystring=querystring)
    request["headers"] = {}
    for name, value in headers.items():
        if not is_disallowed(name.lower()):  # CloudFront never exposes these to a function
            request["headers"].setdefault(name.lower(), []).append({"key": name, "value": value})
    request["body"].update(inputTruncated=truncated, data=base64.b64encode(body).decode())
    return event


def function_url_event(
    *, body: bytes, headers: dict[str, str], path: str, method: str = "POST", query: str = "", cf_id: str | None = None
) -> dict:
    """The recorded function URL event with this request in it: CloudFront's own headers
    (x-amz-cf-id, via, the OAC signature) from the recording, then `headers` (lowercase)."""
    event = recorded("function_url_request")
    event.update(rawPath=path, rawQueryString=query, body=base64.b64encode(body).decode(), isBase64Encoded=True)
    event["headers"].pop("content-type", None)
    event["headers"].update({k.lower(): v for k, v in headers.items()})
    if cf_id:
        event["headers"]["x-amz-cf-id"] = cf_id
    event["requestContext"]["http"].update(method=method, path=path)
    return event


def origin_response_event(*, status: int, headers: dict[str, str], uri: str = "/v1/chat/completions") -> dict:
    """The recorded origin-response event with this origin answer in it: its headers over
    the recording's (a function URL in RESPONSE_STREAM mode answers chunked, and the
    recording carries Via), less what CloudFront never exposes to a function (its
    disallowed headers, x-amzn-errortype among them). No body: CloudFront never hands an
    origin response's body to the function."""
    event = recorded("cloudfront_origin_response")
    cf = event["Records"][0]["cf"]
    cf["request"]["uri"] = uri
    answer = {k.lower(): [{"key": k, "value": v}] for k, v in headers.items()}
    if "content-length" in answer:  # a length, not chunks
        cf["response"]["headers"].pop("transfer-encoding", None)
    merged = {**cf["response"]["headers"], **answer}
    cf["response"].update(status=str(status), headers={k: v for k, v in merged.items() if not is_disallowed(k)})
    return event


def web_adapter_request(event: dict, *, request_id: str, deadline_ms: int) -> tuple[str, str, dict[str, str], bytes]:
    """The HTTP request Lambda Web Adapter makes of the app for a function URL event:
    (method, path with its query, headers, body bytes). The event's headers as they are,
    plus the function URL's request context and the invocation's Lambda context as JSON
    headers (aws-lambda-web-adapter src/lib.rs), the body base64-decoded."""
    query = event.get("rawQueryString") or ""
    path = event["rawPath"] + (f"?{query}" if query else "")
    headers = dict(event.get("headers") or {})
    headers["x-amzn-request-context"] = json.dumps(event["requestContext"])
    headers["x-amzn-lambda-context"] = json.dumps(
        {"request_id": request_id, "deadline": deadline_ms, "invoked_function_arn": LAMBDA_FUNCTION_ARN}
    )
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    return event["requestContext"]["http"]["method"], path, headers, raw


LAMBDA_FUNCTION_ARN = "arn:aws:lambda:local:000000000000:function:origin-adapter-local"
