"""Coalescing identical misses (lambdas/origin_adapter/coalescing.py) against
moto's S3 server on 127.0.0.1 (local_run.s3.LocalS3): real conditional writes over HTTP,
no mock of boto3."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from config.stages import STAGES
from lambdas import cache_decision
from lambdas.contract import (
    ADAPTER_TIMEOUT_ENV,
    COALESCED_HEADER,
    COALESCING_ENV,
    EMBEDDINGS_MODEL_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    LEASE_PREFIX,
    RESULTS_BUCKET_ENV,
    RESULTS_PREFIX,
    SETTINGS_ENV,
    SETTINGS_FILE,
    STATUS_HEADER,
    STORED_AT_METADATA,
)
from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest
from lambdas.origin_adapter.coalescing import Coalescer, Lease
from lambdas.origin_adapter.endpoint import EndpointAnswer, EndpointFailure
from lambdas.origin_adapter.results_store import BucketHealth, ResultsStore
from lambdas.origin_adapter.settings import AdapterSettings
from local_run.s3 import LocalS3
from tests.stage_secret import MAC, WITH_SECRET

BUCKET = "coalescing-results"


@pytest.fixture(scope="module")
def s3():
    with LocalS3() as server:
        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=64, retries={"total_max_attempts": 1}),
        )
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def key(request):
    """A key of its own per test (the bucket is shared)."""
    return hashlib.sha256(request.node.name.encode()).hexdigest()


def coalescer(s3, *, lease=5.0, wait=3.0, takeover=3.0) -> Coalescer:
    return Coalescer(BUCKET, s3, lease_seconds=lease, wait_seconds=wait, takeover_window_seconds=takeover, first_poll_seconds=0.02, max_poll_seconds=0.1)


def store_result(s3, key: str, body: bytes = b'{"answer": 4}', **metadata) -> None:
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{RESULTS_PREFIX}{key}",
        Body=body,
        ContentType="application/json",
        Metadata={STORED_AT_METADATA: str(int(time.time())), **metadata},
    )


def lease_exists(s3, key: str) -> bool:
    try:
        s3.head_object(Bucket=BUCKET, Key=f"{LEASE_PREFIX}{key}")
        return True
    except ClientError:
        return False


def test_one_of_many_concurrent_claimants_wins(s3, key):
    c = coalescer(s3)
    winners, barrier = [], threading.Barrier(30)

    def claim():
        barrier.wait()
        lease = c._claim(key)
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=claim) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert lease_exists(s3, key)


def test_a_second_claim_gets_412_and_the_lease_records_its_expiry(s3, key):
    c = coalescer(s3, lease=5.0)
    lease = c._claim(key)
    assert lease is not None and lease.expires == pytest.approx(time.time() + 5, abs=1)
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket=BUCKET, Key=f"{LEASE_PREFIX}{key}", Body=b"x", IfNoneMatch="*")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert c._claim(key) is None
    held = c._lease_of(key)
    assert (held.etag, held.expires) == (lease.etag, lease.expires)  # the lease read back is the one held


def test_release_removes_only_its_own_lease(s3, key):
    c = coalescer(s3)
    lease = c._claim(key)
    c.release(Lease(key, '"not-this-one"', lease.expires))
    assert lease_exists(s3, key)
    c.release(lease)
    assert not lease_exists(s3, key)
    c.release(lease)  # already gone: nothing to do, no error


def test_a_waiter_answers_as_soon_as_the_result_lands(s3, key):
    c = coalescer(s3, wait=5.0)
    leader = c.acquire(key, max_age_seconds=3600)
    assert leader.lease is not None and not leader.waited

    def finish():
        time.sleep(0.5)
        store_result(s3, key)
        c.release(leader.lease)

    threading.Thread(target=finish).start()
    began = time.monotonic()
    turn = c.acquire(key, max_age_seconds=3600)
    waited = time.monotonic() - began
    assert turn.waited and turn.result is not None and turn.lease is None
    assert turn.result.body == b'{"answer": 4}' and turn.result.content_type == "application/json"
    assert 0.45 < waited < 1.0  # polls every <= 0.1 s here


def test_a_result_past_its_expires_metadata_or_older_than_accepted_is_not_an_answer(s3, key):
    c = coalescer(s3)
    store_result(s3, key, expires=str(int(time.time()) - 1))
    assert c._result(key, max_age_seconds=3600) is None
    store_result(s3, key, expires=str(int(time.time()) + 60))
    assert c._result(key, max_age_seconds=3600) is not None
    s3.put_object(Bucket=BUCKET, Key=f"{RESULTS_PREFIX}{key}", Body=b"{}", Metadata={STORED_AT_METADATA: str(int(time.time()) - 120)})
    assert c._result(key, max_age_seconds=60) is None
    assert c._result(key, max_age_seconds=600) is not None


def test_a_claim_that_finds_a_result_just_stored_answers_from_it(s3, key):
    """The leader stored and left after this request's edge lookup missed."""
    store_result(s3, key)
    turn = coalescer(s3).acquire(key, max_age_seconds=3600)
    assert turn.result is not None and turn.lease is None and not turn.waited
    assert not lease_exists(s3, key)


