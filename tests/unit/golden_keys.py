"""Golden cache keys: representative requests with the key and canonical payload the
current KEY_FORMAT gives them, pinned in golden_keys.json beside this file. The keys are
MACs under the tests' stage secret (tests/stage_secret.py), as a stage's are under its own.

A change that alters any key flushes every cache on deploy, and while edge and origin
run different versions during a rollout they disagree on keys (every request a miss).
tests/unit/test_golden_keys.py fails on any such change. An intended one bumps
KEY_FORMAT (lambdas/cache_decision.py), adds its line to docs/cache-key.md ("Key
formats"), and regenerates the fixture:

    .venv/bin/python -m tests.unit.golden_keys --write

which refuses to overwrite the keys of the same KEY_FORMAT with different ones (adding
new cases under the same format is allowed: the keys already pinned must not move).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config.stages import STAGES
from lambdas import cache_decision
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE, INFERENCE_ROUTES, INVOCATIONS_ROUTE
from tests.stage_secret import MAC

FIXTURE = Path(__file__).with_name("golden_keys.json")

# The settings that enter a key, pinned here: a stage's new model version changes every
# key on purpose, and must not fail this test. The rest (TTLs) come from the dev stage.
PINNED_SETTINGS = {
    "routes": list(INFERENCE_ROUTES),
    "model_id": "meta-llama/Llama-3.1-8B-Instruct",
    "model_version": "2026-11-01",
    "embeddings_model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "embeddings_model_version": "2d2fdaed1488f8bd",
    "policy": "deterministic",
    "excluded_fields": ["user", "metadata", "store"],
    "declared_server_defaults": {},
    "max_body_bytes": 1_048_576,
    "max_nesting_depth": 32,
}
JSON = {"content-type": "application/json"}
LONG_LATIN1 = "Résumé of the quarterly report, section by section. " * 6  # 312 chars, all Latin-1: kind b"l"
LONG_UTF8 = "長い文章のキャッシュキー。" * 24  # 312 chars, beyond Latin-1: kind b"u"
assert len(LONG_LATIN1) >= 256 and len(LONG_UTF8) >= 256 and max(map(ord, LONG_LATIN1)) < 256


def _chat(content="What is 2+2?", **params) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0, **params}


# name -> (route, body (bytes as sent, or an object to send as json.dumps writes it),
#          headers, tenant (None: a stage that does not scope per tenant))
CASES: dict[str, tuple[str, bytes | dict, dict, str | None]] = {
    # /v1/chat/completions
    "chat greedy": (CHAT_ROUTE, _chat(), JSON, None),
    "chat greedy, spelled otherwise": (
        CHAT_ROUTE,
        b'{ "temperature": 0.0, "model": "m", "n": 1, "messages": [{"content": [{"type": "text", "text": "What is 2+2?"}], '
        b'"role": "user"}] }',
        JSON,
        None,
    ),
    "chat greedy, stream": (CHAT_ROUTE, _chat(stream=True), JSON, None),
    "chat greedy, tenant a": (CHAT_ROUTE, _chat(), JSON, "tenant-a"),
    "chat greedy, tenant b, stream": (CHAT_ROUTE, _chat(stream=True), JSON, "tenant-b"),
    "chat top_k 1": (CHAT_ROUTE, _chat(temperature=0.7, top_k=1), JSON, None),
    "chat seeded sampling": (CHAT_ROUTE, _chat(temperature=0.8, top_p=0.95, seed=42, max_tokens=64), JSON, None),
    "chat long Latin-1 text": (CHAT_ROUTE, _chat(LONG_LATIN1), JSON, None),
    "chat long UTF-8 text, stream, tenant": (CHAT_ROUTE, _chat(LONG_UTF8, stream=True), JSON, "tenant-a"),
    "chat text starting with NUL": (CHAT_ROUTE, _chat("\x00l"), JSON, None),
    "chat conversation, parts, tools, kept numbers": (
        CHAT_ROUTE,
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": LONG_LATIN1}, {"type": "text", "text": "and?"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "4"},
            ],
            "tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
                "b": {"type": "number"}, "a": {"type": "number"}}}}}],
            "temperature": 0,
            "stop": ["\n\n", "END", "\n\n"],
            "user": "excluded-from-the-key",
        },
        JSON,
        None,
    ),
    "chat kept number spelling": (
        CHAT_ROUTE,
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"logit_bias":{"50256":-1.0e2}}',
        JSON,
        None,
    ),
    # /v1/completions
    "completions greedy": (COMPLETIONS_ROUTE, {"model": "m", "prompt": "2+2=", "temperature": 0, "max_tokens": 4}, JSON, None),
    "completions prompts with a long one, stream": (
        COMPLETIONS_ROUTE, {"model": "m", "prompt": ["2+2=", LONG_LATIN1], "temperature": 0, "stream": True}, JSON, None,
    ),
    "completions seeded, tenant": (
        COMPLETIONS_ROUTE, {"model": "m", "prompt": "Once", "temperature": 1, "seed": 7, "logprobs": 0}, JSON, "tenant-a",
    ),
    # /v1/embeddings
    "embeddings one text": (EMBEDDINGS_ROUTE, {"model": "e5", "input": "hello"}, JSON, None),
    "embeddings long UTF-8 text among others": (
        EMBEDDINGS_ROUTE, {"model": "e5", "input": ["hello", LONG_UTF8], "encoding_format": "float"}, JSON, None,
    ),
    "embeddings, tenant": (EMBEDDINGS_ROUTE, {"model": "e5", "input": "hello", "dimensions": 384}, JSON, "tenant-b"),
    "embeddings, stream flag": (EMBEDDINGS_ROUTE, {"model": "e5", "input": "hello", "stream": True}, JSON, None),
    # /invocations: each body schema LMI reads
    "invocations TGI greedy": (
        INVOCATIONS_ROUTE, {"inputs": "2+2=", "parameters": {"do_sample": False, "max_new_tokens": 8}}, JSON, None,
    ),
    "invocations TGI long input, stream": (
        INVOCATIONS_ROUTE, {"inputs": LONG_LATIN1, "parameters": {"top_k": 1}, "stream": True}, JSON, None,
    ),
    "invocations TGI seeded, tenant": (
        INVOCATIONS_ROUTE, {"inputs": "Once", "parameters": {"do_sample": True, "seed": 3, "stop": ["."]}}, JSON, "tenant-a",
    ),
    "invocations prompt": (INVOCATIONS_ROUTE, {"prompt": "2+2=", "temperature": 0}, JSON, None),
    "invocations messages": (INVOCATIONS_ROUTE, {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0}, JSON, None),
    "invocations messages long, stream, tenant": (
        INVOCATIONS_ROUTE, {"messages": [{"role": "user", "content": LONG_UTF8}], "temperature": 0, "stream": True}, JSON,
        "tenant-b",
    ),
}


def settings(tenant_scoped: bool) -> EdgeCacheSettings:
    pinned = {**PINNED_SETTINGS, "routes": tuple(PINNED_SETTINGS["routes"]),
              "excluded_fields": tuple(PINNED_SETTINGS["excluded_fields"])}
    return STAGES["dev"].edge_cache_settings()._replace(**pinned, tenant_scoped=tenant_scoped)


def body_bytes(body: bytes | dict) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def computed() -> dict:
    """The fixture as the code computes it now."""
    cases = []
    for name, (route, body, headers, tenant) in CASES.items():
        raw = body_bytes(body)
        s = settings(tenant_scoped=tenant is not None)
        decision = cache_decision.decide(route, headers, raw, s, tenant=tenant, mac=MAC)
        if not decision.cacheable:
            raise ValueError(f"golden case {name!r} is not cacheable: {decision.reason}")
        payload = cache_decision.canonical_payload(route, headers, raw, s, tenant=tenant)
        cases.append({
            "name": name,
            "route": route,
            "headers": headers,
            "tenant": tenant,
            "body": raw.decode(),
            "reason": decision.reason,
            "key": decision.key,
            # Latin-1: every byte as one character (the long texts' length prefixes and
            # UTF-8 bytes included), so the JSON holds the exact bytes and stays readable.
            "canonical_payload": payload.decode("latin-1"),
        })
    return {"key_format": cache_decision.KEY_FORMAT, "settings": PINNED_SETTINGS, "cases": cases}


def refusal(current: dict, pinned: dict) -> str | None:
    """Why the fixture may not be overwritten with `current`, or None."""
    if pinned.get("key_format") != current["key_format"]:
        return None  # a new key format: every key may change, deliberately
    old = {case["name"]: case for case in pinned["cases"]}
    moved = [case["name"] for case in current["cases"] if case["name"] in old and (
        case["key"], case["canonical_payload"]) != (old[case["name"]]["key"], old[case["name"]]["canonical_payload"])]
    if moved:
        return (f"{len(moved)} pinned key(s) would change under the same KEY_FORMAT {current['key_format']!r} "
                f"({', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''}). A change of keys flushes every cache: "
                "bump KEY_FORMAT in lambdas/cache_decision.py and add its line to docs/cache-key.md (Key formats).")
    if pinned.get("settings") != current["settings"]:
        return "the pinned settings changed under the same KEY_FORMAT: every key moves with them"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="regenerate golden_keys.json (a new KEY_FORMAT, or new cases)")
    args = parser.parse_args(argv)
    current = computed()
    if not args.write:
        print(json.dumps(current, indent=2, ensure_ascii=False))
        return 0
    if FIXTURE.exists():
        why = refusal(current, json.loads(FIXTURE.read_text(encoding="utf-8")))
        if why:
            print(f"refused: {why}", file=sys.stderr)
            return 1
    FIXTURE.write_text(json.dumps(current, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE.name}: {len(current['cases'])} keys of {current['key_format']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
