"""Coalescing identical misses on the local run: model calls and latency (p50/p99) for
bursts of N = 10, 50, 200 concurrent identical new requests, with coalescing on and off
(COALESCE_IDENTICAL_MISSES), one local run each, in the same benchmark run.

The model takes --model-ms per call (the model server's [[slow-ms:N]] marker), standing in
for a GPU generation. The goal with coalescing on is 1 model call per burst. The local
front runs at most 128 adapter invocations at once (local_run.front.LAMBDA_CONCURRENCY):
the N = 200 burst queues the rest, as a reserved concurrency would.

Prints a table; asserts nothing (shared, noisy machines). Run: make bench, or
  python -m bench.bench_coalescing [--model-ms 500] [--bursts 10,50,200]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from lambdas.contract import COALESCED_HEADER, COALESCING_ENV, STATUS_HEADER
from local_run.process import create_api_key, launched


@contextlib.contextmanager
def local_run(coalescing: bool):
    saved = os.environ.get(COALESCING_ENV)
    os.environ[COALESCING_ENV] = "true" if coalescing else "false"
    try:
        with tempfile.TemporaryDirectory() as keys:
            store = Path(keys) / "api-keys.json"
            with launched("--stage", "dev", "--key-store-file", str(store)) as started:
                yield {**started, "api_key": create_api_key(store, "bench")["key"]}
    finally:
        if saved is None:
            os.environ.pop(COALESCING_ENV, None)
        else:
            os.environ[COALESCING_ENV] = saved


def model_calls(run) -> int:
    with urllib.request.urlopen(run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def burst(run, n: int, model_ms: int) -> dict:
    url = urlparse(run["listening"])
    headers = {"content-type": "application/json", "authorization": f"Bearer {run['api_key']}"}
    body = json.dumps(
        {"model": "local", "messages": [{"role": "user", "content": f"burst {time.time_ns()} [[slow-ms:{model_ms}]]"}], "temperature": 0}
    ).encode()
    seconds: list[float] = []
    outcomes: Counter = Counter()
    lock, barrier = threading.Lock(), threading.Barrier(n)

    def ask() -> None:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        connection.connect()
        barrier.wait()
        started = time.perf_counter()
        try:
            connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                outcome = f"status {response.status}"
            elif response.getheader(COALESCED_HEADER) == "1":
                outcome = "HIT coalesced"
            else:
                outcome = response.getheader(STATUS_HEADER) or "?"
        except (OSError, http.client.HTTPException):
            outcome = "connection error"
        elapsed = time.perf_counter() - started
        connection.close()
        with lock:
            seconds.append(elapsed)
            outcomes[outcome] += 1

    before = model_calls(run)
    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(seconds)
    return {
        "calls": model_calls(run) - before,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "outcomes": outcomes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_coalescing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-ms", type=int, default=500, help="how long each model call takes (default 500)")
    parser.add_argument("--bursts", default="10,50,200", help="burst sizes (default 10,50,200)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.bursts.split(",")]
    rows = []
    for coalescing in (True, False):
        print(f"starting a local run with coalescing {'on' if coalescing else 'off'} ...", flush=True)
        with local_run(coalescing) as run:
            burst(run, 4, 0)  # warm-up: connections, first imports
            for n in sizes:
                rows.append(("on" if coalescing else "off", n, burst(run, n, args.model_ms)))
    print(f"\nIdentical new requests, N at once; each model call takes {args.model_ms} ms (local run, dev stage)\n")
    print(f"{'coalescing':<11}{'N':>5}{'model calls':>13}{'p50 ms':>10}{'p99 ms':>10}  answers")
    for mode, n, r in rows:
        answers = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        print(f"{mode:<11}{n:>5}{r['calls']:>13}{r['p50']:>10.0f}{r['p99']:>10.0f}  {answers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
