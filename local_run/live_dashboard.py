"""The local run's live dashboard: GET /_local/dashboard on the local front (local only;
nothing like it is deployed). Charts that update while traffic flows, from what the real
code writes:

- the origin adapter's EMF records (Powertools' EphemeralMetrics prints one JSON line
  per request on stdout, which CloudWatch Logs turns into metrics on AWS). `EmfTap`
  takes those lines off the local run's stdout, as CloudWatch would, and hands them here;
- each inference answer's status, `x-inference-cache` and `Server-Timing` (any step
  name: the edge's decision and lookup on a hit, the origin's steps on a miss), as the
  front relays them to the client, read by an ASGI middleware around the front.

Counts are kept per 5-second interval for the last hour (bounded memory), totals since
start exactly. `?format=json` answers the charts' data; the page polls it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from cli import charts
from cli.server_timing import parse_server_timing
from lambdas.contract import COALESCED_HEADER, INVOCATIONS_ROUTE, SERVER_TIMING_HEADER, STATUS_HEADER, Metric
from local_run.service_processes import LineAtomicWriter

DASHBOARD_PATH = "/_local/dashboard"
BUCKET_SECONDS = 5
KEEP_BUCKETS = 720  # one hour
SAMPLES_PER_BUCKET = 512  # latency values kept per step and interval (a uniform sample beyond)
POLL_MS = 1000
OUTCOMES = ("HIT", "MISS", "BYPASS")


@dataclass
class _Bucket:
    counts: dict[str, float] = field(default_factory=dict)  # outcome and metric sums
    samples: dict[str, list[float]] = field(default_factory=dict)  # latency name -> values
    seen: dict[str, int] = field(default_factory=dict)  # values offered per name (for the sample)


class LiveMetrics:
    """What the dashboard draws: counts per interval and totals, fed from two threads
    (the front's event loop, the origin adapter's worker threads)."""

    def __init__(self, *, emf_enabled: bool = True, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[int, _Bucket] = {}
        self.totals: dict[str, float] = {}
        self.steps: list[str] = []  # Server-Timing step names, in order of first sight
        self.emf_enabled = emf_enabled
        self._clock = clock
        self._random = random.Random(0)

    def _bucket(self, when: float) -> _Bucket:
        index = int(when // BUCKET_SECONDS)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
            if len(self._buckets) > KEEP_BUCKETS:
                for old in sorted(self._buckets)[: len(self._buckets) - KEEP_BUCKETS]:
                    del self._buckets[old]
        return bucket

    def _count(self, bucket: _Bucket, name: str, value: float = 1) -> None:
        bucket.counts[name] = bucket.counts.get(name, 0) + value
        self.totals[name] = self.totals.get(name, 0) + value

    def _sample(self, bucket: _Bucket, name: str, value: float) -> None:
        values = bucket.samples.setdefault(name, [])
        seen = bucket.seen[name] = bucket.seen.get(name, 0) + 1
        if len(values) < SAMPLES_PER_BUCKET:
            values.append(value)
        else:  # reservoir: every value offered stays with the same chance
            slot = self._random.randrange(seen)
            if slot < SAMPLES_PER_BUCKET:
                values[slot] = value

    def observe_answer(self, status: int, headers: dict[str, str], total_ms: float, when: float | None = None) -> None:
        """One inference answer as the client got it from the front."""
        outcome = headers.get(STATUS_HEADER, "").upper()
        if status >= 400 or outcome not in OUTCOMES:  # errors say BYPASS too: counted as errors
            outcome = "4xx" if status < 500 else "5xx"
        timings = parse_server_timing(headers.get(SERVER_TIMING_HEADER, ""))
        with self._lock:
            bucket = self._bucket(when if when is not None else self._clock())
            self._count(bucket, outcome)
            self._count(bucket, "answers")
            if headers.get(COALESCED_HEADER) == "1":
                self._count(bucket, "coalesced answers")
            for name, duration in timings:
                if name not in self.steps:
                    self.steps.append(name)
                if duration is not None:
                    self._sample(bucket, f"step:{name}", duration)
            self._sample(bucket, f"total:{outcome}", total_ms)

    def observe_emf(self, record: dict) -> None:
        """One EMF record: every metric it declares, summed per interval; latencies kept."""
        try:
            directives = record["_aws"]["CloudWatchMetrics"]
            when = record["_aws"]["Timestamp"] / 1000
        except (KeyError, TypeError):
            return
        with self._lock:
            bucket = self._bucket(when)
            self._count(bucket, "emf records")
            for directive in directives if isinstance(directives, list) else []:
                for metric in directive.get("Metrics", []):
                    name = metric.get("Name")
                    values = record.get(name)
                    values = values if isinstance(values, list) else [values]
                    for value in values:
                        if isinstance(value, (int, float)):
                            self._count(bucket, f"emf:{name}", value)
                            self._count(bucket, f"emf-count:{name}")
                            if metric.get("Unit") == "Milliseconds":
                                self._sample(bucket, f"emf:{name}", value)

    # -- what the page draws ---------------------------------------------------------

    def snapshot(self, minutes: float = 15) -> dict:
        with self._lock:
            now = self._clock()
            last = int(now // BUCKET_SECONDS)
            # From the first interval with traffic (at least 2 minutes back, at most `minutes`).
            first = min([last - 2 * 60 // BUCKET_SECONDS + 1, *self._buckets])
            first = max(first, last - int(minutes * 60 / BUCKET_SECONDS) + 1)
            indexes = list(range(first, last + 1))
            buckets = [self._buckets.get(i, _Bucket()) for i in indexes]
            totals = dict(self.totals)
            steps = list(self.steps)
        times = [time.strftime("%H:%M:%S", time.localtime(i * BUCKET_SECONDS)) for i in indexes]

        def counts(name: str) -> list[float]:
            return [round(b.counts.get(name, 0), 6) for b in buckets]

        def quantile(name: str, q: float) -> list[float | None]:
            out = []
            for b in buckets:
                values = sorted(b.samples.get(name, ()))
                out.append(round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else None)
            return out

        answered = [sum(b.counts.get(o, 0) for o in OUTCOMES) for b in buckets]
        hit_ratio = [round(100 * b.counts.get("HIT", 0) / n, 1) if n else None for b, n in zip(buckets, answered, strict=True)]
        gpu_spent = totals.get(f"emf:{Metric.GPU_SECONDS_ON_MISS}", 0.0)
        gpu_calls = totals.get(f"emf-count:{Metric.GPU_SECONDS_ON_MISS}", 0)
        per_call = gpu_spent / gpu_calls if gpu_calls else 0.0
        # Saved: each hit would have cost the GPU what a miss costs on average (the stage
        # dashboard's estimate: hits x GpuSecondsOnMiss / misses), accumulated over time.
        saved, running = [], 0.0
        for b in buckets:
            running += b.counts.get("HIT", 0) * per_call
            saved.append(round(running, 4))
        all_answered = sum(totals.get(o, 0) for o in OUTCOMES)
        summary = {
            "answers": int(totals.get("answers", 0)),
            **{o.lower(): int(totals.get(o, 0)) for o in (*OUTCOMES, "4xx", "5xx")},
            "hit_ratio": round(totals.get("HIT", 0) / all_answered, 4) if all_answered else None,
            "emf_records": int(totals.get("emf records", 0)),
            "emf_requests": int(totals.get(f"emf:{Metric.REQUESTS}", 0)),
            "gpu_seconds_spent": round(gpu_spent, 4),
            "gpu_seconds_saved": round(totals.get("HIT", 0) * per_call, 4),
            "coalesced": int(totals.get(f"emf:{Metric.COALESCED}", 0)),
            "streamed_misses": int(totals.get(f"emf-count:{Metric.TIME_TO_FIRST_TOKEN}", 0)),
            "steps": steps,
            "emf_enabled": self.emf_enabled,
        }
        x_axis = {"type": "category", "data": times, "boundaryGap": True}

        def lines(series: list[tuple[str, list]], **extra) -> list[dict]:
            return [{"name": n, "type": "line", "data": d, "connectNulls": True, "showSymbol": True, "symbolSize": 7, **extra}
                    for n, d in series]

        latency = []
        for step in steps:
            latency += [(f"{step} p50", quantile(f"step:{step}", 0.5)), (f"{step} p95", quantile(f"step:{step}", 0.95))]
        latency += [("total at the front, hits p50", quantile("total:HIT", 0.5)),
                    ("total at the front, misses p50", quantile("total:MISS", 0.5))]
        emf = [f"emf:{m}" for m in (Metric.COALESCED, Metric.LEASE_WON, Metric.LEASE_TAKEOVER, Metric.COALESCE_GAVE_UP)]
        return {
            "summary": summary,
            "charts": {
                "live-requests": {"xAxis": x_axis, "series": [
                    *[{"name": o, "type": "bar", "stack": "answers", "data": counts(o)} for o in OUTCOMES],
                    {"name": "4xx (refused: API key, bad request, model 4xx)", "type": "bar", "stack": "answers",
                     "data": counts("4xx")},
                    {"name": "5xx", "type": "bar", "stack": "answers", "data": counts("5xx")},
                    *lines([("hit ratio (%)", hit_ratio)], yAxisIndex=1),
                ]},
                "live-latency": {"xAxis": x_axis, "series": lines(latency)},
                "live-ttft": {"xAxis": x_axis, "series": lines([
                    ("time to first token p50", quantile(f"emf:{Metric.TIME_TO_FIRST_TOKEN}", 0.5)),
                    ("time to first token p99", quantile(f"emf:{Metric.TIME_TO_FIRST_TOKEN}", 0.99)),
                    ("model call p50 (InferenceLatency)", quantile(f"emf:{Metric.INFERENCE_LATENCY}", 0.5)),
                ])},
                "live-coalesced": {"xAxis": x_axis, "series": [
                    {"name": n.removeprefix("emf:"), "type": "bar", "data": counts(n)} for n in emf
                ]},
                "live-gpu": {"xAxis": x_axis, "series": [
                    {"name": "GPU seconds spent on misses", "type": "bar", "data": counts(f"emf:{Metric.GPU_SECONDS_ON_MISS}")},
                    *lines([("GPU seconds saved by hits, cumulative (estimate)", saved)], yAxisIndex=1),
                ]},
            },
        }


def _charts() -> list[charts.Chart]:
    def chart(chart_id: str, title: str, question: str, y_name: str, right: str | None = None) -> charts.Chart:
        option = charts.base_option(y_name=y_name)
        option["xAxis"] = {"type": "category", "data": []}
        if right:
            option["yAxis"] = [option["yAxis"], {"type": "value", "name": right, "min": 0, "position": "right"}]
        option["series"] = []
        option["dataZoom"] = [{"type": "inside"}]
        return charts.Chart(chart_id, title, question, option, height=300)

    return [
        chart("live-requests", "Requests and hit ratio", "What the front answered every 5 s: HIT (the edge), MISS and "
              "BYPASS (the origin adapter), errors; and the share of hits among the answers that were not errors.", "answers / 5 s", "hit ratio (%)"),
        chart("live-latency", "Latency by layer (Server-Timing)", "Where a request's time goes, per Server-Timing step "
              "the answers carry (edge decision and lookup on hits; the origin's steps on misses), p50 and p95.", "ms"),
        chart("live-ttft", "Time to first token", "How soon a streamed miss's first token reaches the origin adapter's "
              "client (EMF TimeToFirstToken), beside the model call's p50.", "ms"),
        chart("live-coalesced", "Coalesced requests", "Identical misses answered from one model call (EMF CoalescedWaiter), "
              "and the leases behind them.", "requests / 5 s"),
        chart("live-gpu", "GPU seconds", "GPU time spent on misses (EMF GpuSecondsOnMiss) and saved by hits "
              "(hits x the mean GPU seconds per miss, as the stage dashboard estimates it).", "GPU s / 5 s", "GPU s saved"),
    ]


_SCRIPT = """
(function () {
  var names = {answers: 'answers', hit: 'HIT', miss: 'MISS', bypass: 'BYPASS', '4xx': '4xx', '5xx': '5xx',
               hit_ratio: 'hit ratio', gpu_seconds_spent: 'GPU s spent', gpu_seconds_saved: 'GPU s saved',
               coalesced: 'coalesced', streamed_misses: 'streamed misses', emf_records: 'EMF records'};
  function kpis(s) {
    var el = document.getElementById('kpis');
    el.innerHTML = Object.keys(names).map(function (k) {
      var v = s[k] === null ? '-' : (k === 'hit_ratio' ? (100 * s[k]).toFixed(1) + ' %%' : s[k]);
      return '<div class="kpi" data-kpi="' + k + '"><b>' + v + '</b><span>' + names[k] + '</span></div>';
    }).join('');
    document.getElementById('emf-off').style.display = s.emf_enabled ? 'none' : 'block';
  }
  // An update that failed says so on the page (and in data-poll-error), and the next one
  // tries again: numbers that silently stop changing would read as a quiet local run.
  function shown(error) {
    var el = document.getElementById('poll-error');
    el.textContent = error ? 'update failed: ' + error : '';
    el.style.display = error ? 'block' : 'none';
    if (error) { document.body.setAttribute('data-poll-error', String(error)); }
    else { document.body.removeAttribute('data-poll-error'); }
  }
  function poll() {
    fetch('%(path)s?format=json', {cache: 'no-store'}).then(function (r) { return r.json(); }).then(function (data) {
      Object.keys(data.charts).forEach(function (id) {
        window.__charts[id].setOption(data.charts[id], {replaceMerge: ['series']});
      });
      kpis(data.summary);
      document.body.setAttribute('data-updated', String(Date.now()));
      document.body.setAttribute('data-answers', String(data.summary.answers));
      shown(null);
    }).catch(shown).finally(function () { setTimeout(poll, %(poll)d); });
  }
  poll();
})();
"""


class LiveDashboard:
    """The page and its data, and the ASGI middleware that serves them and watches answers."""

    def __init__(self, metrics: LiveMetrics, inference_path: Callable[[str], bool] | None = None) -> None:
        self.metrics = metrics
        self._is_inference = inference_path or (lambda p: p.startswith("/v1/") or p == INVOCATIONS_ROUTE)
        self._page: bytes | None = None

    def page(self) -> bytes:
        if self._page is None:
            body = (
                "<h1>Local run: live dashboard</h1><p class='meta'>From this local run's own metrics: the origin "
                "adapter's EMF records and the answers' x-inference-cache and Server-Timing headers. Updates every "
                f"{POLL_MS // 1000} s; 5-second intervals, up to the last 15 minutes. Local only: nothing like it is deployed.</p>"
                "<p class='meta' id='emf-off' style='display:none'><span class='label'>EMF off</span> "
                "POWERTOOLS_METRICS_DISABLED is set: no origin adapter metrics.</p>"
                "<p class='meta' id='poll-error' style='display:none'></p>"
                "<div class='kpis' id='kpis'></div><div class='cards'>" + "".join(c.html() for c in _charts()) + "</div>"
            )
            script = _SCRIPT % {"path": DASHBOARD_PATH, "poll": POLL_MS}
            self._page = charts.page("Local run: live dashboard", body, _charts(), script=script).encode()
        return self._page

    def around(self, app):
        """`app` with GET /_local/dashboard served here and every inference answer observed."""

        async def wrapped(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope.get("path", "")
            if path == DASHBOARD_PATH:
                return await self._serve(scope, send)
            if not self._is_inference(path):
                return await app(scope, receive, send)
            started = time.perf_counter()
            seen: dict = {}

            async def watching(message):
                if message["type"] == "http.response.start":  # read once the answer is out, not before
                    seen["status"], seen["headers"] = message["status"], message.get("headers", [])
                elif message["type"] == "http.response.body" and not message.get("more_body", False):
                    seen.setdefault("ended", time.perf_counter())
                await send(message)

            try:
                await app(scope, receive, watching)
            finally:  # a client may go once it has what it wanted (a stream's [DONE]) before the last message
                if "status" in seen:
                    ended = seen.get("ended", time.perf_counter())
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in seen["headers"]}
                    self.metrics.observe_answer(seen["status"], headers, (ended - started) * 1000)

        return wrapped

    async def _serve(self, scope, send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            status, kind, data = 405, b"text/plain", b"GET only"
        elif parse_qs(scope.get("query_string", b"").decode()).get("format") == ["json"]:
            status, kind, data = 200, b"application/json", json.dumps(self.metrics.snapshot()).encode()
        else:
            try:
                status, kind, data = 200, b"text/html; charset=utf-8", self.page()
            except charts.ChartLibraryMissing as e:
                status, kind, data = 503, b"text/plain", str(e).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(data)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": data if scope.get("method") != "HEAD" else b""})


class EmfTap(LineAtomicWriter):
    """stdout for the local run: EMF records (one JSON object a line, with `_aws`) go to
    `sink`, as CloudWatch Logs takes them out of a function's log; every other line passes
    on, a whole line at a time."""

    def __init__(self, stream, sink: Callable[[dict], None]) -> None:
        super().__init__(stream)
        self._sink = sink

    def passed_on(self, lines: str) -> str:
        passed = []
        for line in lines[:-1].split("\n"):
            # EMF: a log event that is one JSON object with an `_aws` member at its root
            # (CloudWatch's "Specification: Embedded metric format").
            if line.startswith("{") and '"_aws"' in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("_aws"), dict):
                    self._sink(record)
                    continue
            passed.append(line + "\n")
        return "".join(passed)
