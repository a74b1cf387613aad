"""Streamed misses on the local run: time to first token (TTFT) and total time, against
the same generator called directly, in the same run; a streamed hit's TTFT; and model
calls with TTFT and total p50/p99 for bursts of N identical new streamed requests.

The generator emits --tokens tokens, one every --token-ms ms (the model server's
[[tokens:N]] and [[token-ms:N]] markers). "Direct" is its container face, POST
/invocations with `stream: true` on the model server (no edge, key check, lease, S3 or
relay); "through the local run" is the whole path: the openai-style SSE stream from the
front, the edge function, the origin adapter's web app, the SageMaker runtime facade's
event stream. TTFT is the arrival of the first event that carries text.

The bursts use a slower generator (--burst-tokens, --burst-token-ms: 50 tokens, 20 ms
apart, a second of generation as in bench_coalescing): 200 clients of a 500-events-a-second
stream would measure how the one local process (front, adapter, model server and the S3
stand-in on one interpreter) copes with 100,000 events a second on two cores, not
coalescing. When the S3 stand-in falls behind the coalescer's 3 s timeouts, leases fail
open by design and the model runs more than once.

Prints tables; asserts nothing (shared, noisy machines). Run: make bench, or
  python -m bench.bench_streaming [--tokens 500] [--token-ms 2] [--repeats 10] [--bursts 10,50,200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from lambdas.contract import STATUS_HEADER
from local_run.process import create_api_key, launched


def timed_stream(base: str, path: str, body: dict, headers: dict) -> dict:
    """POST and read the answer as it arrives: seconds to the first event with text, to the
    end, the events with text, and the cache header."""
    url = urlparse(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    connection.connect()
    started = time.perf_counter()
    connection.request("POST", path, body=json.dumps(body).encode(), headers={"content-type": "application/json", **headers})
    response = connection.getresponse()
    first, texts = None, 0
    for line in response:  # http.client hands over each line as soon as it is complete
        data = line.strip().removeprefix(b"data:").strip()
        if not data or data == b"[DONE]":
            continue
        event = json.loads(data)
        choices = event.get("choices") or [{}]
        if choices[0].get("delta", {}).get("content") or choices[0].get("text"):
            texts += 1
            if first is None:
                first = time.perf_counter() - started
    total = time.perf_counter() - started
    connection.close()
    return {"ttft": first, "total": total, "events": texts, "status": response.status, "cache": response.getheader(STATUS_HEADER)}


def model_calls(run) -> int:
    with urllib.request.urlopen(run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def chat(marker: str, tokens: int, token_ms: float) -> dict:
    content = f"Stream {marker} [[tokens:{tokens}]] [[token-ms:{token_ms}]]"
    return {"model": "local", "messages": [{"role": "user", "content": content}], "temperature": 0, "stream": True}


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def burst(run, headers: dict, n: int, tokens: int, token_ms: float) -> dict:
    body = chat(f"burst {n} {time.time_ns()}", tokens, token_ms)
    results: list[dict] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = timed_stream(run["listening"], "/v1/chat/completions", body, headers)

    before = model_calls(run)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r["status"] == 200 and r["events"] == tokens]
    return {
        "calls": model_calls(run) - before,
        "complete": len(ok),
        "ttft": [r["ttft"] for r in ok],
        "total": [r["total"] for r in ok],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_streaming", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--token-ms", type=float, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bursts", default="10,50,200")
    parser.add_argument("--burst-tokens", type=int, default=50)
    parser.add_argument("--burst-token-ms", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as keys:
        store = Path(keys) / "api-keys.json"
        print("starting a local run (dev stage) ...", flush=True)
        with launched("--stage", "dev", "--key-store-file", str(store)) as run:
            headers = {"authorization": f"Bearer {create_api_key(store, 'bench')['key']}"}
            warm = chat("warm-up", 4, 0)
            timed_stream(run["listening"], "/v1/chat/completions", warm, headers)
            timed_stream(run["model_server"], "/invocations", warm, {})
            rows = {"direct": [], "miss": [], "hit": []}
            for i in range(args.repeats):  # interleaved, so noise hits each path alike
                body = chat(f"{i} {time.time_ns()}", args.tokens, args.token_ms)
                rows["direct"].append(timed_stream(run["model_server"], "/invocations", body, {}))
                rows["miss"].append(timed_stream(run["listening"], "/v1/chat/completions", body, headers))
                rows["hit"].append(timed_stream(run["listening"], "/v1/chat/completions", body, headers))
            bursts = [
                (n, burst(run, headers, n, args.burst_tokens, args.burst_token_ms)) for n in map(int, args.bursts.split(","))
            ]

    generation = args.tokens * args.token_ms
    print(f"\nStreamed chat answers of {args.tokens} tokens, one every {args.token_ms} ms (~{generation:.0f} ms of "
          f"generation), {args.repeats} of each, p50 (p99) ms\n")
    print(f"{'path':<34}{'TTFT':>16}{'total':>18}  cache")
    labels = {"direct": "generator called directly", "miss": "miss through the local run", "hit": "hit through the local run"}
    for name, results in rows.items():
        ttft, total = [r["ttft"] for r in results], [r["total"] for r in results]
        caches = ",".join(sorted({str(r["cache"]) for r in results})) if name != "direct" else "-"
        print(f"{labels[name]:<34}{p(ttft, .5):>8.1f} ({p(ttft, .99):>5.1f}){p(total, .5):>10.1f} ({p(total, .99):>5.1f})  {caches}")
    direct, miss = rows["direct"], rows["miss"]
    print(f"\nmiss / direct, p50: TTFT {p([r['ttft'] for r in miss], .5) / p([r['ttft'] for r in direct], .5):.2f}x, "
          f"total {p([r['total'] for r in miss], .5) / p([r['total'] for r in direct], .5):.2f}x; "
          f"TTFT of a miss is {100 * p([r['ttft'] for r in miss], .5) / p([r['total'] for r in miss], .5):.1f} % of its total")
    print(f"\nBursts of N identical new streamed requests at once (coalescing on, as deployed); {args.burst_tokens} "
          f"tokens, one every {args.burst_token_ms} ms\n")
    print(f"{'N':>5}{'model calls':>13}{'complete':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'total p50':>11}{'total p99':>11}")
    for n, r in bursts:
        print(f"{n:>5}{r['calls']:>13}{r['complete']:>10}{p(r['ttft'], .5):>10.0f}{p(r['ttft'], .99):>10.0f}"
              f"{p(r['total'], .5):>11.0f}{p(r['total'], .99):>11.0f}")
    print("\nIn a burst one request streams from the model; the others wait for its stored answer (coalescing), so their "
          "TTFT is about the leader's total time.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
