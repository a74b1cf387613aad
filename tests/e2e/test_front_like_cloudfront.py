"""The local front toward clients, tried as a hostile client would: it behaves as CloudFront
does (the viewer-request function on the headers alone, bounded bodies, every value of a
repeated header seen by the function, slow clients cut off) and cleans up after itself."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from local_run.process import create_api_key, launched
from local_run.servers import HEADER_SECONDS

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def _address(local_run) -> tuple[str, int]:
    host, port = local_run["listening"].removeprefix("http://").split(":")
    return host, int(port)


def _chunked_upload(local_run, headers: dict, total_bytes: int) -> tuple[bytes, int]:
    """POST a chunked body of `total_bytes` while reading the answer: (the status line,
    the bytes sent when it arrived)."""
    sock = socket.create_connection(_address(local_run), timeout=30)
    head = f"POST {CHAT} HTTP/1.1\r\nHost: front\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    sock.sendall((head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    sent = [0]
    chunk = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"

    def upload() -> None:
        try:
            while sent[0] < total_bytes:
                sock.sendall(chunk)
                sent[0] += 1 << 20
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the front closed the connection: what the test wants
            pass

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    status_line = sock.makefile("rb").readline()
    at_answer = sent[0]
    sock.close()
    uploader.join(30)
    return status_line, at_answer


def test_a_chunked_body_without_a_key_is_refused_before_it_is_read(local_run):
    """CloudFront runs the viewer-request function on the headers: a 500 MB body with no key
    got its 401 only after the front had buffered all of it (RSS 748 MB -> 1.49 GB)."""
    status_line, sent = _chunked_upload(local_run, {}, total_bytes=300 << 20)
    assert status_line.startswith(b"HTTP/1.1 401")
    assert sent < 64 << 20, f"the 401 came after {sent >> 20} MB of the body"


def test_a_chunked_body_past_the_function_url_limit_is_refused_as_it_passes_it(local_run):
    status_line, sent = _chunked_upload(local_run, {"x-api-key": local_run["api_key"]}, total_bytes=300 << 20)
    assert status_line.startswith(b"HTTP/1.1 413")
    assert sent < 64 << 20, f"the 413 came after {sent >> 20} MB of the body"


def test_a_repeated_authorization_header_is_refused_as_the_deployed_function_refuses_it(local_run):
    """The function sees every value of a repeated header (multiValue) and answers 401
    when the key header comes twice; the front once passed only the last copy."""
    host, port = _address(local_run)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.putrequest("POST", CHAT)
    connection.putheader("Authorization", "Bearer not-a-key")
    connection.putheader("Authorization", f"Bearer {local_run['api_key']}")
    connection.putheader("Content-Type", "application/json")
    body = b'{"model":"local","messages":[{"role":"user","content":"twice"}],"temperature":0}'
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    answer = connection.getresponse()
    assert answer.status == 401 and b"Malformed" in answer.read()


def test_an_escaped_question_mark_leaves_the_path_no_route(local_run):
    """`/v1/chat/completions%3Fx` is not the chat route (CloudFront hands the function the
    URI as sent; the origin's router decodes it and finds nothing): 404 each time, nothing
    stored. Read back decoded as the front once did, the `?` split it into the chat route
    and a query, and it was answered and stored as a chat completion."""
    host, port = _address(local_run)
    body = json.dumps({"model": "local", "messages": [{"role": "user", "content": f"escaped {time.time_ns()}"}],
                       "temperature": 0})
    headers = {"Authorization": f"Bearer {local_run['api_key']}", "Content-Type": "application/json"}
    answers = []
    for path in (CHAT + "%3Fx", CHAT + "%3Fx", CHAT):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        answer.read()
        answers.append((answer.status, answer.getheader("x-inference-cache")))
        connection.close()
    assert answers == [(404, "BYPASS"), (404, "BYPASS"), (200, "MISS")]


def test_a_partial_request_line_does_not_hold_a_connection_open(local_run):
    """A connection that sent half a request line stayed open indefinitely (90 s and more)."""
    with socket.create_connection(_address(local_run), timeout=HEADER_SECONDS + 10) as sock:
        sock.sendall(b"POST /v1/chat/comple")
        started = time.monotonic()
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < HEADER_SECONDS + 5


def test_a_local_run_starts_when_the_port_a_test_would_have_picked_is_taken(tmp_path, monkeypatch):
    """Tests once picked a free port and handed it to the run, which bound it seconds later:
    another process took it in between and CI failed (`Address already in use`). The run
    binds a port the system picks and names it in its start-up line."""
    import local_run.process

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(local_run.process, "free_port", lambda: taken.getsockname()[1])
        with launched("--stage", "dev", "--key-store-file", str(tmp_path / "keys.json")) as started:
            port = int(started["listening"].rsplit(":", 1)[1])
            assert port != taken.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass


def test_a_stopped_local_run_leaves_nothing_in_the_temporary_directory(tmp_path, monkeypatch):
    """Every run once left an 88 MB copy of the model (and its settings) in /tmp."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    key_store = tmp_path / "keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        create_api_key(key_store, "tmp")
        during = sorted(p.name for p in scratch.iterdir())
        assert any(name.startswith("inference-cache-model-") for name in during), during  # it did use the directory
        assert started["listening"]
    left = [str(p.relative_to(scratch)) for p in Path(scratch).rglob("*")]
    assert left == [], f"left behind: {left[:10]}"
    assert os.environ["TMPDIR"] == str(scratch)
