"""The edge's /_cache/{key} lookup: one GET through the distribution's own cache.

A tiny HTTP/1.1 client instead of http.client, whose email-parser imports cost ~30 ms
of every cold start (from source, measured by bench/bench_edge_hit_path.py). One
kept-alive connection per execution environment (module level) and one TLS context,
both made on the first lookup: a warm hit costs one round trip, not three (TCP, TLS,
request). A connection the server has closed is replaced within the same lookup
budget: one retry on a fresh connection, never past the timeout in all. Reads at most
the generated-response limit (plus headers). The lookup is a fresh request: none of
the viewer's headers, above all no Via (CloudFront answers 403 to chains of more than
two distributions).

Lambda runs one invocation at a time per execution environment, so the kept
connection needs no lock; `reset()` is for tests and benchmarks.
"""

from __future__ import annotations

import os
import select
import socket
import time

from inference_cache.contract import GENERATED_RESPONSE_LIMIT_BYTES, LOOKUP_CA_ENV

# A generated origin-request response may be 1 MB with its headers; keep room for them.
GENERATED_BODY_LIMIT = GENERATED_RESPONSE_LIMIT_BYTES - 8_192
_HEAD_LIMIT = 16_384
_LOOKUP_REQUEST = "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: inference-cache-edge/1\r\nAccept: */*\r\n\r\n"

_tls = None  # ssl context, made on the first HTTPS lookup (loading CA certificates costs ms)
_kept = None  # the idle kept-alive _Connection between lookups
# How the last lookup got its connection, for the edge's log line: "new", "reused", or
# "renewed" (the kept one was closed by the server and replaced).
last_connection = ""


class _Closed(ConnectionError):
    """The server closed the connection before any byte of the response."""


def get(base: str, path: str, timeout_seconds: float) -> tuple[int, dict, bytes]:
    """(status, lowercase headers, body) of GET base+path; OSError or ValueError on failure."""
    global _kept, last_connection
    deadline = time.monotonic() + timeout_seconds
    scheme, _, authority = base.partition("://")
    request = _LOOKUP_REQUEST.format(path=path, host=authority).encode()
    connection, _kept = _kept, None  # held by this lookup; kept again only after a clean response
    last_connection = "new" if connection is None else "reused"
    if connection is not None and (connection.origin != base or not connection.idle_and_open()):
        connection.close()
        connection, last_connection = None, "renewed"
    while True:
        if connection is None:
            connection = _Connection.open(base, scheme, authority, deadline)
        try:
            status, headers, body, reusable = connection.exchange(request, deadline)
        except _Closed:
            connection.close()
            if connection.exchanges == 0:
                raise  # a fresh connection closed unanswered: a failure, not a stale connection
            # Closed while idle, racing our request (GET: safe to send again).
            connection, last_connection = None, "renewed"
            continue
        except BaseException:
            connection.close()
            raise
        if reusable:
            _kept = connection
        else:
            connection.close()
        return status, headers, body


def reset() -> None:
    """Close the kept connection and forget the TLS context (tests switch CAs and servers)."""
    global _kept, _tls
    if _kept is not None:
        _kept.close()
    _kept = _tls = None


def _tls_context():
    global _tls
    if _tls is None:
        import ssl

        # LOOKUP_CA_ENV: tests and local runs only (their own CA); Lambda@Edge has no
        # environment variables, so production trusts the system's CAs.
        _tls = ssl.create_default_context(cafile=os.environ.get(LOOKUP_CA_ENV) or None)
    return _tls


