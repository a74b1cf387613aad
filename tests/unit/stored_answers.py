"""What the test stand-ins for CloudFront's /_cache/* behavior answer: the stored object
at the request's path, or S3's 404."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


def answer_stored(handler: BaseHTTPRequestHandler, objects: dict[str, tuple[int, bytes, dict]]) -> None:
    status, body, headers = objects.get(handler.path, (404, b"<Error>NoSuchKey</Error>", {}))
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
