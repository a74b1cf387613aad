"""Coalescing identical misses end to end, on a local run of its own with
COALESCE_IDENTICAL_MISSES=true (as the stack sets it): bursts of concurrent requests over
real sockets, model calls counted at the model server (GET /stats)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
import urllib.request
from urllib.parse import urlparse

import pytest

from lambdas.contract import COALESCED_HEADER, COALESCING_ENV, STATUS_HEADER
from local_run.model_server import FAIL_ONCE_MARKER
from local_run.process import create_api_key, launched

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def environment(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def coalescing_run(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("coalescing-keys") / "api-keys.json"
    with environment(**{COALESCING_ENV: "true"}), launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "api_key": create_api_key(key_store, "e2e-coalescing")["key"]}


def model_calls(run) -> int:
    with urllib.request.urlopen(run["model_server"] + "/stats", timeout=5) as answer:
        return json.loads(answer.read())["invocations"]


def burst(run, bodies: list[dict]) -> list[tuple[int, dict, bytes]]:
    """All at once (a barrier), one connection each: (status, headers, body) per request."""
    url = urlparse(run["listening"])
    headers = {"content-type": "application/json", "authorization": f"Bearer {run['api_key']}"}
    answers: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def ask(i: int) -> None:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        connection.connect()
        barrier.wait()
        connection.request("POST", "/v1/chat/completions", body=json.dumps(bodies[i]).encode(), headers=headers)
        response = connection.getresponse()
        answers[i] = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        connection.close()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(a is not None for a in answers), "a request did not finish"
    return answers


def chat(content: str, temperature: float = 0) -> dict:
    return {"model": "local", "messages": [{"role": "user", "content": content}], "temperature": temperature}


def test_fifty_identical_new_requests_make_one_model_call(coalescing_run):
    # The model takes 1.5 s: the whole burst arrives while the first request generates.
    ask = chat(f"coalesce me {time.time_ns()} [[slow-ms:1500]]")
    before = model_calls(coalescing_run)
    answers = burst(coalescing_run, [ask] * 50)
    assert model_calls(coalescing_run) - before == 1
    assert [status for status, _, _ in answers] == [200] * 50
    assert len({body for _, _, body in answers}) == 1  # 50 identical answers
    statuses = sorted(headers[STATUS_HEADER] for _, headers, _ in answers)
    assert statuses == ["HIT"] * 49 + ["MISS"]
    coalesced = sum(headers.get(COALESCED_HEADER) == "1" for _, headers, _ in answers)
    assert coalesced >= 40  # the rest found it stored at their edge lookup


def test_a_leader_that_fails_is_replaced_and_the_others_get_answers(coalescing_run):
    # The first model call for this prompt fails at once (a model error, a throttle); the
    # next one succeeds after 0.8 s. A holder failing that fast is replaced within the
    # waiters' takeover window (docs/decisions.md); one failing late leaves them a 503.
    ask = chat(f"fail once {time.time_ns()} {FAIL_ONCE_MARKER} [[slow-ms:800]]")
    before = model_calls(coalescing_run)
    # Eight, not fifty: the takeover window is 2 s from each waiter's start, and on a
    # loaded 2-core machine fifty requests' own CPU can push the leader's failure past it.
    answers = burst(coalescing_run, [ask] * 8)
    assert model_calls(coalescing_run) - before == 2  # the failed call, and one takeover
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 7 + [502]  # the failed leader's own client gets the model error
    assert len({body for status, _, body in answers if status == 200}) == 1


def test_non_cacheable_requests_never_wait(coalescing_run):
    # Sampled without a seed: each answer differs, nothing is shared.
    ask = chat(f"roll the dice {time.time_ns()} [[slow-ms:300]]", temperature=1)
    before = model_calls(coalescing_run)
    began = time.monotonic()
    answers = burst(coalescing_run, [ask] * 20)
    assert model_calls(coalescing_run) - before == 20
    assert {status for status, _, _ in answers} == {200}
    assert {headers[STATUS_HEADER] for _, headers, _ in answers} == {"BYPASS"}
    assert not any(COALESCED_HEADER in headers for _, headers, _ in answers)
    assert len({body for _, _, body in answers}) == 20
    assert time.monotonic() - began < 15
