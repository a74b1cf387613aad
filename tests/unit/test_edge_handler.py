"""The Lambda@Edge origin-request handler, driven with CloudFront events in the
documented shape. The /_cache/ lookup goes to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from local_run.events import origin_request_event, origin_response_event
from tests.stage_secret import CACHE_READ_CREDENTIAL, CACHE_READ_HEADER, WITH_SECRET
from tests.unit.stored_answers import answer_stored, serving

CHAT = "/v1/chat/completions"
GREEDY = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0}
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"4"}}]}'


class ResultsStore(ThreadingHTTPServer):
    """Stands in for CloudFront's /_cache/* behavior: path -> (status, body, headers)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _StoreHandler)
        self.objects: dict[str, tuple[int, bytes, dict]] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.delay_seconds = 0.0  # before each answer: or until `released` is set
        self.released = threading.Event()
        self.raw: dict[str, bytes] = {}  # path -> the exact bytes to answer with

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StoreHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        store: ResultsStore = self.server
        store.requests.append((self.command, self.path, dict(self.headers)))
        if self.headers.get(CACHE_READ_HEADER) != CACHE_READ_CREDENTIAL:  # the /_cache/* function's check
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if store.delay_seconds:
            store.released.wait(store.delay_seconds)
        if self.path in store.raw:
            self.wfile.write(store.raw[self.path])
            self.close_connection = True
            return
        answer_stored(self, store.objects)

    def log_message(self, *args):
        pass


@pytest.fixture
def store():
    with serving(ResultsStore()) as server:
        yield server
        server.released.set()


@pytest.fixture
def edge(load_edge_handler, store):
    def load(**overrides):
        return load_edge_handler(store.base, **{"lookup_timeout_ms": 200, **overrides})

    return load


