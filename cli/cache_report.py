"""What the edge cache would save on a request log, as one self-contained HTML report.

  bin/cache-report LOG [--stage NAME] [--out report.html] [--json]

LOG is this project's JSONL ({"path", "headers", "body"|"body_b64"} per line, with an
optional "tenant", "client" and "timestamp": ISO 8601 or epoch seconds), the OpenAI
Batch API's input format ({"custom_id", "method", "url", "body"}), or gzip of either;
`-` reads stdin. Each request goes through the real cache decision (lambdas/cache_decision.py)
with the stage's settings, and through cli/cache_key.py's replay: the same hit ratio as
`bin/cache-key --jsonl --summary`, next to a byte-exact hash of the body. The log is
streamed: memory grows with the distinct keys, not with the lines. Bad lines are counted
and reported, never fatal. Prices and speeds: config/prices.py, each overridable here.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import re
import sys
from array import array
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cli import charts
from cli.cache_key import HitSummary, byte_exact_key, request_from_record
from config import prices
from config.settings import StageSettings
from config.stages import DEFAULT_STAGE, STAGES
from lambdas import cache_decision
from lambdas.contract import CHAT_ROUTE, COMPLETIONS_ROUTE, INVOCATIONS_ROUTE, TTL_HEADER

# The TTLs the curve is drawn at (seconds), besides the stage's default and maximum.
TTL_POINTS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 2 * 86_400, 3 * 86_400, 7 * 86_400)
# Time to the next identical key: the histogram's upper bin edges (seconds).
GAP_EDGES = (1, 10, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86_400, 3 * 86_400, 7 * 86_400)
# Without timestamps: requests apart (the log's order is the order of arrival).
GAP_EDGES_REQUESTS = (1, 2, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 100_000)
MAX_CLIENTS = 1_000  # distinct clients counted by name; the rest together
MAX_BAD_EXAMPLES = 20
GENERATION_ROUTES = (CHAT_ROUTE, COMPLETIONS_ROUTE, INVOCATIONS_ROUTE)
OTHER_CLIENTS = "(other clients)"
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,200})"')
_MAX_TOKENS = re.compile(rb'"max_(?:completion_|new_)?tokens"\s*:\s*(\d{1,9})\b')


# -- reading ------------------------------------------------------------------------------


def open_log(path: str):
    """A binary stream of the log's lines, gunzipped when it starts with gzip's magic
    bytes, and the raw stream whose position says how far it got."""
    raw = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 - closed by the caller
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw), raw
    return raw, raw


@dataclass(slots=True)
class LogRequest:
    number: int
    path: str
    headers: dict
    body: bytes
    tenant: str | None
    timestamp: float | None
    client: str
    model: str | None = None
    max_tokens: int | None = None
    body_object: dict | None = None


def _bad(number: int, message: str) -> str:
    return f"line {number}: {message}"


def _timestamp(value) -> float | None:
    """Epoch seconds from ISO 8601 text or a number (seconds; milliseconds above 1e11)."""
    if value is None:
        return None
    if type(value) in (int, float):
        if not math.isfinite(value):
            raise ValueError("timestamp is not finite")
        return value / 1000 if value > 1e11 else float(value)
    if type(value) is str:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise ValueError("timestamp must be ISO 8601 text or epoch seconds")


def _client(record: dict, headers: dict, tenant: str | None) -> str:
    """Who sent it: the log's "client", else the verified tenant, else a fingerprint of
    the API key (never the key), else the User-Agent."""
    if type(record.get("client")) is str and record["client"]:
        return record["client"]
    if tenant:
        return f"tenant {tenant}"
    lowered = {k.lower(): v for k, v in headers.items()}
    key = lowered.get("x-api-key") or lowered.get("authorization", "").removeprefix("Bearer ").strip()
    if key:
        return f"key sha256:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    return lowered.get("user-agent") or "(unknown)"


def parse_line(number: int, line: bytes) -> LogRequest | str:
    """One log line as a request, or why it is a bad line."""
    try:
        record = json.loads(line)
    except ValueError as e:  # also UnicodeDecodeError
        return _bad(number, f"not JSON ({str(e)[:80]})")
    if type(record) is not dict:
        return _bad(number, "not a JSON object")
    try:
        timestamp = _timestamp(record.get("timestamp"))
    except (ValueError, TypeError, OverflowError) as e:
        return _bad(number, f"bad timestamp ({str(e)[:80]})")
    if "custom_id" in record or "url" in record:  # the OpenAI Batch API's input line
        url, body, method = record.get("url"), record.get("body"), record.get("method")
        if type(url) is not str or not url.startswith("/"):
            return _bad(number, "batch line: 'url' must be a path such as /v1/chat/completions")
        if method != "POST":
            return _bad(number, "batch line: 'method' must be POST")
        if type(body) is not dict:
            return _bad(number, "batch line: 'body' must be a JSON object")
        # What an OpenAI client sends for it: compact JSON, in the line's key order.
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        headers = {"content-type": "application/json"}
        request = LogRequest(number, url, headers, raw, None, timestamp, "(batch file)", body_object=body)
    else:
        parsed = request_from_record(number, record)
        if isinstance(parsed, dict):
            return parsed["error"]["message"]
        path, headers, body, tenant = parsed
        request = LogRequest(number, path, headers, body, tenant, timestamp, _client(record, headers, tenant))
        # Labels and the GPU-time estimate only (never a key): the first "model" string and
        # max-tokens number in the body, read without parsing it a second time.
        model = _MODEL.search(body)
        request.model = model.group(1).decode("utf-8", "replace") if model else None
        limit = _MAX_TOKENS.search(body)
        request.max_tokens = int(limit.group(1)) or None if limit else None
        return request
    obj = request.body_object
    if obj is not None:
        model = obj.get("model")
        request.model = model if type(model) is str else None
        for name in ("max_completion_tokens", "max_tokens", "max_new_tokens"):
            value = obj.get(name)
            if type(value) is int and value > 0:
                request.max_tokens = value
                break
        if request.max_tokens is None and type(obj.get("parameters")) is dict:  # TGI-style /invocations
            value = obj["parameters"].get("max_new_tokens")
            request.max_tokens = value if type(value) is int and value > 0 else None
    return request


# -- counting -----------------------------------------------------------------------------


@dataclass
class Assumptions:
    """The prices and speeds a report was computed with (config/prices.py unless overridden)."""

    instance_type: str
    instance_per_hour: float
    decode_tokens_per_second: float
    prefill_tokens_per_second: float
    streams_per_instance: float
    output_tokens: int
    chars_per_token: float
    gpu_seconds_per_miss: float | None
    cloudfront_request: float
    lambda_edge_request: float
    lambda_edge_gb_second: float
    lambda_edge_memory_gb: float
    lambda_edge_ms: float
    s3_put: float
    s3_get: float
    logs_per_gb: float
    log_bytes_edge: float
    log_bytes_origin: float
    log_days: float | None  # stated; None: from the timestamps

    def gpu_seconds(self, request: LogRequest) -> float:
        """The GPU time one request takes: its prompt read, then its answer generated
        one token at a time (embeddings: the prompt only)."""
        if self.gpu_seconds_per_miss is not None:
            return self.gpu_seconds_per_miss
        prompt_tokens = len(request.body) / self.chars_per_token
        seconds = prompt_tokens / self.prefill_tokens_per_second
        if request.path in GENERATION_ROUTES:
            output = min(request.max_tokens, self.output_tokens) if request.max_tokens else self.output_tokens
            seconds += output / self.decode_tokens_per_second
        return seconds


def assumptions_for(settings: StageSettings, args: argparse.Namespace | None = None) -> Assumptions:
    def given(name: str, default):
        value = getattr(args, name, None) if args is not None else None
        return default if value is None else value

    instance = given("instance_type", settings.endpoint.instance_type)

    def fact(table: dict) -> float | None:
        found = table.get(instance)
        return found.value if found else None

    out = Assumptions(
        instance_type=instance,
        instance_per_hour=given("instance_price", fact(prices.SAGEMAKER_INSTANCE_PER_HOUR)),
        decode_tokens_per_second=given("decode_tps", fact(prices.DECODE_TOKENS_PER_SECOND)),
        prefill_tokens_per_second=given("prefill_tps", fact(prices.PREFILL_TOKENS_PER_SECOND)),
        streams_per_instance=given("streams_per_instance", settings.endpoint.target_concurrency),
        output_tokens=given("output_tokens", int(prices.OUTPUT_TOKENS_PER_ANSWER.value)),
        chars_per_token=prices.CHARS_PER_TOKEN.value,
        gpu_seconds_per_miss=given("gpu_seconds_per_miss", None),
        cloudfront_request=given("cloudfront_request_price", prices.CLOUDFRONT_HTTPS_REQUEST.value),
        lambda_edge_request=given("lambda_edge_request_price", prices.LAMBDA_EDGE_REQUEST.value),
        lambda_edge_gb_second=prices.LAMBDA_EDGE_GB_SECOND.value,
        lambda_edge_memory_gb=prices.LAMBDA_EDGE_MEMORY_GB,
        lambda_edge_ms=given("lambda_edge_ms", prices.LAMBDA_EDGE_MS_PER_REQUEST.value),
        s3_put=prices.S3_PUT_REQUEST.value,
        s3_get=prices.S3_GET_REQUEST.value,
        logs_per_gb=prices.CLOUDWATCH_LOGS_PER_GB.value,
        log_bytes_edge=prices.LOG_BYTES_PER_EDGE_REQUEST.value,
        log_bytes_origin=prices.LOG_BYTES_PER_ORIGIN_REQUEST.value,
        log_days=given("log_days", None),
    )
    missing = [n for n in ("instance_per_hour", "decode_tokens_per_second", "prefill_tokens_per_second")
               if getattr(out, n) is None]
    if missing:
        raise SystemExit(
            f"config/prices.py has no {', '.join(missing)} for {instance}: give --instance-price, --decode-tps and "
            "--prefill-tps"
        )
    return out


@dataclass
class Group:
    requests: int = 0
    cacheable: int = 0
    hits: int = 0
    exact_hits: int = 0


@dataclass
class Tally:
    """Everything the report shows, counted in one pass over the log."""

    stage: str
    default_ttl: int
    max_ttl: int
    ttl_points: list[int]
    lines: int = 0
    bad_lines: int = 0
    bad_examples: list[str] = field(default_factory=list)
    batch_lines: int = 0
    timestamped: int = 0
    first_time: float | None = None
    last_time: float | None = None
    by_route: dict[str, Group] = field(default_factory=dict)
    by_model: dict[str, Group] = field(default_factory=dict)
    by_tenant: dict[str, Group] = field(default_factory=dict)
    by_client: dict[str, Group] = field(default_factory=dict)
    uncacheable: dict[str, dict[str, int]] = field(default_factory=dict)  # reason -> client -> count
    lookups: int = 0
    stored: int = 0  # misses whose answer is stored (S3 PUT, and the lease's)
    gpu_seconds_saved: float = 0.0  # by unbounded hits
    gpu_seconds_saved_at_ttl: float = 0.0  # by hits at the stage's default TTL (timestamps only)
    hits_at_ttl: list[int] = field(default_factory=list)  # per ttl_points
    gaps: list[int] = field(default_factory=list)  # histogram, per GAP_EDGES (+1 open bin)
    gap_unit: str = "seconds"
    repeated_keys: int = 0


class Report:
    """One pass over the log: the decision for every request, the cache replayed with
    these keys and with byte-exact keys, and, where the log has timestamps, the replay at
    each TTL and the time to each key's next request."""

    def __init__(self, settings: StageSettings, assumptions: Assumptions) -> None:
        self.settings = settings
        self.cache_settings = settings.edge_cache_settings()
        self.assumptions = assumptions
        cache = settings.cache
        points = sorted({*[p for p in TTL_POINTS if p <= max(7 * 86_400, cache.max_ttl_seconds)],
                         cache.default_ttl_seconds, cache.max_ttl_seconds})
        self.tally = Tally(settings.name, cache.default_ttl_seconds, cache.max_ttl_seconds, points)
        self.tally.hits_at_ttl = [0] * len(points)
        self.summary = HitSummary()
        self._ids: dict[int, int] = {}  # key (64 bits) -> index into the arrays below
        self._last_seen = array("d")  # time (or line number) of the key's last request
        self._seen_twice = bytearray()
        # Per key and TTL point: when its stored answer was written and the writer's TTL.
        self._stored_at = array("d")
        self._writer_ttl = array("d")
        self._ttl_index = points.index(cache.default_ttl_seconds)
        self._gaps_by_time: list[int] = [0] * (len(GAP_EDGES) + 1)
        self._gaps_by_line: list[int] = [0] * (len(GAP_EDGES_REQUESTS) + 1)

    def add_bad(self, message: str) -> None:
        t = self.tally
        t.lines += 1
        t.bad_lines += 1
        if len(t.bad_examples) < MAX_BAD_EXAMPLES:
            t.bad_examples.append(message)

    def add(self, request: LogRequest) -> None:
        t, a = self.tally, self.assumptions
        t.lines += 1
        if request.client == "(batch file)":
            t.batch_lines += 1
        decision = cache_decision.decide(
            request.path, request.headers, request.body, self.cache_settings, tenant=request.tenant
        )
        scope = (request.tenant or "") if self.cache_settings.tenant_scoped else ""
        hit, exact_hit = self.summary.add(
            decision.as_dict(), decision.lookup, decision.store, byte_exact_key(request.path, scope, request.body)
        )
        client = request.client
        if client not in t.by_client and len(t.by_client) >= MAX_CLIENTS:
            client = OTHER_CLIENTS
        groups = [
            t.by_route.setdefault(request.path, Group()),
            t.by_model.setdefault(request.model or "(none)", Group()),
            t.by_client.setdefault(client, Group()),
        ]
        if request.tenant is not None:
            groups.append(t.by_tenant.setdefault(request.tenant, Group()))
        for g in groups:
            g.requests += 1
            g.cacheable += decision.cacheable
            g.hits += hit
            g.exact_hits += exact_hit
        if not decision.cacheable:
            per_client = t.uncacheable.setdefault(decision.reason, {})
            per_client[client] = per_client.get(client, 0) + 1
        if decision.cacheable and decision.lookup:
            t.lookups += 1
        if not hit:
            t.stored += decision.cacheable and decision.store
        gpu_seconds = a.gpu_seconds(request) if decision.cacheable else 0.0
        if hit:
            t.gpu_seconds_saved += gpu_seconds
        if request.timestamp is not None:
            t.timestamped += 1
            t.first_time = request.timestamp if t.first_time is None else min(t.first_time, request.timestamp)
            t.last_time = request.timestamp if t.last_time is None else max(t.last_time, request.timestamp)
        if decision.cacheable:
            self._replay_in_time(request, decision, gpu_seconds)

    def _replay_in_time(self, request: LogRequest, decision, gpu_seconds: float) -> None:
        """Time to the key's next request, and the cache replayed at every TTL point: an
        answer stored at s with the writer's TTL w serves a reader at now with its own
        TTL r when now - s <= min(w, r) (docs/architecture.md, Freshness)."""
        t = self.tally
        k = int(decision.key[:16], 16)
        index = self._ids.get(k)
        now = request.timestamp if request.timestamp is not None else float(request.number)
        points = t.ttl_points
        explicit = None
        if request.headers and any(name.lower() == TTL_HEADER for name in request.headers):
            explicit = decision.ttl_seconds  # the client's own, clamped to the stage's maximum
        if index is None:  # a new key: a miss at every TTL, stored where it may be
            self._ids[k] = len(self._last_seen)
            self._last_seen.append(now)
            self._seen_twice.append(0)
            if request.timestamp is not None and decision.store:
                own = [ttl if explicit is None else min(explicit, ttl) for ttl in points]
                self._stored_at.extend([now if w > 0 else -math.inf for w in own])
                self._writer_ttl.extend(own)
            else:
                self._stored_at.extend([-math.inf] * len(points))
                self._writer_ttl.extend([0.0] * len(points))
            return
        else:
            gap = max(0.0, now - self._last_seen[index])
            if request.timestamp is not None:
                self._gaps_by_time[_bin(gap, GAP_EDGES)] += 1
            else:
                self._gaps_by_line[_bin(gap, GAP_EDGES_REQUESTS)] += 1
            self._last_seen[index] = now
            if not self._seen_twice[index]:
                self._seen_twice[index] = 1
                t.repeated_keys += 1
        if request.timestamp is None:
            return
        base = index * len(points)
        for j, ttl in enumerate(points):
            own = ttl if explicit is None else min(explicit, ttl)
            slot = base + j
            age = now - self._stored_at[slot]
            if decision.lookup and age <= min(own, self._writer_ttl[slot]):
                t.hits_at_ttl[j] += 1
                if j == self._ttl_index:
                    t.gpu_seconds_saved_at_ttl += gpu_seconds
            elif decision.store and own > 0:
                self._stored_at[slot] = now
                self._writer_ttl[slot] = own

    def result(self) -> dict:
        """The report's figures (what the HTML draws; `--json` prints them)."""
        t, a, s = self.tally, self.assumptions, self.summary
        t.gaps = self._gaps_by_time if t.timestamped else self._gaps_by_line
        t.gap_unit = "seconds" if t.timestamped else "requests"
        summary = s.as_dict(t.stage)
        timed = t.timestamped == s.requests and s.requests > 0
        span = (t.last_time - t.first_time) if timed else None
        if a.log_days is not None:
            days, days_from = a.log_days, "stated (--log-days)"
        elif timed and span and span > 0:
            days, days_from = span / 86_400, "the log's timestamps"
        else:
            days, days_from = 1.0, "assumed: one day (no timestamps; give --log-days)"
        hits = t.hits_at_ttl[self._ttl_index] if timed else s.hits
        gpu_seconds = t.gpu_seconds_saved_at_ttl if timed else t.gpu_seconds_saved
        forwarded = s.requests - hits
        per_day = 1 / days
        instance_hours = gpu_seconds / a.streams_per_instance / 3600
        costs = {
            "CloudFront requests": (s.requests + t.lookups) * a.cloudfront_request,
            "Lambda@Edge": (s.requests + forwarded) * (
                a.lambda_edge_request + a.lambda_edge_memory_gb * a.lambda_edge_ms / 1000 * a.lambda_edge_gb_second
            ),
            "S3 requests": t.lookups * a.s3_get + 2 * t.stored * a.s3_put,
            "CloudWatch Logs": (s.requests * a.log_bytes_edge + forwarded * a.log_bytes_origin) / 1e9 * a.logs_per_gb,
        }
        saved = instance_hours * a.instance_per_hour
        added = sum(costs.values())
        return {
            "stage": t.stage,
            "lines": t.lines,
            "bad_lines": t.bad_lines,
            "bad_examples": t.bad_examples,
            "batch_lines": t.batch_lines,
            "summary": summary,
            "by_route": {k: asdict(v) for k, v in sorted(t.by_route.items())},
            "by_model": {k: asdict(v) for k, v in sorted(t.by_model.items(), key=lambda kv: -kv[1].requests)},
            "by_tenant": {k: asdict(v) for k, v in sorted(t.by_tenant.items(), key=lambda kv: -kv[1].requests)},
            "by_client": {k: asdict(v) for k, v in sorted(t.by_client.items(), key=lambda kv: -kv[1].requests)},
            "uncacheable": {
                reason: dict(sorted(clients.items(), key=lambda kv: -kv[1]))
                for reason, clients in sorted(t.uncacheable.items(), key=lambda kv: -sum(kv[1].values()))
            },
            "timestamps": timed,
            "span_seconds": span,
            "default_ttl_seconds": t.default_ttl,
            "max_ttl_seconds": t.max_ttl,
            "ttl_curve": [
                {"ttl_seconds": ttl, "hits": n, "hit_ratio": round(n / s.requests, 4) if s.requests else 0.0}
                for ttl, n in zip(t.ttl_points, t.hits_at_ttl, strict=True)
            ] if timed else [],
            "repeat_gaps": {"unit": t.gap_unit, "edges": list(GAP_EDGES if timed else GAP_EDGES_REQUESTS),
                            "counts": t.gaps, "repeated_keys": t.repeated_keys},
            "savings": {
                "days_in_log": days,
                "days_from": days_from,
                "hits": hits,
                "hits_from": f"replayed at the stage's TTL ({_duration(t.default_ttl)})" if timed else
                "every repeat (no timestamps: no TTL applied)",
                "gpu_seconds": gpu_seconds,
                "instance_hours_per_day": instance_hours * per_day,
                "dollars_saved_per_day": saved * per_day,
                "dollars_saved_per_month": saved * per_day * prices.DAYS_PER_MONTH,
                "costs_added_per_day": {k: v * per_day for k, v in costs.items()},
                "dollars_added_per_day": added * per_day,
                "dollars_added_per_month": added * per_day * prices.DAYS_PER_MONTH,
                "net_per_month": (saved - added) * per_day * prices.DAYS_PER_MONTH,
            },
            "assumptions": asdict(a),
        }


