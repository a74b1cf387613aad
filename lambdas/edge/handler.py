"""Lambda@Edge ORIGIN-REQUEST handler for POST inference requests (flow steps 1-4).

Validate and decide (cache_decision), look cacheable requests up as
GET https://{distribution}/_cache/{key} through CloudFront's own cache, answer hits at
the edge, and forward everything else to the origin adapter with the cache key and the
body hash OAC needs. Stdlib only; it runs on every POST. It never raises: an unexpected
failure forwards the request uncached. Its own answers (hits, 400/413/415) carry
Server-Timing (decision, lookup) and the log line the same figures; a request it forwards
carries them to the origin (EDGE_TIMING_HEADER), whose answer names them beside its own.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import os
import time

from lambdas import cache_decision, cache_settings
from lambdas.contract import (
    CACHE_READ_CONTEXT,
    CONTENT_SHA256_HEADER,
    EDGE_TIMING_HEADER,
    EXPIRES_METADATA,
    KEY_HEADER,
    LOOKUP_BASE_ENV,
    SERVER_TIMING_HEADER,
    STAGE_SECRET_HEADER,
    STATUS_HEADER,
    STORED_AT_METADATA,
    TENANT_HEADER,
    EdgeLog,
)
from lambdas.edge import lookup
from lambdas.edge.lookup import GENERATED_BODY_LIMIT
from lambdas.errors import ApiError

SETTINGS = cache_settings.load()
ROUTES = frozenset(SETTINGS.routes)
LOOKUP_TIMEOUT_SECONDS = SETTINGS.lookup_timeout_ms / 1000
# Set only by this function; a viewer's own values must never reach the origin.
_EDGE_OWNED_HEADERS = (KEY_HEADER, TENANT_HEADER, CONTENT_SHA256_HEADER, EDGE_TIMING_HEADER)
# The stored answer's own record of when it was stored and until when it may be served
# (epoch seconds), as S3 returns them.
_STORED_AT_HEADER = f"x-amz-meta-{STORED_AT_METADATA}"
_EXPIRES_HEADER = f"x-amz-meta-{EXPIRES_METADATA}"
_METHODS_WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")
# Read-only in an origin-response event: a function that deletes or changes one fails
# CloudFront's validation and the viewer gets a 502 (CloudFront Developer Guide,
# "Restrictions on all edge functions", HTTP headers). A streamed answer is chunked.
_ORIGIN_RESPONSE_READ_ONLY = ("transfer-encoding", "via")
# Errors the origin adapter never produces itself (it always sets x-inference-cache), but
# Lambda and OAC do, in their own shapes: Lambda throttling the reserved concurrency
# (429), a function error or timeout (5xx), a refused signature (403).
_ORIGIN_ERRORS = {
    403: ("forbidden", "The origin refused the request."),
    413: ("body_too_large", "The request body is larger than the origin accepts (6 MB)."),
    429: ("origin_busy", "Every model slot is busy; retry shortly."),
    500: ("origin_error", "The origin failed."),
    502: ("origin_error", "The origin failed."),
    503: ("origin_unavailable", "The origin is unavailable; retry shortly."),
    504: ("origin_timeout", "The origin did not answer in time."),
}


def handler(event, context):
    cf = event["Records"][0]["cf"]
    request = cf["request"]
    started = time.perf_counter()
    if cf["config"].get("eventType") == "origin-response":
        return _origin_response(cf["response"], request)
    try:
        response, log = _handle(request, cf["config"])
    except Exception as exc:  # never fail the viewer: forward uncached
        response, log = _forward_uncached(request), {"outcome": "forward-after-error", "error": repr(exc)[:300]}
    log[EdgeLog.DURATION] = round((time.perf_counter() - started) * 1000, 2)
    log["uri"] = request.get("uri")
    print(json.dumps(log, separators=(",", ":")))
    return response


def _handle(request: dict, config: dict) -> tuple[dict, dict]:
    if request.get("method") != "POST" or request.get("uri") not in ROUTES:
        # Not decided here, but OAC still signs a body only with its hash: without it the
        # origin would answer Lambda's raw 403 instead of its own OpenAI-shaped 404/405.
        if request.get("method") in _METHODS_WITH_BODY:
            _forward(request, None, None, _body_bytes(request, default=b""))
        return request, {"outcome": "pass"}
    started = time.perf_counter()
    body_info = request.get("body") or {}
    body = _body_bytes(request, default=b"")
    headers = request.get("headers") or {}
    # The tenant the viewer-request API key check verified (it strips any viewer copy);
    # never the key itself.
    tenant = _verified_tenant(headers) if SETTINGS.tenant_scoped else None
    # The stage secret the viewer-request function set (it removes any viewer copy): keys
    # are MACs under it, and the lookup's credential comes from it.
    secret = _stage_secret(headers)
    decision = cache_decision.decide(
        request["uri"], headers, body, SETTINGS, truncated=bool(body_info.get("inputTruncated")), tenant=tenant,
        mac=secret[0] if secret else None,
    )
    if decision.cacheable and secret is None:  # fail closed: no deployed key without the secret
        decision = decision._replace(cacheable=False, key=None, lookup=False, store=False, reason="no stage secret")
    decided = time.perf_counter()
    log = {"cacheable": decision.cacheable, "reason": decision.reason, "key": decision.key}
    log["decision_ms"] = round((decided - started) * 1000, 2)
    if decision.error is not None:
        log["outcome"] = f"error-{decision.error.status}"
        return _with_server_timing(_error_response(decision.error), log), log
    if decision.lookup:
        hit, log[EdgeLog.LOOKUP] = _lookup(config, decision.key, decision.ttl_seconds, secret[1])
        log["lookup_ms"] = round((time.perf_counter() - decided) * 1000, 2)
        log["connection"] = lookup.last_connection
        if hit is not None:
            log["outcome"] = "hit"
            return _with_server_timing(hit, log), log
    _forward(request, decision.key if decision.cacheable else None, tenant, body, _timing(log))
    log["outcome"] = "forward"
    return request, log


def _origin_response(response: dict, request: dict) -> dict:
    """ORIGIN-RESPONSE: the origin's own errors pass as they are; an error Lambda or OAC
    answered in their shape (no x-inference-cache header) becomes the OpenAI error shape,
    with Retry-After where a retry helps, so clients see one error format. The body of an
    origin response cannot be read here, only replaced."""
    headers = response.setdefault("headers", {})
    status = int(response.get("status", 200))
    if status < 400 or STATUS_HEADER in headers:
        return response
    code, message = _ORIGIN_ERRORS.get(status, ("origin_error", "The origin failed."))
    error = ApiError(status, message, None, code)
    generated = _error_response(error)
    response["body"], response["bodyEncoding"] = generated["body"], "text"
    kept = {name: headers[name] for name in _ORIGIN_RESPONSE_READ_ONLY if name in headers}
    headers.clear()
    headers.update(kept)
    headers.update(generated["headers"])
    if status in (429, 503):
        headers["retry-after"] = [{"key": "Retry-After", "value": "1"}]
    print(json.dumps({"outcome": f"origin-error-{status}", "uri": request.get("uri")}, separators=(",", ":")))
    return response


# stage secret -> (its cache-key MAC key, its /_cache/ read credential); a secret changes
# only at a rotation, so this stays tiny.
_DERIVED: dict[str, tuple[bytes, str]] = {}


def _stage_secret(headers: dict) -> tuple[bytes, str] | None:
    values = headers.get(STAGE_SECRET_HEADER)
    if not values or len(values) != 1 or not values[0].get("value"):
        return None
    secret = values[0]["value"]
    derived = _DERIVED.get(secret)
    if derived is None:
        if len(_DERIVED) >= 4:
            _DERIVED.clear()
        credential = hmac.digest(secret.encode(), CACHE_READ_CONTEXT.encode(), "sha256").hex()
        derived = _DERIVED[secret] = (cache_decision.mac_key(secret), credential)
    return derived


def _verified_tenant(headers: dict) -> str | None:
    values = headers.get(TENANT_HEADER)
    return values[0]["value"] if values and len(values) == 1 and values[0].get("value") else None


def _timing(log: dict) -> str:
    """The log's figures (ms) as Server-Timing entries."""
    return ", ".join(f"{name};dur={log[f'{name}_ms']}" for name in ("decision", "lookup") if f"{name}_ms" in log)


