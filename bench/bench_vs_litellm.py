"""Side by side with LiteLLM: this project's local run and a LiteLLM proxy with its
exact-match cache, both in front of the same instant OpenAI-compatible backend
(bench/instant_backend.py), the same client (keep-alive http.client), measured interleaved
in one run: HIT and MISS latency (p50/p99), HIT latency with each gateway alone (back to
back, for context), HIT requests per second from 4 clients, and a streamed miss's time to
first token against the backend's own. Then where a miss's time goes, step by step
(Server-Timing, the adapter's log lines, the S3 stand-in's own times), split into what a
deployed stage also pays and what only the local stand-ins cost.

LiteLLM is installed into a throwaway virtual environment under build/ on first use
(pip, from PyPI); when it cannot be installed or started, the side by side is skipped with
a message and the rest is still measured. Prints figures; asserts nothing (shared, noisy
machines): the goals are ratios in one run.

  python -m bench.bench_vs_litellm [--rounds 300] [--streams 60] [--seconds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from bench.instant_backend import instant_backend
from lambdas.contract import SERVER_TIMING_HEADER, STATUS_HEADER, TimingStep
from local_run.process import ROOT, create_api_key, free_port, launched
from local_run.servers import BackgroundServer

LITELLM_VERSION = "1.79.3"
LITELLM_VENV = ROOT / "build" / "bench" / f"litellm-{LITELLM_VERSION}"
LITELLM_KEY = "sk-bench-litellm"
GOALS = {"hit": 4.0, "miss": 1.5, "ttft_ms": 20.0}
BACK_TO_BACK_BLOCK = 50  # HITs in a row per gateway, for the back-to-back figure


# -- LiteLLM --------------------------------------------------------------------------------
def litellm_executable() -> tuple[Path | None, str]:
    """(the proxy's executable, "") once installed; (None, why) when it cannot be."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable, ""
    print(f"installing LiteLLM {LITELLM_VERSION} (proxy) into {LITELLM_VENV.relative_to(ROOT)} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
             f"litellm[proxy]=={LITELLM_VERSION}"],
            check=True, capture_output=True, text=True, timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"pip could not install litellm[proxy]=={LITELLM_VERSION}: {detail.strip().splitlines()[-1:]}"
    return (executable, "") if executable.exists() else (None, "the litellm entry point is missing after install")


class LiteLLM:
    """A LiteLLM proxy (one worker, exact-match in-memory cache, a master key) on 127.0.0.1."""

    def __init__(self, executable: Path, backend_url: str, workdir: Path) -> None:
        self.port = free_port()
        config = workdir / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: local\n"
            "    litellm_params:\n"
            "      model: openai/local\n"
            f"      api_base: {backend_url}/v1\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  cache: true\n"
            "  cache_params:\n"
            "    type: local\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
        )
        self.log = (workdir / "litellm.log").open("w")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
        self.process = subprocess.Popen(
            [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, seconds: float = 180) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/health/liveliness", timeout=2):
                    return True
            except OSError:
                time.sleep(0.5)
        return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# -- a keep-alive client ---------------------------------------------------------------------
class Client:
    def __init__(self, url: str, api_key: str | None) -> None:
        parsed = urlparse(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        self.headers = {"content-type": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {})}

    def _send(self, body: dict) -> tuple[float, http.client.HTTPResponse]:
        """(when it was sent, the response); once more on a new connection when the kept one
        was closed by the server while idle (its keep-alive timeout)."""
        data = json.dumps(body).encode()
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.connection.request("POST", "/v1/chat/completions", body=data, headers=self.headers)
                return started, self.connection.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, body: dict) -> tuple[float, int, dict, bytes]:
        started, response = self._send(body)
        payload = response.read()
        return time.perf_counter() - started, response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def first_token(self, body: dict) -> tuple[float, float, int, str]:
        """(seconds to the first event with text, to the end, status, Server-Timing) of a
        streamed request."""
        started, response = self._send(body)
        first = None
        while line := response.readline():
            data = line.strip().removeprefix(b"data:").strip()
            if first is None and data and data != b"[DONE]":
                event = json.loads(data)
                if (event.get("choices") or [{}])[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
        timing = response.getheader(SERVER_TIMING_HEADER) or ""
        return (first if first is not None else float("nan")), time.perf_counter() - started, response.status, timing


def chat(content: str, stream: bool = False) -> dict:
    return {"model": "local", "messages": [{"role": "user", "content": content}], "temperature": 0, **({"stream": True} if stream else {})}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def server_timing(value: str) -> dict[str, float]:
    found = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";")
        for attribute in rest.split(";"):
            if attribute.startswith("dur="):
                found[name] = float(attribute[4:])
    return found