def _bin(value: float, edges: tuple) -> int:
    for i, edge in enumerate(edges):
        if value <= edge:
            return i
    return len(edges)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def run(path: str, settings: StageSettings, assumptions: Assumptions, *, progress: bool | None = None) -> dict:
    """The report's figures for the log at `path` (streamed; gzip or not)."""
    from tqdm import tqdm

    report = Report(settings, assumptions)
    stream, raw = open_log(path)
    try:
        size = Path(path).stat().st_size if path != "-" else None
    except OSError:
        size = None
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="reading log", disable=not show, file=sys.stderr)
    done = 0
    try:
        for number, line in enumerate(stream, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            request = parse_line(number, line)
            if isinstance(request, str):
                report.add_bad(request)
            else:
                report.add(request)
            if number % 2048 == 0 and size:
                position = raw.tell()
                bar.update(position - done)
                done = position
    except (OSError, EOFError) as e:  # a truncated gzip stream: what was read counts
        report.add_bad(f"after line {report.tally.lines}: the log ends early ({e})")
    finally:
        if size:
            bar.update(size - done)
        bar.close()
        if path != "-":
            raw.close()
    return report.result()


# -- the HTML -----------------------------------------------------------------------------


def _pct(n: float) -> str:
    return f"{n:.1%}"


def _ratio_chart(chart_id: str, title: str, question: str, groups: dict[str, dict], total: dict) -> charts.Chart:
    names = ["all requests", *groups]
    rows = [total, *groups.values()]

    def ratio(row: dict, key: str) -> float:
        return round(100 * row[key] / row["requests"], 2) if row["requests"] else 0.0

    option = charts.base_option(y_name="hit ratio (%)")
    option["xAxis"] = {"type": "category", "data": names, "axisLabel": {"interval": 0, "rotate": 20 if len(names) > 4 else 0}}
    option["yAxis"]["max"] = 100
    option["series"] = [
        {"name": "this project's keys", "type": "bar", "data": [ratio(r, "hits") for r in rows],
         "label": {"show": True, "position": "top", "formatter": "{c} %"}},
        {"name": "byte-exact body hash", "type": "bar", "data": [ratio(r, "exact_hits") for r in rows],
         "label": {"show": True, "position": "top", "formatter": "{c} %"}},
    ]
    table = (["", "requests", "cacheable", "hits", "hit ratio", "byte-exact hits", "byte-exact hit ratio"],
             [[n, r["requests"], r["cacheable"], r["hits"], _pct(r["hits"] / r["requests"] if r["requests"] else 0),
               r["exact_hits"], _pct(r["exact_hits"] / r["requests"] if r["requests"] else 0)] for n, r in zip(names, rows, strict=True)])
    return charts.Chart(chart_id, title, question, option, table=table)


def charts_for(result: dict) -> list[charts.Chart]:
    s = result["summary"]
    total = {"requests": s["requests"], "cacheable": s["cacheable"], "hits": s["hits"], "exact_hits": s["byte_exact_hits"]}
    out = [
        _ratio_chart("hit-ratio-by-route", "Hit ratio by route: these keys against a byte-exact body hash",
                     "How many requests the cache answers, and how many a gateway keying on the raw body would "
                     "(an unbounded cache replayed over the log, as bin/cache-key --summary does).",
                     result["by_route"], total),
        _ratio_chart("hit-ratio-by-model", "Hit ratio by model", "Which models' traffic repeats.", result["by_model"], total),
    ]
    if result["by_tenant"]:
        out.append(_ratio_chart("hit-ratio-by-tenant", "Hit ratio by tenant",
                                "Which tenants' traffic repeats (tenant-scoped stages never share answers between "
                                "tenants).", result["by_tenant"], total))
    # Why not cacheable, and who sends those requests.
    reasons = result["uncacheable"]
    clients_total: dict[str, int] = {}
    for per_client in reasons.values():
        for client, n in per_client.items():
            clients_total[client] = clients_total.get(client, 0) + n
    top_clients = sorted(clients_total, key=lambda c: -clients_total[c])[:10]
    reason_names = list(reasons)
    option = charts.base_option(x_name="")
    option["tooltip"] = {"trigger": "axis", "axisPointer": {"type": "shadow"}}
    option["grid"]["left"] = 20
    option["xAxis"] = {"type": "value", "name": "requests", "nameLocation": "middle", "nameGap": 28, "minInterval": 1}
    option["yAxis"] = {"type": "category", "data": reason_names or ["(every request was cacheable)"], "inverse": True}
    option["series"] = [
        {"name": client, "type": "bar", "stack": "clients",
         "data": [reasons[r].get(client, 0) for r in reason_names] or [0]}
        for client in top_clients
    ]
    others = [sum(n for c, n in reasons[r].items() if c not in top_clients) for r in reason_names]
    if any(others):
        option["series"].append({"name": "other clients", "type": "bar", "stack": "clients", "data": others})
    if not option["series"]:
        option["series"] = [{"name": "requests", "type": "bar", "data": [0]}]
    out.append(charts.Chart(
        "not-cacheable", "Why requests are not cacheable, and which clients send them",
        "The cache decision's reasons for every request it will not store, split by client.",
        option, height=max(260, 60 + 34 * len(reason_names)),
        notes=["Clients: the log's \"client\" field, else the verified tenant, else a SHA-256 fingerprint of the "
               "API key (never the key), else the User-Agent."],
        table=(["reason", "requests", "clients"],
               [[r, sum(c.values()), ", ".join(f"{k} {v}" for k, v in list(c.items())[:5])] for r, c in reasons.items()]),
    ))
    # How soon repeats come.
    gaps = result["repeat_gaps"]
    timed = gaps["unit"] == "seconds"
    edges = gaps["edges"]
    labels = [f"≤ {_duration(x) if timed else x}" for x in edges] + [f"> {_duration(edges[-1]) if timed else edges[-1]}"]
    option = charts.base_option(legend=False, y_name="repeats")
    option["tooltip"] = {"trigger": "axis", "axisPointer": {"type": "shadow"}}
    option["xAxis"] = {"type": "category", "data": labels, "name": "time to the next identical key" if timed
                       else "requests to the next identical key", "nameLocation": "middle", "nameGap": 30,
                       "axisLabel": {"interval": 0, "rotate": 30}}
    option["series"] = [{"name": "repeats", "type": "bar", "data": gaps["counts"]}]
    out.append(charts.Chart(
        "repeat-gaps", "How soon repeats come", "The time from a cacheable request to the next request with the same "
        "key: what a TTL must cover to turn repeats into hits.", option,
        notes=[f"{gaps['repeated_keys']} of {s['distinct_keys']} keys come back at least once."]
        + ([] if timed else ["The log has no timestamps: distances are counted in requests."]),
        table=(["to the next identical key", "repeats"], [[lbl, n] for lbl, n in zip(labels, gaps["counts"], strict=True)]),
    ))
    # Hit ratio at each TTL.
    curve = result["ttl_curve"]
    if curve:
        labels = [_duration(p["ttl_seconds"]) for p in curve]
        option = charts.base_option(legend=False, y_name="hit ratio (%)")
        option["xAxis"] = {"type": "category", "data": labels, "name": "TTL", "nameLocation": "middle", "nameGap": 30,
                           "boundaryGap": False}
        option["yAxis"]["max"] = 100
        stage_ttl = _duration(result["default_ttl_seconds"])
        option["series"] = [{
            "name": "hit ratio", "type": "line", "data": [round(100 * p["hit_ratio"], 2) for p in curve],
            "label": {"show": True, "formatter": "{c} %"},
            "markLine": {"symbol": "none", "data": [
                {"xAxis": stage_ttl, "label": {"formatter": f"stage {result['stage']} TTL {stage_ttl}"}},
                {"xAxis": _duration(result["max_ttl_seconds"]), "label": {"formatter": "max TTL"},
                 "lineStyle": {"color": "#7f7f7f", "type": "dotted"}},
            ]},
        }]
        out.append(charts.Chart(
            "ttl-curve", "Hit ratio at each TTL", "The hit ratio the stage would reach if answers lived this long "
            "(the log replayed at each TTL; a stored answer expires, the next request stores it again).", option,
            table=(["TTL", "hits", "hit ratio"], [[lbl, p["hits"], _pct(p["hit_ratio"])] for lbl, p in zip(labels, curve, strict=True)]),
        ))
    # Dollars.
    sv, a = result["savings"], result["assumptions"]
    added = sv["costs_added_per_day"]
    option = charts.base_option(y_name="USD per month")
    option["tooltip"] = {"trigger": "axis", "axisPointer": {"type": "shadow"}}
    option["xAxis"] = {"type": "category", "data": ["saved: GPU instance time", "added: edge requests"]}
    option["series"] = [
        {"name": f"{a['instance_type']} hours saved", "type": "bar", "stack": "usd",
         "data": [round(sv["dollars_saved_per_month"], 2), 0]},
        *[{"name": name, "type": "bar", "stack": "usd", "data": [0, round(v * prices.DAYS_PER_MONTH, 2)]}
          for name, v in added.items()],
    ]
    rows = [["GPU instance-hours saved", f"{sv['instance_hours_per_day']:.3f} per day",
             f"{sv['instance_hours_per_day'] * prices.DAYS_PER_MONTH:.2f} per month"],
            ["saved", f"${sv['dollars_saved_per_day']:.2f} per day", f"${sv['dollars_saved_per_month']:.2f} per month"]]
    rows += [[f"added: {k}", f"${v:.4f} per day", f"${v * prices.DAYS_PER_MONTH:.2f} per month"] for k, v in added.items()]
    rows.append(["net", "", f"${sv['net_per_month']:.2f} per month"])
    out.append(charts.Chart(
        "dollars", "GPU time and dollars saved against what the edge adds",
        "What the hits are worth in GPU instance time at the stage's instance type and price, against the CloudFront, "
        "Lambda@Edge, S3 and CloudWatch charges the same traffic adds.", option,
        notes=[f"Traffic: {result['summary']['requests']} requests over {sv['days_in_log']:.4g} days ({sv['days_from']}); "
               f"hits: {sv['hits']} ({sv['hits_from']}).",
               f"A hit saves the GPU time of its request: prompt tokens (body bytes / {a['chars_per_token']:g}) at "
               f"{a['prefill_tokens_per_second']:g} tokens/s, and the answer (at most max_tokens, else "
               f"{a['output_tokens']} tokens) at {a['decode_tokens_per_second']:g} tokens/s per stream"
               if a["gpu_seconds_per_miss"] is None else
               f"A hit saves {a['gpu_seconds_per_miss']:g} GPU seconds (stated: --gpu-seconds-per-miss).",
               f"An instance serves {a['streams_per_instance']:g} streams at once (the stage's scaling target), "
               f"at ${a['instance_per_hour']:g}/h. Savings become dollars only above the stage's minimum instances."],
        table=(["", "per day", "per month"], rows),
    ))
    return out


def _facts_table() -> str:
    rows = []
    for name in sorted(vars(prices)):
        value = getattr(prices, name)
        if isinstance(value, prices.Fact):
            rows.append((name, f"{value.value:g} {value.unit}", value.as_of, value.source))
        elif isinstance(value, dict) and value and all(isinstance(v, prices.Fact) for v in value.values()):
            rows += [(f"{name}[{k}]", f"{v.value:g} {v.unit}", v.as_of, v.source) for k, v in value.items()]
    return ("<table class='facts'><thead><tr><th>fact</th><th>value</th><th>as of</th><th>source</th></tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{charts.e(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>")


def render_html(result: dict, log_name: str) -> str:
    s, sv = result["summary"], result["savings"]
    drawn = charts_for(result)
    kpis = [
        (f"{s['requests']:,}", "requests"),
        (_pct(s["hit_ratio"]), "hit ratio, these keys"),
        (_pct(s["byte_exact_hit_ratio"]), "hit ratio, byte-exact"),
        (f"{sv['instance_hours_per_day']:.2f}", "GPU instance-hours saved per day"),
        (f"${sv['net_per_month']:,.2f}", "net per month"),
        (f"{result['bad_lines']:,}", "bad lines"),
    ]
    batch = f", {result['batch_lines']:,} in the OpenAI Batch format" if result["batch_lines"] else ""
    bad = ""
    if result["bad_lines"]:
        bad = ("<section class='chart-card'><h2>Bad lines</h2><p class='question'>Counted and skipped "
               f"({result['bad_lines']} of {result['lines']}); the first ones:</p><ul>"
               + "".join(f"<li><code>{charts.e(m)}</code></li>" for m in result["bad_examples"]) + "</ul></section>")
    body = (
        f"<h1>Edge cache report: {charts.e(log_name)}</h1>"
        f"<p class='meta'>Stage <b>{charts.e(result['stage'])}</b> (its cache settings and TTL "
        f"{_duration(result['default_ttl_seconds'])}); {result['lines']:,} lines"
        f"{batch}; "
        f"charts by Apache ECharts {charts.e(charts.echarts_version())}, embedded (the file opens offline).</p>"
        "<div class='kpis'>" + "".join(f"<div class='kpi'><b>{charts.e(v)}</b><span>{charts.e(k)}</span></div>" for v, k in kpis)
        + "</div><div class='cards'>" + "".join(c.html() for c in drawn) + bad + "</div>"
        "<h2>Prices and speeds</h2><p class='meta'>config/prices.py, overridable by bin/cache-report's flags; "
        f"this report used: <code>{charts.e(json.dumps(result['assumptions']))}</code></p>" + _facts_table()
    )
    return charts.page(f"Edge cache report: {log_name}", body, drawn)


def _text(result: dict, out: Path | None) -> str:
    s, sv = result["summary"], result["savings"]
    lines = [
        f"stage {result['stage']}: {result['lines']} lines, {result['bad_lines']} bad",
        f"hit ratio {s['hit_ratio']:.1%} with these keys, {s['byte_exact_hit_ratio']:.1%} byte-exact "
        f"({s['hits']} and {s['byte_exact_hits']} hits of {s['requests']} requests)",
    ]
    for p in result["ttl_curve"]:
        if p["ttl_seconds"] == result["default_ttl_seconds"]:
            lines.append(f"at the stage's TTL ({_duration(p['ttl_seconds'])}): {p['hit_ratio']:.1%}")
    lines.append(
        f"saved {sv['instance_hours_per_day']:.3f} GPU instance-hours/day = ${sv['dollars_saved_per_month']:.2f}/month; "
        f"added ${sv['dollars_added_per_month']:.2f}/month; net ${sv['net_per_month']:.2f}/month "
        f"(over {sv['days_in_log']:.4g} days: {sv['days_from']})"
    )
    if out:
        lines.append(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cache-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="request log: JSONL or OpenAI batch input, gzip or not; - for stdin")
    parser.add_argument("--stage", choices=sorted(STAGES), default=DEFAULT_STAGE, help=f"default {DEFAULT_STAGE}")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML report (default report.html)")
    parser.add_argument("--json", action="store_true", help="print the report's figures as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal otherwise)")
    facts = parser.add_argument_group("prices and speeds (defaults: config/prices.py and the stage's settings)")
    facts.add_argument("--log-days", type=float, help="days of traffic the log holds (default: its timestamps' span)")
    facts.add_argument("--instance-type", help="GPU instance type (default: the stage's)")
    facts.add_argument("--instance-price", type=float, help="USD per instance-hour")
    facts.add_argument("--decode-tps", type=float, help="generated tokens per second of one stream")
    facts.add_argument("--prefill-tps", type=float, help="prompt tokens per second")
    facts.add_argument("--streams-per-instance", type=float, help="concurrent requests an instance serves "
                       "(default: the stage's scaling target)")
    facts.add_argument("--output-tokens", type=int, help="tokens of an answer (at most the request's max_tokens)")
    facts.add_argument("--gpu-seconds-per-miss", type=float, help="measured GPU seconds per miss (e.g. GpuSecondsOnMiss "
                       "/ CacheMiss); replaces the token estimate")
    facts.add_argument("--cloudfront-request-price", type=float, help="USD per CloudFront HTTPS request")
    facts.add_argument("--lambda-edge-request-price", type=float, help="USD per Lambda@Edge request")
    facts.add_argument("--lambda-edge-ms", type=float, help="billed ms per Lambda@Edge invocation")
    args = parser.parse_args(argv)
    for name in ("log_days", "instance_price", "decode_tps", "prefill_tps", "streams_per_instance", "output_tokens"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.log != "-" and not Path(args.log).is_file():
        parser.error(f"{args.log}: no such file")
    if not charts.ECHARTS_JS.exists():  # before minutes of reading, not after
        print(f"cache-report: {charts.ECHARTS_JS} is missing: run `npm ci` in {charts.ROOT} (make does it)", file=sys.stderr)
        return 1
    settings = STAGES[args.stage]
    assumptions = assumptions_for(settings, args)
    result = run(args.log, settings, assumptions, progress=False if args.no_progress else None)
    try:
        document = render_html(result, "stdin" if args.log == "-" else Path(args.log).name)
    except charts.ChartLibraryMissing as e:
        print(f"cache-report: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document, encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stderr.write(_text(result, args.out) + "\n")
    else:
        sys.stdout.write(_text(result, args.out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