class StoresBeforeTheLeaseCheck:
    """The real client; the holder stores its result and leaves between a waiter's read of
    the result and its check of the lease (the race a burst hits)."""

    def __init__(self, s3, holder: Coalescer, lease: Lease):
        self.s3, self.holder, self.lease = s3, holder, lease

    def head_object(self, **kwargs):
        if self.lease is not None:
            store_result(self.s3, self.lease.key)
            self.holder.release(self.lease)
            self.lease = None
        return self.s3.head_object(**kwargs)

    def __getattr__(self, name):
        return getattr(self.s3, name)


@pytest.mark.parametrize("takeover", [3.0, 0.0], ids=["within-takeover-window", "past-takeover-window"])
def test_a_holder_that_stores_and_leaves_between_two_polls_is_answered_from(s3, key, takeover):
    holder = coalescer(s3)
    lease = holder._claim(key)
    waiter = Coalescer(BUCKET, StoresBeforeTheLeaseCheck(s3, holder, lease), lease_seconds=5, wait_seconds=3, takeover_window_seconds=takeover)
    turn = waiter.acquire(key, max_age_seconds=3600)
    assert turn.result is not None and turn.lease is None and not turn.gave_up
    assert not lease_exists(s3, key)


def test_an_expired_lease_is_taken_over_by_one_waiter(s3, key):
    c = coalescer(s3, lease=0.3)
    dead = c._claim(key)  # its holder never comes back
    assert dead is not None
    time.sleep(0.4)
    turns, barrier = [], threading.Barrier(5)

    def wait():
        barrier.wait()
        turns.append(c.acquire(key, max_age_seconds=3600))

    threads = [threading.Thread(target=wait) for _ in range(5)]
    for t in threads:
        t.start()
    # The one that took over generates a little, stores, releases; the rest answer from it.
    deadline = time.monotonic() + 3
    while not any(t.lease for t in turns) and time.monotonic() < deadline:
        time.sleep(0.01)
    leader = next(t for t in turns if t.lease)
    assert leader.takeover and leader.expired_takeover and leader.lease.etag != dead.etag
    store_result(s3, key)
    c.release(leader.lease)
    for t in threads:
        t.join()
    assert sum(1 for t in turns if t.lease) == 1
    assert sum(1 for t in turns if t.result is not None) == 4


def test_a_leader_that_fails_hands_the_key_to_one_waiter(s3, key):
    c = coalescer(s3)
    leader = c.acquire(key, max_age_seconds=3600)
    turns, barrier = [], threading.Barrier(6)

    def wait():
        barrier.wait()
        turns.append(c.acquire(key, max_age_seconds=3600))

    threads = [threading.Thread(target=wait) for _ in range(5)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.2)
    c.release(leader.lease)  # the model failed: no result, lease removed
    deadline = time.monotonic() + 3
    while not any(t.lease for t in turns) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = next(t for t in turns if t.lease)
    assert second.takeover and not second.expired_takeover
    store_result(s3, key)
    c.release(second.lease)
    for t in threads:
        t.join()
    assert [bool(t.lease) for t in turns].count(True) == 1
    assert [t.result is not None for t in turns].count(True) == 4


