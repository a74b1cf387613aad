"""cache_decision, rule by rule: equal keys, different keys, cacheability, client
controls, tenant scoping and the errors the edge returns."""

from __future__ import annotations

import json
import re
import time
import unicodedata

import pytest

from config.stages import STAGES
from lambdas import cache_decision as cd
from lambdas import cache_settings
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    CHAT_ROUTE,
    COMPLETIONS_ROUTE,
    EMBEDDINGS_ROUTE,
    INVOCATIONS_ROUTE,
    SETTINGS_ENV,
    SETTINGS_FILE,
)

CHAT, COMPLETIONS, EMBEDDINGS, INVOCATIONS = CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE, INVOCATIONS_ROUTE
JSON = {"content-type": "application/json"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def settings(stage: str = "dev", **overrides) -> EdgeCacheSettings:
    return STAGES[stage].edge_cache_settings()._replace(**overrides)


def chat(content="What is 2+2?", **params) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0, **params}


def run(body, path=CHAT, headers=None, s=None, **kw) -> cd.Decision:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return cd.decide(path, JSON if headers is None else headers, raw, s or settings(), **kw)


def key(body, path=CHAT, headers=None, s=None, **kw) -> str:
    d = run(body, path, headers, s, **kw)
    assert d.cacheable and d.error is None, d
    assert HEX64.match(d.key)
    return d.key


def assert_error(d: cd.Decision, status: int, code: str, param=None):
    assert d.error is not None, d
    assert (d.error.status, d.error.code) == (status, code), d.error
    if param is not None:
        assert d.error.param == param
    assert not d.cacheable and d.key is None and not d.lookup and not d.store
    body = json.loads(d.error.body())
    assert body == {
        "error": {"message": d.error.message, "type": "invalid_request_error", "param": d.error.param, "code": code}
    }
    assert d.as_dict()["error"] == {"status": status, "message": d.error.message}


# --------------------------------------------------------------------------- equal keys


def test_whitespace_and_key_order_where_the_schema_is_known():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {}}}}}]
    a = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"tools":' + json.dumps(tools).encode() + b"}"
    b = json.dumps(
        {"tools": tools, "temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"}, indent=3,
    ).encode()
    assert key(a) == key(b)
    # Content parts and TGI/LMI parameters: their key order is folded too.
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}]
    assert key(chat(parts)) == key(chat([dict(reversed(list(p.items()))) for p in parts]))
    tgi = b'{"inputs":"x","parameters":{"do_sample":false,"max_new_tokens":5}}'
    assert key(tgi, INVOCATIONS) == key(b'{"parameters":{"max_new_tokens":5,"do_sample":false},"inputs":"x"}', INVOCATIONS)


