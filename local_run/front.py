"""A local stand-in for the CloudFront distribution: the same behaviors, driven by the
same stage settings, running the real viewer-request function, edge handler and origin
adapter code.

- /v1/*, /invocations: the API key check (the real JavaScript under Node.js) on viewer
  request, then the edge handler on origin-request (with the body, truncated at 1 MB as
  CloudFront does), then, unless it answered, the origin adapter with a function URL event.
- /_cache/*: GET/HEAD from the results bucket, cached in memory for the object's max-age
  (bounded by the stage's max TTL); errors are not cached.
- anything else: the API key check, then GET/HEAD/OPTIONS to the origin adapter.

An ASGI app on uvicorn: many requests in flight at once, as CloudFront and Lambda serve
them. The Lambda code is synchronous; each call runs on a worker thread, as each Lambda
execution environment runs one request at a time.
"""

from __future__ import annotations

import base64
import re
import sys
import threading
import time
import urllib.request
import uuid

import anyio
import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.settings import StageSettings
from inference_cache.contract import (
    EDGE_BODY_LIMIT_BYTES,
    INVOCATIONS_ROUTE,
    MODELS_ROUTE,
    RESULTS_PATH,
    STATUS_HEADER,
)
from inference_cache.errors import ApiError
from local_run.events import function_url_event, origin_request_event, origin_response_event
from local_run.viewer_request_host import ViewerRequestFunction, is_response, viewer_request_event

_MAX_AGE = re.compile(r"max-age=(\d+)")
# Hop-by-hop and CloudFront-managed headers that never reach a Lambda event.
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "upgrade", "content-length"}
# Worker threads for the Lambda code: each is one concurrently running "execution
# environment"; more than the load test's 32 clients, each with a miss in flight.
LAMBDA_CONCURRENCY = 128


class LambdaContext:
    function_name = "origin-adapter-local"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:origin-adapter-local"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())


