"""A local stand-in for the CloudFront distribution: the same three behaviors, driven
by the same stage settings, running the real edge handler and origin adapter code.

- /v1/*, /invocations: the edge handler on origin-request (with the body, truncated
  at 1 MB as CloudFront does), then, unless it answered, the origin adapter with a
  function URL event.
- /_cache/*: GET/HEAD from the results store, cached in memory for the object's
  max-age (bounded by the stage's max TTL); errors are not cached.
- anything else: GET/HEAD/OPTIONS to the origin adapter.
"""

from __future__ import annotations

import base64
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from config.settings import StageSettings
from inference_cache.contract import EDGE_BODY_LIMIT_BYTES, INVOCATIONS_ROUTE, RESULTS_PATH, STATUS_HEADER
from local_run.events import function_url_event, origin_request_event

_MAX_AGE = re.compile(r"max-age=(\d+)")
# Hop-by-hop and CloudFront-managed headers that never reach a Lambda@Edge event.
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "upgrade", "content-length"}


class LambdaContext:
    function_name = "origin-adapter-local"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:origin-adapter-local"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())


class LocalFront(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, *, settings: StageSettings, results_url: str, bucket: str, quiet: bool = False):
        super().__init__(("127.0.0.1", port), _Handler)
        self.settings = settings
        self.results_url = results_url.rstrip("/")
        self.bucket = bucket
        self.quiet = quiet
        self.edge = None
        self.origin = None
        # Lambda runs one request at a time per instance; so does the local adapter.
        self.origin_lock = threading.Lock()
        self.edge_cache: dict[str, tuple[float, float, int, dict, bytes]] = {}
        self.cache_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def attach(self, edge_module, origin_module) -> None:
        self.edge, self.origin = edge_module, origin_module

    # -- /_cache/*: CloudFront's cache in front of the results bucket ----------------
    def results_object(self, path: str) -> tuple[int, dict, bytes]:
        now = time.time()
        with self.cache_lock:
            cached = self.edge_cache.get(path)
        if cached and cached[1] > now:
            stored_at, _, status, headers, body = cached
            return status, {**headers, "age": str(int(now - stored_at))}, body
        try:
            with urllib.request.urlopen(f"{self.results_url}/{self.bucket}{path}", timeout=5) as answer:
                status, body = answer.status, answer.read()
                headers = {k.lower(): v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
        except urllib.error.HTTPError as exc:
            return exc.code, {"content-type": "application/xml"}, exc.read()  # errors: TTL 0
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
        return self.to_origin(result["method"], result["uri"], query, forwarded, body)

    def to_origin(self, method: str, uri: str, query: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        cf_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
        event = function_url_event(body=body, headers=headers, path=uri, method=method, query=query, cf_id=cf_id)
        with self.origin_lock:
            response = self.origin.handler(event, LambdaContext())
        raw = response.get("body", "")
        data = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
        return response["statusCode"], response.get("headers", {}), data


class _Handler(BaseHTTPRequestHandler):
    server: LocalFront
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, keep-alive clients
    # wait out the delayed ACK (about 40 ms) on every response.
    disable_nagle_algorithm = True

    def _any(self) -> None:
        started = time.perf_counter()
        uri, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in _DROPPED}
        method = self.command
        front = self.server
        if uri.startswith(RESULTS_PATH):
            status, out, data = front.results_object(uri) if method in ("GET", "HEAD") else (403, {}, b"")
        elif uri.startswith("/v1/") or uri == INVOCATIONS_ROUTE:
            status, out, data = front.inference(method, uri, query, headers, body)
        elif method in ("GET", "HEAD", "OPTIONS"):
            status, out, data = front.to_origin(method, uri, query, headers, body)
        else:
            status, out, data = 403, {"content-type": "text/plain"}, b"method not allowed on this path"
        self.send_response(status)
        for name, value in out.items():
            if name.lower() not in _DROPPED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)
        if not front.quiet:
            cache = out.get(STATUS_HEADER, "-")
            print(f"{method} {uri} -> {status} {cache} ({(time.perf_counter() - started) * 1000:.1f} ms)", flush=True)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

    def log_message(self, *args):
        pass