def event(body: bytes | dict = GREEDY, uri: str = CHAT, method: str = "POST", headers: dict | None = None, truncated=False,
          secret: bool = True):
    """The recorded origin-request event (tests/events) with this request in it, and the
    stage secret the viewer-request API key check sets (unless `secret` is False)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    viewer_headers = {"content-type": "application/json", **(WITH_SECRET if secret else {}), **(headers or {}),
                      "Via": "2.0 abc.cloudfront.net (CloudFront)"}
    return origin_request_event(body=raw, headers=viewer_headers, uri=uri, method=method, truncated=truncated)


def header(message: dict, name: str) -> str | None:
    values = message.get("headers", {}).get(name)
    return values[0]["value"] if values else None


def forwarded_key(edge_module, body=GREEDY, headers=None) -> str:
    """The key the handler forwards on a miss."""
    return header(edge_module.handler(event(body, headers=headers), None), "x-inference-cache-key")


def test_the_key_is_a_mac_under_the_stage_secret_and_the_lookup_presents_the_edges_credential(edge, store):
    """Nobody can name a stored answer from a request alone: the key is HMAC-SHA256 under
    the stage secret (as the origin adapter computes it), not the plain SHA-256 bin/cache-key
    estimates with; the lookup carries the credential the /_cache/* function checks."""
    from lambdas import cache_decision
    from tests.stage_secret import MAC

    handler = edge()
    key = forwarded_key(handler)
    payload = cache_decision.canonical_payload(CHAT, {}, json.dumps(GREEDY).encode(), handler.SETTINGS)
    assert key == hmac.new(MAC, payload, "sha256").hexdigest() != hashlib.sha256(payload).hexdigest()
    ((_, _, lookup_headers),) = store.requests
    assert lookup_headers[CACHE_READ_HEADER] == CACHE_READ_CREDENTIAL
    # The secret travels on to the origin adapter (which computes the same key), unchanged.
    assert header(handler.handler(event(), None), "x-inference-stage-secret") == WITH_SECRET["x-inference-stage-secret"]


def test_without_the_stage_secret_nothing_is_looked_up_or_keyed(edge, store):
    handler = edge()
    result = handler.handler(event(secret=False), None)
    assert "status" not in result and header(result, "x-inference-cache-key") is None
    assert store.requests == []
    assert header(result, "x-amz-content-sha256")  # still signed for OAC
    # A malformed request is still refused at the edge, secret or not.
    refused = handler.handler(event(b"{not json", secret=False), None)
    assert refused["status"] == "400"


def store_answer(store: ResultsStore, key: str, body: bytes = ANSWER, age_seconds: int = 5, **headers):
    stored_at = email.utils.formatdate(time.time() - age_seconds, usegmt=True)
    store.objects[f"/_cache/{key}"] = (200, body, {"Last-Modified": stored_at, **headers})


def test_miss_forwards_the_post_with_key_and_body_hash(edge, store):
    handler = edge()
    result = handler.handler(event(), None)
    assert result["method"] == "POST" and result["uri"] == CHAT
    key = header(result, "x-inference-cache-key")
    assert len(key) == 64 and int(key, 16) >= 0
    raw = json.dumps(GREEDY).encode()
    assert header(result, "x-amz-content-sha256") == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(result["body"]["data"]) == raw  # body untouched
    ((method, path, lookup_headers),) = store.requests
    assert (method, path) == ("GET", f"/_cache/{key}")
    # A fresh request: no viewer headers, above all no Via (CloudFront 403s long chains).
    assert "Via" not in lookup_headers and "Content-Type" not in lookup_headers


def test_hit_is_answered_at_the_edge(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key, age_seconds=42)
    result = handler.handler(event(), None)
    assert result["status"] == "200"
    assert header(result, "x-inference-cache") == "HIT"
    assert header(result, "content-type") == "application/json"
    assert 41 <= int(header(result, "age")) <= 60
    assert result["body"].encode() == ANSWER and result["bodyEncoding"] == "text"


def test_a_hit_is_exactly_the_response_cloudfront_is_given(edge, store, monkeypatch, capsys):
    """A generated response as Lambda@Edge takes it: status and its description as
    strings, each header a list of {"key", "value"} with the header's own spelling."""
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    handler = edge()
    key = forwarded_key(handler)
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(now - 42)})
    capsys.readouterr()
    result = handler.handler(event(), None)
    server_timing = result["headers"].pop("server-timing")
    assert result == {
        "status": "200",
        "statusDescription": "OK",
        "headers": {
            "content-type": [{"key": "Content-Type", "value": "application/json"}],
            "age": [{"key": "Age", "value": "42"}],
            "x-inference-cache": [{"key": "X-Inference-Cache", "value": "HIT"}],
            "x-inference-cache-key": [{"key": "X-Inference-Cache-Key", "value": key}],
        },
        "body": ANSWER.decode(),
        "bodyEncoding": "text",
    }
    assert server_timing[0]["key"] == "Server-Timing"
    log = logged(capsys)
    assert (log["outcome"], log["lookup"]) == ("hit", "hit")


def test_a_forwarded_request_carries_exactly_the_edges_own_headers(edge, store):
    handler = edge(tenant_scoped=True)
    forwarded = handler.handler(event(headers={"x-inference-tenant": "acme"}), None)["headers"]
    key = forwarded["x-inference-cache-key"][0]["value"]
    assert forwarded["x-inference-cache-key"] == [{"key": "X-Inference-Cache-Key", "value": key}]
    assert forwarded["x-inference-tenant"] == [{"key": "X-Inference-Tenant", "value": "acme"}]
    assert forwarded["x-amz-content-sha256"] == [
        {"key": "x-amz-content-sha256", "value": hashlib.sha256(json.dumps(GREEDY).encode()).hexdigest()}]
    bare = event()  # CloudFront always sends headers; the function does not depend on it
    del bare["Records"][0]["cf"]["request"]["headers"]
    # No headers, so no stage secret either: nothing keyed (fail closed), its timing forwarded.
    assert set(edge().handler(bare, None)["headers"]) == {"x-amz-content-sha256", "x-inference-edge-timing"}


@pytest.mark.parametrize(("expires_in", "served"), [(-1, False), (0, False), (1, True)])
def test_an_answer_is_not_served_from_the_second_it_expires(edge, store, monkeypatch, capsys, expires_in, served):
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    handler = edge()
    key = forwarded_key(handler)
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(now - 5),
                                                     "x-amz-meta-expires": str(now + expires_in)})
    capsys.readouterr()
    result = handler.handler(event(), None)
    assert (header(result, "x-inference-cache") == "HIT") == served
    assert logged(capsys)["lookup"] == ("hit" if served else "expired")


@pytest.mark.parametrize(("size", "served"), [(-1, True), (0, True), (1, False)])
def test_a_stored_answer_is_served_up_to_the_generated_response_limit(edge, store, capsys, size, served):
    handler = edge()
    key = forwarded_key(handler)
    body = b'"' + b"a" * (handler.GENERATED_BODY_LIMIT + size - 2) + b'"'
    store_answer(store, key, body=body)
    capsys.readouterr()
    result = handler.handler(event(), None)
    assert (header(result, "x-inference-cache") == "HIT") == served
    assert logged(capsys)["lookup"] == ("hit" if served else "too-large-to-generate")


def test_same_request_in_other_clothes_hits(edge, store):
    handler = edge()
    store_answer(store, forwarded_key(handler))
    reformatted = b'{ "temperature": 0.0, "messages": [{"content": [{"type": "text", "text": "What is 2+2?"}], "role": "user"}], "model": "m", "n": 1 }'
    assert header(handler.handler(event(reformatted), None), "x-inference-cache") == "HIT"


def test_stored_answer_older_than_the_requested_ttl_is_a_miss(edge, store, capsys):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key, age_seconds=600)
    result = handler.handler(event(headers={"x-inference-cache-ttl": "60"}), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    assert logged(capsys)["lookup"] == "older-than-requested-ttl"


@pytest.mark.parametrize(("age", "hit"), [(59, True), (60, True), (61, False)])
def test_a_stored_answer_exactly_as_old_as_accepted_is_served(edge, store, monkeypatch, age, hit):
    """The clock stands still for the test: the age is exact."""
    now = 1_800_000_000
    monkeypatch.setattr(time, "time", lambda: now)
    handler = edge()
    key = forwarded_key(handler)
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(now - age)})
    result = handler.handler(event(headers={"x-inference-cache-ttl": "60"}), None)
    assert (header(result, "x-inference-cache") == "HIT") == hit
    if hit:
        assert header(result, "age") == str(age)


@pytest.mark.parametrize(("stored", "served"), [("text/event-stream", "text/event-stream"), (None, "application/json")])
def test_a_hit_carries_the_stored_content_type(edge, store, stored, served):
    """A streamed answer is stored as text/event-stream and replayed as such; an object
    stored without a type is taken as JSON."""
    handler = edge()
    key = forwarded_key(handler)
    stored_at = email.utils.formatdate(time.time() - 5, usegmt=True)
    type_line = f"Content-Type: {stored}\r\n" if stored else ""
    store.raw[f"/_cache/{key}"] = (f"HTTP/1.1 200 OK\r\n{type_line}Last-Modified: {stored_at}\r\n"
                                   f"Content-Length: {len(ANSWER)}\r\n\r\n").encode() + ANSWER
    result = handler.handler(event(), None)
    assert header(result, "x-inference-cache") == "HIT" and header(result, "content-type") == served


def test_binary_answer_is_returned_base64(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key, body=b"\xff\x00binary", **{"Content-Type": "application/octet-stream"})
    result = handler.handler(event(), None)
    assert result["bodyEncoding"] == "base64" and base64.b64decode(result["body"]) == b"\xff\x00binary"


def _raw_response(body_part: bytes, **headers) -> bytes:
    stored_at = email.utils.formatdate(time.time() - 5, usegmt=True)
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLast-Modified: {stored_at}\r\n{head}\r\n".encode() + body_part


def test_chunked_answer_is_reassembled(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (ANSWER[:10], ANSWER[10:])) + b"0\r\n\r\n"
    store.raw[f"/_cache/{key}"] = _raw_response(chunks, Transfer_Encoding="chunked")
    result = handler.handler(event(), None)
    assert header(result, "x-inference-cache") == "HIT" and result["body"].encode() == ANSWER


@pytest.mark.parametrize(
    "cut",
    [
        lambda: _raw_response(ANSWER[:20], Content_Length=str(len(ANSWER))),  # connection closed early
        lambda: _raw_response(f"{len(ANSWER):x}\r\n".encode() + ANSWER[:20], Transfer_Encoding="chunked"),
        lambda: b"HTTP/1.1 200 OK\r\nContent-Type: application/json",  # no end of head
    ],
)
def test_incomplete_answer_is_never_served(edge, store, cut):
    handler = edge()
    key = forwarded_key(handler)
    store.raw[f"/_cache/{key}"] = cut()
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key


def test_stored_object_too_large_for_a_generated_response_is_a_miss(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key, body=b'"' + b"a" * handler.GENERATED_BODY_LIMIT + b'"')
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key


def logged(capsys) -> dict:
    """The edge's log line of the last request."""
    return json.loads(capsys.readouterr().out.splitlines()[-1])


# What the log says of each lookup answer: the metric filters count "lookup-status-*" as
# failed lookups (EdgeLookupFailed), a 403/404 (nothing stored; no ListBucket) as a miss.
@pytest.mark.parametrize(("status", "lookup"), [(403, "miss"), (404, "miss"), (405, "lookup-status-405"),
                                                (500, "lookup-status-500"), (503, "lookup-status-503")])
def test_lookup_error_status_forwards(edge, store, capsys, status, lookup):
    handler = edge()
    key = forwarded_key(handler)
    store.objects[f"/_cache/{key}"] = (status, b"err", {})
    capsys.readouterr()
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    log = logged(capsys)
    assert (log["outcome"], log["lookup"]) == ("forward", lookup)


def test_lookup_timeout_forwards_within_the_bound(edge, store):
    handler = edge(lookup_timeout_ms=100)
    key = forwarded_key(handler)
    store_answer(store, key)
    store.delay_seconds = 30  # answers only when released, at the test's end
    started = time.perf_counter()
    result = handler.handler(event(), None)
    elapsed = time.perf_counter() - started
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    assert elapsed < 5  # gave up at its timeout (0.1 s), not when the store answered


def test_lookup_unreachable_forwards(edge, store, monkeypatch, capsys):
    handler = edge()
    monkeypatch.setenv("INFERENCE_CACHE_LOOKUP_BASE", "http://127.0.0.1:9")  # discard port: refused
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key")
    log = logged(capsys)
    assert (log["outcome"], log["lookup"]) == ("forward", "lookup-failed-ConnectionRefusedError")


def test_no_cache_skips_the_lookup_but_forwards_the_key(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key)
    store.requests.clear()
    result = handler.handler(event(headers={"Cache-Control": "no-cache"}), None)
    assert store.requests == []
    assert header(result, "x-inference-cache-key") == key


def test_no_store_skips_the_lookup(edge, store):
    handler = edge()
    store_answer(store, forwarded_key(handler))
    store.requests.clear()
    result = handler.handler(event(headers={"Cache-Control": "no-store"}), None)
    assert store.requests == [] and "status" not in result


def test_sampling_request_is_forwarded_without_key_or_lookup(edge, store):
    handler = edge()
    result = handler.handler(event({**GREEDY, "temperature": 0.7}), None)
    assert store.requests == []
    assert header(result, "x-inference-cache-key") is None
    assert header(result, "x-amz-content-sha256")


def test_viewer_cannot_inject_edge_headers(edge, store):
    handler = edge(tenant_scoped=True)
    # The tenant header here is the one the viewer-request API key check set (it strips
    # any viewer copy); the key header and body hash are the viewer's own forgeries.
    forged = {"x-inference-cache-key": "0" * 64, "x-amz-content-sha256": "0" * 64, "x-inference-tenant": "acme"}
    result = handler.handler(event(headers=forged), None)
    assert header(result, "x-inference-cache-key") != "0" * 64
    assert header(result, "x-amz-content-sha256") == hashlib.sha256(json.dumps(GREEDY).encode()).hexdigest()
    assert header(result, "x-inference-tenant") == "acme"
    sampling = handler.handler(event({**GREEDY, "temperature": 1}, headers=forged), None)
    assert header(sampling, "x-inference-cache-key") is None


def test_a_scoped_stage_caches_only_with_one_verified_tenant(edge, store, capsys):
    """No tenant, or the header twice (which copy would the origin see?): forwarded
    uncached, without a tenant; never answered from another scope."""
    handler = edge(tenant_scoped=True)
    capsys.readouterr()
    missing = handler.handler(event(), None)
    twice = event(headers={"x-inference-tenant": "acme"})
    request = twice["Records"][0]["cf"]["request"]
    request["headers"]["x-inference-tenant"] = [{"key": "X-Inference-Tenant", "value": "acme"},
                                                {"key": "X-Inference-Tenant", "value": "other"}]
    repeated = handler.handler(twice, None)
    for result in (missing, repeated):
        assert header(result, "x-inference-cache-key") is None and header(result, "x-inference-tenant") is None
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(log["outcome"], log["reason"]) for log in logs] == [("forward", "tenant-scoped stage, no verified tenant")] * 2
    assert store.requests == []


def test_unscoped_stage_forwards_no_tenant(edge, store):
    handler = edge(tenant_scoped=False)
    result = handler.handler(event(headers={"x-inference-tenant": "acme"}), None)
    assert header(result, "x-inference-tenant") is None and header(result, "x-inference-cache-key")


def test_tenants_do_not_share_answers(edge, store):
    handler = edge(tenant_scoped=True)
    key_a = forwarded_key(handler, headers={"x-inference-tenant": "tenant-a"})
    store_answer(store, key_a)
    result_b = handler.handler(event(headers={"x-inference-tenant": "tenant-b"}), None)
    assert "status" not in result_b and header(result_b, "x-inference-cache-key") != key_a
    # The same tenant with another (rotated) key: the key never enters the cache key.
    result_a = handler.handler(event(headers={"x-inference-tenant": "tenant-a", "authorization": "Bearer sk-new"}), None)
    assert header(result_a, "x-inference-cache") == "HIT"


@pytest.mark.parametrize(
    ("body", "headers", "truncated", "status", "code"),
    [
        (b"{not json", {}, False, 400, None),
        (b"[1, 2]", {}, False, 400, None),
        (b"", {}, False, 400, None),
        (b'{"model": "m", "model": "n", "messages": []}', {}, False, 400, None),
        (b'{"model": "m", "messages": [], "temperature": NaN}', {}, False, 400, None),
        (b"\xff\xfe{}", {}, False, 400, None),
        (json.dumps(GREEDY).encode(), {}, True, 413, None),
        (json.dumps(GREEDY).encode(), {"content-type": "text/plain"}, False, 415, None),
    ],
)
def test_bad_input_gets_an_openai_shaped_error_and_no_lookup(edge, store, body, headers, truncated, status, code):
    handler = edge()
    result = handler.handler(event(body, headers=headers, truncated=truncated), None)
    assert result["status"] == str(status)
    assert header(result, "x-inference-cache") == "BYPASS"
    assert header(result, "cache-control") == "no-store"
    error = json.loads(result["body"])["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert store.requests == []


def test_a_stage_without_embeddings_answers_404_model_not_found_at_the_edge(edge, store):
    """Never a lookup, never forwarded (no model call), never cached: the function's own answer."""
    handler = edge(embeddings_model_id=None, embeddings_model_version=None)
    result = handler.handler(event({"model": "text-embedding-3-small", "input": "hello"}, uri="/v1/embeddings"), None)
    assert (result["status"], result["statusDescription"]) == ("404", "Not Found")
    assert header(result, "cache-control") == "no-store" and header(result, "x-inference-cache") == "BYPASS"
    error = json.loads(result["body"])["error"]
    assert (error["code"], error["type"], error["param"]) == ("model_not_found", "invalid_request_error", "model")
    assert store.requests == []
    # The same request on a stage that embeds is looked up and forwarded with its key.
    forwarded = edge().handler(event({"model": "text-embedding-3-small", "input": "hello"}, uri="/v1/embeddings"), None)
    assert "status" not in forwarded and header(forwarded, "x-inference-cache-key")
    assert len(store.requests) == 1


def test_more_embeddings_inputs_than_openai_accepts_is_a_400_at_the_edge(edge, store):
    result = edge().handler(event({"model": "m", "input": ["x"] * 2049}, uri="/v1/embeddings"), None)
    assert result["status"] == "400" and json.loads(result["body"])["error"]["param"] == "input"
    assert store.requests == []


# A POST to another route is forwarded too, with its body hash added (issue 10: OAC signs
# a body only with it): test_every_forwarded_request_with_a_body_carries_its_hash.
@pytest.mark.parametrize(("method", "uri"), [("GET", "/v1/models"), ("GET", CHAT)])
def test_other_requests_pass_unchanged(edge, store, method, uri):
    handler = edge()
    original = event(uri=uri, method=method)
    expected = json.loads(json.dumps(original["Records"][0]["cf"]["request"]))
    assert handler.handler(original, None) == expected
    assert store.requests == []


def test_unexpected_failure_forwards_uncached(edge, store):
    handler = edge()
    broken = event()
    broken["Records"][0]["cf"]["request"]["body"]["data"] = "%%% not base64 %%%"
    result = handler.handler(broken, None)
    assert result["uri"] == CHAT and "status" not in result
    assert header(result, "x-inference-cache-key") is None


def test_age_comes_from_the_stored_at_metadata_the_adapter_writes(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    # What S3 returns for an object the origin adapter stored 42 s ago (no Last-Modified here).
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(int(time.time()) - 42)})
    result = handler.handler(event(), None)
    assert header(result, "x-inference-cache") == "HIT" and 42 <= int(header(result, "age")) <= 50
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(int(time.time()) - 600)})
    result = handler.handler(event(headers={"x-inference-cache-ttl": "60"}), None)
    assert "status" not in result  # older than the client accepts: a miss


# -- Server-Timing: where the time went, on every answer ------------------------------------

_ENTRY = r'[a-z][a-z-]*(;dur=\d+(\.\d+)?)?(;desc="[^"]*")?'
SERVER_TIMING = re.compile(rf"^{_ENTRY}(, {_ENTRY})*$")


def timings(value: str) -> dict[str, float | None]:
    """name -> milliseconds (None: an entry with a description only), in order."""
    assert SERVER_TIMING.match(value), value
    found = {}
    for part in value.split(", "):
        name, _, rest = part.partition(";")
        duration = re.search(r"dur=([\d.]+)", rest)
        found[name] = float(duration.group(1)) if duration else None
    return found


def test_hit_carries_server_timing_with_the_logged_figures(edge, store, capsys):
    handler = edge()
    store_answer(store, forwarded_key(handler))
    capsys.readouterr()
    result = handler.handler(event(), None)
    assert header(result, "x-inference-cache") == "HIT"
    figures = timings(header(result, "server-timing"))
    log = json.loads(capsys.readouterr().out)
    assert figures == {"decision": log["decision_ms"], "lookup": log["lookup_ms"]}
    assert 0 < figures["decision"] + figures["lookup"] <= log["ms"]


def test_lookup_time_shows_a_slow_store(edge, store):
    handler = edge(lookup_timeout_ms=1000)
    store_answer(store, forwarded_key(handler))
    store.delay_seconds = 0.05
    result = handler.handler(event(), None)
    assert header(result, "x-inference-cache") == "HIT"
    assert timings(header(result, "server-timing"))["lookup"] >= 50


@pytest.mark.parametrize(
    ("body", "headers", "truncated", "status"),
    [(b"{not json", {}, False, 400), (json.dumps(GREEDY).encode(), {}, True, 413),
     (json.dumps(GREEDY).encode(), {"content-type": "text/plain"}, False, 415)],
)
def test_errors_carry_server_timing_of_the_decision(edge, store, capsys, body, headers, truncated, status):
    handler = edge()
    result = handler.handler(event(body, headers=headers, truncated=truncated), None)
    assert result["status"] == str(status)
    assert timings(header(result, "server-timing")) == {"decision": json.loads(capsys.readouterr().out)["decision_ms"]}


def test_miss_is_answered_by_the_origin_naming_the_edges_steps_and_its_own(edge, store, capsys):
    """The edge cannot add response headers to a forwarded request: it forwards its own
    figures (x-inference-edge-timing), and the origin adapter's answer names them beside
    its own steps; the store runs after the answer (named, without a duration). The model
    is the local model server behind boto3's sagemaker-runtime client; S3 is stubbed at the
    boto3 boundary."""
    import boto3
    from botocore.config import Config
    from botocore.stub import ANY

    from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest
    from lambdas.origin_adapter.endpoint import SageMakerEndpoint
    from lambdas.origin_adapter.results_store import ResultsStore
    from local_run.model_server import ModelServer
    from local_run.servers import BackgroundServer
    from tests.unit.boto_boundary import CountingStubber

    handler = edge()
    capsys.readouterr()
    slow = {**GREEDY, "messages": [{"role": "user", "content": "What is 2+2? [[slow-ms:20]]"}]}  # the model takes 20 ms
    forwarded = handler.handler(event(slow, headers={"x-inference-edge-timing": "lookup;dur=0.01"}), None)
    assert "status" not in forwarded  # a miss: forwarded to the origin
    log = json.loads(capsys.readouterr().out)
    headers = {name: values[0]["value"] for name, values in forwarded["headers"].items()}
    # The viewer's own copy never reaches the origin: only the edge's figures, in the shape
    # CloudFront reads a header in (its lowercase name as the key, the name as sent in `key`).
    assert forwarded["headers"]["x-inference-edge-timing"] == [
        {"key": "X-Inference-Edge-Timing", "value": f"decision;dur={log['decision_ms']}, lookup;dur={log['lookup_ms']}"}]
    model = ModelServer()
    running = BackgroundServer(model.app, name="model-under-test").start()
    local = {"region_name": "us-east-1", "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    try:
        runtime = boto3.client("sagemaker-runtime", endpoint_url=running.url, config=Config(retries={"total_max_attempts": 1}), **local)
        endpoint = SageMakerEndpoint("local", connect_timeout=2, read_timeout=10, throttle_retries=0, client=runtime)
        results = ResultsStore("results", boto3.client("s3", **local))
        adapter = InferenceAdapter(handler.SETTINGS, endpoint, results, logging.getLogger("test"))
        with CountingStubber(results.client) as s3:
            s3.add_response("put_object", {}, {"Bucket": "results", "Key": f"_cache/{headers['x-inference-cache-key']}",
                                               "Body": ANY, "ContentType": "application/json", "CacheControl": ANY, "Metadata": ANY})
            response, outcome = adapter.answer(OriginRequest("POST", CHAT, headers, base64.b64decode(forwarded["body"]["data"])))
            assert s3.calls == []  # nothing stored before the answer went out
            response.finish()
            bad, _ = adapter.answer(OriginRequest("POST", CHAT, headers, b"{not json"))
            bad.finish()
            # Whatever reaches the origin in that header, only well-formed entries are echoed.
            forged = {**headers, "x-inference-edge-timing": 'lookup;dur=1, evil\r\nset-cookie: a=b;dur=2, x;desc="<script>"'}
            echoed, _ = adapter.answer(OriginRequest("POST", CHAT, forged, b"{not json"))
            s3.assert_calls_as_queued()  # the answer stored once, under the edge's key, after it; the 400s not at all
    finally:
        running.stop()
    assert (response.status, outcome.cache, model.invocations) == (200, "MISS", 1)
    assert json.loads(response.body)["object"] == "chat.completion"
    figures = timings(response.headers["server-timing"])
    assert list(figures) == ["decision", "lookup", "origin-decision", "model", "store", "origin"]
    assert (figures["decision"], figures["lookup"]) == (log["decision_ms"], log["lookup_ms"])
    assert figures["model"] >= 20 and figures["origin"] >= figures["model"] and figures["store"] is None
    assert bad.status == 400 and list(timings(bad.headers["server-timing"])) == ["decision", "lookup", "origin-decision", "origin"]
    assert list(timings(echoed.headers["server-timing"])) == ["lookup", "origin-decision", "origin"]


def test_an_answer_past_the_writers_expiry_is_not_served(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    now = int(time.time())
    # Stored 5 s ago with the writer's TTL of 1 s: expired, whatever this reader accepts.
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(now - 5), "x-amz-meta-expires": str(now - 4)})
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    store.objects[f"/_cache/{key}"] = (200, ANSWER, {"x-amz-meta-created": str(now - 5), "x-amz-meta-expires": str(now + 60)})
    assert header(handler.handler(event(), None), "x-inference-cache") == "HIT"


def test_every_forwarded_request_with_a_body_carries_its_hash(edge, store):
    handler = edge()
    raw = b'{"purpose": "fine-tune"}'
    result = handler.handler(event(raw, uri="/v1/files"), None)
    assert header(result, "x-amz-content-sha256") == hashlib.sha256(raw).hexdigest()
    assert header(result, "x-inference-cache-key") is None and store.requests == []
    assert "x-inference-edge-timing" not in result["headers"]  # not decided here: no edge steps to name


# Every status Lambda or OAC answers in its own shape, with the code and message the
# client gets for it (an unlisted status: the generic origin error).
ORIGIN_ERRORS = [
    (403, "forbidden", "The origin refused the request.", None),
    (413, "body_too_large", "The request body is larger than the origin accepts (6 MB).", None),
    (429, "origin_busy", "Every model slot is busy; retry shortly.", "1"),
    (500, "origin_error", "The origin failed.", None),
    (502, "origin_error", "The origin failed.", None),
    (503, "origin_unavailable", "The origin is unavailable; retry shortly.", "1"),
    (504, "origin_timeout", "The origin did not answer in time.", None),
    (501, "origin_error", "The origin failed.", None),
    (400, "origin_error", "The origin failed.", None),
]


@pytest.mark.parametrize(("status", "code", "message", "retry"), ORIGIN_ERRORS, ids=[str(e[0]) for e in ORIGIN_ERRORS])
def test_lambdas_own_errors_reach_the_client_in_the_openai_shape(edge, store, capsys, status, code, message, retry):
    handler = edge()
    answered = origin_response_event(status=status, headers={"x-amzn-ErrorType": "Whatever"})
    result = handler.handler(answered, None)
    assert result["status"] == str(status)
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    assert json.loads(result["body"]) == {"error": {"message": message, "type": kind, "param": None, "code": code}}
    assert result["bodyEncoding"] == "text"
    # Exactly these headers, as CloudFront wants them ({"key", "value"} lists); Lambda's own
    # are dropped, the two CloudFront makes read-only for this trigger kept as they came.
    read_only = {k: v for k, v in answered["Records"][0]["cf"]["response"]["headers"].items() if k in ("transfer-encoding", "via")}
    assert len(read_only) == 2 and result["headers"] == {
        **read_only,
        "content-type": [{"key": "Content-Type", "value": "application/json"}],
        "cache-control": [{"key": "Cache-Control", "value": "no-store"}],
        "x-inference-cache": [{"key": "X-Inference-Cache", "value": "BYPASS"}],
        **({"retry-after": [{"key": "Retry-After", "value": retry}]} if retry else {}),
    }
    assert capsys.readouterr().out == json.dumps({"outcome": f"origin-error-{status}", "uri": CHAT}, separators=(",", ":")) + "\n"


def test_an_origin_response_without_headers_is_handled_all_the_same(edge, store):
    """CloudFront always sends them; the function does not depend on it. (A response
    without a status is not tried: CloudFront refuses any result without one, 502.)"""
    answer = origin_response_event(status=502, headers={})
    del answer["Records"][0]["cf"]["response"]["headers"]
    result = edge().handler(answer, None)
    assert json.loads(result["body"])["error"]["code"] == "origin_error"
    assert header(result, "x-inference-cache") == "BYPASS"


def test_the_adapters_own_answers_pass_the_origin_response_untouched(edge, store):
    handler = edge()
    for status in (200, 400, 429, 502):
        answer = origin_response_event(status=status, headers={"x-inference-cache": "BYPASS", "content-type": "application/json"})
        response = answer["Records"][0]["cf"]["response"]
        assert handler.handler(answer, None) == response and "body" not in response
