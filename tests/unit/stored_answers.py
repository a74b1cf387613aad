"""Test stand-ins' plumbing: what the /_cache/* stand-ins answer (the stored object at the
request's path, or S3's 404), and a server run from a thread for the length of a test."""

from __future__ import annotations

import contextlib
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler


def answer_stored(handler: BaseHTTPRequestHandler, objects: dict[str, tuple[int, bytes, dict]]) -> None:
    status, body, headers = objects.get(handler.path, (404, b"<Error>NoSuchKey</Error>", {}))
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator:
    """`server` answering from a thread of its own until the block ends, then closed."""
    # Polled every 10 ms, not serve_forever's 0.5 s: shutdown() waits for the next poll, and
    # the edge's tests each start one (0.5 s per test, most of their time).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