class LocalFront:
    def __init__(
        self,
        *,
        settings: StageSettings,
        results_url: str,
        bucket: str,
        models_url: str,
        key_check: ViewerRequestFunction | None,
        quiet: bool = False,
    ):
        self.settings = settings
        self.results_bucket = boto3.client(
            "s3",
            endpoint_url=results_url,
            region_name=settings.home_region,
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5, max_pool_connections=64),
        )
        self.bucket = bucket
        self.models_url = models_url.rstrip("/")
        self.key_check = key_check
        self.quiet = quiet
        self.url = ""  # set once the server is bound
        self.edge = None
        self.origin = None
        self.edge_cache: dict[str, tuple[float, float, int, dict, bytes]] = {}
        self.cache_lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None  # made on the server's event loop
        self.app = _refuse_oversized_bodies(Starlette(routes=[Route("/{path:path}", self._any, methods=_METHODS)]))

    def attach(self, edge_module, origin_module) -> None:
        self.edge, self.origin = edge_module, origin_module

    async def _in_worker(self, function, *args):
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(LAMBDA_CONCURRENCY)
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    # -- the distribution's behaviors -----------------------------------------------------
    async def _any(self, request: Request) -> Response:
        started = time.perf_counter()
        method, uri, query = request.method, request.url.path, request.url.query
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        if uri.startswith(RESULTS_PATH):
            if method in ("GET", "HEAD"):
                status, out, data = await self._in_worker(self.results_object, uri)
            else:
                status, out, data = 403, {"content-type": "text/plain"}, b"method not allowed on this path"
        elif uri.startswith("/v1/") or uri == INVOCATIONS_ROUTE or method in ("GET", "HEAD", "OPTIONS"):
            status, out, data = await self._in_worker(self.with_key_check, method, uri, query, headers, body)
        else:
            status, out, data = 403, {"content-type": "text/plain"}, b"method not allowed on this path"
        if not self.quiet:
            cache = out.get(STATUS_HEADER, "-")
            # One write per line: lines of concurrent requests never interleave.
            sys.stdout.write(f"{method} {uri} -> {status} {cache} ({(time.perf_counter() - started) * 1000:.1f} ms)\n")
        out = {k: v for k, v in out.items() if k.lower() not in _DROPPED}
        return Response(data if method != "HEAD" else b"", status_code=status, headers=out)

    def with_key_check(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """The viewer-request function first (as CloudFront runs it), then the behavior."""
        if self.key_check is not None:
            result = self.key_check.handle(viewer_request_event(method, uri, headers, query))
            if is_response(result):
                out = {k: v["value"] for k, v in result.get("headers", {}).items()}
                data = result.get("body", {}).get("data", "")
                return int(result["statusCode"]), out, data.encode() if isinstance(data, str) else data
            headers = {k: v["value"] for k, v in result["headers"].items()}
        if method == "GET" and uri == MODELS_ROUTE:
            return self.served_models()
        if uri.startswith("/v1/") or uri == INVOCATIONS_ROUTE:
            return self.inference(method, uri, query, headers, body)
        return self.to_origin(method, uri, query, headers, body)

    # -- /_cache/*: CloudFront's cache in front of the results bucket ----------------
    def results_object(self, path: str) -> tuple[int, dict, bytes]:
        now = time.time()
        with self.cache_lock:
            cached = self.edge_cache.get(path)
        if cached and cached[1] > now:
            stored_at, _, status, headers, body = cached
            return status, {**headers, "age": str(int(now - stored_at))}, body
        # CloudFront reaches the bucket through OAC: a signed GetObject, S3's headers passed on.
        try:
            answer = self.results_bucket.get_object(Bucket=self.bucket, Key=path.removeprefix("/"))
            status, body = 200, answer["Body"].read()
            headers = {k: v for k, v in answer["ResponseMetadata"]["HTTPHeaders"].items() if k not in _DROPPED}
        except ClientError as exc:  # errors: TTL 0
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 502)
            return status, {"content-type": "application/xml"}, exc.response.get("Error", {}).get("Code", "").encode()
        except (BotoCoreError, OSError) as exc:  # the bucket dropped the connection: CloudFront answers 502
            return 502, {"content-type": "text/plain"}, f"results bucket unreachable: {type(exc).__name__}".encode()
        cache = self.settings.cache
        match = _MAX_AGE.search(headers.get("cache-control", ""))
        ttl = min(int(match.group(1)) if match else cache.default_ttl_seconds, cache.max_ttl_seconds)
        with self.cache_lock:
            self.edge_cache[path] = (now, now + ttl, status, headers, body)
        return status, headers, body

    # -- /v1/*, /invocations: the edge function, then the origin ---------------------
    def inference(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        event = origin_request_event(
            body=body[:EDGE_BODY_LIMIT_BYTES],
            headers=headers,
            uri=uri,
            method=method,
            querystring=query,
            truncated=len(body) > EDGE_BODY_LIMIT_BYTES,
            distribution_domain=self.url.removeprefix("http://"),
            request_id=uuid.uuid4().hex,
        )
        result = self.edge.handler(event, None)
        if "status" in result:  # answered at the edge: a hit or a refused request
            out_headers = {k: v[0]["value"] for k, v in result.get("headers", {}).items()}
            raw = result.get("body", "")
            data = base64.b64decode(raw) if result.get("bodyEncoding") == "base64" else raw.encode()
            return int(result["status"]), out_headers, data
        forwarded = {k: ", ".join(v["value"] for v in values) for k, values in result["headers"].items()}
        status, out, data = self.to_origin(result["method"], result["uri"], query, forwarded, body)
        if status >= 400:  # the edge function on origin-response, as the behavior associates it
            answer = self.edge.handler(origin_response_event(status=status, headers=out, uri=uri), None)
            if "body" in answer:
                out = {k: v[0]["value"] for k, v in answer["headers"].items()}
                data = answer["body"].encode()
        return status, out, data

    def to_origin(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        cf_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        event = function_url_event(body=body, headers=headers, path=uri, method=method, query=query, cf_id=cf_id)
        response = self.origin.handler(event, LambdaContext())
        raw = response.get("body", "")
        data = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
        return response["statusCode"], response.get("headers", {}), data

    def served_models(self) -> tuple[int, dict, bytes]:
        """GET /v1/models: what the local model server really serves (the origin adapter
        answers the stage's model id, which the local stand-in does not run)."""
        with urllib.request.urlopen(f"{self.models_url}{MODELS_ROUTE}", timeout=5) as answer:
            return answer.status, {"content-type": "application/json"}, answer.read()


_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
# A function URL takes at most 6 MB of request payload; a larger declared body is refused
# before it is read.
MAX_REQUEST_BYTES = 6 * 1024 * 1024


def _refuse_oversized_bodies(app):
    """ASGI middleware: 413 in the OpenAI error shape for a Content-Length beyond the
    limit, at once (no waiting for gigabytes that will never be read)."""

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
                error = ApiError(413, f"request body exceeds {MAX_REQUEST_BYTES} bytes", None, "body_too_large")
                response = Response(
                    error.body(), status_code=413, media_type="application/json", headers={"connection": "close"}
                )
                return await response(scope, receive, send)
        return await app(scope, receive, send)

    return guarded