def test_key_order_inside_tools_is_kept():
    """Chat templates print tools with tojson (sort_keys false): the order reaches the prompt."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {}}}}}]
    reordered = [{"function": {"parameters": {"properties": {"a": {}}, "type": "object"}, "name": "f"}, "type": "function"}]
    assert key(chat(tools=tools)) != key(chat(tools=reordered))


def test_whitespace_around_the_body():
    body = json.dumps(chat()).encode()
    assert key(b" \t\r\n" + body + b"\n\n ") == key(body)


def test_string_escapes():
    plain = '{"model":"m","messages":[{"role":"user","content":"café / 😀"}],"temperature":0}'.encode()
    escaped = b'{"model":"m","messages":[{"role":"user","content":"caf\\u00e9 \\/ \\ud83d\\ude00"}],"temperature":0}'
    assert key(plain) == key(escaped)


@pytest.mark.parametrize("spelling", [b"0.0", b"0e0", b"-0", b"-0.0", b"0E+3", b"0.000"])
def test_zero_spellings(spelling):
    base = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    assert key(base.replace(b'"temperature":0', b'"temperature":' + spelling)) == key(base)


@pytest.mark.parametrize("a, b", [(b"1", b"1.0"), (b"1", b"1e0"), (b"0.5", b"5e-1"), (b"0.5", b"0.50"), (b"100", b"1E2")])
def test_numbers_by_value(a, b):
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"top_p":%s}'
    assert key(body % a) == key(body % b)


def test_large_integers_stay_exact():
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"seed":%d}'
    assert key(body % 2**60) != key(body % (2**60 + 1))
    assert key(body % 2**60) == key(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,'
                                    b'"seed":1152921504606846976.0}')


def test_content_string_equals_single_text_part():
    assert key(chat("hi")) == key(chat([{"type": "text", "text": "hi"}]))
    # Two parts, or a part with more than type and text, is a different request.
    assert key(chat("hi")) != key(chat([{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]))
    assert key(chat("hi")) != key(chat([{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]))


@pytest.mark.parametrize(
    "extra",
    [{"n": 1}, {"stream": False}, {"presence_penalty": 0}, {"frequency_penalty": 0.0}, {"logprobs": False},
     {"echo": False}, {"n": 1.0, "presence_penalty": -0.0}, {"logit_bias": None, "seed": None}],
)
def test_universal_defaults_and_nulls_are_elided(extra):
    assert key(chat(**extra)) == key(chat())


def test_non_universal_defaults_are_kept():
    base = chat(seed=3)
    for extra in ({"top_p": 1}, {"top_k": 0}, {"max_tokens": 16}, {"temperature": 1}):
        assert key({**base, **extra}) != key(base), extra
    # Not the same value as the default: logprobs 0 on /v1/completions returns logprobs.
    comp = {"model": "m", "prompt": "x", "temperature": 0}
    assert key({**comp, "logprobs": 0}, COMPLETIONS) != key(comp, COMPLETIONS)
    # A bool where a number is expected: not cacheable (it used to key apart, cacheable).
    odd = run({**comp, "presence_penalty": False}, COMPLETIONS)
    assert (odd.cacheable, odd.reason) == (False, "unexpected type for presence_penalty")


def test_declared_server_defaults_are_elided():
    s = settings(declared_server_defaults={"temperature": 1.0, "top_p": 1.0})
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    assert key({**base, "temperature": 1, "top_p": 1.0}, s=s) == key(base, s=s)
    assert key({**base, "temperature": 0.9}, s=s) != key(base, s=s)


def test_stop_repeats_and_string_form():
    assert key(chat(stop=["b", "a"])) == key(chat(stop=["b", "a", "b", "a"]))
    assert key(chat(stop="a")) == key(chat(stop=["a"]))
    assert key(chat(stop=[])) == key(chat())
    assert key(chat(stop=["a"])) != key(chat(stop=["a", "b"]))
    tgi = {"inputs": "x", "parameters": {"do_sample": False, "stop": ["y", "x"]}}
    assert key(tgi, INVOCATIONS) == key({"inputs": "x", "parameters": {"stop": ["y", "x", "y"], "do_sample": False}},
                                        INVOCATIONS)


def test_excluded_fields_dropped_at_top_level_only():
    base = chat()
    assert key({**base, "user": "u1", "metadata": {"a": "b"}, "store": True}) == key(base)
    s = settings(excluded_fields=["trace_id"])
    assert key({**base, "trace_id": "t"}, s=s) == key(base, s=s)
    assert key({**base, "user": "u1"}, s=s) != key(base, s=s)
    nested = {**base, "response_format": {"type": "json_schema", "json_schema": {"user": 1}}}
    assert key(nested) != key({**base, "response_format": {"type": "json_schema", "json_schema": {}}})


def test_header_case_and_cloudfront_shape():
    cloudfront = {"content-type": [{"key": "Content-Type", "value": "application/json"}]}
    assert key(chat(), headers={"CONTENT-TYPE": "application/json"}) == key(chat(), headers=cloudfront) == key(chat())


# --------------------------------------------------------------------------- different keys


@pytest.mark.parametrize(
    "variant",
    ["What is 2+2? ", "what is 2+2?", "What is 2+3?", " What is 2+2?", "What is 2+2?\n"],
)
def test_any_change_in_prompt_text(variant):
    assert key(chat(variant)) != key(chat())


def test_unicode_normalization_forms_differ():
    nfc = "café"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert key(chat(nfc)) != key(chat(nfd))


def test_long_texts_and_placeholder_forgery():
    long = "x" * 5000
    assert key(chat(long)) != key(chat(long[:-1] + "y"))
    assert key(chat(long)) != key(chat(long + " "))
    # Long texts leave the JSON behind a placeholder; a literal placeholder must not pose as one.
    texts = []
    token = cd._text_token(long, texts)
    assert token == "\x00l" and texts == [b"l", (5000).to_bytes(8, "big"), long.encode()]
    assert key(chat(token)) != key(chat(long))
    assert key(chat("\x00" + token)) != key(chat(token))
    assert key(chat("\x00a")) != key(chat("a"))
    wide = "€" * 5000  # not Latin-1: its bytes are UTF-8
    assert cd._text_token(wide, []) == "\x00u"
    assert key(chat("\x00u")) != key(chat(wide))
    assert key(chat(wide)) != key(chat(wide[:-1] + "¤"))
    assert key(chat("é" * 300)) != key(chat("é" * 299 + "e\u0301"))
    # Order, lengths and boundaries of long texts all count.
    a, b = "a" * 300, "b" * 300

    def two(first, second):
        return {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": first},
                                                             {"role": "user", "content": second}]}

    assert key(two(a, b)) != key(two(b, a))
    assert key(two(a + "b" * 10, b)) != key(two(a, "b" * 10 + b))
    assert key(two(a, b)) != key(two(a, [{"type": "text", "text": b}, {"type": "text", "text": "c"}]))
    # Same for prompt, input and TGI inputs.
    assert key({"model": "m", "prompt": "\x00l", "temperature": 0}, COMPLETIONS) != key(
        {"model": "m", "prompt": long, "temperature": 0}, COMPLETIONS
    )
    assert key({"model": "m", "input": ["\x00l"]}, EMBEDDINGS) != key({"model": "m", "input": [long]}, EMBEDDINGS)
    assert key({"model": "m", "input": [a, b]}, EMBEDDINGS) != key({"model": "m", "input": [b, a]}, EMBEDDINGS)
    assert key({"inputs": "\x00l", "parameters": {"do_sample": False}}, INVOCATIONS) != key(
        {"inputs": long, "parameters": {"do_sample": False}}, INVOCATIONS
    )


def test_model_model_version_and_route():
    assert key(chat()) != key({**chat(), "model": "m2"})
    assert key(chat()) != key(chat(), s=settings(model_version="2099-01-01"))
    assert key(chat()) != key(chat(), s=settings(model_id="other/model"))
    assert key(chat()) != key(chat(), INVOCATIONS)


def test_stream_flag():
    assert key(chat(stream=True)) != key(chat())
    assert key(chat(stream=True)) == key(chat(stream=True, n=1))


def test_tools_and_their_order():
    f = {"type": "function", "function": {"name": "f", "parameters": {}}}
    g = {"type": "function", "function": {"name": "g", "parameters": {}}}
    assert key(chat(tools=[f, g])) != key(chat(tools=[g, f]))
    assert key(chat(tools=[f])) != key(chat(tools=[g]))
    assert key(chat(tools=[f])) != key(chat())


@pytest.mark.parametrize(
    "change", [{"seed": 2}, {"top_p": 0.95}, {"max_tokens": 11}, {"top_k": 40}, {"presence_penalty": 0.1},
               {"frequency_penalty": -0.5}, {"logit_bias": {"1": 5}}, {"temperature": 0.7}],
)
def test_any_sampling_parameter_value(change):
    base = chat(seed=1, top_p=0.9, max_tokens=10, temperature=0.5)
    assert key({**base, **change}) != key(base)


# --------------------------------------------------------------------------- cacheability


@pytest.mark.parametrize(
    "body, path, reason",
    [
        (chat(), CHAT, "greedy decoding"),
        ({**chat(), "temperature": 0.7, "top_k": 1}, CHAT, "greedy decoding"),
        ({**chat(), "temperature": 0.7, "seed": 42}, CHAT, "seeded sampling"),
        ({**chat(), "temperature": 0, "n": 3}, CHAT, "greedy decoding"),
        ({"model": "e", "input": ["a", "b"]}, EMBEDDINGS, "embeddings"),
        ({"model": "m", "prompt": "x", "seed": 7}, COMPLETIONS, "seeded sampling"),
        ({"inputs": "x", "parameters": {"do_sample": False, "max_new_tokens": 5}}, INVOCATIONS, "greedy decoding"),
        ({"inputs": "x", "parameters": {"do_sample": True, "seed": 5}}, INVOCATIONS, "seeded sampling"),
        ({"inputs": "x", "parameters": {"top_k": 1}}, INVOCATIONS, "greedy decoding"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 0}, INVOCATIONS, "greedy decoding"),
    ],
)
def test_deterministic_policy_cacheable(body, path, reason):
    d = run(body, path)
    assert (d.cacheable, d.reason, d.lookup, d.store) == (True, reason, True, True)
    assert d.as_dict() == {"cacheable": True, "key": d.key, "reason": reason, "error": None}


@pytest.mark.parametrize(
    "body, path, reason",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, CHAT, "sampling without seed"),
        ({**chat(), "temperature": 0.2}, CHAT, "sampling without seed"),
        ({**chat(), "temperature": 0.7, "seed": 1, "n": 2}, CHAT, "n > 1 with sampling"),
        ({"model": "m", "prompt": "x", "seed": 1, "best_of": 3}, COMPLETIONS, "n > 1 with sampling"),
        ({"inputs": "x", "parameters": {"max_new_tokens": 5}}, INVOCATIONS, "sampling without seed"),
        # TGI samples when a warper is set, whatever do_sample says.
        ({"inputs": "x", "parameters": {"do_sample": False, "temperature": 0.7}}, INVOCATIONS, "sampling without seed"),
        ({**chat(), "temperature": 0.7, "seed": True}, CHAT, "unexpected type for seed"),
    ],
)
def test_deterministic_policy_not_cacheable(body, path, reason):
    d = run(body, path)
    assert (d.cacheable, d.key, d.reason, d.error, d.lookup, d.store) == (False, None, reason, None, False, False)


# Greedy at the boundary. vLLM (vllm/sampling_params.py, SamplingParams.__post_init__)
# raises a temperature in (0, 0.01) to _MAX_TEMP = 0.01 before it checks for greedy
# (temperature < _SAMPLING_EPS = 1e-5): only exactly 0 is greedy, and every positive
# finite temperature it accepts, down to the smallest double 5e-324, samples. (Before the
# clamp, vLLM took anything below 1e-5 as greedy: the decision follows the stricter reading.)
@pytest.mark.parametrize("spelling", [b"0", b"0.0", b"-0", b"-0.0", b"0e0", b"0E+3", b"0.000", b"1e-400"])
def test_a_temperature_of_exactly_zero_is_greedy(spelling):
    """1e-400 is below the smallest double: every JSON parser, vLLM's included, reads 0.0."""
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":%s}' % spelling
    d = run(body)
    assert (d.cacheable, d.reason) == (True, "greedy decoding")
    assert d.key == key(chat("hi"))


