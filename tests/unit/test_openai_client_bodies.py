"""Bodies exactly as the official OpenAI Python client sends them (a real HTTP server on
127.0.0.1 records them), fed to decide(): what real clients send is cacheable, equivalent
calls share a key, different prompts do not."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from config.stages import STAGES
from lambdas import cache_decision as cd
from tests.unit.stored_answers import serving

openai = pytest.importorskip("openai")

DEV = STAGES["dev"].edge_cache_settings()
SCOPED = STAGES["staging"].edge_cache_settings()
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is 2+2?"}]

_RESPONSES = {
    "/v1/chat/completions": {"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "4"}}]},
    "/v1/completions": {"id": "c2", "object": "text_completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "text": "4", "logprobs": None}]},
    "/v1/embeddings": {"object": "list", "model": "e", "data": [{"object": "embedding", "index": 0,
                                                                 "embedding": [0.1, 0.2]}],
                       "usage": {"prompt_tokens": 1, "total_tokens": 1}},
}
_CHUNK = {"id": "c3", "object": "chat.completion.chunk", "created": 0, "model": "m",
          "choices": [{"index": 0, "delta": {"content": "4"}, "finish_reason": "stop"}]}


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.captured.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if json.loads(body).get("stream"):
            payload, ctype = f"data: {json.dumps(_CHUNK)}\n\ndata: [DONE]\n\n".encode(), "text/event-stream"
        else:
            payload, ctype = json.dumps(_RESPONSES[self.path]).encode(), "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.daemon_threads = True
    srv.captured = []
    with serving(srv):
        yield srv


@pytest.fixture
def send(server):
    """send(kind, api_key="sk-test", **params) -> Decision for the request the client sent."""

    def _send(kind: str, api_key: str = "sk-test", settings=DEV, tenant: str | None = None, **params) -> cd.Decision:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key=api_key,
                               max_retries=0, timeout=10)
        before = len(server.captured)
        resource = {"chat": client.chat.completions, "completions": client.completions,
                    "embeddings": client.embeddings}[kind]
        result = resource.create(**params)
        if params.get("stream"):
            assert [c.choices[0].delta.content for c in result] == ["4"]
        assert len(server.captured) == before + 1
        path, headers, body = server.captured[-1]
        assert headers["authorization"] == f"Bearer {api_key}"
        return cd.decide(path, headers, body, settings, tenant=tenant)

    return _send


def _key(decision: cd.Decision) -> str:
    assert decision.cacheable and decision.error is None, decision
    return decision.key


def test_chat_cacheability(send):
    assert send("chat", model="m", messages=MESSAGES, temperature=0).reason == "greedy decoding"
    assert send("chat", model="m", messages=MESSAGES, temperature=0.8, seed=7).reason == "seeded sampling"
    sampled = send("chat", model="m", messages=MESSAGES)
    assert (sampled.cacheable, sampled.reason) == (False, "sampling without seed")
    assert send("chat", model="m", messages=MESSAGES, temperature=0.8, seed=7, n=2).reason == "n > 1 with sampling"


def test_chat_equivalent_calls_share_a_key(send):
    base = _key(send("chat", model="m", messages=MESSAGES, temperature=0, stop=["\n", "END"]))
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0.0, stop=["\n", "END", "\n"], n=1,
                     presence_penalty=0, frequency_penalty=0, logprobs=False, user="u-42",
                     metadata={"run": "eval-7"})) == base
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]
    assert _key(send("chat", model="m", messages=parts, temperature=0, stop=["\n", "END"])) == base
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0, stop=["\n", "END"],
                     extra_headers={"Cache-Control": "no-cache"})) == base


def test_chat_differences(send):
    base = _key(send("chat", model="m", messages=MESSAGES, temperature=0))
    other = [MESSAGES[0], {"role": "user", "content": "What is 2+3?"}]
    assert _key(send("chat", model="m", messages=other, temperature=0)) != base
    spaced = [MESSAGES[0], {"role": "user", "content": "What is 2+2? "}]
    assert _key(send("chat", model="m", messages=spaced, temperature=0)) != base
    assert _key(send("chat", model="m2", messages=MESSAGES, temperature=0)) != base
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0, max_tokens=5)) != base
    streamed = send("chat", model="m", messages=MESSAGES, temperature=0, stream=True)
    assert _key(streamed) != base
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
             for n in ("a", "b")]
    with_tools = _key(send("chat", model="m", messages=MESSAGES, temperature=0, tools=tools))
    assert with_tools != base
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0, tools=tools[::-1])) != with_tools
    # The client sends tool_choice=None as an explicit null: vLLM then parses no tool calls.
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0, tools=tools, tool_choice=None)) != with_tools
    # Stop order reaches the output (the first listed stop that a step completes wins).
    stops = _key(send("chat", model="m", messages=MESSAGES, temperature=0, stop=["\n", "END"]))
    assert _key(send("chat", model="m", messages=MESSAGES, temperature=0, stop=["END", "\n"])) != stops
    # Sampled with n > 1 or a seed of -1: not reproducible.
    assert send("chat", model="m", messages=MESSAGES, temperature=0.8, seed=-1).reason == "seed not in 0..2^63-1"


def test_completions(send):
    base = _key(send("completions", model="m", prompt="Say 4.", temperature=0, stop="x"))
    assert _key(send("completions", model="m", prompt="Say 4.", temperature=0, stop=["x"], echo=False, n=1)) == base
    assert _key(send("completions", model="m", prompt="Say 5.", temperature=0, stop="x")) != base
    # logprobs is an integer on completions: false is 0, which returns logprobs.
    assert _key(send("completions", model="m", prompt="Say 4.", temperature=0, stop="x", logprobs=False)) != base
    assert send("completions", model="m", prompt="Say 4.", seed=3).reason == "seeded sampling"
    assert not send("completions", model="m", prompt="Say 4.", temperature=1).cacheable


def test_embeddings(send):
    base = send("embeddings", model="e", input="hello world")
    assert base.reason == "embeddings"
    assert _key(send("embeddings", model="e", input="hello world", user="u-1")) == base.key
    # The client asks for base64 itself when the caller does not choose.
    assert _key(send("embeddings", model="e", input="hello world", encoding_format="base64")) == base.key
    assert _key(send("embeddings", model="e", input="hello world", encoding_format="float")) != base.key
    assert _key(send("embeddings", model="e", input="Hello world")) != base.key
    assert _key(send("embeddings", model="e", input=["hello world"])) != base.key


def test_tenant_scoped_stage_keys_by_the_verified_tenant(send):
    def ask(api_key, tenant):
        return _key(send("chat", api_key=api_key, settings=SCOPED, tenant=tenant, model="m", messages=MESSAGES, temperature=0))

    a = ask("sk-tenant-a", "tenant-a")
    assert a == ask("sk-tenant-a", "tenant-a") == ask("sk-tenant-a-rotated", "tenant-a") != ask("sk-tenant-a", "tenant-b")
