"""The edge's kept-alive /_cache/ lookup against a real HTTPS server on 127.0.0.1, with a
certificate from a CA this module creates, trusted through the lookup's own TLS context
(LOOKUP_CA_ENV). The server counts the TCP connections it accepts."""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lambdas.contract import LOOKUP_BASE_ENV, LOOKUP_CA_ENV
from lambdas.edge import lookup
from local_run.events import origin_request_event
from tests.stage_secret import CACHE_READ_CREDENTIAL, CACHE_READ_HEADER, WITH_SECRET
from tests.unit.stored_answers import answer_stored, serving

CHAT = "/v1/chat/completions"
GREEDY = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0}
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"4"}}]}'
# name;dur=ms[, name;dur=ms ...] (W3C Server Timing, the subset the edge writes)
SERVER_TIMING = re.compile(r"^[a-z]+;dur=\d+(\.\d+)?(, [a-z]+;dur=\d+(\.\d+)?)*$")


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a CA of the test's own and a
    certificate for 127.0.0.1 and localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    ca = certificate("inference-cache test CA", "inference-cache test CA", ca_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (ca_usage, True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
    ])
    names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    server = certificate("127.0.0.1", "inference-cache test CA", server_key.public_key(), ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (names, False),
        (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
    ])
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return paths


class TlsStore(ThreadingHTTPServer):
    """CloudFront's /_cache/* behavior over HTTPS with keep-alive. `plan` holds what to do
    with each request in turn (then "answer"): "answer", "drop" (read it, close the
    connection unanswered; ("drop", seconds): that much later), ("stall", seconds: or until
    `released` is set), ("raw", bytes).
    It counts the connections it accepted and those it closed."""

    daemon_threads = True

    def __init__(self, certificate: Path, key: Path):
        super().__init__(("127.0.0.1", 0), _TlsStoreHandler)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(certificate, key)
        self.objects: dict[str, tuple[int, bytes, dict]] = {}
        self.accepted = 0  # TCP connections accepted
        self.requests: list[str] = []
        self.credentials: list[str | None] = []  # what each lookup presented
        self.plan: list = []
        self.idle_timeout: float | None = None  # close a connection idle this long
        self.closed = 0  # TCP connections closed by the server
        self.released = threading.Event()  # ends every stall (the fixture sets it at the end)
        self.changed = threading.Condition()

    def shutdown_request(self, request):
        super().shutdown_request(request)
        with self.changed:
            self.closed += 1
            self.changed.notify_all()

    def wait_for(self, condition, seconds: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(condition, timeout=seconds)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"

    def get_request(self):
        sock, address = self.socket.accept()
        self.accepted += 1
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        pass  # clients that leave (a lookup timing out) are expected here


class _TlsStoreHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True

    def setup(self):
        self.timeout = self.server.idle_timeout
        self.request.settimeout(5)
        self.request.do_handshake()
        super().setup()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        store: TlsStore = self.server
        store.requests.append(self.path)
        store.credentials.append(self.headers.get(CACHE_READ_HEADER))
        action = store.plan.pop(0) if store.plan else "answer"
        if action == "drop" or action[0] == "drop":
            if action != "drop":
                time.sleep(action[1])  # the server's own pace: part of the lookup's time goes here
            self.close_connection = True
            return
        if action[0] == "stall":
            store.released.wait(action[1])
        if action[0] == "raw":
            self.wfile.write(action[1])
            return
        answer_stored(self, store.objects)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def store(certificates, monkeypatch):
    ca, certificate, key = certificates
    monkeypatch.setenv(LOOKUP_CA_ENV, str(ca))
    lookup.reset()  # a context and connection of this test's own
    with serving(TlsStore(certificate, key)) as server:
        yield server
        server.released.set()
        lookup.reset()


@pytest.fixture
def edge(load_edge_handler, store):
    def load(**overrides):
        return load_edge_handler(store.base, **{"lookup_timeout_ms": 300, **overrides})

    return load


def event(body: dict = GREEDY) -> dict:
    headers = {"content-type": "application/json", **WITH_SECRET, "Via": "2.0 abc.cloudfront.net (CloudFront)"}
    return origin_request_event(body=json.dumps(body).encode(), headers=headers, uri=CHAT)


def header(message: dict, name: str) -> str | None:
    values = message.get("headers", {}).get(name)
    return values[0]["value"] if values else None


def stored(store: TlsStore, handler) -> str:
    """Looks the request up once (a miss, forwarded with its key), then stores an answer under the key."""
    key = header(handler.handler(event(), None), "x-inference-cache-key")
    stored_at = email.utils.formatdate(time.time() - 5, usegmt=True)
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"Last-Modified": stored_at})
    return key


def is_hit(result: dict) -> bool:
    return header(result, "x-inference-cache") == "HIT" and result["body"].encode() == ANSWER


def test_warm_hits_share_one_connection(edge, store, capsys):
    handler = edge()
    stored(store, handler)
    results = [handler.handler(event(), None) for _ in range(20)]
    assert all(is_hit(r) for r in results)
    assert store.accepted == 1 and len(store.requests) == 21
    # Every lookup, on a kept connection too, presents the edge's /_cache/ read credential.
    assert store.credentials == [CACHE_READ_CREDENTIAL] * 21
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert logs[0]["connection"] == "new" and {log["connection"] for log in logs[1:]} == {"reused"}
    for result in results:
        assert SERVER_TIMING.match(header(result, "server-timing"))