@pytest.mark.parametrize(
    "spelling", [b"5e-324", b"1e-300", b"1e-6", b"9.99e-6", b"1e-5", b"0.009999", b"0.01", b"0.1", b"0.149", b"0.15"]
)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, INVOCATIONS])
def test_any_positive_temperature_samples(spelling, path):
    field = b'"prompt":"hi"' if path != CHAT else b'"messages":[{"role":"user","content":"hi"}]'
    body = b'{"model":"m",%s,"temperature":%s}' % (field, spelling)
    d = run(body, path)
    assert (d.cacheable, d.key, d.reason) == (False, None, "sampling without seed")
    seeded = run(body[:-1] + b',"seed":1}', path)  # seeded: cacheable as seeded sampling, never as greedy
    assert (seeded.cacheable, seeded.reason) == (True, "seeded sampling")
    assert seeded.key != key({"model": "m", "prompt": "hi", "temperature": 0, "seed": 1} if path != CHAT else chat("hi", seed=1),
                             path)


@pytest.mark.parametrize(("top_k", "reason"), [(1, "greedy decoding"), (1.0, "greedy decoding"), (2, "sampling without seed"),
                                                (0, "sampling without seed"), (-1, "sampling without seed")])
def test_only_top_k_of_one_is_greedy(top_k, reason):
    """vLLM: top_k 0 or -1 disables it (every token); 1 keeps only the most likely one."""
    assert run(chat(temperature=0.7, top_k=top_k)).reason == reason


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ({"do_sample": False}, "greedy decoding"),
        ({"do_sample": False, "temperature": 1, "top_p": 1, "typical_p": 1, "top_k": 0}, "greedy decoding"),
        ({"do_sample": False, "top_k": 2}, "sampling without seed"),
        # TGI samples anyway when a logits warper is set, whatever do_sample says.
        ({"do_sample": False, "temperature": 2}, "sampling without seed"),
        ({"do_sample": False, "temperature": 0.5}, "sampling without seed"),
        ({"do_sample": False, "top_p": 0.9}, "sampling without seed"),
        ({"do_sample": False, "typical_p": 0.9}, "sampling without seed"),
        ({"do_sample": False, "top_k": 5}, "sampling without seed"),
        ({"do_sample": False, "top_k": 5, "seed": 3}, "seeded sampling"),
        ({"do_sample": True}, "sampling without seed"),
        # Several sequences with sampling: never one answer (TGI/LMI: n, best_of, top_n_tokens).
        ({"do_sample": True, "seed": 1, "n": 1}, "seeded sampling"),
        ({"do_sample": True, "seed": 1, "n": 2}, "n > 1 with sampling"),
        ({"do_sample": True, "seed": 1, "best_of": 2}, "n > 1 with sampling"),
        ({"do_sample": True, "seed": 1, "top_n_tokens": 2}, "n > 1 with sampling"),
        ({"do_sample": True, "seed": 1, "n": 0}, "n not 1 with sampling"),
    ],
)
def test_tgi_do_sample_false_is_greedy_only_without_a_logits_warper(parameters, reason):
    assert run({"inputs": "x", "parameters": parameters}, INVOCATIONS).reason == reason


def test_top_n_tokens_counts_sequences_only_in_tgi_parameters():
    """On the OpenAI routes it is an unknown field, kept in the key, not a count."""
    assert run(chat(temperature=0.8, seed=1, top_n_tokens=5)).reason == "seeded sampling"


@pytest.mark.parametrize("field", ["model_id", "model_version"])
def test_settings_values_of_other_types_key_apart(field):
    """1, 1.0 and True are equal in Python but written apart in the key; the head a
    decision reuses is kept only for plain strings, so none of them borrows another's."""
    keys = [key(chat(), s=settings(**{field: value})) for value in (1, 1.0, True, "1")]
    assert len(set(keys)) == 4
    s = settings(**{field: 1})
    head = [cd.KEY_FORMAT, CHAT, s.model_id, s.model_version, None, False]
    payload = cd.canonical_payload(CHAT, JSON, json.dumps(chat()).encode(), s)
    assert payload.startswith(json.dumps(head, separators=(",", ":")).encode()[:-1] + b',{"messages":')
    assert keys == [key(chat(), s=settings(**{field: value})) for value in (1, 1.0, True, "1")]  # and stay so


def test_declared_greedy_default_makes_absent_temperature_greedy():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert not run(body).cacheable
    assert run(body, s=settings(declared_server_defaults={"temperature": 0.0})).reason == "greedy decoding"


def test_policy_all():
    s = settings(policy="all")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.9, "n": 4}
    d = run(body, s=s)
    assert (d.cacheable, d.reason) == (True, "policy all")
    assert_error(run(b"{", s=s), 400, "invalid_json")


def test_unknown_routes_pass_through_uncached():
    for path in ("/v1/models", "/v1/chat/completions/", "/v1/chat/completions?x=1", "/health", ""):
        d = run(b"not even json", path)
        assert (d.cacheable, d.key, d.error, d.reason) == (False, None, None, "route not cached")
    # The route list is the stage's.
    d = run({"model": "e", "input": "x"}, EMBEDDINGS, s=settings(routes=[CHAT]))
    assert (d.cacheable, d.error) == (False, None)
    # A route the module has no schema for is never cached, even when a stage lists it.
    d = run({"model": "m", "input": "x"}, "/v1/responses", s=settings(routes=[CHAT, "/v1/responses"]))
    assert (d.cacheable, d.error, d.reason) == (False, None, "route not cached")


