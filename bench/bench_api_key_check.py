"""Benchmark: what the API key check adds to a request, next to the edge's cache decision.

Prints a table; asserts nothing. Run: .venv/bin/python bench/bench_api_key_check.py [--iterations N]

- API key check: the real lambdas/viewer_request/api_key_check.js under Node.js,
  timed inside local_run/cloudfront_function_host.mjs (`--bench`: process.hrtime around
  each handler call, the key store read once into memory), over a store of 1,000 keys.
  Node.js on this machine is not the CloudFront Functions runtime: the figures compare
  costs here, they do not predict edge latency or compute utilization.
- Cache decision: cache_decision.decide (Python) for a typical 2 KB greedy chat body on a
  tenant-scoped stage, as the Lambda@Edge origin-request function runs it.
- Local run: one request/answer line exchange Python -> Node.js host -> Python (what the
  local run pays per request for running the real function).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli import api_keys
from config.stages import stage
from lambdas import cache_decision
from lambdas.contract import CHAT_ROUTE as CHAT
from local_run import viewer_request_host as host

ROOT = Path(__file__).resolve().parent.parent
# The dev stage's edge settings, tenant-scoped as a stage with API keys is.
SETTINGS = stage("dev").edge_cache_settings()._replace(tenant_scoped=True)
# What the openai Python client sends besides the key.
CLIENT_HEADERS = {
    "host": "inference.dev.example.com", "content-type": "application/json", "accept": "application/json",
    "user-agent": "OpenAI/Python 3.51.0", "x-stainless-lang": "python", "x-stainless-package-version": "3.51.0",
    "x-stainless-os": "Linux", "x-stainless-arch": "x64", "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7", "x-stainless-retry-count": "0", "accept-encoding": "gzip, deflate",
    "content-length": "2048",
}
WORDS = ("the model answers questions about invoices refunds shipping policy customer account order status "
         "warehouse delivery warranty return window days business support escalation agent").split()


def chat_body(target_bytes: int = 2048, seed: int = 7) -> bytes:
    """A greedy chat request of about `target_bytes`: a system prompt, then alternating turns."""
    rng = random.Random(seed)
    messages = [{"role": "system", "content": " ".join(rng.choices(WORDS, k=target_bytes // 24))}]
    body = {"model": SETTINGS.model_id, "messages": messages, "temperature": 0, "max_tokens": 512}
    while len(json.dumps(body).encode()) < target_bytes:
        role = "user" if len(messages) % 2 else "assistant"
        messages.append({"role": role, "content": " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))})
    return json.dumps(body).encode()


def _percentiles(samples_us: list[float]) -> dict:
    s = sorted(samples_us)

    def p(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"n": len(s), "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99), "mean_us": sum(s) / len(s)}


def _timed(fn, iterations: int) -> dict:
    for _ in range(min(500, iterations)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(iterations):
            t0 = clock()
            fn()
            samples.append((clock() - t0) / 1000)
    finally:
        gc.enable()
    return _percentiles(samples)


def _key_store(directory: Path) -> dict[str, str]:
    """1,000 active keys plus one revoked; returns the keys the cases use."""
    records, keys = {}, {}
    for i in range(1000):
        key = api_keys.generate_api_key()
        records[api_keys.key_hash(key)] = api_keys.key_record(f"k_{i:016x}", f"tenant-{i % 50}")
        keys.setdefault("active", key)
    revoked = api_keys.generate_api_key()
    records[api_keys.key_hash(revoked)] = api_keys.key_record("k_revoked", "tenant-0", "revoked")
    keys["revoked"] = revoked
    (directory / "api-keys.json").write_text(json.dumps(records))
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5000, help="timed calls per case (default 5000)")
    args = parser.parse_args()
    node = host.find_node()
    if not node:
        sys.exit("Node.js not found (make installs Node 22 into .tools/)")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()

    with tempfile.TemporaryDirectory() as tmp:
        keys = _key_store(Path(tmp))
        store = Path(tmp) / "api-keys.json"
        cases = {
            "valid key, Authorization: Bearer": {"authorization": f"Bearer {keys['active']}"},
            "valid key, x-api-key": {"x-api-key": keys["active"]},
            "unknown key -> 401": {"authorization": f"Bearer {api_keys.generate_api_key()}"},
            "revoked key -> 401": {"authorization": f"Bearer {keys['revoked']}"},
            "no key -> 401": {},
        }
        lines = "".join(json.dumps({"label": label, "event": host.viewer_request_event(
            "POST", CHAT, {**CLIENT_HEADERS, **headers})}) + "\n" for label, headers in cases.items())
        done = subprocess.run([node, str(host.HOST_SCRIPT), "--function", str(host.API_KEY_CHECK), "--key-store-file",
                               str(store), "--bench", str(args.iterations)], input=lines, capture_output=True,
                              text=True, check=True)
        function_times = json.loads(done.stdout)

        body = chat_body()
        request_headers = {**CLIENT_HEADERS, "authorization": f"Bearer {keys['active']}"}
        decision = cache_decision.decide(CHAT, request_headers, body, SETTINGS, tenant="tenant-0")
        assert decision.cacheable, decision  # a bench of the cacheable path, not of a refusal
        decision_times = _timed(lambda: cache_decision.decide(CHAT, request_headers, body, SETTINGS, tenant="tenant-0"),
                                args.iterations)

        event = host.viewer_request_event("POST", CHAT, request_headers)
        with host.ViewerRequestFunction(host.API_KEY_CHECK, store, node=node) as function:
            round_trip = _timed(lambda: function.handle(event), min(args.iterations, 3000))

    rows = [(f"API key check (JS, Node {node_version}): {label}", t) for label, t in function_times.items()]
    rows.append((f"cache decision (Python {sys.version.split()[0]}), {len(body):,} B chat body", decision_times))
    rows.append(("local run: Python -> Node host -> Python, valid key", round_trip))
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}}  {'p50 us':>8}  {'p90 us':>8}  {'p99 us':>8}  {'mean us':>8}  {'n':>6}")
    for name, t in rows:
        print(f"{name:<{width}}  {t['p50_us']:>8.2f}  {t['p90_us']:>8.2f}  {t['p99_us']:>8.2f}  {t['mean_us']:>8.2f}  "
              f"{t['n']:>6}")
    check_p50 = function_times["valid key, Authorization: Bearer"]["p50_us"]
    print(f"\nthe key check's p50 is {check_p50 / decision_times['p50_us']:.1%} of the cache decision's p50 "
          f"({check_p50:.2f} us vs {decision_times['p50_us']:.2f} us); key store: 1,001 keys, read once into memory")


if __name__ == "__main__":
    main()