def test_server_closing_idle_connections_still_gives_hits(edge, store, capsys):
    handler = edge()
    store.idle_timeout = 0.05
    stored(store, handler)
    for _ in range(4):
        store.wait_for(lambda: store.closed == store.accepted)  # the server closed the idle connection
        assert is_hit(handler.handler(event(), None))
    # One new connection per hit, and no request lost on a closed one: the close was
    # noticed before sending.
    assert store.accepted == 5 and len(store.requests) == 5
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [log["connection"] for log in logs] == ["new"] + ["renewed"] * 4


def test_connection_closed_as_the_request_arrives_is_retried_once(edge, store):
    handler = edge()
    stored(store, handler)
    store.plan = ["drop"]  # the kept connection's next request: read, then closed unanswered
    assert is_hit(handler.handler(event(), None))
    assert store.accepted == 2 and len(store.requests) == 3
    assert is_hit(handler.handler(event(), None)) and store.accepted == 2  # the new one is kept


def test_fresh_connection_closed_unanswered_is_a_miss_without_retry(store):
    store.plan = ["drop", "drop"]
    with pytest.raises(ConnectionError):
        lookup.get(store.base, "/_cache/abc", 0.3, CACHE_READ_CREDENTIAL)
    assert store.accepted == 1 and len(store.requests) == 1


def test_stalling_server_gives_a_miss_within_the_timeout(edge, store):
    handler = edge(lookup_timeout_ms=100)
    key = stored(store, handler)
    store.plan = [("stall", 30)]  # answers only when released, at the test's end
    started = time.perf_counter()
    result = handler.handler(event(), None)
    elapsed = time.perf_counter() - started
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    assert elapsed < 5  # gave up at its timeout (0.1 s), not when the store answered


def test_retry_on_a_fresh_connection_stays_within_the_same_timeout(store):
    store.objects["/_cache/abc"] = (200, ANSWER, {})
    assert lookup.get(store.base, "/_cache/abc", 0.3, CACHE_READ_CREDENTIAL)[0] == 200
    # The kept connection closes 0.6 s into the request, the fresh one stalls.
    store.plan = [("drop", 0.6), ("stall", 30)]
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        lookup.get(store.base, "/_cache/abc", 1.0, CACHE_READ_CREDENTIAL)
    # One timeout for both tries (1 s); a fresh one for the retry would end at 1.6 s.
    assert time.perf_counter() - started < 1.4
    assert store.accepted == 2


def test_lookup_trusts_only_the_configured_ca(store, monkeypatch):
    store.objects["/_cache/abc"] = (200, ANSWER, {})
    monkeypatch.delenv(LOOKUP_CA_ENV)
    lookup.reset()  # the system's CAs, as in production: the test's CA is unknown there
    with pytest.raises(ssl.SSLCertVerificationError):
        lookup.get(store.base, "/_cache/abc", 0.3, CACHE_READ_CREDENTIAL)


def test_content_length_and_chunked_answers_on_one_connection(store):
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (ANSWER[:10], ANSWER[10:])) + b"0\r\n\r\n"
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    store.objects["/_cache/abc"] = (200, ANSWER, {})
    store.plan = ["answer", ("raw", chunked), "answer", ("raw", chunked)]
    for _ in range(4):
        status, headers, body = lookup.get(store.base, "/_cache/abc", 0.3, CACHE_READ_CREDENTIAL)
        assert (status, body) == (200, ANSWER)
    assert store.accepted == 1  # each body read exactly to its end: the connection stays in step


def test_connection_close_answer_is_not_reused(store):
    store.objects["/_cache/abc"] = (404, b"nope", {"Connection": "close"})
    for _ in range(2):
        assert lookup.get(store.base, "/_cache/abc", 0.3, CACHE_READ_CREDENTIAL)[0] == 404
    assert store.accepted == 2


def test_concurrent_lookups_never_share_a_connection(store):
    """The local run calls the edge from several threads: each answer must be its own request's."""
    for name in "abcd":
        store.objects[f"/_cache/{name}"] = (200, name.encode() * 100, {})
    wrong = []

    def look(name):
        for _ in range(25):
            status, _, body = lookup.get(store.base, f"/_cache/{name}", 2.0, CACHE_READ_CREDENTIAL)
            if (status, body) != (200, name.encode() * 100):
                wrong.append((name, status, body[:10]))

    threads = [threading.Thread(target=look, args=(name,)) for name in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == [] and len(store.requests) == 100
    assert store.accepted < 100  # connections were still kept and reused


def test_server_that_never_answers_the_tls_handshake_is_a_miss_within_the_timeout(store):
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes TCP; nothing speaks TLS
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            lookup.get(f"https://127.0.0.1:{silent.getsockname()[1]}", "/_cache/abc", 0.5, CACHE_READ_CREDENTIAL)
        assert time.perf_counter() - started < 0.95  # the handshake within the same timeout as the connect
    finally:
        silent.close()


def test_without_a_lookup_base_the_lookup_goes_to_the_distribution_itself(edge, store, monkeypatch):
    """As on AWS (no LOOKUP_BASE_ENV): https://{distributionDomainName}/_cache/{key}, here
    the test's HTTPS store standing in for the distribution's domain."""
    handler = edge()
    key = stored(store, handler)
    monkeypatch.delenv(LOOKUP_BASE_ENV)
    domain = store.base.removeprefix("https://")
    headers = {"content-type": "application/json", **WITH_SECRET, "Via": "2.0 abc.cloudfront.net (CloudFront)"}
    at_the_distribution = origin_request_event(body=json.dumps(GREEDY).encode(), headers=headers, uri=CHAT,
                                               distribution_domain=domain)
    assert is_hit(handler.handler(at_the_distribution, None))
    assert store.requests[-1] == f"/_cache/{key}"