def _with_server_timing(response: dict, log: dict) -> dict:
    """The log's figures as Server-Timing, beside x-inference-cache."""
    response["headers"][SERVER_TIMING_HEADER] = [{"key": "Server-Timing", "value": _timing(log)}]
    return response


def _forward_uncached(request: dict) -> dict:
    try:
        _forward(request, None, None, _body_bytes(request, default=b""))
    except Exception:  # an undecodable body: the origin refuses the unsigned payload
        for name in _EDGE_OWNED_HEADERS:
            request.get("headers", {}).pop(name, None)
    return request


def _body_bytes(request: dict, default: bytes) -> bytes:
    body = request.get("body") or {}
    data = body.get("data")
    if not data:
        return default
    # binascii, not base64 (same decoding): base64 imports struct, ~1 ms of every cold start.
    return binascii.a2b_base64(data) if body.get("encoding", "base64") == "base64" else data.encode()


def _forward(request: dict, key: str | None, tenant: str | None, body: bytes, timing: str = "") -> None:
    headers = request.setdefault("headers", {})
    for name in _EDGE_OWNED_HEADERS:
        headers.pop(name, None)
    if key:
        headers[KEY_HEADER] = [{"key": "X-Inference-Cache-Key", "value": key}]
    if tenant:
        headers[TENANT_HEADER] = [{"key": "X-Inference-Tenant", "value": tenant}]
    if timing:  # the origin names the edge's steps in its answer's Server-Timing
        headers[EDGE_TIMING_HEADER] = [{"key": "X-Inference-Edge-Timing", "value": timing}]
    # OAC signs POSTs to a function URL only with the payload hash of the decoded body.
    headers[CONTENT_SHA256_HEADER] = [{"key": "x-amz-content-sha256", "value": hashlib.sha256(body).hexdigest()}]


