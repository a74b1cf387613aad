"""What CloudFront accepts from a Lambda@Edge function, per event type, as code.

The local front runs every result of the edge function through `violations()` and, where a
rule is broken, answers what CloudFront answers (502, LambdaValidationError); the unit
tests run every handler result through it too. So a function that would fail validation
on AWS fails here first. Sources (CloudFront Developer Guide; docs/decisions.md has the
table):
- "Restrictions on all edge functions", HTTP headers: disallowed headers (not exposed to
  functions, and a function may not add them) and read-only headers per event type (a
  function may read them, but not add, modify or delete them); a function that breaks
  either fails validation and CloudFront returns 502.
- "Lambda@Edge event structure": headers keyed by lowercase name, each a list of
  {"key", "value"} where "key" is the name in any case; a response's `status` (string),
  `statusDescription`, `body` and `bodyEncoding` ("text" or "base64").
- "Quotas on Lambda@Edge": a generated response (status, headers and body) is at most
  40 KB for viewer request and viewer response, 1 MB for origin request and origin
  response.
- "Restrictions on Lambda@Edge": a request's `method` is read-only; viewer-response
  functions cannot change the status code.
- "Generating HTTP responses in request triggers": status between 200 and 599 (else an
  error to the viewer); a viewer-request response with status 204 and a body is a 502;
  bodyEncoding "text" or "base64" (a base64 body that is not valid base64 is an error).
Where the documentation is silent, the stricter reading: a header entry's `key` must name
the same header as its lowercase name, header values hold no control characters.
"""

from __future__ import annotations

import base64
import binascii

VIEWER_REQUEST, ORIGIN_REQUEST, ORIGIN_RESPONSE, VIEWER_RESPONSE = (
    "viewer-request",
    "origin-request",
    "origin-response",
    "viewer-response",
)
EVENT_TYPES = (VIEWER_REQUEST, ORIGIN_REQUEST, ORIGIN_RESPONSE, VIEWER_RESPONSE)

# Not exposed to edge functions; a function must not add them.
DISALLOWED_HEADERS = frozenset(
    (
        "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "trailer", "upgrade", "x-accel-buffering", "x-accel-charset", "x-accel-limit-rate", "x-accel-redirect",
        "x-amzn-auth", "x-amzn-cf-billing", "x-amzn-cf-id", "x-amzn-cf-xff", "x-amzn-errortype",
        "x-amzn-fle-profile", "x-amzn-header-count", "x-amzn-header-order", "x-amzn-lambda-integration-tag",
        "x-amzn-requestid", "x-cache", "x-forwarded-proto", "x-real-ip",
    )
)
DISALLOWED_PREFIXES = ("x-amz-cf-", "x-edge-")
# Readable, but never added, modified or deleted by a function, per event type. The
# guide's lists, and where other published lists name more (Range at origin request;
# Content-Encoding, Content-Length, Transfer-Encoding at viewer response), those too: the
# stricter reading.
READ_ONLY_HEADERS = {
    VIEWER_REQUEST: frozenset(("content-length", "host", "transfer-encoding", "via")),
    ORIGIN_REQUEST: frozenset(
        (
            "accept-encoding", "content-length", "if-modified-since", "if-none-match", "if-range",
            "if-unmodified-since", "range", "transfer-encoding", "via",
        )
    ),
    ORIGIN_RESPONSE: frozenset(("transfer-encoding", "via")),
    VIEWER_RESPONSE: frozenset(("content-encoding", "content-length", "transfer-encoding", "warning", "via")),
}
# A response the function generates, headers and body together, at most.
GENERATED_RESPONSE_LIMIT_BYTES = {
    VIEWER_REQUEST: 40 * 1024,
    VIEWER_RESPONSE: 40 * 1024,
    ORIGIN_REQUEST: 1024 * 1024,
    ORIGIN_RESPONSE: 1024 * 1024,
}
BODY_ENCODINGS = ("text", "base64")
# What CloudFront answers a viewer when a function's result fails validation.
VALIDATION_ERROR_STATUS = 502
VALIDATION_ERROR_CACHE_HEADER = "LambdaValidationError from cloudfront"


def is_disallowed(name: str) -> bool:
    return name in DISALLOWED_HEADERS or name.startswith(DISALLOWED_PREFIXES)


