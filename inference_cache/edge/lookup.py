"""The edge's /_cache/{key} lookup: one GET through the distribution's own cache.

A tiny HTTP/1.1 client instead of http.client, whose email-parser imports cost ~20 ms
of every cold start. One request per connection (Connection: close), within a timeout
in all, reading at most the generated-response limit (plus headers). The lookup is a
fresh request: none of the viewer's headers, above all no Via (CloudFront answers 403
to chains of more than two distributions).
"""

from __future__ import annotations

import socket
import time

from inference_cache.contract import GENERATED_RESPONSE_LIMIT_BYTES

# A generated origin-request response may be 1 MB with its headers; keep room for them.
GENERATED_BODY_LIMIT = GENERATED_RESPONSE_LIMIT_BYTES - 8_192
_LOOKUP_REQUEST = "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: inference-cache-edge/1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
_TLS = None  # ssl context, made on the first HTTPS lookup (loading CA certificates costs ms)


def get(base: str, path: str, timeout_seconds: float) -> tuple[int, dict, bytes]:
    """(status, lowercase headers, body) of GET base+path; OSError or ValueError on failure."""
    global _TLS
    scheme, _, authority = base.partition("://")
    host, _, port = authority.partition(":")
    deadline = time.monotonic() + timeout_seconds
    conn = socket.create_connection((host, int(port or (443 if scheme == "https" else 80))), timeout_seconds)
    try:
        if scheme == "https":
            if _TLS is None:
                import ssl

                _TLS = ssl.create_default_context()
            conn = _TLS.wrap_socket(conn, server_hostname=host)
        conn.sendall(_LOOKUP_REQUEST.format(path=path, host=authority).encode())
        data = bytearray()
        while len(data) <= GENERATED_BODY_LIMIT + 16_384:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("lookup took longer than its timeout")
            conn.settimeout(remaining)
            chunk = conn.recv(65_536)
            if not chunk:
                break
            data += chunk
    finally:
        conn.close()
    head, separator, body = bytes(data).partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("incomplete response head")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers and status == 200:
        length = int(headers["content-length"])
        if length > GENERATED_BODY_LIMIT:
            body = body[: GENERATED_BODY_LIMIT + 1]  # too large either way; no need for the rest
        elif len(body) < length:
            raise ValueError("response body shorter than its Content-Length")
        else:
            body = body[:length]
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out, position = bytearray(), 0
    while len(out) <= GENERATED_BODY_LIMIT:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise ValueError("chunked body ends early")
        size = int(body[position:line_end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        start = line_end + 2
        out += body[start : start + size]
        if start + size > len(body) and len(out) <= GENERATED_BODY_LIMIT:
            raise ValueError("chunked body ends early")
        position = start + size + 2
    return bytes(out)  # past the limit: too large to generate, whatever follows