def _lookup(config: dict, key: str, max_age: int, credential: str) -> tuple[dict | None, str]:
    base = os.environ.get(LOOKUP_BASE_ENV) or f"https://{config['distributionDomainName']}"
    try:
        status, headers, content = lookup.get(base, f"{SETTINGS.results_path}{key}", LOOKUP_TIMEOUT_SECONDS, credential)
    except (OSError, ValueError) as exc:  # timeouts, refusals, malformed answers
        return None, f"{EdgeLog.LOOKUP_ERROR}{type(exc).__name__}"
    if status != 200:
        # 403/404: nothing stored under this key (no ListBucket, so S3 says 403).
        return None, "miss" if status in (403, 404) else f"{EdgeLog.LOOKUP_STATUS}{status}"
    content_type = headers.get("content-type", "application/json")
    age = _age_seconds(headers)
    if age > max_age:
        return None, "older-than-requested-ttl"
    # The writer's TTL binds every reader: past its expiry the answer is not served,
    # whatever age this reader would accept.
    expires = headers.get(_EXPIRES_HEADER, "")
    if expires.isascii() and expires.isdigit() and time.time() >= int(expires):
        return None, "expired"
    body, encoding = _encode_body(content)
    if len(body) > GENERATED_BODY_LIMIT:
        return None, "too-large-to-generate"
    return (
        {
            "status": "200",
            "statusDescription": "OK",
            "headers": {
                "content-type": [{"key": "Content-Type", "value": content_type}],
                "age": [{"key": "Age", "value": str(age)}],
                STATUS_HEADER: [{"key": "X-Inference-Cache", "value": "HIT"}],
                KEY_HEADER: [{"key": "X-Inference-Cache-Key", "value": key}],
            },
            "body": body.decode(),
            "bodyEncoding": encoding,
        },
        "hit",
    )


def _encode_body(content: bytes) -> tuple[bytes, str]:
    """Text when it is UTF-8 (no base64 growth against the size limit)."""
    try:
        content.decode("utf-8")
        return content, "text"
    except UnicodeDecodeError:
        return binascii.b2a_base64(content, newline=False), "base64"


def _age_seconds(headers: dict) -> int:
    """Seconds since the answer was stored: from its stored-at metadata, else (an object
    stored without it) from Last-Modified. datetime is imported only then: it costs ~2 ms
    of every cold start."""
    stored_at = headers.get(_STORED_AT_HEADER, "")
    if stored_at.isascii() and stored_at.isdigit():
        return max(0, int(time.time()) - int(stored_at))
    last_modified = headers.get("last-modified")
    if not last_modified:
        return 0
    from datetime import UTC, datetime

    try:
        stored = datetime.strptime(last_modified, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0
    return max(0, int(time.time() - stored))


def _error_response(error: ApiError) -> dict:
    return {
        "status": str(error.status),
        "statusDescription": _REASONS.get(error.status, "Bad Request"),
        "headers": {
            "content-type": [{"key": "Content-Type", "value": "application/json"}],
            "cache-control": [{"key": "Cache-Control", "value": "no-store"}],
            STATUS_HEADER: [{"key": "X-Inference-Cache", "value": "BYPASS"}],
        },
        "body": error.body().decode(),
        "bodyEncoding": "text",
    }


_REASONS = {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large", 415: "Unsupported Media Type"}
