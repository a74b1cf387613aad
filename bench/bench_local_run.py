"""The local request path under load: HIT and MISS latency (p50/p99) and requests per
second at 1, 8 and 32 concurrent keep-alive clients, next to a direct call to the local
model server as the baseline (the embeddings path: bench/bench_embeddings.py).

Prints figures; asserts nothing (shared, noisy machines). Run: make bench.
  python -m bench.bench_local_run                       # launches its own local run
  python -m bench.bench_local_run --url URL --model-url URL [--api-key KEY]   # an already running one
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
from pathlib import Path
from urllib.parse import urlparse

from local_run.process import create_api_key, launched

CONCURRENCY = (1, 8, 32)
REQUESTS_PER_CLIENT = {1: 300, 8: 60, 32: 20}
MISSES_PER_CLIENT = {1: 100, 8: 20, 32: 8}


class Client:
    def __init__(self, url: str, api_key: str | None = None):
        parsed = urlparse(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {})}

    def post(self, path: str, body: dict) -> tuple[float, str | None]:
        """(seconds, x-inference-cache); status "ERROR" for a non-200 answer or a
        connection the server dropped (the client reconnects for the next request)."""
        data = json.dumps(body).encode()
        started = time.perf_counter()
        try:
            self.connection.request("POST", path, body=data, headers=self.headers)
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            return time.perf_counter() - started, "ERROR"
        elapsed = time.perf_counter() - started
        return elapsed, response.getheader("x-inference-cache") if response.status == 200 else "ERROR"


def chat(text: str) -> dict:
    return {"model": "local", "messages": [{"role": "user", "content": text}], "temperature": 0}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def concurrent(clients: int, work) -> tuple[list[tuple[float, str]], float]:
    """Runs work(client_index) on `clients` threads at once; (all (latency, status), requests/s)."""
    results: list[list[tuple[float, str]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = work(index)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    samples = [s for r in results for s in r]
    return samples, len(samples) / elapsed


def measure(url: str, model_url: str, api_key: str | None, run_id: str) -> list[tuple]:
    rows = []
    warm = Client(url, api_key)
    warm.post("/v1/chat/completions", chat("warm"))
    for clients in CONCURRENCY:
        def direct(index: int, clients: int = clients) -> list:
            model = Client(model_url)
            return [(model.post("/invocations", chat(f"direct {index}"))[0], "direct") for _ in range(REQUESTS_PER_CLIENT[clients])]

        def hits(index: int, clients: int = clients) -> list:
            front = Client(url, api_key)
            return [front.post("/v1/chat/completions", chat("warm")) for _ in range(REQUESTS_PER_CLIENT[clients])]

        def misses(index: int, clients: int = clients) -> list:
            front = Client(url, api_key)
            return [
                front.post("/v1/chat/completions", chat(f"{run_id} miss {clients}/{index}/{i}"))
                for i in range(MISSES_PER_CLIENT[clients])
            ]

        for name, work, expected in (("direct model server", direct, "direct"), ("HIT", hits, "HIT"), ("MISS", misses, "MISS")):
            samples, rps = concurrent(clients, work)
            unexpected = sum(status != expected for _, status in samples)
            errors = sum(status == "ERROR" for _, status in samples)
            rows.append((clients, name, len(samples), *percentiles([t for t, _ in samples]), rps, unexpected, errors))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an already running local run (else one is launched)")
    parser.add_argument("--model-url", help="its model server (with --url)")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    run_id = str(time.time_ns())
    with contextlib.ExitStack() as stack:
        if args.url:
            url, model_url, api_key = args.url, args.model_url, args.api_key
        else:
            key_store = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "api-keys.json"
            started = stack.enter_context(launched("--key-store-file", str(key_store)))
            url, model_url = started["listening"], started["model_server"]
            api_key = create_api_key(key_store, "bench")["key"] if started.get("api_keys") else None
        rows = measure(url, model_url, api_key, run_id)
    print(f"local request path, {os.cpu_count()} cores; chat bodies of ~0.1 KB; the model is the test generator")
    print("not-as-expected: a HIT that was not a HIT (or a MISS not a MISS); errors: non-200 or dropped connections")
    print(f"{'clients':>7} {'path':<22}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'p50/direct':>12}"
          f"{'not-as-expected':>17}{'errors':>8}")
    direct_p50 = {}
    for clients, name, n, p50, p99, rps, unexpected, errors in rows:
        direct_p50.setdefault(clients, p50)
        print(f"{clients:>7} {name:<22}{n:>6}{p50:>10.2f}{p99:>10.2f}{rps:>9.0f}{p50 / direct_p50[clients]:>12.2f}"
              f"{unexpected:>17}{errors:>8}")


if __name__ == "__main__":
    main()