def violations(event: dict, result) -> list[str]:
    """What CloudFront's validation would refuse in `result`, the function's answer to
    `event` (the event as CloudFront handed it, before the function ran). [] when valid."""
    cf = event["Records"][0]["cf"]
    event_type = cf["config"]["eventType"]
    if not isinstance(result, dict):
        return [f"the function returned {type(result).__name__}, not an object"]
    problems: list[str] = []
    if event_type in (VIEWER_REQUEST, ORIGIN_REQUEST):
        if "status" in result:  # a generated response: the request stops here
            problems += _response(result, event_type, before=None)
        else:
            problems += _request(result, cf["request"], event_type)
    else:
        problems += _response(result, event_type, before=cf["response"])
    return problems


def check_event(event: dict) -> list[str]:
    """What a stand-in must not put in an event: CloudFront never hands a function a
    disallowed header."""
    cf = event["Records"][0]["cf"]
    found = [name for part in ("request", "response") for name in (cf.get(part) or {}).get("headers", {}) if is_disallowed(name)]
    return [f"the event holds the disallowed header {name!r}" for name in found]


def _request(result: dict, before: dict, event_type: str) -> list[str]:
    problems = []
    if result.get("method") != before.get("method"):
        problems.append(f"method is read-only ({before.get('method')!r} became {result.get('method')!r})")
    headers = result.get("headers", {})
    problems += _headers(headers, event_type)
    problems += _read_only(headers, before.get("headers", {}), event_type)
    body = result.get("body")
    if body is not None and body is not before.get("body") and isinstance(body, dict):
        if body.get("encoding", "base64") not in BODY_ENCODINGS:
            problems.append(f"body encoding {body.get('encoding')!r} is not text or base64")
    return problems


def _response(result: dict, event_type: str, before: dict | None) -> list[str]:
    problems = []
    status = result.get("status")
    if not (isinstance(status, str) and len(status) == 3 and status.isdigit() and 200 <= int(status) <= 599):
        problems.append(f"status {status!r} is not a 3-digit code 200-599 as a string")
    elif event_type == VIEWER_REQUEST and status == "204" and result.get("body"):
        problems.append("a viewer-request response with status 204 has a body")
    elif event_type == VIEWER_RESPONSE and before is not None and status != before.get("status"):
        problems.append("a viewer-response function cannot change the status code")
    description = result.get("statusDescription")
    if description is not None and not isinstance(description, str):
        problems.append("statusDescription is not a string")
    headers = result.get("headers", {})
    problems += _headers(headers, event_type)
    if before is not None:
        problems += _read_only(headers, before.get("headers", {}), event_type)
    encoding = result.get("bodyEncoding", "text")
    if encoding not in BODY_ENCODINGS:
        problems.append(f"bodyEncoding {encoding!r} is not text or base64")
    body = result.get("body")
    if body is not None and not isinstance(body, str):
        problems.append("body is not a string")
    elif body is not None and encoding == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            problems.append("body is not valid base64")
    if before is None or body is not None:  # generated, or a replaced body
        size = len((body or "").encode()) + sum(
            len(h.get("key", name)) + len(str(h.get("value", ""))) for name, values in headers.items() if isinstance(values, list)
            for h in values if isinstance(h, dict)
        )
        limit = GENERATED_RESPONSE_LIMIT_BYTES[event_type]
        if size > limit:
            problems.append(f"the generated response is {size} bytes, over the {limit} bytes of a {event_type} response")
    return problems


def _headers(headers, event_type: str) -> list[str]:
    if not isinstance(headers, dict):
        return ["headers is not an object"]
    problems = []
    for name, values in headers.items():
        if name != name.lower():
            problems.append(f"header name {name!r} is not lowercase")
        if not isinstance(values, list) or not values:
            problems.append(f"header {name!r} is not a non-empty list of {{key, value}}")
            continue
        for header in values:
            if not isinstance(header, dict) or not isinstance(header.get("value"), str):
                problems.append(f"header {name!r} has an entry without a string value")
                continue
            key = header.get("key", name)
            if not isinstance(key, str) or key.lower() != name:
                problems.append(f"header {name!r} has the key {key!r}, not the same name")
            if not header["value"].isprintable() and any(c < " " and c != "\t" for c in header["value"]):
                problems.append(f"header {name!r} has a control character in its value")
        if is_disallowed(name):
            problems.append(f"header {name!r} is disallowed: a function cannot add it")
    return problems


def _read_only(after: dict, before: dict, event_type: str) -> list[str]:
    problems = []
    for name in READ_ONLY_HEADERS[event_type]:
        was, now = _values(before.get(name)), _values(after.get(name))
        if was != now:
            verb = "deleted" if was and not now else "added" if now and not was else "changed"
            problems.append(f"the read-only header {name!r} was {verb} ({event_type})")
    return problems


def _values(entries) -> list[str]:
    return [h.get("value") for h in entries or [] if isinstance(h, dict)]