# --------------------------------------------------------------------------- client controls


def test_cache_control_no_cache_and_no_store():
    plain = run(chat())
    no_cache = run(chat(), headers={**JSON, "Cache-Control": "no-cache"})
    assert (no_cache.cacheable, no_cache.lookup, no_cache.store, no_cache.key) == (True, False, True, plain.key)
    assert no_cache.reason == "greedy decoding, client no-cache"
    # Each control the request carries is named after the rule that decided (the log's reason).
    both = run(chat(), headers={**JSON, "Cache-Control": "no-cache", "x-inference-cache-ttl": "0"})
    assert (both.lookup, both.store, both.key, both.reason) == (False, False, plain.key,
                                                                "greedy decoding, client no-cache, ttl 0")
    for value in ("no-store", "max-age=0, No-Store", "no-cache, no-store"):
        d = run(chat(), headers={**JSON, "cache-control": value})
        assert (d.cacheable, d.lookup, d.store, d.key, d.error, d.reason) == (False, False, False, None, None,
                                                                              "client no-store")


def test_ttl_header():
    s = settings(default_ttl_seconds=3600, max_ttl_seconds=86_400)
    assert run(chat(), s=s).ttl_seconds == 3600
    assert run(chat(), headers={**JSON, "X-Inference-Cache-TTL": "60"}, s=s).ttl_seconds == 60
    assert run(chat(), headers={**JSON, "x-inference-cache-ttl": " 99999999 "}, s=s).ttl_seconds == 86_400
    assert run(chat(), headers={**JSON, "x-inference-cache-ttl": "0000000000000000000060"}, s=s).ttl_seconds == 60
    zero = run(chat(), headers={**JSON, "x-inference-cache-ttl": "0"}, s=s)
    assert (zero.cacheable, zero.lookup, zero.store, zero.ttl_seconds) == (True, True, False, 0)
    one = run(chat(), headers={**JSON, "x-inference-cache-ttl": "1"}, s=s)
    assert (one.cacheable, one.lookup, one.store, one.ttl_seconds, one.reason) == (True, True, True, 1, "greedy decoding")
    assert run({"model": "m", "messages": [{"role": "user", "content": "x"}]}, s=s).ttl_seconds == 0


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "", "1e3", "٣", "+60", "6 0"])
def test_invalid_ttl_header_is_400(value):
    assert_error(run(chat(), headers={**JSON, "x-inference-cache-ttl": value}), 400, "invalid_ttl",
                 "x-inference-cache-ttl")


def test_header_whitespace_is_space_and_tab_only():
    """RFC 9110 OWS: a TTL padded with spaces and tabs is read; one padded with what
    Python's str.strip() also removes (NBSP, U+2003, U+3000) is not a whole number."""
    s = settings(default_ttl_seconds=3600, max_ttl_seconds=86_400)
    assert run(chat(), headers={**JSON, "x-inference-cache-ttl": " \t60\t "}, s=s).ttl_seconds == 60
    for padded in ("\xa060", "60\u2003", "\u300060"):
        assert "60" == padded.strip()  # what the edge used to read
        assert_error(run(chat(), headers={**JSON, "x-inference-cache-ttl": padded}, s=s), 400, "invalid_ttl",
                     "x-inference-cache-ttl")
    # Content-Type padded the same way is not application/json.
    assert run(chat(), headers={"content-type": "\tapplication/json ; charset=utf-8 "}).error is None
    assert_error(run(chat(), headers={"content-type": "application/json\u2003"}), 415, "unsupported_media_type",
                 "content-type")
    # Cache-Control directives: only SP/HTAB around them.
    assert not run(chat(), headers={**JSON, "cache-control": " \tno-store"}).cacheable
    assert run(chat(), headers={**JSON, "cache-control": "\xa0no-store"}).cacheable


@pytest.mark.parametrize("name", ["content-type", "cache-control", "x-inference-cache-ttl", "content-encoding"])
@pytest.mark.parametrize("ctl", ["\x0b", "\x0c", "\x00", "\x1c", "\x7f", "\r"])
def test_a_control_character_in_a_header_the_decision_reads_is_400(name, ctl):
    """Not a valid field value (RFC 9110, 5.5: VCHAR, SP, HTAB, obs-text): refused, never
    read leniently (a `no-store\\v` read as something else would store what the client
    asked not to)."""
    value = {"content-type": "application/json", "cache-control": "no-store", "x-inference-cache-ttl": "60",
             "content-encoding": "identity"}[name]
    assert_error(run(chat(), headers={**JSON, name: value + ctl}), 400, "invalid_header_value", name)
    assert_error(run(chat(), headers={**JSON, name: ctl + value}), 400, "invalid_header_value", name)


# --------------------------------------------------------------------------- tenants


def test_unscoped_stage_ignores_api_keys_and_tenants():
    assert key(chat(), headers={**JSON, "authorization": "Bearer sk-a"}) == key(
        chat(), headers={**JSON, "authorization": "Bearer sk-b"}) == key(chat())
    assert key(chat(), tenant="abc") == key(chat())


def test_scoped_stage_keys_per_verified_tenant_never_per_api_key():
    s = settings("staging")
    assert s.tenant_scoped
    a1 = key(chat(), headers={**JSON, "authorization": "Bearer sk-a"}, s=s, tenant="tenant-a")
    # A rotated key of the same tenant keeps its cache: the key never enters the cache key.
    a2 = key(chat(), headers={**JSON, "authorization": "Bearer sk-rotated"}, s=s, tenant="tenant-a")
    a3 = key(chat(), headers={**JSON, "authorization": "AWS4-HMAC-SHA256 Credential=..."}, s=s, tenant="tenant-a")
    b = key(chat(), headers={**JSON, "authorization": "Bearer sk-a"}, s=s, tenant="tenant-b")
    assert a1 == a2 == a3 != b


def test_scoped_stage_without_a_verified_tenant_is_not_cacheable():
    s = settings("staging")
    for headers in (JSON, {**JSON, "authorization": "Bearer sk-a"}, {**JSON, "x-api-key": "sk-a"}):
        d = run(chat(), headers=headers, s=s)
        assert (d.cacheable, d.key, d.error, d.reason) == (False, None, None, "tenant-scoped stage, no verified tenant")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"", "empty_body"),
        (b"   ", "invalid_json"),
        (b'{"model": "m",', "invalid_json"),
        (b'{"model": "m"} {}', "invalid_json"),
        (b'{"model": "m"}x', "invalid_json"),
        (b'\x0c{"model": "m"}', "invalid_json"),  # form feed is not JSON whitespace
        (b"\xef\xbb\xbf{}", "invalid_json"),  # a UTF-8 BOM is not JSON
        (b"[]", "not_an_object"),
        (b'"x"', "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"model":"m","prompt":"caf\xe9"}', "invalid_utf8"),
        ('{"a":1}'.encode("utf-16"), "invalid_utf8"),
        (b'{"model":"m","model":"n","messages":[]}', "duplicate_key"),
        (b'{"model":"m","messages":[{"role":"user","role":"system","content":"x"}]}', "duplicate_key"),
        (b'{"model":"m","temperature":NaN}', "non_finite_number"),
        (b'{"model":"m","temperature":Infinity}', "non_finite_number"),
        (b'{"model":"m","temperature":-Infinity}', "non_finite_number"),
        (b'{"model":"m","temperature":1e999}', "number_out_of_range"),
        (b'{"model":"m","temperature":-1e999999999}', "number_out_of_range"),
        (b'{"model":"m","seed":' + b"9" * 5000 + b"}", "number_out_of_range"),
    ],
)
def test_invalid_json_is_400(raw, code):
    assert_error(run(raw), 400, code)


