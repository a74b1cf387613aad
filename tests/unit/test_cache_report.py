"""bin/cache-report: known logs give known figures (hit ratios, reasons, the time to the
next identical key, the TTL curve, dollars from stated prices), in this project's JSONL,
the OpenAI Batch format and gzip; bad lines are counted, never fatal; the figures are
`bin/cache-key --summary`'s on the same log; the HTML opens in headless Chromium with
every chart drawn."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from cli import cache_report
from config import prices
from config.stages import STAGES
from tests.chromium import chromium_page, drawn_charts, non_blank_fraction
from tests.conftest import ROOT

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
GREEDY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
SAMPLED = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7}
EMBED = {"model": "e", "input": "some text"}
JSON_HEADERS = {"content-type": "application/json"}


def line(path: str, body, t: float | None = None, client: str | None = None, raw: str | None = None, **extra) -> str:
    record = {"path": path, "headers": JSON_HEADERS, "body": raw if raw is not None else json.dumps(body), **extra}
    if t is not None:
        record["timestamp"] = t
    if client:
        record["client"] = client
    return json.dumps(record)


# Greedy chat A at 0, 100, 5000 s and once more, pretty-printed, at 200 s (same key, other
# bytes); two sampled requests from "playground"; embeddings B at 0 and 7200 s.
KNOWN = [
    line(CHAT, GREEDY, 0, "faq"),
    line(EMBEDDINGS, EMBED, 0, "indexer"),
    line(CHAT, GREEDY, 100, "faq"),
    line(CHAT, None, 200, "faq", raw=json.dumps(GREEDY, indent=2)),
    line(CHAT, SAMPLED, 300, "playground"),
    line(CHAT, SAMPLED, 400, "playground"),
    line(CHAT, GREEDY, 5000, "faq"),
    line(EMBEDDINGS, EMBED, 7200, "indexer"),
]


def report(tmp_path, lines, stage: str = "dev", name: str = "log.jsonl", **overrides) -> dict:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    settings = STAGES[stage]
    assumptions = cache_report.assumptions_for(settings)
    for key, value in overrides.items():
        setattr(assumptions, key, value)
    return cache_report.run(str(path), settings, assumptions, progress=False)


def test_known_log_gives_known_hit_ratios_reasons_gaps_and_ttl_curve(tmp_path):
    result = report(tmp_path, KNOWN)
    s = result["summary"]
    assert (s["requests"], s["cacheable"], s["distinct_keys"], s["byte_exact_distinct_keys"]) == (8, 6, 2, 3)
    # Unbounded: A's 3 repeats and B's 1 hit; byte-exact misses the pretty-printed A.
    assert (s["hits"], s["byte_exact_hits"], s["hit_ratio"], s["byte_exact_hit_ratio"]) == (4, 3, 0.5, 0.375)
    assert result["by_route"][CHAT] == {"requests": 6, "cacheable": 4, "hits": 3, "exact_hits": 2}
    assert result["by_route"][EMBEDDINGS] == {"requests": 2, "cacheable": 2, "hits": 1, "exact_hits": 1}
    assert result["by_model"]["e"]["hits"] == 1 and result["by_model"]["m"]["requests"] == 6
    assert result["by_tenant"] == {}
    assert result["uncacheable"] == {"sampling without seed": {"playground": 2}}
    # Gaps to the next identical key: 100, 100, 4800 (A) and 7200 (B) seconds.
    gaps = result["repeat_gaps"]
    assert gaps["unit"] == "seconds" and gaps["repeated_keys"] == 2
    counts = dict(zip([*gaps["edges"], "more"], gaps["counts"], strict=True))
    assert counts[300] == 2 and counts[3 * 3600] == 2 and sum(gaps["counts"]) == 4
    # At a TTL of 1 h (dev's) A's answer stored at 0 serves 100 and 200, expires; the
    # request at 5000 stores it again; B's 2 h gap misses. 3 h catches everything.
    curve = {p["ttl_seconds"]: p["hits"] for p in result["ttl_curve"]}
    assert STAGES["dev"].cache.default_ttl_seconds == 3600
    assert (curve[60], curve[300], curve[3600], curve[3 * 3600], curve[86_400]) == (0, 2, 2, 4, 4)
    assert result["savings"]["hits"] == 2 and result["savings"]["days_from"] == "the log's timestamps"


def test_dollars_follow_the_stated_prices_and_speeds(tmp_path):
    result = report(tmp_path, KNOWN, gpu_seconds_per_miss=90.0, instance_per_hour=3.6, streams_per_instance=2,
                    log_days=0.5)
    sv = result["savings"]
    # 2 hits at the stage's TTL x 90 GPU s / 2 streams = 90 instance-seconds over half a day.
    assert sv["gpu_seconds"] == 180 and sv["days_in_log"] == 0.5
    assert sv["instance_hours_per_day"] == pytest.approx(90 / 3600 * 2)
    assert sv["dollars_saved_per_day"] == pytest.approx(0.05 * 3.6)
    assert sv["dollars_saved_per_month"] == pytest.approx(0.18 * prices.DAYS_PER_MONTH)
    # What the edge adds: 8 POSTs + 6 lookups through CloudFront; 8 + 6 forwarded
    # Lambda@Edge invocations (origin request, and origin response on the 6 non-hits).
    added = sv["costs_added_per_day"]
    assert added["CloudFront requests"] == pytest.approx(14 * prices.CLOUDFRONT_HTTPS_REQUEST.value * 2)
    per_invocation = prices.LAMBDA_EDGE_REQUEST.value + prices.LAMBDA_EDGE_MEMORY_GB * (
        prices.LAMBDA_EDGE_MS_PER_REQUEST.value / 1000) * prices.LAMBDA_EDGE_GB_SECOND.value
    assert added["Lambda@Edge"] == pytest.approx(14 * per_invocation * 2)
    # Unbounded replay stores A once and B once: 2 answers + 2 leases; 6 lookups reach S3 at most.
    assert added["S3 requests"] == pytest.approx((6 * prices.S3_GET_REQUEST.value + 4 * prices.S3_PUT_REQUEST.value) * 2)
    assert sv["net_per_month"] == pytest.approx((sv["dollars_saved_per_day"] - sum(added.values())) * prices.DAYS_PER_MONTH)


def test_gpu_time_estimate_reads_prompt_and_answer_lengths(tmp_path):
    a = cache_report.assumptions_for(STAGES["dev"])
    assert (a.instance_type, a.instance_per_hour) == ("ml.g5.2xlarge", prices.SAGEMAKER_INSTANCE_PER_HOUR["ml.g5.2xlarge"].value)
    assert a.streams_per_instance == STAGES["dev"].endpoint.target_concurrency
    body = {"model": "m", "prompt": "x" * 400, "max_tokens": 58, "temperature": 0}
    request = cache_report.parse_line(1, line("/v1/completions", body).encode())
    prompt_tokens = len(json.dumps(body)) / a.chars_per_token
    assert request.max_tokens == 58
    assert a.gpu_seconds(request) == pytest.approx(prompt_tokens / a.prefill_tokens_per_second + 58 / a.decode_tokens_per_second)
    embedding = cache_report.parse_line(2, line(EMBEDDINGS, EMBED).encode())
    assert a.gpu_seconds(embedding) == pytest.approx(len(json.dumps(EMBED)) / a.chars_per_token / a.prefill_tokens_per_second)


def test_openai_batch_format_and_gzip_give_the_same_figures(tmp_path):
    batch = [
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body})
        for i, (url, body) in enumerate([(CHAT, GREEDY), (CHAT, GREEDY), (CHAT, SAMPLED), (EMBEDDINGS, EMBED),
                                          ("/v1/responses", {"model": "m", "input": "hi"})])
    ]
    plain = report(tmp_path, batch, name="batch.jsonl")
    s = plain["summary"]
    assert (plain["batch_lines"], s["requests"], s["cacheable"], s["hits"], s["byte_exact_hits"]) == (5, 5, 3, 1, 1)
    assert plain["uncacheable"] == {"route not cached": {"(batch file)": 1}, "sampling without seed": {"(batch file)": 1}}
    assert plain["timestamps"] is False and plain["ttl_curve"] == []
    assert plain["repeat_gaps"]["unit"] == "requests"
    assert plain["savings"]["days_from"].startswith("assumed: one day")
    compressed = tmp_path / "batch.jsonl.gz"
    compressed.write_bytes(gzip.compress((tmp_path / "batch.jsonl").read_bytes()))
    settings = STAGES["dev"]
    again = cache_report.run(str(compressed), settings, cache_report.assumptions_for(settings), progress=False)
    assert again == plain
    jsonl_gz = tmp_path / "known.gz"  # JSONL under another name: gzip is told by its magic bytes
    jsonl_gz.write_bytes(gzip.compress(("\n".join(KNOWN) + "\n").encode()))
    assert cache_report.run(str(jsonl_gz), settings, cache_report.assumptions_for(settings), progress=False)["summary"] == (
        report(tmp_path, KNOWN)["summary"]
    )


def test_bad_lines_are_counted_and_reported_never_fatal(tmp_path):
    lines = [
        KNOWN[0],
        "{not json",
        "[1, 2]",
        json.dumps({"path": CHAT, "headers": {}}),
        line(CHAT, GREEDY, "yesterday"),
        json.dumps({"custom_id": "x", "method": "GET", "url": CHAT, "body": GREEDY}),
        json.dumps({"custom_id": "y", "method": "POST", "url": CHAT, "body": "not an object"}),
        "",
        KNOWN[2],
    ]
    result = report(tmp_path, lines)
    assert (result["lines"], result["bad_lines"], result["summary"]["requests"], result["summary"]["hits"]) == (8, 6, 2, 1)
    assert [m.split(":")[0] for m in result["bad_examples"]] == [f"line {n}" for n in (2, 3, 4, 5, 6, 7)]
    assert "bad timestamp" in result["bad_examples"][3] and "method' must be POST" in result["bad_examples"][4]
    # A gzip stream cut short: what was read counts, the cut is one bad line.
    data = gzip.compress(("\n".join(KNOWN) + "\n").encode())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) - 12])
    settings = STAGES["dev"]
    partial = cache_report.run(str(cut), settings, cache_report.assumptions_for(settings), progress=False)
    assert partial["bad_lines"] == 1 and "ends early" in partial["bad_examples"][0]
    assert partial["summary"]["requests"] >= 1


def test_tenant_scoped_stage_splits_by_tenant_and_never_shares_answers(tmp_path):
    lines = [line(CHAT, GREEDY, t, tenant=tenant) for t, tenant in ((0, "acme"), (1, "globex"), (2, "acme"), (3, "globex"))]
    lines.append(line(CHAT, GREEDY, 4))  # no verified tenant: never cacheable on a tenant-scoped stage
    result = report(tmp_path, lines, stage="staging")
    assert result["by_tenant"] == {
        "acme": {"requests": 2, "cacheable": 2, "hits": 1, "exact_hits": 1},
        "globex": {"requests": 2, "cacheable": 2, "hits": 1, "exact_hits": 1},
    }
    assert result["summary"]["hits"] == 2
    assert result["uncacheable"] == {"tenant-scoped stage, no verified tenant": {"(unknown)": 1}}
    assert set(result["by_client"]) == {"tenant acme", "tenant globex", "(unknown)"}


def test_clients_are_named_by_key_fingerprint_never_by_the_key(tmp_path):
    record = {"path": CHAT, "headers": {"authorization": "Bearer sk-secret-123", **JSON_HEADERS}, "body": json.dumps(SAMPLED)}
    result = report(tmp_path, [json.dumps(record)])
    (client,) = result["by_client"]
    assert client.startswith("key sha256:") and "sk-secret" not in json.dumps(result)


@pytest.fixture(scope="module")
def request_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "requests.jsonl"
    with path.open("w") as out:
        subprocess.run([sys.executable, "bench/request_log.py"], cwd=ROOT, stdout=out, check=True)
    return path


def test_the_report_agrees_with_bin_cache_key_on_the_bench_log(request_log, tmp_path):
    summary = subprocess.run(
        [sys.executable, "bin/cache-key", "--jsonl", "--summary"], cwd=ROOT, input=request_log.read_bytes(),
        capture_output=True, check=True,
    )
    out = tmp_path / "report.html"
    result = subprocess.run(
        [str(ROOT / "bin/cache-report"), str(request_log), "--out", str(out), "--json"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["summary"] == json.loads(summary.stdout)
    assert figures["bad_lines"] == 0 and figures["timestamps"] is True
    assert set(figures["by_client"]) == {"faq-bot", "support-agent", "eval-suite", "chat-users", "indexer"}
    assert figures["uncacheable"] == {"sampling without seed": {"chat-users": 30}}
    assert "reading log" not in result.stderr  # no progress bar off a terminal
    assert f"wrote {out}" in result.stderr and out.stat().st_size > 100_000


def test_progress_bar_on_a_terminal(tmp_path, capsys):
    report_path = tmp_path / "log.jsonl"
    report_path.write_text("\n".join(KNOWN * 600) + "\n")
    settings = STAGES["dev"]
    cache_report.run(str(report_path), settings, cache_report.assumptions_for(settings), progress=True)
    err = capsys.readouterr().err
    assert "reading log" in err and "100%" in err


@pytest.mark.chromium
def test_the_html_opens_offline_in_chromium_with_every_chart_drawn(request_log, tmp_path):
    out = tmp_path / "report.html"
    cache_report.main([str(request_log), "--out", str(out), "--no-progress"])
    text = out.read_text()
    assert "<script src" not in text and "http://" not in text.split("<body>")[1].split("<script>")[0]
    figures = cache_report.run(str(request_log), STAGES["dev"], cache_report.assumptions_for(STAGES["dev"]), progress=False)
    with chromium_page() as page:
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_())
        page.goto(out.as_uri())
        page.wait_for_function("document.body.dataset.chartsDrawn")
        drawn = drawn_charts(page)
        assert set(drawn) == {"hit-ratio-by-route", "hit-ratio-by-model", "not-cacheable", "repeat-gaps", "ttl-curve", "dollars"}
        for chart_id, chart in drawn.items():
            assert chart["series"] >= 1 and all(n > 0 for n in chart["points"]), chart_id
            assert chart["paths"] >= 8 and chart["width"] > 300 and chart["height"] > 200, chart_id
            element = page.query_selector(f"#{chart_id}")
            assert non_blank_fraction(page, element.screenshot()) > 0.03, chart_id
        assert page.errors == []
        # What is drawn is the report's figures.
        route = drawn["hit-ratio-by-route"]
        assert route["values"][0][0] == round(100 * figures["summary"]["hit_ratio"], 2)
        assert route["values"][1][0] == round(100 * figures["summary"]["byte_exact_hit_ratio"], 2)
        assert drawn["ttl-curve"]["values"][0] == [round(100 * p["hit_ratio"], 2) for p in figures["ttl_curve"]]
        assert drawn["repeat-gaps"]["values"][0] == figures["repeat_gaps"]["counts"]
        assert sum(drawn["not-cacheable"]["values"][0]) == 30
        ttl_marks = page.evaluate("() => echarts.getInstanceByDom(document.getElementById('ttl-curve'))"
                                  ".getOption().series[0].markLine.data.map(d => d.xAxis)")
        assert ttl_marks == ["1 h", "1 d"]
