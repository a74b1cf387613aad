"""Lambda@Edge ORIGIN-REQUEST handler for POST inference requests (flow steps 1-4).

Validate and decide (cache_decision), look cacheable requests up as
GET https://{distribution}/_cache/{key} through CloudFront's own cache, answer hits at
the edge, and forward everything else to the origin adapter with the cache key and the
body hash OAC needs. Stdlib only; it runs on every POST. It never raises: an unexpected
failure forwards the request uncached.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import time
from datetime import datetime, timezone

import cache_decision

SETTINGS = cache_decision.load_settings()
ROUTES = frozenset(SETTINGS["routes"])
RESULTS_PATH = SETTINGS["results_path"]
LOOKUP_TIMEOUT_SECONDS = SETTINGS["lookup_timeout_ms"] / 1000
# For local runs and tests only (Lambda@Edge has no environment variables): where the
# /_cache/ lookups go instead of https://{distributionDomainName}.
LOOKUP_BASE_ENV = "INFERENCE_CACHE_LOOKUP_BASE"
# A generated origin-request response may be 1 MB with its headers; keep room for them.
GENERATED_BODY_LIMIT = 1_048_576 - 8_192
CACHE_KEY_HEADER = "x-inference-cache-key"
STATUS_HEADER = "x-inference-cache"
# Set only by this function; a viewer's own values must never reach the origin.
_EDGE_OWNED_HEADERS = (CACHE_KEY_HEADER, cache_decision.TENANT_HEADER, "x-amz-content-sha256")
# The lookup is a fresh request: none of the viewer's headers, above all no Via.
_LOOKUP_HEADERS = {"User-Agent": "inference-cache-edge/1", "Accept": "*/*"}
_HTTP_DATE = "%a, %d %b %Y %H:%M:%S GMT"


def handler(event, context):
    cf = event["Records"][0]["cf"]
    request = cf["request"]
    started = time.perf_counter()
    try:
        response, log = _handle(request, cf["config"])
    except Exception as exc:  # never fail the viewer: forward uncached
        response, log = _forward_uncached(request), {"outcome": "forward-after-error", "error": repr(exc)[:300]}
    log["ms"] = round((time.perf_counter() - started) * 1000, 2)
    log["uri"] = request.get("uri")
    print(json.dumps(log, separators=(",", ":")))
    return response


def _handle(request: dict, config: dict) -> tuple[dict, dict]:
    if request.get("method") != "POST" or request.get("uri") not in ROUTES:
        return request, {"outcome": "pass"}
    body_info = request.get("body") or {}
    body = _body_bytes(request, default=b"")
    headers = request.get("headers") or {}
    tenant = cache_decision.tenant_scope(headers) if SETTINGS.get("tenant_scoped") else None
    decision = cache_decision.decide(
        request["uri"], headers, body, SETTINGS, truncated=bool(body_info.get("inputTruncated")), tenant=tenant
    )
    log = {"cacheable": decision.cacheable, "reason": decision.reason, "key": decision.key}
    if decision.error is not None:
        log["outcome"] = f"error-{decision.error.status}"
        return _error_response(decision.error), log
    if decision.lookup:
        hit, lookup = _lookup(config, decision.key, decision.ttl_seconds)
        log["lookup"] = lookup
        if hit is not None:
            log["outcome"] = "hit"
            return hit, log
    _forward(request, decision.key if decision.cacheable else None, tenant, body)
    log["outcome"] = "forward"
    return request, log


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
    return base64.b64decode(data) if body.get("encoding", "base64") == "base64" else data.encode()


def _forward(request: dict, key: str | None, tenant: str | None, body: bytes) -> None:
    headers = request.setdefault("headers", {})
    for name in _EDGE_OWNED_HEADERS:
        headers.pop(name, None)
    if key:
        headers[CACHE_KEY_HEADER] = [{"key": "X-Inference-Cache-Key", "value": key}]
    if tenant:
        headers[cache_decision.TENANT_HEADER] = [{"key": "X-Inference-Tenant", "value": tenant}]
    # OAC signs POSTs to a function URL only with the payload hash of the decoded body.
    headers["x-amz-content-sha256"] = [{"key": "x-amz-content-sha256", "value": hashlib.sha256(body).hexdigest()}]


def _lookup(config: dict, key: str, max_age: int) -> tuple[dict | None, str]:
    base = os.environ.get(LOOKUP_BASE_ENV) or f"https://{config['distributionDomainName']}"
    scheme, _, host = base.partition("://")
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, timeout=LOOKUP_TIMEOUT_SECONDS)
    try:
        connection.request("GET", f"{RESULTS_PATH}{key}", headers=_LOOKUP_HEADERS)
        stored = connection.getresponse()
        if stored.status != 200:
            # 403/404: nothing stored under this key (no ListBucket, so S3 says 403).
            return None, "miss" if stored.status in (403, 404) else f"lookup-status-{stored.status}"
        content = stored.read(GENERATED_BODY_LIMIT + 1)
        content_type = stored.getheader("Content-Type", "application/json")
        last_modified = stored.getheader("Last-Modified")
    except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts, refusals, bad answers
        return None, f"lookup-failed-{type(exc).__name__}"
    finally:
        connection.close()
    age = _age_seconds(last_modified)
    if age > max_age:
        return None, "older-than-requested-ttl"
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
                CACHE_KEY_HEADER: [{"key": "X-Inference-Cache-Key", "value": key}],
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
        return base64.b64encode(content), "base64"


def _age_seconds(last_modified: str | None) -> int:
    if not last_modified:
        return 0
    try:
        stored_at = datetime.strptime(last_modified, _HTTP_DATE).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0
    return max(0, int(time.time() - stored_at))


def _error_response(error: cache_decision.CacheError) -> dict:
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


_REASONS = {400: "Bad Request", 413: "Payload Too Large", 415: "Unsupported Media Type"}
