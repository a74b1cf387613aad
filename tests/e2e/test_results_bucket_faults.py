"""A slow or failing results bucket costs a client nothing but the cache: on a local run of
its own, the results bucket (the local S3) is made slow (every call waits 30 s) or made
to fail (every call a 503) with the S3 stand-in's fault hook, and chat, a stream and
embeddings are still answered at once, whole, unstored, with Server-Timing and the log
line saying so. Before, a whole answer waited for the store (boto3's 60 s timeouts and
retries) and reached the client as the front's 502 after a minute; a stream was cut."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import datetime

import httpx2
import openai
import pytest

from lambdas.contract import COALESCING_ENV, RESULTS_BUCKET_PAUSE_ENV, SERVER_TIMING_HEADER, STATUS_HEADER
from local_run.__main__ import RESULTS_BUCKET
from local_run.process import create_api_key, launched
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

PAUSE_SECONDS = 2  # how long the lease calls pause after a failure (shortened for the test)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("fault-keys") / "api-keys.json"
    lines: list[str] = []
    env = {RESULTS_BUCKET_PAUSE_ENV: str(PAUSE_SECONDS), COALESCING_ENV: "true", "POWERTOOLS_LOG_LEVEL": "INFO"}
    with launched("--stage", "dev", "--key-store-file", str(key_store), env=env, on_line=lines.append) as started:
        yield {**started, "api_key": create_api_key(key_store, "e2e-faults")["key"], "lines": lines}


def set_fault(run, **fault) -> None:
    request = urllib.request.Request(run["results_store"] + "/_local_s3/faults", data=json.dumps(fault).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


@pytest.fixture(params=[{"delay_seconds": 30}, {"status": 503}], ids=["slow", "failing"])
def fault(run, request):
    set_fault(run, bucket=RESULTS_BUCKET, **request.param)
    yield request.param
    set_fault(run)  # cleared: the held calls go on
    time.sleep(PAUSE_SECONDS + 0.5)  # past the adapter's pause: the next test starts with a bucket in use


def client(run) -> openai.OpenAI:
    return openai.OpenAI(base_url=run["listening"] + "/v1", api_key=run["api_key"], max_retries=0, timeout=20)


def model_calls(run) -> int:
    with urllib.request.urlopen(run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def answered_lines(run, key: str) -> list[dict]:
    out = []
    for line in list(run["lines"]):
        if '"answered"' in line and key in line:
            out.append(json.loads(line))
    return out


def logged_at(line: dict) -> float:
    """When the adapter wrote its record (after the store and the release), epoch seconds."""
    return datetime.strptime(line["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()


def test_whole_answers_are_not_held_by_the_bucket_and_are_not_stored(run, fault):
    ask = dict(model="local", messages=[{"role": "user", "content": f"bucket trouble {time.time()}"}], temperature=0)
    calls = model_calls(run)
    started = time.monotonic()
    first = client(run).chat.completions.with_raw_response.create(**ask)
    seconds, received = time.monotonic() - started, time.time()
    # The first miss pays one lease call's budget (0.5 s connect + 2 s read) at most, never
    # the bucket's 30 s; the answer is the model's, whole.
    assert first.http_response.status_code == 200 and seconds < 8
    assert first.parse().choices[0].message.content
    assert first.headers[STATUS_HEADER] == "MISS"
    assert 'lease;' in first.headers[SERVER_TIMING_HEADER] and "results bucket unavailable" in first.headers[SERVER_TIMING_HEADER]
    # After a few failed calls in a row the lease calls pause: a miss then does not even try
    # the bucket, and pays the model's time only.
    seconds = []
    for i in range(3):
        started = time.monotonic()
        other = client(run).chat.completions.with_raw_response.create(
            **{**ask, "messages": [{"role": "user", "content": f"next {i} {time.time()}"}]})
        assert other.http_response.status_code == 200
        seconds.append(time.monotonic() - started)
    assert seconds[-1] < 1.5, seconds
    # Not stored: asked again, the model answers again (once the store has given up).
    key = first.headers["x-inference-cache-key"]
    line = wait_for(lambda: [entry for entry in answered_lines(run, key) if "stored" in entry])
    assert line and line[0]["stored"] is False and line[0]["store_error"]
    if "delay_seconds" in fault:  # the client had its answer while the store still waited on the bucket
        assert received < logged_at(line[0]) - 1.0, (received, line[0])
    again = client(run).chat.completions.with_raw_response.create(**ask)
    assert again.headers[STATUS_HEADER] == "MISS" and model_calls(run) == calls + 5


def test_a_stream_ends_at_its_last_event_whatever_the_bucket_does(run, fault):
    body = {"model": "local", "messages": [{"role": "user", "content": f"stream through trouble {time.time()} [[tokens:20]]"}],
            "temperature": 0, "stream": True}
    headers = {"authorization": f"Bearer {run['api_key']}", "content-type": "application/json"}
    started = time.monotonic()
    with httpx2.Client(timeout=20) as http, http.stream("POST", run["listening"] + "/v1/chat/completions", json=body,
                                                          headers=headers) as answer:
        events = [line for line in answer.iter_lines() if line.startswith("data:")]
    seconds, ended = time.monotonic() - started, time.time()  # the whole response, to its end (not just to [DONE])
    assert answer.status_code == 200 and events[-1] == "data: [DONE]"
    assert not any('"error"' in event for event in events) and len(events) > 20  # 20 tokens and [DONE]
    assert seconds < 8  # never the bucket's 30 s, never cut by the front's origin timeout
    key = answer.headers["x-inference-cache-key"]
    line = wait_for(lambda: [entry for entry in answered_lines(run, key) if "stored" in entry])
    assert line and line[0]["streamed"] and line[0]["stored"] is False and line[0].get("stream_cut_off") is None
    if "delay_seconds" in fault:  # the response had ended while the store still waited on the bucket
        assert ended < logged_at(line[0]) - 1.0, (ended, line[0])


def test_embeddings_are_answered_at_once(run, fault):
    started = time.monotonic()
    answer = client(run).embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=[f"faults {time.time()}"])
    assert answer.http_response.status_code == 200 and time.monotonic() - started < 8
    assert len(answer.parse().data[0].embedding) == 384


def test_once_the_bucket_is_back_answers_are_stored_again(run):
    ask = dict(model="local", messages=[{"role": "user", "content": f"bucket is back {time.time()}"}], temperature=0)
    first = client(run).chat.completions.with_raw_response.create(**ask)
    assert first.headers[STATUS_HEADER] == "MISS" and "unavailable" not in first.headers[SERVER_TIMING_HEADER]
    second = wait_for(lambda: (r := client(run).chat.completions.with_raw_response.create(**ask)).headers[STATUS_HEADER] == "HIT" and r)
    assert second and second.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_a_burst_during_an_outage_is_answered_and_the_outage_is_counted(run, fault):
    """Coalescing fails open: every request of a burst gets its answer."""
    ask = {"model": "local", "messages": [{"role": "user", "content": f"burst in trouble {time.time()}"}], "temperature": 0}
    results: list = [None] * 6
    barrier = threading.Barrier(6)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = client(run).chat.completions.with_raw_response.create(**ask)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.http_response.status_code for r in results] == [200] * 6
    assert len({r.parse().choices[0].message.content for r in results}) == 1
