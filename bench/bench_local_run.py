"""Latency of the local request path: a HIT, a MISS, and a direct call to the local
model server, over the same local run (one subprocess, loopback, keep-alive clients),
with ratios to the direct call; and HITs per second with a few concurrent clients.

Prints figures; asserts nothing (shared, noisy machines). Run: make bench.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import threading
import time
from urllib.parse import urlparse

from local_run.process import launched

N_LATENCY = 200
N_MISS = 100
CLIENTS = 4
RPS_SECONDS = 3.0


class Client:
    def __init__(self, url: str):
        parsed = urlparse(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)

    def post(self, path: str, body: dict) -> tuple[float, str | None]:
        data = json.dumps(body).encode()
        started = time.perf_counter()
        self.connection.request("POST", path, body=data, headers={"content-type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status}")
        return elapsed, response.getheader("x-inference-cache")


def chat(text: str) -> dict:
    return {"model": "local", "messages": [{"role": "user", "content": text}], "temperature": 0}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def print_rows(*rows: tuple[str, list[float]]) -> None:
    """One line per path; ratios to the first row, the direct call."""
    d50, d99 = percentiles(rows[0][1])
    for name, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"{name:<28}{len(samples):>6}{p50:>10.2f}{p99:>10.2f}{p50 / d50:>12.2f}{p99 / d99:>12.2f}")


def main() -> None:
    with launched() as started:
        front, model = Client(started["listening"]), Client(started["model_server"])
        for i in range(20):  # warm both paths
            model.post("/invocations", chat(f"warm {i}"))
            front.post("/v1/chat/completions", chat("warm"))

        direct = [model.post("/invocations", chat("direct"))[0] for _ in range(N_LATENCY)]
        misses = []
        for i in range(N_MISS):
            elapsed, status = front.post("/v1/chat/completions", chat(f"miss number {i}"))
            assert status == "MISS", status
            misses.append(elapsed)
        hits = []
        for _ in range(N_LATENCY):
            elapsed, status = front.post("/v1/chat/completions", chat("warm"))
            assert status == "HIT", status
            hits.append(elapsed)

        embed = {"model": "all-MiniLM-L6-v2", "input": ["what an edge cache saves: " + "GPU time " * 40]}
        front.post("/v1/embeddings", embed)
        embed_direct = [model.post("/invocations", embed)[0] for _ in range(N_MISS)]
        embed_hits = [front.post("/v1/embeddings", embed)[0] for _ in range(N_LATENCY)]

        count = [0] * CLIENTS
        deadline = time.perf_counter() + RPS_SECONDS

        def hammer(index: int) -> None:
            client = Client(started["listening"])
            while time.perf_counter() < deadline:
                client.post("/v1/chat/completions", chat("warm"))
                count[index] += 1

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(CLIENTS)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rps = sum(count) / (time.perf_counter() - began)

        print(f"local request path, {os.cpu_count()} cores; chat bodies of ~0.1 KB; the model is the test generator")
        print(f"{'path':<28}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'p50/direct':>12}{'p99/direct':>12}")
        print_rows(("direct model server", direct), ("MISS (edge+adapter+model)", misses), ("HIT (edge lookup)", hits))
        print("embeddings, all-MiniLM-L6-v2 on the CPU, one 0.4 KB input:")
        print_rows(("direct model server", embed_direct), ("HIT (edge lookup)", embed_hits))
        print(f"HITs per second with {CLIENTS} concurrent keep-alive clients over {RPS_SECONDS:.0f} s: {rps:.0f}")


if __name__ == "__main__":
    main()
