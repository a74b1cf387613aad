"""Lambda events in the shapes AWS delivers them, built from the recordings in
tests/events/: a CloudFront origin-request event (Lambda@Edge, with the body) and a
function URL event as CloudFront forwards it through OAC. The local front and the unit
tests build their events here, from the same recordings."""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from pathlib import Path

EVENTS_DIR = Path(__file__).resolve().parent.parent / "tests" / "events"


@cache
def recorded(name: str) -> dict:
    return json.loads((EVENTS_DIR / f"{name}.json").read_text())


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
    viewer sent them; CloudFront lowercases the keys and keeps the name in "key". `body`
    is what CloudFront hands over: at most 1 MB, `truncated` beyond."""
    event = copy.deepcopy(recorded("cloudfront_origin_request"))
    cf = event["Records"][0]["cf"]
    if distribution_domain:
        cf["config"]["distributionDomainName"] = distribution_domain
    if request_id:
        cf["config"]["requestId"] = request_id
    request = cf["request"]
    request.update(method=method, uri=uri, querystring=querystring)
    request["headers"] = {}
    for name, value in headers.items():
        request["headers"].setdefault(name.lower(), []).append({"key": name, "value": value})
    request["body"].update(inputTruncated=truncated, data=base64.b64encode(body).decode())
    return event


def function_url_event(
    *, body: bytes, headers: dict[str, str], path: str, method: str = "POST", query: str = "", cf_id: str | None = None
) -> dict:
    """The recorded function URL event with this request in it: CloudFront's own headers
    (x-amz-cf-id, via, the OAC signature) from the recording, then `headers` (lowercase)."""
    event = copy.deepcopy(recorded("function_url_request"))
    event.update(rawPath=path, rawQueryString=query, body=base64.b64encode(body).decode(), isBase64Encoded=True)
    event["headers"].pop("content-type", None)
    event["headers"].update({k.lower(): v for k, v in headers.items()})
    if cf_id:
        event["headers"]["x-amz-cf-id"] = cf_id
    event["requestContext"]["http"].update(method=method, path=path)
    return event


def origin_response_event(*, status: int, headers: dict[str, str], uri: str = "/v1/chat/completions") -> dict:
    """The recorded origin-response event with this origin answer in it (no body: CloudFront
    never hands an origin response's body to the function)."""
    event = copy.deepcopy(recorded("cloudfront_origin_response"))
    cf = event["Records"][0]["cf"]
    cf["request"]["uri"] = uri
    cf["response"].update(status=str(status), headers={k.lower(): [{"key": k, "value": v}] for k, v in headers.items()})
    return event