def s3_stats(run: dict) -> dict:
    with urllib.request.urlopen(run["results_store"] + "/_local_s3/stats", timeout=5) as answer:
        return json.loads(answer.read())


# -- the measurements ------------------------------------------------------------------------
def interleaved(gateways: dict[str, Client], hit_body: dict, rounds: int, run_id: str) -> dict:
    """HIT and MISS latencies, every gateway in turn each round (who goes first alternates)."""
    names = list(gateways)
    out = {name: {"hit": [], "miss": [], "hit_status": [], "miss_status": [], "timings": []} for name in names}
    for client in gateways.values():  # the HIT prompt, stored once
        for _ in range(2):
            client.post(hit_body)
    for i in range(rounds):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            seconds, status, headers, _ = gateways[name].post(hit_body)
            out[name]["hit"].append(seconds)
            out[name]["hit_status"].append((status, headers.get(STATUS_HEADER) or headers.get("x-litellm-cache-key", "")[:1]))
        for name in order:
            seconds, status, headers, _ = gateways[name].post(chat(f"{run_id} new question {i}"))
            out[name]["miss"].append(seconds)
            out[name]["miss_status"].append((status, headers.get(STATUS_HEADER) or ("HIT?" if "x-litellm-cache-key" in headers else "")))
            if SERVER_TIMING_HEADER in headers:
                out[name]["timings"].append((seconds, server_timing(headers[SERVER_TIMING_HEADER])))
    return out


