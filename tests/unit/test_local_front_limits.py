"""The local front's server holds what a front facing the internet must: connections that
send a partial request line, unfinished headers or a trickling body are closed, and the
local stand-in for CloudFront's cache evicts instead of growing; the Lambda code runs in
environments side by side, which end with the front. Real sockets against a
real uvicorn server on 127.0.0.1 (short timeouts here; the local run's are in
local_run/servers.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from config.stages import STAGES
from local_run.front import EdgeCopies, LocalFront, viewer_headers
from local_run.servers import BackgroundServer

TIMEOUT = 0.5


async def _echo(request: Request) -> Response:
    try:
        return Response(await request.body())
    except ClientDisconnect:  # the server closed a request too slow to arrive
        return Response(status_code=408)


@pytest.fixture(scope="module")
def server():
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])])
    server = BackgroundServer(app, name="limits", header_seconds=TIMEOUT, body_gap_seconds=TIMEOUT).start()
    yield server
    server.stop()


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed the connection (read returns b''), failing past `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.parametrize(
    "sent",
    [
        b"POST /v1/chat/comple",  # a partial request line
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: appl",  # unfinished headers
    ],
    ids=["partial request line", "unfinished headers"],
)
def test_a_request_whose_headers_never_finish_is_closed(server, sent):
    with _connect(server) as sock:
        sock.sendall(sent)
        assert _closed_within(sock, TIMEOUT + 5) >= TIMEOUT * 0.8


def test_headers_dribbled_byte_by_byte_within_the_limit_of_the_whole_are_closed_at_the_limit(server):
    """The header limit bounds the whole of the headers, not the gaps between their bytes."""
    with _connect(server) as sock:
        started = time.monotonic()
        request = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 40
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(TIMEOUT / 10)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed_within(sock, TIMEOUT + 5) + (time.monotonic() - started) < TIMEOUT * 10


def test_a_body_that_stops_arriving_is_closed_and_one_that_arrives_is_answered(server):
    headers = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(headers + b"12345")  # half the body, then nothing
        _closed_within(sock, TIMEOUT + 5)
    with _connect(server) as sock:
        sock.sendall(headers + b"12345")
        time.sleep(TIMEOUT / 2)  # a gap shorter than the limit
        sock.sendall(b"67890")
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b"1234567890"):
            answer += sock.recv(65536) or pytest.fail(f"closed after {answer!r}")
        assert answer.startswith(b"HTTP/1.1 200")


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(server):
    with _connect(server) as sock:
        assert _closed_within(sock, 15) < 10


def test_viewer_headers_keep_every_value_of_a_repeated_header():
    raw = [(b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b"), (b"Content-Type", b"application/json"),
           (b"Connection", b"keep-alive")]
    assert viewer_headers(raw) == {"authorization": ["Bearer a", "Bearer b"], "content-type": "application/json"}


def test_the_edge_copies_of_stored_answers_are_bounded_and_least_recently_used_go_first():
    copies = EdgeCopies(max_bytes=10 * 1024 * 1024)
    answer = b"x" * (1024 * 1024 - 1)
    for i in range(150):  # 150 answers of ~1 MB: what once grew the local run's RSS by 176 MB
        copies.put(f"/_cache/{i}", (0, 1, 200, {}, answer), len(answer))
        if i == 5:
            assert copies.get("/_cache/0") is not None  # used: kept longer than 1..5
    assert copies.bytes <= 10 * 1024 * 1024 and len(copies) == 10
    assert copies.get("/_cache/149") is not None and copies.get("/_cache/0") is None
    copies.put("/_cache/huge", (0, 1, 200, {}, b""), 11 * 1024 * 1024)  # larger than the whole: not kept
    assert copies.get("/_cache/huge") is None and len(copies) == 10


def test_the_fronts_lambda_code_runs_in_parallel_environments_that_go_when_it_closes():
    """Edge and viewer-request code runs off the event loop, each call in an environment of
    its own while others are busy (as Lambda runs one request per environment); once the
    front closes, its idle environments' threads end."""
    front = LocalFront(settings=STAGES["dev"], results_url="http://127.0.0.1:9", bucket="b", key_check=None,
                       cache_read_check=None, origin_read_seconds=60, quiet=True)

    def environment() -> tuple[int, bool]:
        time.sleep(0.1)
        return threading.get_ident(), threading.current_thread() is threading.main_thread()

    async def four_at_once():
        return await asyncio.gather(*(front._in_worker(environment) for _ in range(4)))

    started = time.monotonic()
    ran = asyncio.run(four_at_once())
    assert time.monotonic() - started < 0.35  # side by side, not one after another (0.4 s)
    idents = {ident for ident, on_main in ran if not on_main}
    assert len(idents) == 4
    front.close()
    deadline = time.monotonic() + 5
    while any(t.ident in idents for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.ident in idents for t in threading.enumerate())