def test_duplicate_key_names_the_param():
    assert_error(run(b'{"model":"m","model":"n"}'), 400, "duplicate_key", "model")


def test_nesting_limit():
    s = settings(max_nesting_depth=4)
    ok = chat(response_format={"a": {"b": 1}})  # body, response_format, a: depth 3
    assert run(ok, s=s).cacheable
    assert run(chat(response_format={"a": {"b": [1]}}), s=s).cacheable  # depth 4
    assert_error(run(chat(response_format={"a": {"b": [[1]]}}), s=s), 400, "nesting_too_deep")
    # Brackets inside strings do not nest.
    assert run(chat("[[[[[[[[{{{{{{{{" * 50), s=s).cacheable
    # Deep nesting in a large body (the cheap pre-check does not apply).
    deep = chat("x" * 20_000, tools=[{"a": {"b": {"c": {"d": 1}}}}])
    assert_error(run(deep, s=s), 400, "nesting_too_deep")


@pytest.mark.parametrize(
    "raw",
    [b"[" * 1_000_000, b'{"a":' * 150_000 + b"1" + b"}" * 150_000, b'{"a":' + b"[" * 50 + b"]" * 50 + b"}"],
    ids=["1MB-of-brackets", "150k-objects", "50-lists"],
)
def test_deep_nesting_is_400_and_fast(raw):
    started = time.perf_counter()
    d = run(raw)
    assert time.perf_counter() - started < 2
    assert_error(d, 400, "nesting_too_deep")


def test_huge_exponent_is_fast():
    started = time.perf_counter()
    assert_error(run(b'{"model":"m","temperature":1e' + b"9" * 100_000 + b"}"), 400, "number_out_of_range")
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    "body, path, code, param",
    [
        ({"model": "m"}, CHAT, "missing_field", "messages"),
        ({"model": "m", "messages": None}, CHAT, "missing_field", "messages"),
        ({"model": "m", "messages": "hi"}, CHAT, "invalid_type", "messages"),
        ({"model": "m", "messages": []}, CHAT, "invalid_type", "messages"),
        ({"model": "m", "messages": ["hi"]}, CHAT, "invalid_type", "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, CHAT, "missing_field", "model"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, CHAT, "invalid_type", "model"),
        ({"model": ""}, EMBEDDINGS, "invalid_type", "model"),
        ({"model": "m"}, COMPLETIONS, "missing_field", "prompt"),
        ({"model": "m", "prompt": 5}, COMPLETIONS, "invalid_type", "prompt"),
        ({"model": "m"}, EMBEDDINGS, "missing_field", "input"),
        ({"input": "x"}, EMBEDDINGS, "missing_field", "model"),
        ({"inputs": None, "parameters": {}}, INVOCATIONS, "missing_field", "inputs"),
        ({"messages": {}}, INVOCATIONS, "invalid_type", "messages"),
    ],
)
def test_missing_fields_are_400(body, path, code, param):
    assert_error(run(body, path), 400, code, param)


def test_invocations_needs_no_model():
    assert run({"inputs": "x", "parameters": {"do_sample": False}}, INVOCATIONS).cacheable


def test_a_stage_without_an_embeddings_model_answers_embeddings_404():
    d = run({"model": "m", "input": "hello"}, EMBEDDINGS, s=settings(embeddings_model_id=None, embeddings_model_version=None))
    assert_error(d, 404, "model_not_found", "model")
    assert d.error.message == "This stage serves no embeddings model."


def test_body_too_large_is_413():
    assert_error(run(chat(), truncated=True), 413, "body_too_large")
    small = settings(max_body_bytes=100)
    assert run(chat(), s=small).cacheable
    assert_error(run(chat("x" * 100), s=small), 413, "body_too_large")


def test_the_body_limit_at_the_limit():
    exact = len(json.dumps(chat()).encode())
    assert run(chat(), s=settings(max_body_bytes=exact)).cacheable
    over = run(chat(), s=settings(max_body_bytes=exact - 1))
    assert_error(over, 413, "body_too_large")
    assert over.error.message == f"request body exceeds {exact - 1} bytes"


def test_a_text_body_is_read_as_its_utf8_bytes_lone_surrogates_included():
    # bin/cache-key and the local run may hand the decision text; a lone surrogate in it
    # must read as the bytes a client would have sent (invalid UTF-8: the route's 400),
    # not end in the decision's own "internal error".
    text = '{"model":"m","messages":[{"role":"user","content":"\ud800"}],"temperature":0}'
    as_text = cd.decide(CHAT, JSON, text, settings())
    assert as_text == cd.decide(CHAT, JSON, text.encode("utf-8", "surrogatepass"), settings())
    assert_error(as_text, 400, "invalid_utf8")
    assert as_text.error.message == "body is not UTF-8 (byte 51)"


@pytest.mark.parametrize(
    "ctype, ok",
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON;charset=UTF-8", True),
        ('application/json; charset="utf-8"', True),
        ("application/vnd.api+json", True),
        ("", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/json; charset=latin-1", False),
    ],
)
def test_content_type(ctype, ok):
    d = run(chat(), headers={"Content-Type": ctype})
    if ok:
        assert d.cacheable
    else:
        assert_error(d, 415, "unsupported_media_type", "content-type")


def test_missing_content_type_is_json():
    assert run(chat(), headers={}).cacheable


def test_content_encoding_is_415():
    assert_error(run(chat(), headers={**JSON, "Content-Encoding": "gzip"}), 415, "unsupported_media_type",
                 "content-encoding")
    assert run(chat(), headers={**JSON, "Content-Encoding": "identity"}).cacheable


