"""/v1/embeddings through the local run: MISS and HIT latency (p50/p99) for one input
and for batches of 32, and vectors per second, next to a direct call to the TEI stand-in's
container face (the model alone) as the baseline measured in the same run.

Prints figures; asserts nothing (shared, noisy machines). Run: make bench.
  python -m bench.bench_embeddings            # launches its own local run (dev stage)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from bench.bench_local_run import Client, concurrent, percentiles
from local_run.process import create_api_key, launched

ROUTE = "/v1/embeddings"


def embeddings(inputs, encoding: str = "float") -> dict:
    return {"model": "all-MiniLM-L6-v2", "input": inputs, "encoding_format": encoding}


def measure(url: str, tei_url: str, api_key: str, run_id: str, single: int, batches: int) -> list[tuple]:
    rows = []
    warm = Client(url, api_key)
    warm.post(ROUTE, embeddings("warm"))

    def direct(size: int, n: int):
        def work(index: int) -> list:
            tei = Client(tei_url)
            return [
                (tei.post("/invocations", {"inputs": [f"{run_id} direct {size}/{index}/{i}/{j}" for j in range(size)],
                                           "normalize": True, "truncate": False})[0], "direct")
                for i in range(n)
            ]
        return work

    def through(size: int, n: int, tag: str):
        def work(index: int) -> list:
            front = Client(url, api_key)
            return [
                front.post(ROUTE, embeddings([f"{run_id} {tag} {size}/{index}/{i}/{j}" for j in range(size)]))
                for i in range(n)
            ]
        return work

    for size, n, clients in ((1, single, 1), (1, single // 4, 8), (32, batches, 1), (32, batches // 2, 4)):
        per_client = max(1, n)
        for name, work, expected in (
            ("direct TEI stand-in", direct(size, per_client), "direct"),
            ("MISS", through(size, per_client, "miss"), "MISS"),
            ("HIT", through(size, per_client, "miss"), "HIT"),  # the same requests again
        ):
            started = time.perf_counter()
            samples, rps = concurrent(clients, work)
            elapsed = time.perf_counter() - started
            unexpected = sum(status != expected for _, status in samples)
            vectors_per_second = len(samples) * size / elapsed
            rows.append((size, clients, name, len(samples), *percentiles([t for t, _ in samples]), rps, vectors_per_second,
                         unexpected))
        run_id += "+"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=200, help="one-input requests per client at 1 client")
    parser.add_argument("--batches", type=int, default=24, help="32-input requests per client at 1 client")
    args = parser.parse_args()
    run_id = str(time.time_ns())
    with contextlib.ExitStack() as stack:
        key_store = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "api-keys.json"
        started = stack.enter_context(launched("--key-store-file", str(key_store)))
        api_key = create_api_key(key_store, "bench")["key"]
        rows = measure(started["listening"], started["embeddings_server"], api_key, run_id, args.single, args.batches)
    print(f"/v1/embeddings through the local run, {os.cpu_count()} cores; model {json.dumps(started['embeddings_model'])} "
          "on the CPU behind the TEI stand-in; baseline: the stand-in's /invocations called directly, same inputs")
    print("MISS: unique inputs (translation, one model call per 32 inputs, the store); HIT: the same requests again, "
          "answered at the edge")
    print(f"{'inputs':>6} {'clients':>7} {'path':<20}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>8}{'vectors/s':>11}"
          f"{'p50/direct':>12}{'not-as-expected':>17}")
    direct_p50 = {}
    for size, clients, name, n, p50, p99, rps, vps, unexpected in rows:
        direct_p50.setdefault((size, clients), p50)
        print(f"{size:>6} {clients:>7} {name:<20}{n:>6}{p50:>10.2f}{p99:>10.2f}{rps:>8.0f}{vps:>11.0f}"
              f"{p50 / direct_p50[(size, clients)]:>12.2f}{unexpected:>17}")


if __name__ == "__main__":
    main()
