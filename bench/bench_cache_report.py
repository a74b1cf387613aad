"""bin/cache-report on 10^5 and 10^6 lines: wall time and peak memory (RSS), each run
in a process of its own, beside `bin/cache-key --jsonl --summary` on the same log (the
baseline measured in the same run: the same decision and replay, without the report's
streaming, time curves or HTML).

The logs are bench/request_log.py's day, compressed into 10 minutes and repeated, half of
each copy's cacheable requests made new (their last message, prompt or input gets the
copy's number), so the distinct keys grow with the log as they do in real traffic.

    .venv/bin/python -m bench.bench_cache_report [--lines 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY_SECONDS = 600
_MEASURE = """
import resource, runpy, sys, time
sys.argv = {argv!r}
started = time.perf_counter()
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
print("MEASURED", time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def base_log() -> list[dict]:
    text = subprocess.run([sys.executable, "bench/request_log.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in text.splitlines()]


def _renamed(body: str, copy: int) -> str:
    obj = json.loads(body)
    suffix = f" (#{copy})"
    if isinstance(obj.get("messages"), list) and obj["messages"]:
        obj["messages"][-1]["content"] = str(obj["messages"][-1].get("content")) + suffix
    elif isinstance(obj.get("prompt"), str):
        obj["prompt"] += suffix
    elif isinstance(obj.get("input"), str):
        obj["input"] += suffix
    return json.dumps(obj, separators=(",", ":"))


def write_log(path: Path, lines: int, base: list[dict]) -> None:
    rng = random.Random(7)
    start = datetime.fromisoformat(base[0]["timestamp"]).timestamp()
    span = max(1.0, datetime.fromisoformat(base[-1]["timestamp"]).timestamp() - start)
    written = copy = 0
    with path.open("w") as out:
        while written < lines:
            for entry in base:
                if written == lines:
                    break
                offset = (datetime.fromisoformat(entry["timestamp"]).timestamp() - start) / span * COPY_SECONDS
                record = dict(entry)
                record["timestamp"] = datetime.fromtimestamp(start + copy * COPY_SECONDS + offset, UTC).isoformat()
                if copy and rng.random() < 0.5:
                    record["body"] = _renamed(entry["body"], copy)
                out.write(json.dumps(record) + "\n")
                written += 1
            copy += 1


def measure(module: str, argv: list[str], stdin: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `python -m module argv` in a process of its own."""
    code = _MEASURE.format(argv=[module, *argv], module=module)
    with (stdin.open("rb") if stdin else open("/dev/null", "rb")) as source:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdin=source, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, check=True)
    line = [x for x in result.stderr.splitlines() if x.startswith("MEASURED")][-1]
    _, seconds, rss_kib = line.split()
    return float(seconds), float(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    base = base_log()
    print(f"bin/cache-report vs bin/cache-key --summary (baseline), one process each; log: bench/request_log.py's "
          f"{len(base)} requests repeated ({COPY_SECONDS} s per copy, half the cacheable ones new per copy)")
    print(f"{'lines':>9} {'log MB':>7} {'report s':>9} {'report MiB':>11} {'lines/s':>8} "
          f"{'cache-key s':>12} {'cache-key MiB':>14} {'time ratio':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for lines in args.lines:
            log = Path(tmp) / f"log-{lines}.jsonl"
            started = time.perf_counter()
            write_log(log, lines, base)
            made = time.perf_counter() - started
            report_s, report_mib = measure("cli.cache_report", [str(log), "--out", str(Path(tmp) / "r.html"),
                                                                "--no-progress"])
            key_s, key_mib = measure("cli.cache_key", ["--jsonl", "--summary"], stdin=log)
            print(f"{lines:>9} {log.stat().st_size / 1e6:>7.0f} {report_s:>9.1f} {report_mib:>11.0f} "
                  f"{lines / report_s:>8.0f} {key_s:>12.1f} {key_mib:>14.0f} {report_s / key_s:>10.2f}x"
                  f"   (log written in {made:.0f} s)", flush=True)
            log.unlink()


if __name__ == "__main__":
    main()