class _Connection:
    __slots__ = ("origin", "sock", "buffer", "exchanges")

    def __init__(self, origin: str, sock):
        self.origin, self.sock, self.buffer, self.exchanges = origin, sock, bytearray(), 0

    @classmethod
    def open(cls, origin: str, scheme: str, authority: str, deadline: float) -> _Connection:
        host, _, port = authority.partition(":")
        sock = socket.create_connection((host, int(port or (443 if scheme == "https" else 80))), _remaining(deadline))
        try:
            # One write per request; never wait on Nagle for a lookup's last segment.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock.settimeout(_remaining(deadline))
                sock = _tls_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return cls(origin, sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def idle_and_open(self) -> bool:
        """False when the server closed the idle connection (FIN or RST already here) or
        sent something unasked: a zero-timeout poll, no round trip."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return True
            self.sock.settimeout(0)
            self.sock.recv(1)  # b"": closed; bytes: out of step with the server; unusable either way
            return False
        except BlockingIOError:
            return True
        except OSError as exc:
            # TLS 1.3 session tickets make the socket readable with no application data.
            return type(exc).__name__ == "SSLWantReadError"
        except ValueError:
            return False

    def exchange(self, request: bytes, deadline: float) -> tuple[int, dict, bytes, bool]:
        """Send the request, read one whole response: (status, headers, body, reusable)."""
        try:
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(request)
            end = self._head_end(deadline)
        except TimeoutError:
            raise
        except OSError as exc:  # reset, broken pipe, or TLS's EOF: the server closed it first
            if self.buffer or isinstance(exc, _Closed):
                raise
            raise _Closed("connection closed before the response") from exc
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status = status_line.split(" ", 2)[:2]
        status = int(status)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get("connection", "").lower()
        reusable = keep_alive != "close" if version == "HTTP/1.1" else keep_alive == "keep-alive"
        if status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body, complete = self._chunked(deadline)
            reusable = reusable and complete
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > GENERATED_BODY_LIMIT:
                length, reusable = GENERATED_BODY_LIMIT + 1, False  # too large either way; no need for the rest
            if not self._fill_to(length, deadline):
                raise ValueError("response body shorter than its Content-Length")
            body = self._take(length)
        else:  # delimited by the close
            while len(self.buffer) <= GENERATED_BODY_LIMIT and self._recv(deadline):
                pass
            body, reusable = self._take(len(self.buffer)), False
        self.exchanges += 1
        return status, headers, body, reusable and not self.buffer

    def _chunked(self, deadline: float) -> tuple[bytes, bool]:
        """(body, complete); stops past the limit: too large to generate, whatever follows."""
        out = bytearray()
        while len(out) <= GENERATED_BODY_LIMIT:
            size = int(self._line(deadline).split(b";")[0], 16)
            if size == 0:
                while self._line(deadline):  # trailers, up to the empty line
                    pass
                return bytes(out), True
            wanted = min(size, GENERATED_BODY_LIMIT + 1 - len(out))
            if not self._fill_to(wanted, deadline):
                raise ValueError("chunked body ends early")
            out += self._take(wanted)
            if wanted == size:
                if not self._fill_to(2, deadline):
                    raise ValueError("chunked body ends early")
                self._take(2)
        return bytes(out), False

    def _head_end(self, deadline: float) -> int:
        searched = 0
        while (end := self.buffer.find(b"\r\n\r\n", searched)) < 0:
            searched = max(0, len(self.buffer) - 3)
            if len(self.buffer) > _HEAD_LIMIT:
                raise ValueError("response head too large")
            if not self._recv(deadline):
                if not self.buffer:
                    raise _Closed("connection closed before the response")
                raise ValueError("incomplete response head")
        return end

    def _line(self, deadline: float) -> bytes:
        searched = 0
        while (end := self.buffer.find(b"\r\n", searched)) < 0:
            searched = max(0, len(self.buffer) - 1)
            if len(self.buffer) > _HEAD_LIMIT or not self._recv(deadline):
                raise ValueError("chunked body ends early")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _fill_to(self, length: int, deadline: float) -> bool:
        while len(self.buffer) < length:
            if not self._recv(deadline):
                return False
        return True

    def _take(self, length: int) -> bytes:
        taken = bytes(self.buffer[:length])
        del self.buffer[:length]
        return taken

    def _recv(self, deadline: float) -> bool:
        self.sock.settimeout(_remaining(deadline))
        chunk = self.sock.recv(65_536)
        self.buffer += chunk
        return bool(chunk)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("lookup took longer than its timeout")
    return remaining
