"""A local stand-in for the CloudFront distribution: the same behaviors, driven by the
same stage settings, running the real viewer-request function, edge handler and origin
adapter code.

- /v1/*, /invocations: the API key check (the real JavaScript under Node.js) on viewer
  request, then the edge handler on origin-request (with the body, truncated at 1 MB as
  CloudFront does), then, unless it answered, the origin adapter: its web app, reached
  over HTTP the way Lambda Web Adapter forwards a function URL request, its answer
  relayed as it streams (the edge handler on origin-response first, for an error).
- /_cache/*: the behavior's own viewer-request function (the edge's read credential,
  the real JavaScript), then GET/HEAD from the results bucket, cached in memory for the
  object's max-age (bounded by the stage's max TTL); errors are not cached.
- anything else: the API key check, then GET/HEAD/OPTIONS to the origin adapter.

An ASGI app on uvicorn: many requests in flight at once, as CloudFront and Lambda serve
them. The edge code is synchronous; each call runs on a worker thread, as each Lambda
execution environment runs one request at a time. A bare ASGI callable and the event
loop's own thread pool: with Starlette's router and middleware and anyio's worker threads a
HIT took 6-11 % longer, side by side (docs/decisions.md, issue 25).

The viewer-request functions' verdicts are remembered per request headers and key store
version: each function is deterministic (no clock, no randomness, no state between runs), so the
same event against the same KeyValueStore always gets the same answer, and the real
JavaScript still decides every event it has not seen. Inference answers name the check's
time in their Server-Timing (`key-check`, a local stand-in's: CloudFront reports none).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import html
import os
import pickle
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import anyio
import httpx2
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from config.settings import StageSettings
from lambdas.contract import (
    EDGE_BODY_LIMIT_BYTES,
    INVOCATIONS_ROUTE,
    RESULTS_PATH,
    SERVER_TIMING_HEADER,
    STATUS_HEADER,
    TimingStep,
)
from lambdas.errors import ApiError
from local_run import cloudfront_rules
from local_run.events import function_url_event, origin_request_event, origin_response_event, web_adapter_request
from local_run.viewer_request_host import ViewerRequestFunction, is_response, viewer_request_event

_MAX_AGE = re.compile(r"max-age=(\d+)")
# Hop-by-hop and CloudFront-managed headers that never reach a Lambda event.
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "upgrade", "content-length"}
# What this edge keeps of /_cache/ objects (their bodies), at most: a stored answer is
# at most ~1 MB, so some sixty of the largest, thousands of ordinary ones.
EDGE_CACHE_BYTES = 64 * 1024 * 1024
# Worker threads for the Lambda code: each is one concurrently running "execution
# environment"; more than the load test's 32 clients, each with a miss in flight.
LAMBDA_CONCURRENCY = 128


class EdgeCopies:
    """CloudFront's copies of /_cache/ objects at this edge: least recently used first out
    once their bodies pass `max_bytes` (a cache evicts; it never grows without bound)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._entries: collections.OrderedDict[str, tuple[tuple, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple | None:
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                return None
            self._entries.move_to_end(path)
            return entry[0]

    def put(self, path: str, value: tuple, size: int) -> None:
        with self._lock:
            old = self._entries.pop(path, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._entries[path] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class ToOrigin:
    """A request the viewer-request and origin-request functions let through to the origin."""

    method: str
    uri: str
    query: str
    headers: dict
    body: bytes
    inference: bool  # the behavior runs the edge function on origin-response too


class LocalFront:
    def __init__(
        self,
        *,
        settings: StageSettings,
        results_url: str,
        bucket: str,
        key_check: ViewerRequestFunction | None,
        cache_read_check: ViewerRequestFunction,
        origin_read_seconds: float,
        quiet: bool = False,
    ):
        self.settings = settings
        # CloudFront reads its S3 origin over HTTP, a GetObject signed by OAC (SigV4); so does
        # this stand-in, kept alive (boto3's client cost 0.55 ms more per read, measured, on
        # every miss's lookup; signing alone costs 0.04 ms).
        self.results_bucket_url = f"{results_url.rstrip('/')}/{bucket}"
        self._results_bucket = urllib3.PoolManager(
            maxsize=LAMBDA_CONCURRENCY, retries=False, timeout=urllib3.Timeout(connect=2.0, read=5.0)
        )
        self._oac = S3SigV4Auth(Credentials("local", "local"), "s3", settings.home_region)
        self.key_check = key_check
        self.cache_read_check = cache_read_check
        self.quiet = quiet
        self.url = ""  # set once the server is bound
        self.origin_url = ""  # the origin adapter's web app, once it is served
        self.origin_read_seconds = origin_read_seconds
        self.edge = None
        self._origin_client: httpx2.AsyncClient | None = None  # made on the server's event loop
        self.edge_cache = EdgeCopies(EDGE_CACHE_BYTES)
        self.verdicts = KeyCheckVerdicts(key_check.key_store_file if key_check else None)
        self.cache_read_verdicts = KeyCheckVerdicts(cache_read_check.key_store_file if cache_read_check else None)
        self._environments = concurrent.futures.ThreadPoolExecutor(LAMBDA_CONCURRENCY, thread_name_prefix="lambda")
        self.app = _refuse_oversized_bodies(self._serve)

    def attach(self, edge_module, origin_url: str) -> None:
        self.edge, self.origin_url = edge_module, origin_url.rstrip("/")

    def close(self) -> None:
        """Let the idle worker threads go (once the server stopped: nothing new comes)."""
        self._environments.shutdown(wait=False, cancel_futures=True)

    async def _in_worker(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._environments, function, *args)

    async def _serve(self, scope, receive, send) -> None:
        """The ASGI app: every path is one of the distribution's behaviors."""
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        if scope["method"] not in _METHODS:
            response = PlainTextResponse("Method Not Allowed", status_code=405, headers={"allow": ", ".join(_METHODS)})
        else:
            response = await self._any(Request(scope, receive))
        await response(scope, receive, send)

    # -- the distribution's behaviors -----------------------------------------------------
    async def _any(self, request: Request) -> Response:
        """As CloudFront serves a request: the viewer-request function on the headers alone,
        before any of the body is read (a request it refuses is answered, its body never
        read, the connection closed); then the body, bounded; then the behavior."""
        started = time.perf_counter()
        scope = request.scope
        method, uri, query = scope["method"], _request_uri(scope["path"]), scope["query_string"].decode()
        headers = viewer_headers(request.headers.raw)
        unread_body = _may_have_body(request)
        if uri.startswith(RESULTS_PATH):
            if method in ("GET", "HEAD"):
                # The /_cache/* viewer-request function first (only the edge function reads);
                # its verdicts remembered as the key check's. Then a copy this edge holds is
                # served at once; the bucket is read on a worker.
                seen_as = viewer_request_identity(method, uri, query, headers)
                refusal, version = self.cache_read_verdicts.get(seen_as)
                if refusal is None:
                    event = viewer_request_event(method, uri, headers, query)
                    refusal = await self._in_worker(self.cache_read_refusal, event)
                    self.cache_read_verdicts.put(seen_as, refusal, version)
                if refusal is not _READ_ALLOWED:
                    status, out, data = refusal
                else:
                    answer = self.edge_copy(uri)
                    status, out, data = answer or await self._in_worker(self.results_object, uri)
            else:
                status, out, data = 403, {"content-type": "text/plain"}, b"method not allowed on this path"
        elif uri.startswith("/v1/") or uri == INVOCATIONS_ROUTE or method in ("GET", "HEAD", "OPTIONS"):
            checked = time.perf_counter()
            seen_as = viewer_request_identity(method, uri, query, headers) if self.key_check else None
            verdict, version = self.verdicts.get(seen_as)
            if verdict is None:  # not seen against this key store: the JavaScript decides
                verdict = await self._in_worker(self.viewer_request, method, uri, query, headers)
                self.verdicts.put(seen_as, verdict, version)
            key_check_ms = (time.perf_counter() - checked) * 1000
            if isinstance(verdict, dict):
                body = await _bounded_body(request, MAX_REQUEST_BYTES)
                if body is None:
                    return _body_too_large()
                unread_body = False
                answer = await self._in_worker(self.behavior, method, uri, query, dict(verdict), body)
                if isinstance(answer, ToOrigin):
                    return await self._from_origin(answer, started, key_check_ms)
                status, out, data = answer
                if self.key_check is not None and SERVER_TIMING_HEADER in out:
                    out = {**out, SERVER_TIMING_HEADER: _with_key_check(out[SERVER_TIMING_HEADER], key_check_ms)}
            else:
                status, out, data = verdict
        else:
            status, out, data = 403, {"content-type": "text/plain"}, b"method not allowed on this path"
        self._log(method, uri, status, out, started)
        out = {k: v for k, v in out.items() if k.lower() not in _DROPPED}
        if unread_body:  # its body was never read: the connection cannot carry another request
            out["connection"] = "close"
        return Response(data if method != "HEAD" else b"", status_code=status, headers=out)

    def _log(self, method: str, uri: str, status: int, out: dict, started: float) -> None:
        if not self.quiet:
            cache = out.get(STATUS_HEADER, "-")
            # One write per line: lines of concurrent requests never interleave.
            sys.stdout.write(f"{method} {uri} -> {status} {cache} ({(time.perf_counter() - started) * 1000:.1f} ms)\n")

    def viewer_request(self, method: str, uri: str, query: str, headers: dict) -> dict | tuple[int, dict, bytes]:
        """The viewer-request function (the API key check), which sees the headers, every
        value of a repeated one included, and never the body: the request's headers as the
        function lets them through, or its answer."""
        if self.key_check is None:
            return {name: ", ".join(value) if isinstance(value, list) else value for name, value in headers.items()}
        result = self.key_check.handle(viewer_request_event(method, uri, headers, query))
        if is_response(result):
            out = {k: v["value"] for k, v in result.get("headers", {}).items()}
            data = result.get("body", {}).get("data", "")
            return int(result["statusCode"]), out, data.encode() if isinstance(data, str) else data
        return {k: ", ".join(m["value"] for m in v["multiValue"]) if v.get("multiValue") else v["value"]
                for k, v in result["headers"].items()}

    def behavior(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes] | ToOrigin:
        """What the behavior does with a request the viewer-request function let through:
        an answer, or the request to send on to the origin."""
        if uri.startswith("/v1/") or uri == INVOCATIONS_ROUTE:
            return self.inference(method, uri, query, headers, body)
        return ToOrigin(method, uri, query, headers, body, inference=False)

    # -- /_cache/*: CloudFront's cache in front of the results bucket ----------------
    def cache_read_refusal(self, event: dict):
        """The behavior's viewer-request function (the edge's credential, checked before
        the cache or the bucket is consulted): its answer, or _READ_ALLOWED."""
        result = self.cache_read_check.handle(event)
        if is_response(result):
            out = {k: v["value"] for k, v in result.get("headers", {}).items()}
            data = result.get("body", {}).get("data", "")
            return int(result["statusCode"]), out, data.encode() if isinstance(data, str) else data
        return _READ_ALLOWED

    def edge_copy(self, path: str) -> tuple[int, dict, bytes] | None:
        """This edge's unexpired copy of a /_cache/ object, if it holds one."""
        now = time.time()
        cached = self.edge_cache.get(path)
        if cached and cached[1] > now:
            stored_at, _, status, headers, body = cached
            return status, {**headers, "age": str(int(now - stored_at))}, body
        return None

    def results_object(self, path: str) -> tuple[int, dict, bytes]:
        now = time.time()
        copy_held = self.edge_copy(path)
        if copy_held is not None:
            return copy_held
        # CloudFront reaches the bucket through OAC: a GetObject, S3's headers passed on.
        try:
            signed = AWSRequest(method="GET", url=self.results_bucket_url + quote(path))
            self._oac.add_auth(signed)
            answer = self._results_bucket.request("GET", signed.url, headers=dict(signed.headers))
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # the bucket dropped the connection: CloudFront answers 502
            return 502, {"content-type": "text/plain"}, f"results bucket unreachable: {type(exc).__name__}".encode()
        status, body = answer.status, answer.data
        if status != 200:  # S3's error (its XML) passed on; errors: TTL 0
            return status, {"content-type": "application/xml"}, body
        headers = {k.lower(): v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
        cache = self.settings.cache
        match = _MAX_AGE.search(headers.get("cache-control", ""))
        ttl = min(int(match.group(1)) if match else cache.default_ttl_seconds, cache.max_ttl_seconds)
        self.edge_cache.put(path, (now, now + ttl, status, headers, body), len(body))
        return status, headers, body

    # -- /v1/*, /invocations: the edge function, then the origin ---------------------
    def inference(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes] | ToOrigin:
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
        result = self.run_edge_function(event)
        if "status" in result:  # answered at the edge: a hit or a refused request
            out_headers = {k: v[0]["value"] for k, v in result.get("headers", {}).items()}
            raw = result.get("body", "")
            data = base64.b64decode(raw) if result.get("bodyEncoding") == "base64" else raw.encode()
            return int(result["status"]), out_headers, data
        forwarded = {k: ", ".join(v["value"] for v in values) for k, values in result["headers"].items()}
        return ToOrigin(result["method"], result["uri"], query, forwarded, body, inference=True)

    def run_edge_function(self, event: dict) -> dict:
        """The edge function's result as CloudFront lets it through: a result that breaks
        CloudFront's rules for edge functions (cloudfront_rules) becomes the 502 CloudFront
        answers, logged loudly, so it is seen here before it is seen on AWS."""
        before = pickle.loads(pickle.dumps(event, pickle.HIGHEST_PROTOCOL))  # a deep copy (JSON types), 3x copy.deepcopy's speed
        result = self.edge.handler(event, None)
        problems = cloudfront_rules.violations(before, result)
        if not problems:
            return result
        event_type = before["Records"][0]["cf"]["config"]["eventType"]
        sys.stderr.write(f"LAMBDA VALIDATION ERROR ({event_type}): CloudFront would answer 502: {'; '.join(problems)}\n")
        return _validation_error_response(problems)

    async def _from_origin(self, request: ToOrigin, started: float, key_check_ms: float | None = None) -> Response:
        """The function URL request, made of the origin adapter's web app as Lambda Web
        Adapter makes it; its answer relayed as it comes (a stream event by event)."""
        cf_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        event = function_url_event(
            body=request.body, headers=request.headers, path=request.uri, method=request.method, query=request.query,
            cf_id=cf_id,
        )
        method, path, headers, body = web_adapter_request(
            event, request_id=str(uuid.uuid4()), deadline_ms=int((time.time() + self.origin_read_seconds) * 1000)
        )
        headers = {k: v for k, v in headers.items() if k not in _DROPPED}
        client = self._client()
        try:
            upstream = await client.send(client.build_request(method, self.origin_url + path, headers=headers, content=body),
                                         stream=True)
        except httpx2.HTTPError as exc:
            # No answer from the origin: CloudFront's own error page (504 when the origin's
            # first byte did not come within the origin read timeout, 502 when it could not
            # be reached). The origin-response function does not run: there is no response
            # (the stricter reading; the adapter answers within its own budget, before this).
            status = 504 if isinstance(exc, httpx2.TimeoutException) else 502
            self._log(request.method, request.uri, status, {}, started)
            return _cloudfront_error(status)
        status = upstream.status_code
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROPPED}
        if key_check_ms is not None and self.key_check is not None and SERVER_TIMING_HEADER in out:
            out[SERVER_TIMING_HEADER] = _with_key_check(out[SERVER_TIMING_HEADER], key_check_ms)
        if status >= 400 and request.inference:  # the edge function on origin-response, as the behavior associates it
            data = await upstream.aread()
            await upstream.aclose()
            answer = await self._in_worker(self.run_edge_function, origin_response_event(status=status, headers=out, uri=request.uri))
            status = int(answer["status"])
            out = {k: v[0]["value"] for k, v in answer["headers"].items() if k not in _DROPPED}
            if "body" in answer:
                raw = answer["body"]
                data = base64.b64decode(raw) if answer.get("bodyEncoding") == "base64" else raw.encode()
            self._log(request.method, request.uri, status, out, started)
            return Response(data, status_code=status, headers=out)
        self._log(request.method, request.uri, status, out, started)
        if request.method == "HEAD":
            await upstream.aclose()
            return Response(b"", status_code=status, headers=out)
        return _Relayed(upstream, status_code=status, headers=out)

    def _client(self) -> httpx2.AsyncClient:
        if self._origin_client is None:
            # CloudFront's origin read timeout: for the first byte and between any two.
            timeout = httpx2.Timeout(connect=5, read=self.origin_read_seconds, write=30, pool=None)
            limits = httpx2.Limits(max_connections=LAMBDA_CONCURRENCY * 2, max_keepalive_connections=LAMBDA_CONCURRENCY)
            self._origin_client = httpx2.AsyncClient(timeout=timeout, limits=limits)
        return self._origin_client


class _Relayed(StreamingResponse):
    """The origin's answer relayed as it arrives; the origin's connection is closed however
    the relay ends (a client that goes away closes it too, so the origin sees it go)."""

    def __init__(self, upstream: httpx2.Response, **kwargs) -> None:
        super().__init__(upstream.aiter_raw(), **kwargs)
        self._upstream = upstream

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()


_READ_ALLOWED = True  # the /_cache/* function let the request through


def viewer_request_identity(method: str, uri: str, query: str, headers: dict) -> tuple:
    """What a viewer-request function's event is made of (viewer_request_event), as one
    hashable value: two requests alike in it get the same event. Header order counts (the
    stricter reading: an event's headers are in the order they came)."""
    return method, uri, query, tuple((k, v if isinstance(v, str) else tuple(v)) for k, v in headers.items())


class KeyCheckVerdicts:
    """The API key check's verdicts by request (viewer_request_identity), valid for one
    version of the key store file (its inode, size and mtime, as the Node host's cf.kvs()
    stand-in tells versions apart): a new, rotated or revoked key changes the file, and
    every verdict is forgotten."""

    LIMIT = 4096  # requests remembered (past it, all are forgotten: a bound, not an LRU)

    def __init__(self, key_store_file) -> None:
        self.key_store_file = key_store_file
        self._version: tuple | None = None
        self._verdicts: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def _current_version(self) -> tuple | None:
        try:
            st = os.stat(self.key_store_file)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get(self, request: tuple | None) -> tuple[object | None, tuple | None]:
        """(the remembered verdict or None, the key store's version now)."""
        if request is None or self.key_store_file is None:
            return None, None
        version = self._current_version()
        with self._lock:
            if version != self._version:
                self._version, self._verdicts = version, {}
                return None, version
            return self._verdicts.get(request), version

    def put(self, request: tuple | None, verdict, version: tuple | None) -> None:
        """Remember a verdict the function gave while the store was at `version` (read
        before it ran): only if the file has not changed since, else it may be stale."""
        if request is None or self.key_store_file is None or version is None:
            return
        with self._lock:
            if self._current_version() != version or self._version != version:
                return
            if len(self._verdicts) >= self.LIMIT:
                self._verdicts = {}
            self._verdicts[request] = verdict


def _with_key_check(server_timing: str, key_check_ms: float) -> str:
    entry = f'{TimingStep.KEY_CHECK};dur={key_check_ms:.2f};desc="local stand-in"'
    return f"{entry}, {server_timing}" if server_timing else entry


def _cloudfront_error(status: int) -> Response:
    """CloudFront's own error page for an origin that did not answer."""
    reason = {502: "Bad Gateway", 504: "Gateway Timeout"}[status]
    page = (
        "<HTML><HEAD><TITLE>ERROR: The request could not be satisfied</TITLE></HEAD><BODY>"
        f"<H1>{status} ERROR</H1><H2>The request could not be satisfied.</H2>{reason}</BODY></HTML>"
    )
    return Response(page.encode(), status_code=status, media_type="text/html", headers={"x-cache": "Error from cloudfront"})


_METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
# A function URL takes at most 6 MB of request payload; a larger declared body is refused
# before it is read.
MAX_REQUEST_BYTES = 6 * 1024 * 1024


def _validation_error_response(problems: list[str]) -> dict:
    """What CloudFront answers when a Lambda@Edge result fails validation: a 502 error
    page, with the result type in X-Cache."""
    page = (
        "<HTML><HEAD><TITLE>ERROR: The request could not be satisfied</TITLE></HEAD><BODY>"
        "<H1>502 ERROR</H1><H2>The request could not be satisfied.</H2>"
        "The Lambda function result failed validation: " + html.escape("; ".join(problems)) + "</BODY></HTML>"
    )
    return {
        "status": str(cloudfront_rules.VALIDATION_ERROR_STATUS),
        "statusDescription": "Bad Gateway",
        "headers": {
            "content-type": [{"key": "Content-Type", "value": "text/html"}],
            "x-cache": [{"key": "X-Cache", "value": cloudfront_rules.VALIDATION_ERROR_CACHE_HEADER}],
        },
        "body": page,
        "bodyEncoding": "text",
    }


def viewer_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str | list[str]]:
    """The viewer's headers as CloudFront hands them to a function: names lowercase, a
    repeated header with every value (a list), hop-by-hop headers left out."""
    headers: dict[str, str | list[str]] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in _DROPPED:
            continue
        if name in headers:
            earlier = headers[name]
            headers[name] = [*earlier, value] if isinstance(earlier, list) else [earlier, value]
        else:
            headers[name] = value
    return headers


def _request_uri(path: str) -> str:
    """The URI the functions see: the decoded path with `?`, `#` and `\\` escaped again, as
    Starlette's URL gives it (a decoded `?` must not turn the rest of a path into a query:
    `/v1/chat/completions%3Fx` is no route)."""
    return urlsplit("http://front" + path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")).path


def _may_have_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length != "0")


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, read as it arrives; None as soon as it passes `limit` (nothing more is
    read or kept: a chunked body declares no length the middleware could refuse first)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _body_too_large() -> Response:
    error = ApiError(413, f"request body exceeds {MAX_REQUEST_BYTES} bytes", None, "body_too_large")
    return Response(error.body(), status_code=413, media_type="application/json", headers={"connection": "close"})


def _refuse_oversized_bodies(app):
    """ASGI middleware: 413 in the OpenAI error shape for a Content-Length beyond the
    limit, at once (no waiting for gigabytes that will never be read)."""

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
                return await _body_too_large()(scope, receive, send)
        return await app(scope, receive, send)

    return guarded
