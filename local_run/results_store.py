"""A local results store that speaks the two S3 calls the path uses (PutObject from
the origin adapter's boto3 client, GetObject from the front's /_cache/ behavior),
path-style, in memory."""

from __future__ import annotations

import email.utils
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_KEPT_HEADERS = ("content-type", "cache-control")


class LocalS3(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.objects: dict[str, tuple[bytes, dict, float]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: LocalS3
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, keep-alive clients
    # wait out the delayed ACK (about 40 ms) on every response.
    disable_nagle_algorithm = True

    def do_PUT(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in _KEPT_HEADERS or k.lower().startswith("x-amz-meta-")}
        with self.server.lock:
            self.server.objects[self.path.split("?")[0]] = (body, headers, time.time())
        self._send(200, b"", {"ETag": '"local"'})

    def do_GET(self):  # noqa: N802
        with self.server.lock:
            stored = self.server.objects.get(self.path.split("?")[0])
        if stored is None:
            body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>"
            return self._send(404, body, {"Content-Type": "application/xml"})
        body, headers, stored_at = stored
        self._send(200, body, {**headers, "Last-Modified": email.utils.formatdate(stored_at, usegmt=True)})

    def _send(self, status: int, body: bytes, headers: dict):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