def test_error_precedence():
    # Size before media type before body: the edge can answer without parsing.
    assert run(b"x" * 200, headers={"content-type": "text/plain"}, s=settings(max_body_bytes=100)).error.status == 413
    assert run(b"{", headers={"content-type": "text/plain"}).error.status == 415


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        # Odd but readable: each reaches a real decision (staging scopes per tenant).
        ({"headers": None}, "greedy decoding"),
        ({"headers": {"content-type": None, 3: 4, "x": ["a", "b"]}}, "greedy decoding"),
        ({"body": "{\"model\": \"m\"}"}, "invalid request: missing_field"),
        ({"body": bytearray(b"{}")}, "invalid request: missing_field"),
        ({"tenant": 5}, "greedy decoding"),
        # A caller's bug (no body, no settings record): caught, not cacheable, never raised.
        ({"body": None}, "internal error: TypeError"),
        ({"s": {}}, "internal error: AttributeError"),
        ({"s": {"routes": [CHAT], "declared_server_defaults": "oops"}}, "internal error: AttributeError"),
    ],
)
def test_never_raises_on_odd_arguments(odd, reason):
    kw = dict(odd)
    body = kw.pop("body", json.dumps(chat()).encode())
    kw.setdefault("tenant", "acme")
    d = cd.decide(CHAT, kw.pop("headers", JSON), body, kw.pop("s", settings("staging")), **kw)
    assert d.reason == reason
    if reason == "greedy decoding":
        assert d.cacheable and HEX64.match(d.key) and d.error is None
    else:
        assert (d.cacheable, d.key, d.lookup, d.store) == (False, None, False, False)
        assert (d.error is None) == reason.startswith("internal error")
    if reason == "internal error: TypeError":
        assert cd.canonical_payload(CHAT, JSON, None, settings("staging"), tenant="acme") is None


def test_body_as_str_is_accepted():
    assert cd.decide(CHAT, JSON, json.dumps(chat()), settings()).key == key(chat())


def test_decision_is_repeatable_and_frozen():
    raw = json.dumps(chat("x" * 1000)).encode()
    d1, d2 = cd.decide(CHAT, JSON, raw, settings()), cd.decide(CHAT, JSON, raw, settings())
    assert d1 == d2
    with pytest.raises(AttributeError):
        d1.key = "x"


def test_canonical_payload_is_what_the_key_hashes():
    import hashlib

    payload = cd.canonical_payload(CHAT, JSON, json.dumps(chat()).encode(), settings())
    assert hashlib.sha256(payload).hexdigest() == key(chat())
    head, texts = payload.split(b"\x00", 1)
    assert texts == b""  # no long texts here
    version, route, model_id, model_version, tenant, stream, body = json.loads(head)
    assert (version, route, model_id, model_version, tenant, stream) == (
        cd.KEY_FORMAT, CHAT, settings().model_id, settings().model_version, None, False)
    assert body == {"messages": [{"content": "What is 2+2?", "role": "user"}], "model": "m", "temperature": 0}
    assert cd.canonical_payload(CHAT, JSON, b"{", settings()) is None


@pytest.mark.parametrize("headers", [{"content-type": "text/plain"}, {"cache-control": "no-store"},
                                     {"x-inference-cache-ttl": "soon"}, {"content-encoding": "gzip"}])
def test_canonical_payload_reads_the_headers_as_the_decision_does(headers):
    """No key, no payload: the headers alone can refuse a request (415, 400) or its storing."""
    raw = json.dumps(chat()).encode()
    assert run(raw, headers=headers).key is None
    assert cd.canonical_payload(CHAT, headers, raw, settings()) is None
    assert cd.canonical_payload(CHAT, JSON, raw, settings()) is not None


def test_load_settings(tmp_path, monkeypatch):
    def written(stage: str):
        return settings()._replace(stage=stage).to_json()

    explicit = tmp_path / "explicit.json"
    explicit.write_text(written("explicit"))
    from_env = tmp_path / "env.json"
    from_env.write_text(written("env"))
    beside = tmp_path / "bundle"
    beside.mkdir()
    (beside / SETTINGS_FILE).write_text(written("bundle"))
    monkeypatch.setattr(cache_settings, "__file__", str(beside / "cache_settings.py"))
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    assert cache_settings.load().stage == "bundle"
    monkeypatch.setenv(SETTINGS_ENV, str(from_env))
    assert cache_settings.load().stage == "env"
    assert cache_settings.load(str(explicit)).stage == "explicit"


def test_every_stage_settings_work():
    for name in STAGES:
        s = settings(name)
        d = run(chat(), headers={**JSON, "authorization": "Bearer sk-x"}, s=s, tenant="t")
        assert d.cacheable and d.ttl_seconds == min(s.default_ttl_seconds, s.max_ttl_seconds)


# --------------------------------------------------------------------------- issue 8: one regression per case

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_tool_choice_null_is_not_absent():
    # vLLM defaults tool_choice to "auto" only when the field is absent; null turns tool parsing off.
    absent, null = run(chat(tools=[TOOL])), run(chat(tools=[TOOL], tool_choice=None))
    assert absent.cacheable and null.cacheable and absent.key != null.key
    assert key(chat(tools=[TOOL], tool_choice="auto")) not in (absent.key, null.key)
    # Fields that are null-safe still fold: tools null is no tools.
    assert key(chat(tools=None)) == key(chat())


def test_logprobs_false_is_a_default_on_chat_only():
    comp = {"model": "m", "prompt": "x", "temperature": 0}
    # /v1/completions: logprobs is Optional[int]; false coerces to 0, which returns logprobs.
    assert key({**comp, "logprobs": False}, COMPLETIONS) != key(comp, COMPLETIONS)
    assert key({**comp, "logprobs": 0}, COMPLETIONS) != key({**comp, "logprobs": False}, COMPLETIONS)
    assert key(chat(logprobs=False)) == key(chat())
    assert key(chat(logprobs=0)) != key(chat())


def _with_number(spelling: bytes, where: str) -> bytes:
    schema = b'{"type":"object","properties":{"v":{"type":"number","enum":[%s,2.5]}}}' % spelling
    base = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,'
    if where == "tools":
        return base + b'"tools":[{"type":"function","function":{"name":"f","parameters":%s}}]}' % schema
    if where == "response_format":
        return base + b'"response_format":{"type":"json_schema","json_schema":{"name":"r","schema":%s}}}' % schema
    return base + b'"chat_template_kwargs":{"limit":%s}}' % spelling


@pytest.mark.parametrize("where", ["tools", "response_format", "chat_template_kwargs"])
@pytest.mark.parametrize(
    "a, b", [(b"1.0", b"1"), (b"-0.0", b"0"), (b"1e2", b"100"), (b"1.0", b"1e0"), (b"-0", b"0"), (b"2.50", b"2.5")]
)
def test_number_spelling_is_kept_in_opaque_values(where, a, b):
    assert key(_with_number(a, where)) != key(_with_number(b, where))
    assert key(_with_number(a, where)) == key(_with_number(a, where).replace(b",", b", "))


def test_number_spelling_folds_in_sampling_parameters_only():
    base = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":%s,"max_tokens":%s}'
    assert key(base % (b"0", b"16")) == key(base % (b"-0.0", b"1.6e1")) == key(base % (b"0e0", b"16.0"))
    # An unknown field is opaque: its spelling counts.
    unknown = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"guidance":%s}'
    assert key(unknown % b"1") != key(unknown % b"1.0")


