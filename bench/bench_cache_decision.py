"""Benchmark: cache decision time vs a baseline of json.loads(raw) + sha256(raw).

Prints a table; asserts nothing. Run: .venv/bin/python -m bench.bench_cache_decision (make bench).
Goals (docs/cache-key.md): decision <= 3x baseline at 2-40 KB, p99 < 1 ms at 40 KB,
cold import < 50 ms.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import py_compile
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.edge_bundles import LAYOUT_BASELINE_COMMIT, best_importtimes, edge_bundle_at
from config.stages import DEFAULT_STAGE, stage
from lambdas import cache_decision
from lambdas.contract import SETTINGS_ENV
from stacks.bundles import EDGE_HANDLER, lambda_bundle

WORDS = (
    "the model answers questions about invoices refunds shipping policy customer account order status "
    "warehouse région délai livraison garantie return window days business support escalation agent tool "
    "call json schema retrieval context document paragraph section summary"
).split()


def _text(rng: random.Random, n_bytes: int) -> str:
    out, size = [], 0
    while size < n_bytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w.encode()) + 1
    return " ".join(out)


def chat_body(target_bytes: int, seed: int = 7) -> bytes:
    """A realistic greedy chat body: a long system prompt (a third of the body), then
    alternating turns, user 40-400 bytes, assistant 200-1500 bytes."""
    rng = random.Random(seed)
    system = _text(rng, max(60, target_bytes // 3))
    messages = [{"role": "system", "content": system}]
    body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": messages, "temperature": 0,
            "max_tokens": 512, "stop": ["</s>", "\n\nUser:"], "user": "u-123"}
    size = len(json.dumps(body, ensure_ascii=False).encode())
    while size < target_bytes:
        user = len(messages) % 2 == 1
        want = rng.randint(40, 400) if user else rng.randint(200, 1500)
        content = _text(rng, min(want, max(20, target_bytes - size - 40)))
        messages.append({"role": "user" if user else "assistant", "content": content})
        size += len(json.dumps(messages[-1], ensure_ascii=False).encode()) + 1
    return json.dumps(body, ensure_ascii=False).encode()


def _timed_pair(a, b, iterations: int) -> tuple[list[int], list[int]]:
    """Interleaved, so that noise from other processes hits both sides alike."""
    for _ in range(min(200, iterations)):  # warm
        a()
        b()
    ta, tb = [], []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(iterations):
            t0 = clock()
            a()
            t1 = clock()
            b()
            t2 = clock()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    finally:
        gc.enable()
    return ta, tb


def _p(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000  # microseconds


def import_times(bundle: Path, module: str) -> dict[str, float]:
    """Cold import of `module` from a copy of the edge bundle in fresh interpreters, in ms:
    the -X importtime cumulative figure, and the wall-time difference to a bare
    interpreter (median of 15); each from source (a bundle without bytecode compiles it
    at every cold start) and from cached .pyc files."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        for label, env_extra in (("source", {"PYTHONDONTWRITEBYTECODE": "1"}), ("pyc", {})):
            env = {**os.environ, **env_extra}
            env.pop(SETTINGS_ENV, None)  # the bundle's own cache_settings.json
            if label == "pyc":
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                for source in Path(tmp).rglob("*.py"):
                    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
            err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                 capture_output=True, text=True, cwd=tmp, env=env, check=True).stderr
            results[f"{label} importtime"] = next(
                int(line.split("|")[1]) / 1000 for line in err.splitlines() if line.rstrip().endswith(f"| {module}")
            )

            def run(code: str, env=env) -> float:
                runs = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, check=True)
                    runs.append(time.perf_counter() - t0)
                return statistics.median(runs) * 1000

            results[f"{label} wall"] = run(f"import {module}") - run("pass")
    return results


def zipped_size(bundle: Path) -> int:
    """Bytes of the bundle zipped as the CDK zips an asset (deflate)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(p for p in bundle.rglob("*") if p.is_file()):
                z.write(f, f.relative_to(bundle))
        return archive.stat().st_size


def main() -> None:
    settings = stage(DEFAULT_STAGE).edge_cache_settings()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-test"}
    path = "/v1/chat/completions"
    rows = []
    for label, size, iterations in (("0.3 KB", 300, 20000), ("2 KB", 2048, 20000),
                                    ("40 KB", 40960, 3000), ("900 KB", 900 * 1024, 200)):
        raw = chat_body(size)
        decision = cache_decision.decide(path, headers, raw, settings)
        assert decision.cacheable, decision  # a benchmark of the error path would be meaningless

        def baseline(raw=raw):
            json.loads(raw)
            hashlib.sha256(raw).hexdigest()

        def decide(raw=raw):
            cache_decision.decide(path, headers, raw, settings)

        base, dec = _timed_pair(baseline, decide, iterations)
        messages = len(json.loads(raw)["messages"])
        rows.append((label, len(raw), messages, _p(base, .5), _p(base, .99), _p(dec, .5), _p(dec, .99)))

    print(f"python {sys.version.split()[0]}, stage {settings.stage}, route {path}")
    print(f"{'body':>7} {'bytes':>8} {'msgs':>5} | {'base p50':>9} {'base p99':>9} | {'dec p50':>9} {'dec p99':>9} | "
          f"{'x p50':>6} {'x p99':>6}")
    for label, n, messages, bp50, bp99, dp50, dp99 in rows:
        print(f"{label:>7} {n:>8} {messages:>5} | {bp50:>7.1f}us {bp99:>7.1f}us | {dp50:>7.1f}us {dp99:>7.1f}us | "
              f"{dp50 / bp50:>6.2f} {dp99 / bp99:>6.2f}")
    print("base = json.loads(raw) + sha256(raw); dec = cache_decision.decide(); x = dec / base")
    bundle = Path(lambda_bundle("edge", stage(DEFAULT_STAGE)))  # exactly what synth ships
    for module in ("lambdas.cache_decision", "lambdas.edge.handler"):
        t = import_times(bundle, module)
        print(f"cold import {module} (edge bundle), from source: {t['source importtime']:.1f} ms (-X importtime), "
              f"{t['source wall']:.1f} ms (fresh process minus bare interpreter); from .pyc: "
              f"{t['pyc importtime']:.1f} ms, {t['pyc wall']:.1f} ms")
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    print(f"edge function bundle: {zipped_size(bundle)} bytes zipped ({', '.join(files)}); limit 1 MB viewer / 50 MB origin")
    _against_the_layout_baseline(bundle)


def _against_the_layout_baseline(bundle: Path) -> None:
    """The edge bundle before the runtime moved to lambdas/ (issue 19) and now: size and
    cold import of the handler, alternating runs."""
    before = edge_bundle_at(LAYOUT_BASELINE_COMMIT, DEFAULT_STAGE)
    if before is None:
        print("no git history: no layout baseline")
        return
    best = best_importtimes({"before": before, "now": (bundle, EDGE_HANDLER.rsplit(".", 1)[0])})
    print(f"edge handler before the lambdas/ layout ({LAYOUT_BASELINE_COMMIT}) and now, from source, best of 15 "
          "(alternating): " + "; ".join(f"{label} {ms:.1f} ms -X importtime, {cpu:.1f} ms CPU" for label, (ms, cpu) in best.items())
          + f"; zipped bundle {zipped_size(before[0])} -> {zipped_size(bundle)} bytes")
    shutil.rmtree(before[0], ignore_errors=True)


if __name__ == "__main__":
    main()