def test_a_waiter_re_claims_once_then_runs_the_model_itself(s3, key):
    c = coalescer(s3)
    first = c._claim(key)

    def holders_that_keep_failing():
        c.release(first)
        time.sleep(0.05)
        # Someone else wins the re-claim race and fails too.
        for _ in range(50):
            other = c._claim(key)
            if other is not None:
                time.sleep(0.1)
                c.release(other)
                return
            time.sleep(0.01)

    began = time.monotonic()
    threading.Timer(0.1, holders_that_keep_failing).start()
    turn = c.acquire(key, max_age_seconds=3600)
    assert turn.waited and not turn.gave_up and turn.result is None
    # Either it won the re-claim (runs as leader) or, having re-claimed once, runs alone.
    if turn.lease is not None:
        assert turn.takeover
        c.release(turn.lease)
    assert time.monotonic() - began < 3


def test_a_waiter_never_waits_longer_than_its_budget(s3, key):
    c = coalescer(s3, lease=30.0, wait=0.6, takeover=0.3)
    held = c._claim(key)  # a live holder that never finishes within the budget
    began = time.monotonic()
    turn = c.acquire(key, max_age_seconds=3600)
    waited = time.monotonic() - began
    assert turn.gave_up and turn.lease is None and turn.result is None
    assert 0.55 < waited < 0.75
    c.release(held)


def test_past_its_takeover_window_a_waiter_gives_up_instead_of_running_the_model(s3, key):
    """A holder failing late: a whole model read would not fit in the waiter's timeout."""
    c = coalescer(s3, wait=2.0, takeover=0.2)
    held = c._claim(key)
    threading.Timer(0.5, c.release, args=(held,)).start()
    began = time.monotonic()
    turn = c.acquire(key, max_age_seconds=3600)
    assert turn.gave_up and turn.lease is None
    assert time.monotonic() - began < 1.0  # gave up when it saw the failure, not at the budget's end


def test_s3_failures_fail_open(key):
    """No bucket to reach: the request runs the model uncoordinated, at once."""
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(connect_timeout=0.5, retries={"total_max_attempts": 1}),
    )
    turn = Coalescer(BUCKET, client, lease_seconds=5, wait_seconds=3, takeover_window_seconds=3).acquire(key, max_age_seconds=60)
    assert turn.unavailable and turn.lease is None and turn.result is None and not turn.gave_up


def test_a_slow_bucket_pauses_the_leases_and_the_next_misses_skip_them_at_once(key):
    """The local S3 made slow by its fault hook (every call waits 3 s): a claim pays one
    read budget (1 s) and fails open; once three have in a row, the bucket is paused and
    the claims that follow within the pause make no call at all; after it, the bucket is
    tried again. A slow call among good ones pauses nothing."""
    with LocalS3() as server:
        client = boto3.client(
            "s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local",
            config=Config(s3={"addressing_style": "path"}, connect_timeout=0.5, read_timeout=1.0, retries={"total_max_attempts": 1}),
        )
        client.create_bucket(Bucket=BUCKET)
        health = BucketHealth(pause_seconds=1.5, failures=3)
        slow = Coalescer(BUCKET, client, lease_seconds=5, wait_seconds=3, takeover_window_seconds=3, health=health)
        server.checks.set_fault(BUCKET, delay_seconds=3)
        try:
            assert slow.acquire(key + "a", max_age_seconds=60).unavailable and health.available()
            server.checks.set_fault(None)
            assert slow.acquire(key + "b", max_age_seconds=60).lease is not None  # a good call: the count starts again
            server.checks.set_fault(BUCKET, delay_seconds=3)
            assert slow.acquire(key + "c", max_age_seconds=60).unavailable and health.available()
            assert slow.acquire(key + "d", max_age_seconds=60).unavailable and health.available()
            began = time.monotonic()
            assert slow.acquire(key, max_age_seconds=60).unavailable
            assert 0.9 <= time.monotonic() - began < 2.5 and not health.available() and "ReadTimeout" in health.last_failure
            calls = server.checks.stats()["requests"].get("PUT", 0)
            began = time.monotonic()
            assert slow.acquire(key + "2", max_age_seconds=60).unavailable
            assert time.monotonic() - began < 0.05 and server.checks.stats()["requests"].get("PUT", 0) == calls
            server.checks.set_fault(None)
            time.sleep(1.6)
            turn = slow.acquire(key, max_age_seconds=60)  # the pause is over: claimed for real
            assert turn.lease is not None and not turn.unavailable
        finally:
            server.checks.set_fault(None)