def test_key_order_inside_tool_schemas_is_kept():
    props = b'{"a":{"type":"string"},"b":{"type":"integer"}}'
    body = (b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,'
            b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":%s}}}]}')
    swapped = b'{"b":{"type":"integer"},"a":{"type":"string"}}'
    assert key(body % props) != key(body % swapped)
    fmt = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"response_format":%s}'
    assert key(fmt % b'{"type":"json_object","x":1}') != key(fmt % b'{"x":1,"type":"json_object"}')


def test_stop_order_is_kept_and_repeats_are_not():
    assert key(chat(stop=["a", "b"])) != key(chat(stop=["b", "a"]))
    assert key(chat(stop=["a", "b"])) == key(chat(stop=["a", "b", "a", "b"]))
    tgi = {"inputs": "x", "parameters": {"do_sample": False, "stop": ["a", "b"]}}
    reordered = {"inputs": "x", "parameters": {"do_sample": False, "stop": ["b", "a"]}}
    assert key(tgi, INVOCATIONS) != key(reordered, INVOCATIONS)
    # TGI reads stop as a list only (a string is a 400 there): not folded inside parameters.
    one = {"inputs": "x", "parameters": {"do_sample": False, "stop": "a"}}
    assert key(one, INVOCATIONS) != key({"inputs": "x", "parameters": {"do_sample": False, "stop": ["a"]}}, INVOCATIONS)


@pytest.mark.parametrize("seed, reason", [(-1, "seed not in 0..2^63-1"), (2**63, "seed not in 0..2^63-1"),
                                          (1.5, "seed not in 0..2^63-1"), (0, "seeded sampling"),
                                          (2**63 - 1, "seeded sampling"), (7.0, "seeded sampling")])
def test_seed_counts_only_as_an_integer_from_0_to_2_63_minus_1(seed, reason):
    d = run(chat(temperature=0.8, seed=seed))
    assert (d.cacheable, d.reason) == (reason == "seeded sampling", reason)
    tgi = run({"inputs": "x", "parameters": {"seed": seed}}, INVOCATIONS)
    assert (tgi.cacheable, tgi.reason) == (reason == "seeded sampling", reason)


def test_do_sample_counts_only_inside_tgi_parameters():
    # The OpenAI-compatible servers ignore a top-level do_sample and sample anyway.
    d = run({"model": "m", "messages": [{"role": "user", "content": "x"}], "do_sample": False})
    assert (d.cacheable, d.reason) == (False, "sampling without seed")
    comp = run({"model": "m", "prompt": "x", "do_sample": False}, COMPLETIONS)
    assert (comp.cacheable, comp.reason) == (False, "sampling without seed")
    tgi_top = run({"inputs": "x", "do_sample": False}, INVOCATIONS)
    assert (tgi_top.cacheable, tgi_top.reason) == (False, "sampling without seed")
    assert run({"inputs": "x", "parameters": {"do_sample": False}}, INVOCATIONS).reason == "greedy decoding"
    # As an unknown field it is kept: it keys apart from the same request without it.
    assert key(chat(do_sample=False)) != key(chat())


@pytest.mark.parametrize("extra, reason", [
    ({"n": "2"}, "unexpected type for n"),
    ({"best_of": "3"}, "unexpected type for best_of"),
    ({"n": " 3"}, "unexpected type for n"),
    ({"n": [2]}, "unexpected type for n"),
    ({"n": True}, "unexpected type for n"),
    ({"n": None}, "unexpected type for n"),
    ({"n": 2.0}, "n > 1 with sampling"),
    ({"best_of": 2}, "n > 1 with sampling"),
    ({"n": 1.5}, "n > 1 with sampling"),
    ({"temperature": "0.7"}, "unexpected type for temperature"),
    ({"top_k": [1]}, "unexpected type for top_k"),
    ({"max_tokens": "16"}, "unexpected type for max_tokens"),
])
def test_n_best_of_and_odd_sampling_types_fail_closed(extra, reason):
    d = run({**chat(temperature=0.8, seed=5), **extra})
    assert (d.cacheable, d.key, d.error, d.reason) == (False, None, None, reason)


def test_n_other_than_one_is_cacheable_when_greedy_and_one_folds():
    assert run(chat(n=3)).reason == "greedy decoding"
    assert run(chat(temperature=0.8, seed=5, n=1.0)).reason == "seeded sampling"
    assert key(chat(temperature=0.8, seed=5, n=1.0)) == key(chat(temperature=0.8, seed=5))
    # Odd types fail closed even when greedy.
    assert run(chat(n="2")).reason == "unexpected type for n"
    # LMI maps TGI's top_n_tokens onto n: more than one sequence.
    tgi = run({"inputs": "x", "parameters": {"seed": 3, "top_n_tokens": 2}}, INVOCATIONS)
    assert (tgi.cacheable, tgi.reason) == (False, "n > 1 with sampling")
    assert run({"inputs": "x", "parameters": {"do_sample": False, "top_n_tokens": 2}}, INVOCATIONS).cacheable


def test_huge_ttl_is_clamped_not_400():
    s = settings(max_ttl_seconds=86_400)
    d = run(chat(), headers={**JSON, "x-inference-cache-ttl": "99999999999999999999"}, s=s)
    assert (d.cacheable, d.error, d.ttl_seconds) == (True, None, 86_400)
    assert run(chat(), headers={**JSON, "x-inference-cache-ttl": "9" * 5000}, s=s).ttl_seconds == 86_400


@pytest.mark.parametrize("body, reason", [
    ({"prompt": "x", "inputs": "y", "temperature": 0}, "invocations body mixes prompt and inputs"),
    ({"inputs": "x", "messages": [{"role": "user", "content": "x"}], "parameters": {"do_sample": False}},
     "invocations body mixes inputs and messages"),
    ({"prompt": None, "messages": [{"role": "user", "content": "x"}], "temperature": 0},
     "invocations body mixes prompt and messages"),
    ({"parameters": {"do_sample": False}}, "invocations body has no prompt, inputs or messages"),
    ({"input": "x"}, "invocations body has no prompt, inputs or messages"),
])
def test_invocations_bodies_that_mix_or_lack_the_keys_pass_through(body, reason):
    d = run(body, INVOCATIONS, s=settings(policy="all"))
    assert (d.cacheable, d.key, d.error, d.reason) == (False, None, None, reason)