def back_to_back(gateways: dict[str, Client], hit_body: dict, rounds: int) -> dict[str, list[float]]:
    """HIT latencies with each gateway alone, BACK_TO_BACK_BLOCK HITs in a row, blocks
    alternating. In the interleaved rounds a gateway's HIT comes after 10-20 ms in which it
    was idle (the other gateway's turn, its own MISS), and on this kind of machine the first
    request after an idle spell runs slower (docs/decisions.md, issue 25): this is the same
    HIT without the spell."""
    out: dict[str, list[float]] = {name: [] for name in gateways}
    for _ in range(max(1, rounds // BACK_TO_BACK_BLOCK)):
        for name, client in gateways.items():
            for _ in range(BACK_TO_BACK_BLOCK):
                out[name].append(client.post(hit_body)[0])
    return out


def throughput(url: str, api_key: str | None, body: dict, clients: int, seconds: float) -> float:
    """HIT requests per second from `clients` keep-alive clients for `seconds`."""
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        client = Client(url, api_key)
        while time.monotonic() < stop:
            client.post(body)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_vs_litellm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="HIT and MISS requests per gateway")
    parser.add_argument("--streams", type=int, default=60, help="streamed misses per path")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each throughput block")
    parser.add_argument("--token-ms", type=float, default=5.0, help="the backend's gap between streamed tokens")
    args = parser.parse_args()
    run_id = str(time.time_ns())
    backend = BackgroundServer(instant_backend(args.token_ms), name="instant-backend").start()
    answered: list[dict] = []

    def on_line(line: str) -> None:  # the origin adapter's "answered" lines: the work after each answer
        if '"answered"' in line:
            try:
                answered.append(json.loads(line))
            except ValueError:
                pass

    executable, why_not = litellm_executable()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        litellm = None
        if executable is not None:
            litellm = LiteLLM(executable, backend.url, workdir)
            if not litellm.wait_ready():
                why_not = f"the LiteLLM proxy did not start (its log: {workdir / 'litellm.log'})"
                litellm.stop()
                litellm = None
        env = {"LOCAL_CHAT_URL": backend.url, "POWERTOOLS_LOG_LEVEL": "INFO"}
        try:
            results, rps, streams, s3_before, s3_after, loads = measure(args, run_id, workdir, env, on_line, backend, litellm)
        finally:
            if litellm is not None:
                litellm.stop()
            backend.stop()
    report(args, results, rps, streams, s3_before, s3_after, answered, why_not, loads)
    return 0


def measure(args, run_id: str, workdir: Path, env: dict, on_line, backend, litellm):
    """The interleaved rounds, the streams and the throughput blocks, on a local run of its own."""
    with launched("--stage", "dev", "--key-store-file", str(workdir / "keys.json"), env=env, on_line=on_line) as run:
        api_key = create_api_key(workdir / "keys.json", "bench")["key"]
        gateways = {"this project": Client(run["listening"], api_key)}
        if litellm is not None:
            gateways["LiteLLM"] = Client(litellm.url, LITELLM_KEY)
        load_before = os.getloadavg()
        s3_before = s3_stats(run)
        hit_body = chat(f"{run_id} the repeated question")
        results = interleaved(gateways, hit_body, args.rounds, run_id)
        s3_after = s3_stats(run)
        for name, samples in back_to_back(gateways, hit_body, args.rounds).items():
            results[name]["hit_back_to_back"] = samples
        streams = {"backend itself": [], "this project": [], **({"LiteLLM": []} if litellm else {})}
        direct = Client(backend.url, None)
        for i in range(args.streams):  # interleaved too, before the load of the throughput blocks
            body = chat(f"{run_id} streamed {i}", stream=True)
            streams["backend itself"].append(direct.first_token(body))
            for name, client in gateways.items():
                streams[name].append(client.first_token(body))
        rps = {name: [] for name in gateways}
        for _ in range(3):  # alternating blocks
            rps["this project"].append(throughput(run["listening"], api_key, hit_body, 4, args.seconds))
            if litellm is not None:
                rps["LiteLLM"].append(throughput(litellm.url, LITELLM_KEY, hit_body, 4, args.seconds))
        load_after = os.getloadavg()
    return results, rps, streams, s3_before, s3_after, (load_before, load_after)


def report(args, results, rps, streams, s3_before, s3_after, answered, why_not, loads) -> None:
    cores = os.cpu_count()
    print(f"\nSide by side, {args.rounds} HIT and {args.rounds} MISS chat requests per gateway, interleaved; "
          f"{cores} cores, load average {loads[0][0]:.1f} before, {loads[1][0]:.1f} after (a shared machine)")
    if why_not:
        print(f"LiteLLM skipped: {why_not}")
    print(f"\n{'':<16}{'HIT p50':>9}{'HIT p99':>9}{'MISS p50':>10}{'MISS p99':>10}{'HIT req/s (4)':>15}  statuses")
    for name, r in results.items():
        statuses = sorted({f"{s}/{c}" for s, c in r["hit_status"] + r["miss_status"]})
        print(f"{name:<16}{pct(r['hit'], .5):>9.2f}{pct(r['hit'], .99):>9.2f}{pct(r['miss'], .5):>10.2f}"
              f"{pct(r['miss'], .99):>10.2f}{statistics.mean(rps[name]):>15.0f}  {', '.join(statuses)}")
    ours = results["this project"]
    if "LiteLLM" in results:
        theirs = results["LiteLLM"]
        hit_ratio = p50(theirs["hit"]) / p50(ours["hit"])
        miss_ratio = p50(ours["miss"]) / p50(theirs["miss"])
        rps_ratio = statistics.mean(rps["this project"]) / statistics.mean(rps["LiteLLM"])
        print(f"\nHIT p50: {hit_ratio:.2f}x faster than LiteLLM's (goal >= {GOALS['hit']}x: {'met' if hit_ratio >= GOALS['hit'] else 'NOT met'})")
        print(f"MISS p50: {miss_ratio:.2f}x LiteLLM's (goal <= {GOALS['miss']}x: {'met' if miss_ratio <= GOALS['miss'] else 'NOT met'})")
        print(f"HIT req/s, 4 clients: {rps_ratio:.2f}x LiteLLM's")
        # A gateway's HIT right after its own MISS of the round before (it goes first in
        # every other round) shares the machine with that MISS's work after the answer: for
        # this project the store and the released marker (two S3 PUTs, the S3 stand-in's
        # process too), for LiteLLM an in-memory write. On AWS that work runs in the origin's
        # Lambda, not beside the edge.
        names = list(results)
        for index, name in enumerate(names):
            first = [s for i, s in enumerate(results[name]["hit"]) if i and (i % 2 == 0) == (index == 0)]
            second = [s for i, s in enumerate(results[name]["hit"]) if i and (i % 2 == 0) != (index == 0)]
            print(f"  {name}: HIT p50 right after its own MISS {p50(first):.2f} ms, after the other gateway's requests {p50(second):.2f} ms")
        ours_alone, theirs_alone = p50(ours["hit_back_to_back"]), p50(theirs["hit_back_to_back"])
        print(f"HIT p50 back to back (each gateway alone, blocks of {BACK_TO_BACK_BLOCK} in a row): {ours_alone:.2f} ms against LiteLLM's "
              f"{theirs_alone:.2f} ms, {theirs_alone / ours_alone:.2f}x (not the goal's measure: context for it)")

    print(f"\nStreamed misses ({args.streams} each, {8} tokens {args.token_ms} ms apart), time to first token p50 (p99) ms")
    for name, samples in streams.items():
        ttft = [s[0] for s in samples if s[0] == s[0]]
        print(f"{name:<16}{pct(ttft, .5):>8.2f} ({pct(ttft, .99):.2f})   total p50 {pct([s[1] for s in samples], .5):.2f}")
    model_ttft = p50([s[0] for s in streams["backend itself"]])
    our_ttft = p50([s[0] for s in streams["this project"] if s[0] == s[0]])
    gap = our_ttft - model_ttft
    print(f"a streamed miss's TTFT is {gap:.2f} ms after the model's own at p50 "
          f"(goal within {GOALS['ttft_ms']:.0f} ms: {'met' if gap <= GOALS['ttft_ms'] else 'NOT met'})")
    steps: dict[str, list[float]] = {}
    for ttft, _, _, timing in streams["this project"]:
        timings = server_timing(timing)
        for name, ms in timings.items():
            steps.setdefault(name, []).append(ms)
        before = sum(timings.get(s, 0.0) for s in (TimingStep.KEY_CHECK, TimingStep.DECISION, TimingStep.LOOKUP, TimingStep.ORIGIN))
        steps.setdefault("after the origin's answer began, to the first token", []).append(ttft * 1000 - before)
    print("  of it, p50 ms: " + ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in steps.items()))
    breakdown(ours, s3_before, s3_after, answered, args.rounds)


