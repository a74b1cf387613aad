"""The local run under load, as a user's load test would drive it: 20,000 mixed requests
from 32 concurrent keep-alive clients. Zero connection errors, zero wrong answers (every
HIT equal to the MISS that stored it), bounded in time."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.e2e

CLIENTS = 32
REQUESTS = 20_000
TIME_LIMIT_SECONDS = 900  # a bound, not a speed goal: make bench measures speed


def _requests(seed: int):
    """An endless mix: repeated greedy chats and embeddings (hits after their first miss),
    sampled chats (never cached), and invalid bodies (400 at the edge)."""
    rng = random.Random(seed)
    while True:
        kind = rng.random()
        if kind < 0.6:
            prompt = f"question {rng.randrange(200)}"
            yield "chat", "/v1/chat/completions", {"model": "local", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        elif kind < 0.8:
            yield "embed", "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": f"document {rng.randrange(40)}"}
        elif kind < 0.9:
            yield "sample", "/v1/chat/completions", {"model": "local", "messages": [{"role": "user", "content": "roll"}], "temperature": 1}
        else:
            yield "invalid", "/v1/chat/completions", {"model": "local", "messages": "not a list", "temperature": 0}


def test_twenty_thousand_mixed_requests_from_32_clients(local_run):
    url = urlparse(local_run["listening"])
    headers = {"content-type": "application/json", "authorization": f"Bearer {local_run['api_key']}"}
    remaining = iter(range(REQUESTS))
    lock = threading.Lock()
    misses: dict[str, set[bytes]] = {}  # cache key -> bodies the model answered (MISS)
    hits: dict[str, set[bytes]] = {}  # cache key -> bodies served from the cache (HIT)
    outcomes: Counter = Counter()
    failures: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        mix = _requests(index)
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            kind, path, body = next(mix)
            try:
                connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                with lock:
                    failures.append(f"{kind}: connection error {exc!r}")
                continue
            status, cache, key = response.status, response.getheader("x-inference-cache"), response.getheader("x-inference-cache-key")
            with lock:
                outcomes[(kind, status, cache)] += 1
                expected_status = 400 if kind == "invalid" else 200
                if status != expected_status:
                    failures.append(f"{kind}: status {status}: {data[:200]!r}")
                elif kind in ("chat", "embed"):
                    (hits if cache == "HIT" else misses).setdefault(key, set()).add(data)
                elif kind == "sample" and cache != "BYPASS":
                    failures.append(f"sample: {cache}")

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIME_LIMIT_SECONDS)
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), f"not done in {TIME_LIMIT_SECONDS} s"
    assert failures == [], failures[:10]
    # Every HIT is byte for byte an answer the model gave to that request (concurrent misses
    # of one key each store theirs, differing only in "created"; one of them is served).
    for key, served in hits.items():
        assert served <= misses.get(key, set()), f"HIT for {key} that no MISS answered"
    # The model's answers to one key agree (greedy decoding, embeddings): no mixed-up keys.
    for key, bodies in misses.items():
        contents = {json.dumps([json.loads(b).get(f) for f in ("choices", "data")]) for b in bodies}
        assert len(contents) == 1, f"different answers for one key {key}"
    assert sum(outcomes.values()) == REQUESTS
    served_from_cache = sum(n for (kind, _, cache), n in outcomes.items() if cache == "HIT")
    assert served_from_cache > REQUESTS * 0.5  # 240 distinct cacheable requests among ~16,000
    print(f"\n{REQUESTS} requests, {CLIENTS} clients, {elapsed:.1f} s ({REQUESTS / elapsed:.0f}/s): {dict(outcomes)}")