def test_invocations_read_the_way_lmi_reads_them():
    # prompt: a completion (top-level sampling parameters count).
    assert run({"prompt": "x", "temperature": 0}, INVOCATIONS).reason == "greedy decoding"
    # inputs: TGI style; only `parameters` counts, top-level sampling fields are ignored by the server.
    assert run({"inputs": "x", "temperature": 0}, INVOCATIONS).reason == "sampling without seed"
    assert run({"inputs": "x", "parameters": {"temperature": 0}}, INVOCATIONS).reason == "greedy decoding"
    odd = run({"inputs": "x", "parameters": [1]}, INVOCATIONS)
    assert (odd.cacheable, odd.reason) == (False, "unexpected type for parameters")
    # messages: chat.
    assert run({"messages": [{"role": "user", "content": "x"}], "seed": 3}, INVOCATIONS).reason == "seeded sampling"
    # The same fields key apart between the schemas (and from /v1 routes).
    assert key({"prompt": "x", "temperature": 0}, INVOCATIONS) != key({"model": "m", "prompt": "x", "temperature": 0},
                                                                        INVOCATIONS)


def test_null_is_absent_only_where_null_safe():
    assert key(chat(seed=None, logit_bias=None, response_format=None, max_tokens=None, stop=None)) == key(chat())
    comp = {"model": "m", "prompt": "x", "temperature": 0}
    # /v1/completions: max_tokens defaults to 16; null means no limit.
    assert run({**comp, "max_tokens": None}, COMPLETIONS).reason == "unexpected type for max_tokens"
    assert key({**comp, "suffix": None}, COMPLETIONS) != key(comp, COMPLETIONS)  # unknown: kept
    assert run(chat(presence_penalty=None)).reason == "unexpected type for presence_penalty"


@pytest.mark.parametrize("forgery", [b'"1.0"', b'[null,"1.0"]', b'[0,"1.0"]', b'["NaN","1.0"]', b'"\\u0000#1.0"',
                                     b'1', b'[1.0]'])
def test_kept_numbers_cannot_be_forged(forgery):
    # A kept number is written as [NaN, "its text"]: NaN cannot come from a JSON body.
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"x":[{"y":%s}]}'
    assert key(body % b"1.0") != key(body % forgery)
    payload = cd.canonical_payload(CHAT, JSON, body % b"1.0", settings())
    assert b'"x":[{"y":[NaN,"1.0"]}]' in payload


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": -2, "temperature": 0}, "n"),
        (COMPLETIONS, {"model": "m", "prompt": "hi", "best_of": 0}, "best_of"),
        # Were "not cacheable"; the servers refuse them, so the edge answers their 400.
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0, "seed": 1}, "n"),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0.5, "seed": 1}, "n"),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "best_of": -1, "seed": 1}, "best_of"),
        (EMBEDDINGS, {"model": "m", "input": ""}, "input"),
        (EMBEDDINGS, {"model": "m", "input": []}, "input"),
        (EMBEDDINGS, {"model": "m", "input": ["a", ""]}, "input"),
    ],
)
def test_what_the_servers_refuse_is_a_400_at_the_edge(path, body, param):
    """vLLM refuses n < 1 and empty embedding input with a 400; the edge answers it first."""
    assert_error(run(body, path=path), 400, "invalid_value", param)


def test_valid_counts_and_inputs_are_not_refused():
    assert run({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "temperature": 0}).cacheable
    assert run({"model": "m", "input": ["a", "b"]}, path=EMBEDDINGS).cacheable


# -- embeddings: the embeddings model keys /v1/embeddings; a stage without one answers 404 ----


def test_the_embeddings_models_id_and_version_key_embeddings_not_the_llms():
    body = json.dumps({"model": "m", "input": "hello"}).encode()
    base = cd.decide(EMBEDDINGS_ROUTE, JSON, body, settings())
    assert base.cacheable and base.reason == "embeddings"
    assert cd.decide(EMBEDDINGS_ROUTE, JSON, body, settings(embeddings_model_version="next")).key != base.key
    assert cd.decide(EMBEDDINGS_ROUTE, JSON, body, settings(embeddings_model_id="other/model")).key != base.key
    # A new LLM version starts a fresh cache for the LLM's routes only.
    assert cd.decide(EMBEDDINGS_ROUTE, JSON, body, settings(model_version="next")).key == base.key
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}).encode()
    assert cd.decide(CHAT_ROUTE, JSON, chat, settings(embeddings_model_version="next")).key == cd.decide(
        CHAT_ROUTE, JSON, chat, settings()
    ).key


def test_a_stage_without_embeddings_decides_404_model_not_found_before_reading_the_body():
    for body in (json.dumps({"model": "m", "input": "hello"}).encode(), b"{not json", b"x" * 2_000_000):
        d = cd.decide(EMBEDDINGS_ROUTE, JSON, body, settings(embeddings_model_id=None, embeddings_model_version=None))
        assert not d.cacheable and d.key is None and not d.lookup and not d.store
        assert (d.error.status, d.error.code, d.error.param) == (404, "model_not_found", "model")


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (["x"] * 2048, None),  # OpenAI's maximum
        (["x"] * 2049, 400),
        ([[1, 2]] * 2049, 400),  # lists of token ids are inputs too
        (list(range(5000)), None),  # one input of 5000 token ids: the model's length limit, not this one
    ],
)
def test_more_inputs_than_openai_accepts_is_a_400(value, status):
    d = cd.decide(EMBEDDINGS_ROUTE, JSON, json.dumps({"model": "m", "input": value}).encode(), settings())
    assert (d.error.status if d.error else None) == status
    if status:
        assert d.error.param == "input" and "2048" in d.error.message


@pytest.mark.parametrize("route, extra, served", [
    (CHAT, {"prompt": "hi"}, "completions"),
    (CHAT, {"inputs": "hi"}, "tgi"),
    (CHAT, {"prompt": "hi", "inputs": "hi"}, "completions"),
    ("/v1/completions", {"messages": [{"role": "user", "content": "hi"}], "inputs": "hi"}, None),
    ("/v1/completions", {"inputs": "hi"}, None),
])
def test_a_v1_body_the_container_would_serve_under_another_schema_is_not_cached(route, extra, served):
    """The adapter sends every route's body to LMI's /invocations, which picks the schema by
    key (prompt, then inputs, then messages): a chat body with `prompt` is a completion to
    it. Such a body passes through uncached (no 400: the container serves it), whatever the
    policy; the route's own body alone stays cacheable."""
    own = {"messages": [{"role": "user", "content": "hi"}]} if route == CHAT else {"prompt": "hi"}
    alone = {"model": "m", **own, "temperature": 0}
    assert run(alone, path=route).cacheable
    for policy in ("deterministic", "all"):
        d = run({**alone, **extra}, path=route, s=settings(policy=policy))
        assert (d.cacheable, d.key, d.error) == (False, None, None), d
        if served:
            assert f"the container serves it as {served}" in d.reason
        else:
            assert d.reason.startswith(f"{route} body mixes prompt and ")
    # Without the route's own key, but with another the container serves: passed through, not a 400.
    other = run({"model": "m", **extra, "temperature": 0}, path=route)
    assert (other.cacheable, other.error) == (False, None), other
