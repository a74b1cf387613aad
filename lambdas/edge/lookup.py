"""The edge's /_cache/{key} lookup: one GET through the distribution's own cache.

A small HTTP/1.1 client: http.client's imports would add ~25 ms to every cold start
(bench/bench_edge_hit_path.py). One kept-alive connection per execution environment
(module level) and one TLS context, made at the first lookup: a warm hit costs one round
trip, not a TCP and a TLS handshake first. A kept connection the server has closed is
replaced within the same budget: one retry on a fresh connection, never past the
timeout in all. Reads at most the generated-response limit. A fresh request: none of the
viewer's headers, above all no Via (CloudFront 403s chains of more than two
distributions). Lambda runs one invocation at a time per environment; the local run
calls the handler from several threads, and each lookup takes the connection for itself.
"""

from __future__ import annotations

import os
import socket
import time

from lambdas.contract import CACHE_READ_HEADER, LOOKUP_CA_ENV, SERVABLE_BODY_LIMIT_BYTES

# A generated origin-request response may be 1 MB with its headers (contract).
GENERATED_BODY_LIMIT = SERVABLE_BODY_LIMIT_BYTES
_REQUEST = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: inference-cache-edge/1\r\nAccept: */*\r\n"
    # The edge's credential, which the /_cache/* viewer-request function checks.
    f"{CACHE_READ_HEADER}: {{credential}}\r\n\r\n"
)
_tls = None  # ssl context, made at the first HTTPS lookup (loading CA certificates costs ms)
# The idle kept-alive connection, (base, socket, reader), in a list: pop and append are
# atomic, so two threads never share one.
_idle: list = []
last_connection = ""  # "new", "reused" or "renewed" (the kept one was closed): for the log


class _Closed(ConnectionError):
    """The server closed the connection before any byte of the response."""


def get(base: str, path: str, timeout_seconds: float, credential: str) -> tuple[int, dict, bytes]:
    """(status, lowercase headers, body) of GET base+path, presenting `credential`; OSError
    or ValueError on failure."""
    global last_connection
    deadline = time.monotonic() + timeout_seconds
    request = _REQUEST.format(path=path, host=base.partition("://")[2], credential=credential).encode()
    try:
        kept = _idle.pop()  # held by this lookup; kept again only after a clean response
    except IndexError:
        kept = None
    last_connection = "reused" if kept else "new"
    if kept and (kept[0] != base or not _open_and_idle(kept[1])):
        _close(kept)
        kept, last_connection = None, "renewed"
    conn = kept or _connect(base, deadline)
    while True:
        try:
            status, headers, body, reusable = _exchange(conn, request, deadline)
            break
        except _Closed:
            _close(conn)
            if conn is not kept:
                raise  # a fresh connection closed unanswered: a failure, not a stale connection
            # The kept one was closed as the request went out (a GET: safe to send again).
            conn, last_connection = _connect(base, deadline), "renewed"
        except BaseException:
            _close(conn)
            raise
    if reusable and not _idle:
        _idle.append(conn)
    else:
        _close(conn)
    return status, headers, body


def reset() -> None:
    """Close the kept connection and forget the TLS context (tests switch CAs and servers)."""
    global _tls
    while _idle:
        _close(_idle.pop())
    _tls = None


def _connect(base: str, deadline: float) -> tuple:
    scheme, _, authority = base.partition("://")
    host, _, port = authority.partition(":")
    sock = socket.create_connection((host, int(port or (443 if scheme == "https" else 80))), _remaining(deadline))
    try:
        # The request is one small write: never hold it back for an ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if scheme == "https":
            global _tls
            if _tls is None:
                import ssl

                # LOOKUP_CA_ENV: tests and local runs only; Lambda@Edge has no environment
                # variables, so production trusts the system's CAs.
                _tls = ssl.create_default_context(cafile=os.environ.get(LOOKUP_CA_ENV) or None)
            sock.settimeout(_remaining(deadline))  # the handshake gets what the connect left
            sock = _tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return base, sock, sock.makefile("rb")


def _close(conn: tuple) -> None:
    conn[2].close()  # the reader holds the socket open until it is closed too
    conn[1].close()


def _open_and_idle(sock) -> bool:
    """False when the server has closed the idle connection (its FIN or RST is already
    here) or sent something unasked: a non-blocking read, no round trip."""
    try:
        sock.settimeout(0)
        sock.recv(1)  # b"": closed; bytes: out of step with the server; unusable either way
        return False
    except (OSError, ValueError) as exc:
        # Nothing to read: open. (TLS: also after reading session tickets, no data.)
        return isinstance(exc, BlockingIOError) or type(exc).__name__ == "SSLWantReadError"


def _exchange(conn: tuple, request: bytes, deadline: float) -> tuple[int, dict, bytes, bool]:
    """Send the request and read one whole response: (status, headers, body, reusable)."""
    _, sock, reader = conn
    try:
        sock.settimeout(_remaining(deadline))
        sock.sendall(request)
        status_line = _line(sock, reader, deadline, b"")
    except TimeoutError:
        raise
    except OSError as exc:  # reset, broken pipe, TLS EOF: closed by the server first
        raise _Closed("connection closed before the response") from exc
    if not status_line:
        raise _Closed("connection closed before the response")
    version, status = status_line.split(None, 2)[:2]
    status, headers = int(status), {}
    while (line := _line(sock, reader, deadline)) not in (b"\r\n", b"\n"):
        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
        headers[name.lower()] = value.strip(" \t")  # OWS is SP and HTAB only (RFC 9110)
    connection = headers.get("connection", "").lower()
    reusable = connection != "close" if version == b"HTTP/1.1" else connection == "keep-alive"
    if status in (204, 304):
        return status, headers, b"", reusable
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while len(body) <= GENERATED_BODY_LIMIT:
            size = int(_line(sock, reader, deadline).split(b";")[0], 16)
            if size == 0:
                while _line(sock, reader, deadline) not in (b"\r\n", b"\n"):  # trailers
                    pass
                return status, headers, bytes(body), reusable
            wanted = min(size, GENERATED_BODY_LIMIT + 1 - len(body))
            body += _read(sock, reader, wanted, deadline)
            if len(body) < wanted or (wanted == size and _read(sock, reader, 2, deadline) != b"\r\n"):
                raise ValueError("chunked body ends early")
        return status, headers, bytes(body), False  # too large to generate, whatever follows
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > GENERATED_BODY_LIMIT:
            length, reusable = GENERATED_BODY_LIMIT + 1, False  # too large either way; no need for the rest
        body = _read(sock, reader, length, deadline)
        if len(body) < length:
            raise ValueError("response body shorter than its Content-Length")
        return status, headers, body, reusable
    return status, headers, _read(sock, reader, GENERATED_BODY_LIMIT + 1, deadline), False  # ends at the close


def _line(sock, reader, deadline: float, eof: bytes | None = None) -> bytes:
    sock.settimeout(_remaining(deadline))
    line = reader.readline(16_384)
    if not line.endswith(b"\n") and line != eof:
        raise ValueError("response ends within a line")
    return line


def _read(sock, reader, length: int, deadline: float) -> bytes:
    """Up to `length` bytes (fewer at the close); the deadline bounds the whole read."""
    data = bytearray()
    while len(data) < length:
        sock.settimeout(_remaining(deadline))
        chunk = reader.read1(length - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("lookup took longer than its timeout")
    return remaining