def breakdown(ours: dict, s3_before: dict, s3_after: dict, answered: list[dict], rounds: int) -> None:
    """Where a miss's time goes, p50 per step, and who pays it on a deployed stage."""
    steps: dict[str, list[float]] = {}
    hops = []
    for seconds, timings in ours["timings"]:
        for name, ms in timings.items():
            steps.setdefault(name, []).append(ms)
        edge = sum(timings.get(s, 0.0) for s in (TimingStep.KEY_CHECK, TimingStep.DECISION, TimingStep.LOOKUP))
        hops.append(seconds * 1000 - edge - timings.get(TimingStep.ORIGIN, 0.0))
    adapter_rest = [t[TimingStep.ORIGIN] - sum(t.get(s, 0.0) for s in (TimingStep.ORIGIN_DECISION, TimingStep.LEASE, TimingStep.MODEL))
                    for _, t in ours["timings"] if TimingStep.ORIGIN in t]
    after = {TimingStep.STORE: [], TimingStep.RELEASE: []}
    for line in answered:
        if line.get("cache") == "MISS" and not line.get("streamed"):
            for step in after:
                if step in (line.get("timings") or {}):
                    after[step].append(line["timings"][step])
    moto = {}
    for method in ("GET", "PUT"):
        n = s3_after["requests"].get(method, 0) - s3_before["requests"].get(method, 0)
        spent = s3_after["moto_seconds"].get(method, 0.0) - s3_before["moto_seconds"].get(method, 0.0)
        moto[method] = spent / n * 1000 if n else 0.0

    def med(values):
        return statistics.median(values) if values else float("nan")

    rows = [
        (TimingStep.KEY_CHECK, med(steps.get(TimingStep.KEY_CHECK, [])),
         "the CloudFront Function (sub-ms, not reported); here the real JavaScript under Node.js, its verdicts remembered"),
        (TimingStep.DECISION, med(steps.get(TimingStep.DECISION, [])), "the same code at the edge (Lambda@Edge)"),
        (TimingStep.LOOKUP, med(steps.get(TimingStep.LOOKUP, [])),
         f"GET /_cache/ through CloudFront to S3; here the front and moto's S3 (moto's own GET: {moto['GET']:.2f} ms)"),
        ("front, hops", med(hops), "CloudFront and the function URL; here the local front, its HTTP hop to the app, threads"),
        (TimingStep.ORIGIN_DECISION, med(steps.get(TimingStep.ORIGIN_DECISION, [])), "the same code in the origin adapter"),
        (TimingStep.LEASE, med(steps.get(TimingStep.LEASE, [])),
         f"S3 conditional PUT (a new key: nothing else); here moto's (its own: {moto['PUT']:.2f} ms)"),
        (TimingStep.MODEL, med(steps.get(TimingStep.MODEL, [])), "the endpoint; here the SageMaker facade and the instant backend"),
        ("adapter, rest", med(adapter_rest), "the same (the web app, its worker thread)"),
        (TimingStep.STORE + " *", med(after[TimingStep.STORE]), f"S3 PUT after the answer; here moto's ({moto['PUT']:.2f} ms its own)"),
        (TimingStep.RELEASE + " *", med(after[TimingStep.RELEASE]),
         f"S3 conditional PUT after it (the released marker); here moto's ({moto['PUT']:.2f} ms its own)"),
    ]
    total = p50(ours["miss"])
    print(f"\nWhere this project's MISS goes (p50 per step of {len(ours['timings'])} misses, whole request p50 {total:.2f} ms; "
          "* after the answer, not in it)")
    print(f"{'step':<18}{'ms':>8}  a deployed stage pays")
    for name, ms, who in rows:
        print(f"{name:<18}{ms:>8.2f}  {who}")


if __name__ == "__main__":
    raise SystemExit(main())