def test_lost_races_and_missing_objects_never_pause_the_bucket(s3, key):
    health = BucketHealth(pause_seconds=60)
    first = Coalescer(BUCKET, s3, lease_seconds=5, wait_seconds=0.3, takeover_window_seconds=0.1, health=health)
    lease = first.acquire(key, max_age_seconds=60).lease  # its result GET finds nothing: a 404
    assert lease is not None
    assert first.acquire(key, max_age_seconds=60).gave_up  # a 412, then polls that find nothing
    assert first.release(lease) and first.release(lease)  # the second finds it gone: nothing held, no failure
    assert health.available()


# -- the adapter's miss path with a coalescer (the model a counting stand-in) ---------------

class CountingModel:
    def __init__(self, seconds: float = 0.3, fail_first: bool = False):
        self.calls, self.seconds, self.fail_first = 0, seconds, fail_first
        self._lock = threading.Lock()

    def invoke(self, body: bytes, content_type: str) -> EndpointAnswer:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        time.sleep(self.seconds)
        if self.fail_first and first:
            raise EndpointFailure(502, "model_error", "The model failed.", model_error=True)
        return EndpointAnswer(json.dumps({"choices": [{"message": {"content": "4"}}]}).encode(), "application/json", self.seconds)


def adapter(s3, model, **timings) -> InferenceAdapter:
    return InferenceAdapter(
        STAGES["dev"].edge_cache_settings(), model, ResultsStore(BUCKET, s3), logging.getLogger("test"), coalescer(s3, **timings)
    )


def chat(content: str, *, headers=None, **params) -> OriginRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0, **params}
    headers = {"content-type": "application/json", **WITH_SECRET, **(headers or {})}
    return OriginRequest("POST", "/v1/chat/completions", headers, json.dumps(body).encode())


def burst(a: InferenceAdapter, requests: list[OriginRequest]) -> list:
    answers, barrier = [None] * len(requests), threading.Barrier(len(requests))

    def ask(i):
        barrier.wait()
        answers[i] = a.answer(requests[i])
        answers[i][0].finish()  # the answer is sent: the store and the lease release, as the web app runs them

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_a_burst_of_identical_misses_makes_one_model_call(s3):
    model = CountingModel()
    answers = burst(adapter(s3, model), [chat(f"burst {time.time()}")] * 12)
    assert model.calls == 1
    assert {r.status for r, _ in answers} == {200} and len({r.body for r, _ in answers}) == 1
    statuses = sorted((r.headers[STATUS_HEADER], r.headers.get(COALESCED_HEADER)) for r, _ in answers)
    assert statuses == [("HIT", "1")] * 11 + [("MISS", None)]
    outcomes = [o for _, o in answers]
    assert sum(o.lease_won for o in outcomes) == 1 and sum(o.coalesced for o in outcomes) == 11
    assert all(o.reason.endswith("coalesced") for o in outcomes if o.coalesced)


def test_a_failed_leader_hands_over_and_the_waiters_still_get_answers(s3):
    model = CountingModel(fail_first=True)
    answers = burst(adapter(s3, model), [chat(f"fails once {time.time()}")] * 8)
    assert model.calls == 2
    assert sorted(r.status for r, _ in answers) == [200] * 7 + [502]
    assert sum(o.lease_takeover for _, o in answers) == 1 and sum(o.coalesced for _, o in answers) == 6


