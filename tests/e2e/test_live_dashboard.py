"""The local run's live dashboard (GET /_local/dashboard): opened in headless Chromium
before any traffic, it draws non-empty series that match the requests then sent through
the local run (hits, misses, bypasses, refused), the origin adapter's EMF records (GPU
seconds, time to first token) and the Server-Timing steps the answers carried."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from openai import OpenAI

from local_run.live_dashboard import DASHBOARD_PATH, parse_server_timing
from local_run.process import create_api_key, launched
from tests.chromium import chromium_page, drawn_charts, non_blank_fraction
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e


def test_server_timing_is_parsed_for_any_step_names():
    assert parse_server_timing('decision;dur=0.41, lookup;dur=3.2;desc="kept-alive, reused", origin;dur=812') == [
        ("decision", 0.41), ("lookup", 3.2), ("origin", 812.0)
    ]
    assert parse_server_timing("key-check;dur=0.1,lease;dur=5.5,model;dur=700,store") == [
        ("key-check", 0.1), ("lease", 5.5), ("model", 700.0), ("store", None)
    ]
    assert parse_server_timing("") == []


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """A local run of its own: its dashboard counts only this test's requests."""
    key_store = tmp_path_factory.mktemp("live-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "api_key": create_api_key(key_store, "live")["key"]}


def _counted(url: str) -> dict:
    """The run's own counts, as the page gets them."""
    return json.loads(urllib.request.urlopen(f"{url}{DASHBOARD_PATH}?format=json", timeout=10).read())["summary"]


def _wait_for(page, url: str, condition: str) -> None:
    """page.wait_for_function, failing with what the page shows and what the run counted."""
    try:
        page.wait_for_function(condition, timeout=15_000)
    except Exception as e:  # playwright's TimeoutError
        shown = {el.get_attribute("data-kpi"): el.inner_text().split("\n")[0] for el in page.query_selector_all("[data-kpi]")}
        counted = _counted(url)
        raise AssertionError(
            f"{condition} not true in 15 s ({type(e).__name__})\npage: {shown}\n"
            f"update error: {page.evaluate('document.body.dataset.pollError || null')}\n"
            f"page errors: {page.errors}\ncounted: {counted}"
        ) from e


def _series(drawn: dict, chart: str, name: str) -> list:
    return drawn[chart]["values"][drawn[chart]["names"].index(name)]


@pytest.mark.chromium
def test_live_dashboard_draws_what_the_local_run_served(fresh_run):
    url = fresh_run["listening"]
    client = OpenAI(base_url=f"{url}/v1", api_key=fresh_run["api_key"], max_retries=0)
    greedy = dict(model="local", messages=[{"role": "user", "content": "live dashboard [[tokens:4]]"}], temperature=0)
    with chromium_page() as page:
        page.goto(url + DASHBOARD_PATH)
        page.wait_for_function("document.body.dataset.answers === '0'")
        # Traffic while the page is open: 1 miss + 3 hits, 2 bypasses (sampling), 1 streamed
        # miss, 2 refused (no API key).
        statuses = []
        for attempt in range(4):
            raw = client.chat.completions.with_raw_response.create(**greedy)
            statuses.append(raw.headers["x-inference-cache"])
            if attempt == 0:
                # The miss's store and lease release run after its answer; a repeat sent
                # before they end finds nothing at the edge and is coalesced at the origin
                # (a HIT with an EMF record of its own). Its record comes after both.
                assert wait_for(lambda: _counted(url)["emf_records"] == 1), f"not counted in 15 s: {_counted(url)}"
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(**{**greedy, "temperature": 0.7})
            statuses.append(raw.headers["x-inference-cache"])
        stream = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "stream [[tokens:5]] [[token-ms:20]]"}],
            temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        statuses.append("MISS")
        for _ in range(2):
            request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(greedy).encode(), method="POST",
                                             headers={"content-type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
        assert statuses == ["MISS", "HIT", "HIT", "HIT", "BYPASS", "BYPASS", "MISS"]

        # The page updates by itself: wait for it to show all nine answers.
        _wait_for(page, url, "document.body.dataset.answers === '9'")
        # EMF records come from the adapter's log, after each answer's store and release:
        # they may reach the page after the answers the front counted.
        _wait_for(page, url, "() => document.querySelector('[data-kpi=emf_records]').innerText.split('\\n')[0] === '4'")
        _wait_for(page, url, "() => { const c = echarts.getInstanceByDom(document.getElementById('live-ttft')); "
                             "return c && c.getOption().series.some(s => s.data.some(v => v !== null)); }")
        drawn = drawn_charts(page)
        assert sum(_series(drawn, "live-requests", "HIT")) == 3
        assert sum(_series(drawn, "live-requests", "MISS")) == 2
        assert sum(_series(drawn, "live-requests", "BYPASS")) == 2
        assert sum(_series(drawn, "live-requests", "4xx (refused: API key, bad request, model 4xx)")) == 2
        ratios = [v for v in _series(drawn, "live-requests", "hit ratio (%)") if v is not None]
        assert ratios and max(ratios) <= 100
        # Server-Timing: the edge's steps on hits, the origin's on misses, whatever their names.
        latency_names = drawn["live-latency"]["names"]
        assert {"decision p50", "lookup p50", "origin p50"} <= set(latency_names)
        for name in ("decision p50", "lookup p50", "origin p50"):
            assert any(v is not None and v >= 0 for v in _series(drawn, "live-latency", name)), name
        # EMF: the GPU ran 4 times (2 misses, 2 bypasses); one streamed miss has a TTFT.
        assert sum(_series(drawn, "live-gpu", "GPU seconds spent on misses")) > 0
        assert any(v is not None and v > 0 for v in _series(drawn, "live-ttft", "time to first token p50"))
        kpis = {el.get_attribute("data-kpi"): el.inner_text().split("\n")[0] for el in page.query_selector_all("[data-kpi]")}
        assert (kpis["answers"], kpis["hit"], kpis["miss"], kpis["bypass"], kpis["4xx"]) == ("9", "3", "2", "2", "2")
        assert kpis["streamed_misses"] == "1" and kpis["emf_records"] == "4"
        for chart_id in ("live-requests", "live-latency", "live-gpu"):
            assert drawn[chart_id]["paths"] >= 8, chart_id
            assert non_blank_fraction(page, page.query_selector(f"#{chart_id}").screenshot()) > 0.03, chart_id
        assert page.errors == [] and page.evaluate("document.body.dataset.pollError || null") is None
        if os.environ.get("LIVE_DASHBOARD_SCREENSHOT"):
            page.screenshot(path=os.environ["LIVE_DASHBOARD_SCREENSHOT"], full_page=True)
    counted = _counted(url)
    assert counted["emf_requests"] == 4 and counted["coalesced"] == 0 and counted["gpu_seconds_saved"] > 0
