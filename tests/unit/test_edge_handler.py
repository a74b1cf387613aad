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
import time
import types
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
        self.delay_seconds = 0.0
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
            time.sleep(store.delay_seconds)
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


def test_same_request_in_other_clothes_hits(edge, store):
    handler = edge()
    store_answer(store, forwarded_key(handler))
    reformatted = b'{ "temperature": 0.0, "messages": [{"content": [{"type": "text", "text": "What is 2+2?"}], "role": "user"}], "model": "m", "n": 1 }'
    assert header(handler.handler(event(reformatted), None), "x-inference-cache") == "HIT"


def test_stored_answer_older_than_the_requested_ttl_is_a_miss(edge, store):
    handler = edge()
    key = forwarded_key(handler)
    store_answer(store, key, age_seconds=600)
    result = handler.handler(event(headers={"x-inference-cache-ttl": "60"}), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key


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


@pytest.mark.parametrize("status", [403, 500, 503])
def test_lookup_error_status_forwards(edge, store, status):
    handler = edge()
    key = forwarded_key(handler)
    store.objects[f"/_cache/{key}"] = (status, b"err", {})
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key") == key


def test_lookup_timeout_forwards_within_the_bound(edge, store):
    handler = edge(lookup_timeout_ms=100)
    key = forwarded_key(handler)
    store_answer(store, key)
    store.delay_seconds = 1.0
    started = time.perf_counter()
    result = handler.handler(event(), None)
    elapsed = time.perf_counter() - started
    assert "status" not in result and header(result, "x-inference-cache-key") == key
    assert elapsed < 0.9  # gave up long before the store answered


def test_lookup_unreachable_forwards(edge, store, monkeypatch):
    handler = edge()
    monkeypatch.setenv("INFERENCE_CACHE_LOOKUP_BASE", "http://127.0.0.1:9")  # discard port: refused
    result = handler.handler(event(), None)
    assert "status" not in result and header(result, "x-inference-cache-key")


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
    its own steps; the store runs after the answer (named, without a duration)."""
    from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest

    class Endpoint:
        def invoke(self, payload, content_type):
            time.sleep(0.02)
            return types.SimpleNamespace(body=ANSWER, content_type="application/json", seconds=0.02)

    class Store:
        def put(self, *args, **kwargs):
            pass

    handler = edge()
    capsys.readouterr()
    forwarded = handler.handler(event(headers={"x-inference-edge-timing": "lookup;dur=0.01"}), None)
    assert "status" not in forwarded  # a miss: forwarded to the origin
    log = json.loads(capsys.readouterr().out)
    headers = {name: values[0]["value"] for name, values in forwarded["headers"].items()}
    # The viewer's own copy never reaches the origin: only the edge's figures.
    assert headers["x-inference-edge-timing"] == f"decision;dur={log['decision_ms']}, lookup;dur={log['lookup_ms']}"
    adapter = InferenceAdapter(handler.SETTINGS, Endpoint(), Store(), logging.getLogger("test"))
    response, outcome = adapter.answer(OriginRequest("POST", CHAT, headers, base64.b64decode(forwarded["body"]["data"])))
    assert (response.status, outcome.cache) == (200, "MISS")
    figures = timings(response.headers["server-timing"])
    assert list(figures) == ["decision", "lookup", "origin-decision", "model", "store", "origin"]
    assert (figures["decision"], figures["lookup"]) == (log["decision_ms"], log["lookup_ms"])
    assert figures["model"] >= 20 and figures["origin"] >= figures["model"] and figures["store"] is None
    bad, _ = adapter.answer(OriginRequest("POST", CHAT, headers, b"{not json"))
    assert bad.status == 400 and list(timings(bad.headers["server-timing"])) == ["decision", "lookup", "origin-decision", "origin"]
    # Whatever reaches the origin in that header, only well-formed entries are echoed.
    forged = {**headers, "x-inference-edge-timing": 'lookup;dur=1, evil\r\nset-cookie: a=b;dur=2, x;desc="<script>"'}
    echoed, _ = adapter.answer(OriginRequest("POST", CHAT, forged, b"{not json"))
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


@pytest.mark.parametrize(("status", "retry"), [(429, "1"), (403, None), (502, None), (503, "1"), (504, None)])
def test_lambdas_own_errors_reach_the_client_in_the_openai_shape(edge, store, status, retry):
    handler = edge()
    result = handler.handler(origin_response_event(status=status, headers={"x-amzn-ErrorType": "Whatever"}), None)
    assert result["status"] == str(status)
    error = json.loads(result["body"])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == ("rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error")
    assert header(result, "x-inference-cache") == "BYPASS" and header(result, "retry-after") == retry
    assert "x-amzn-errortype" not in result["headers"]


def test_the_adapters_own_answers_pass_the_origin_response_untouched(edge, store):
    handler = edge()
    for status in (200, 400, 429, 502):
        answer = origin_response_event(status=status, headers={"x-inference-cache": "BYPASS", "content-type": "application/json"})
        response = answer["Records"][0]["cf"]["response"]
        assert handler.handler(answer, None) == response and "body" not in response