def test_a_miss_that_finds_a_dead_holders_lease_takes_it_over_and_says_so(s3):
    request = chat(f"dead holder {time.time()}")
    key = cache_decision.decide(request.path, request.headers, request.body, STAGES["dev"].edge_cache_settings(), mac=MAC).key
    assert coalescer(s3, lease=0.2)._claim(key) is not None  # a holder that never comes back
    time.sleep(0.3)
    model = CountingModel(seconds=0.05)
    response, outcome = adapter(s3, model).answer(request)
    response.finish()
    assert response.status == 200 and model.calls == 1
    assert outcome.lease_takeover and outcome.lease_expired and not outcome.lease_won


def test_non_cacheable_and_no_cache_requests_never_wait(s3):
    model = CountingModel(seconds=0.2)
    sampled = [chat("roll", temperature=1)] * 4
    fresh = [chat(f"fresh {time.time()}", headers={"cache-control": "no-cache"})] * 4
    answers = burst(adapter(s3, model), sampled + fresh)
    assert model.calls == 8
    assert not any(o.coalesced or o.lease_won for _, o in answers)


def test_a_waiter_past_its_budget_answers_503_with_retry_after(s3):
    model = CountingModel(seconds=1.5)
    answers = burst(adapter(s3, model, wait=0.4, takeover=0.2), [chat(f"slow {time.time()}")] * 3)
    assert model.calls == 1
    gave_up = [(r, o) for r, o in answers if r.status == 503]
    assert len(gave_up) == 2
    assert all(r.headers["retry-after"] == "1" and o.coalesce_gave_up for r, o in gave_up)


# -- timings from the environment the stack sets -------------------------------------------

def test_timings_come_from_the_stages_timeout_budget(monkeypatch, tmp_path):
    budget = STAGES["dev"].endpoint.timeouts
    (tmp_path / SETTINGS_FILE).write_text(STAGES["dev"].edge_cache_settings().to_json())
    for name, value in {
        SETTINGS_ENV: str(tmp_path / SETTINGS_FILE),
        ENDPOINT_NAME_ENV: "e",
        RESULTS_BUCKET_ENV: BUCKET,
        ENDPOINT_READ_TIMEOUT_ENV: str(budget.model_read_seconds),
        ADAPTER_TIMEOUT_ENV: str(budget.adapter_seconds),
        COALESCING_ENV: "true",
        EMBEDDINGS_MODEL_ENV: STAGES["dev"].adapter_embeddings_model("models").to_json(),
    }.items():
        monkeypatch.setenv(name, value)
    settings = AdapterSettings.from_environment()
    assert settings.coalescing
    # A lease never blocks its key past the adapter's timeout (< CloudFront's origin read).
    assert settings.lease_seconds == budget.adapter_seconds < budget.origin_read_seconds
    # A waiter polls at least as long as a whole model read, and answers within its timeout.
    assert budget.model_read_seconds <= settings.wait_seconds < budget.adapter_seconds
    # A waiter that runs the model itself still has a whole model read, and the store, left.
    assert settings.takeover_window_seconds + budget.model_read_seconds + 4 <= budget.adapter_seconds
    # A stream is ended by the adapter itself, with time left to send its last event.
    assert budget.model_read_seconds < settings.answer_seconds <= budget.adapter_seconds - 2
    monkeypatch.delenv(COALESCING_ENV)
    assert not AdapterSettings.from_environment().coalescing  # unset: off
    monkeypatch.setenv(COALESCING_ENV, "yes please")
    with pytest.raises(ValueError, match=COALESCING_ENV):
        AdapterSettings.from_environment()
    monkeypatch.setenv(COALESCING_ENV, "false")
    monkeypatch.setenv(ADAPTER_TIMEOUT_ENV, str(budget.model_read_seconds))
    with pytest.raises(ValueError, match=ADAPTER_TIMEOUT_ENV):
        AdapterSettings.from_environment()
