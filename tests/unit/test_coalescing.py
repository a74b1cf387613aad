"""Coalescing identical misses (lambdas/origin_adapter/coalescing.py) against
moto's S3 server on 127.0.0.1 (local_run.s3.LocalS3): real conditional writes over HTTP,
no mock of boto3."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
import uuid
from types import SimpleNamespace

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
    TimingStep,
)
from lambdas.origin_adapter.adapter import InferenceAdapter, OriginRequest
from lambdas.origin_adapter.coalescing import Coalescer, Lease
from lambdas.origin_adapter.endpoint import SageMakerEndpoint
from lambdas.origin_adapter.results_store import BucketHealth, ResultsStore
from lambdas.origin_adapter.settings import AdapterSettings
from local_run.model_server import ModelServer
from local_run.s3 import LocalS3
from local_run.servers import BackgroundServer
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
    """A key of its own per test and run: the bucket is shared, and moto's backend lives as
    long as the process (mutmut runs the suite several times in one)."""
    return hashlib.sha256(f"{request.node.name} {uuid.uuid4()}".encode()).hexdigest()


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


def a_holder_stored_and_left(s3, key: str, **metadata) -> None:
    """An identical request claimed the key, stored its answer (with `metadata`) and left
    its released marker."""
    holder = coalescer(s3)
    lease = holder._claim(key)
    store_result(s3, key, **metadata)
    assert holder.release(lease, stored=True)


def released_marker(s3, key: str) -> bool:
    """The key's lease object is a released marker: its holder stored an answer and left."""
    held = coalescer(s3)._lease_of(key)
    return held is not None and held.released and held.expires <= time.time()


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
    assert c.release(Lease(key, '"not-this-one"', lease.expires), stored=False) is True  # not ours: nothing to remove
    assert lease_exists(s3, key)
    assert c.release(lease, stored=False) is True
    assert not lease_exists(s3, key)
    assert c.release(lease, stored=False) is True  # already gone: nothing to do, no error


def test_a_holder_that_stored_leaves_a_released_marker_that_only_it_could_write(s3, key):
    c = coalescer(s3)
    lease = c._claim(key)
    assert c.release(Lease(key, '"not-this-one"', lease.expires), stored=True) is True  # not ours: left alone
    assert c._lease_of(key) == lease
    assert c.release(lease, stored=True) is True
    marker = c._lease_of(key)
    assert marker.released and marker.etag != lease.etag and marker.expires == pytest.approx(time.time(), abs=2)
    assert c._claim(key) is None  # the key was claimed before: a claim cannot succeed
    assert c.release(lease, stored=True) is True  # its ETag is gone: nothing to do, no error
    assert c._lease_of(key) == marker


def test_a_released_marker_is_json_saying_when_and_no_two_share_an_etag(s3, key):
    c = coalescer(s3)
    etags = []
    for _ in range(2):  # two holders in turn, within the same millisecond or not
        lease = c._claim(key) or c._take_over(key, c._lease_of(key).etag, 5.0)
        assert c.release(lease, stored=True)
        head = s3.head_object(Bucket=BUCKET, Key=f"{LEASE_PREFIX}{key}")
        marker = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{LEASE_PREFIX}{key}")["Body"].read())
        assert head["ContentType"] == "application/json"
        assert set(marker) == {"owner", "released", "expires"} and len(marker["owner"]) == 32
        assert marker["released"] == marker["expires"] == pytest.approx(time.time(), abs=2)
        etags.append(head["ETag"])
    assert etags[0] != etags[1]


def test_a_waiter_that_loses_a_markers_takeover_polls_on_and_answers_from_the_winner(s3, key):
    """Two requests find the same marker (its answer too old for them): one takes it over,
    the other's takeover fails (412) and it waits for the winner's answer."""
    a_holder_stored_and_left(s3, key, **{STORED_AT_METADATA: str(int(time.time()) - 120)})
    winner = []

    def another_request_takes_the_marker_first(kwargs):
        if "IfMatch" in kwargs and not winner:
            winner.append(coalescer(s3)._take_over(key, kwargs["IfMatch"], 5.0))

            def generate_and_store():
                store_result(s3, key, body=b'{"answer": "fresh"}')
                coalescer(s3).release(winner[0], stored=True)

            threading.Timer(0.1, generate_and_store).start()

    recorded = RecordingClient(s3, put_object=another_request_takes_the_marker_first)
    turn = coalescer(recorded).acquire(key, max_age_seconds=60)
    assert winner and winner[0] is not None
    assert turn.result is not None and turn.result.body == b'{"answer": "fresh"}' and turn.lease is None


def test_a_claim_that_succeeds_calls_the_model_without_reading_the_result(s3, key):
    """No lease object: no coordinated request stored an answer under the key (the
    module's docstring); one S3 call before the model."""
    recorded = RecordingClient(s3)
    turn = coalescer(recorded).acquire(key, max_age_seconds=3600)
    assert turn.lease is not None and not turn.waited and not turn.takeover
    assert recorded.names() == ["put_object"]


class RecordingClient:
    """The real S3 client, noting each call the coalescer makes (name, time.monotonic()) as
    it starts; wait_for() blocks until the calls so far satisfy a condition. `before`
    (name -> function(kwargs)) runs just before a call of that name is made: the moment
    another request acts, or S3 fails."""

    def __init__(self, s3, **before):
        self.s3, self.calls, self.changed, self.before = s3, [], threading.Condition(), before

    def __getattr__(self, name):
        method = getattr(self.s3, name)

        def call(**kwargs):
            with self.changed:
                self.calls.append((name, time.monotonic()))
                self.changed.notify_all()
            if name in self.before:
                self.before[name](kwargs)
            return method(**kwargs)

        return call

    def names(self, since: int = 0) -> list[str]:
        return [name for name, _ in self.calls[since:]]

    def wait_for(self, condition, seconds: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self), timeout=seconds), self.calls


def record_the_waiters_pauses(monkeypatch) -> tuple[list, list]:
    """(pauses, jitter ranges) the calling thread asks for from now on; its jitter draws
    0.75 of its range. Other threads (the S3 server, a finisher) are left alone."""
    naps, draws, waiter = [], [], threading.get_ident()
    sleep, uniform = time.sleep, random.uniform

    def recorded_sleep(seconds):
        if threading.get_ident() == waiter:
            naps.append(seconds)
        sleep(seconds)

    def drawn(low, high):
        if threading.get_ident() != waiter:
            return uniform(low, high)
        draws.append((low, high))
        return low + 0.5 * (high - low)

    monkeypatch.setattr(time, "sleep", recorded_sleep)
    monkeypatch.setattr(random, "uniform", drawn)
    return naps, draws


def test_a_waiter_answers_as_soon_as_the_result_lands(s3, key, monkeypatch):
    c = coalescer(s3, wait=5.0)
    leader = c.acquire(key, max_age_seconds=3600)
    assert leader.lease is not None and not leader.waited
    recorded = RecordingClient(s3)
    landed = []

    def finish():  # once the waiter is polling (it found the lease held twice)
        recorded.wait_for(lambda r: r.names().count("head_object") >= 2)
        store_result(s3, key)
        landed.append(len(recorded.calls))
        c.release(leader.lease, stored=True)

    naps, draws = record_the_waiters_pauses(monkeypatch)
    finisher = threading.Thread(target=finish)
    finisher.start()
    turn = coalescer(recorded, wait=5.0).acquire(key, max_age_seconds=3600)
    monkeypatch.undo()
    finisher.join(10)
    # Polls backing off by half again from the first pause (0.02 s here) to the longest
    # (0.1 s), each with a jitter of half to all of it (drawn as 0.75 here).
    assert draws and set(draws) == {(0.5, 1.0)}
    assert naps == pytest.approx([min(0.02 * 1.5**n, 0.1) * 0.75 for n in range(len(naps))])
    assert turn.waited and turn.result is not None and turn.lease is None and not turn.gave_up
    assert turn.result.body == b'{"answer": 4}' and turn.result.content_type == "application/json"
    # The next poll after the result landed answered from it: at most the rest of a poll
    # under way as it landed (its lease check), then one look at the result (or two: a
    # lease found gone is followed by a second look).
    after = recorded.names(landed[0]) if landed else None
    assert after is not None and after.count("head_object") <= 1 and after.count("get_object") <= 2, after


def test_a_result_past_its_expires_metadata_or_older_than_accepted_is_not_an_answer(s3, key):
    c = coalescer(s3)
    store_result(s3, key, expires=str(int(time.time()) - 1))
    assert c._result(key, max_age_seconds=3600) is None
    store_result(s3, key, expires=str(int(time.time()) + 60))
    assert c._result(key, max_age_seconds=3600) is not None
    s3.put_object(Bucket=BUCKET, Key=f"{RESULTS_PREFIX}{key}", Body=b"{}", Metadata={STORED_AT_METADATA: str(int(time.time()) - 120)})
    assert c._result(key, max_age_seconds=60) is None
    assert c._result(key, max_age_seconds=600) is not None


def test_a_claim_after_a_holder_stored_and_left_answers_from_its_result(s3, key):
    """The holder stored and left after this request's edge lookup missed: its released
    marker makes the claim fail, and the result is read at once (no pause), one model call."""
    a_holder_stored_and_left(s3, key)
    recorded = RecordingClient(s3)
    turn = coalescer(recorded).acquire(key, max_age_seconds=3600)
    assert turn.result is not None and turn.lease is None
    assert not turn.takeover and not turn.expired_takeover  # answered, not a takeover
    assert recorded.names() == ["put_object", "get_object"] and released_marker(s3, key)


@pytest.mark.parametrize("why", ["expired", "older than the request accepts"])
def test_a_key_asked_again_after_its_answer_expired_is_generated_anew(s3, key, why):
    """A released marker, and a result this request does not accept: it takes the marker
    over (a new generation, not a handover) and runs the model, at once."""
    if why == "expired":
        a_holder_stored_and_left(s3, key, expires=str(int(time.time()) - 1))
    else:
        a_holder_stored_and_left(s3, key, **{STORED_AT_METADATA: str(int(time.time()) - 120)})
    recorded = RecordingClient(s3)
    began = time.monotonic()
    turn = coalescer(recorded).acquire(key, max_age_seconds=60)
    assert turn.lease is not None and turn.result is None and not turn.gave_up
    assert not turn.takeover and not turn.expired_takeover  # counted as a won lease
    assert time.monotonic() - began < 1.0  # no poll: a marker is not waited for
    assert recorded.names() == ["put_object", "get_object", "head_object", "get_object", "put_object"]
    held = coalescer(s3)._lease_of(key)
    assert held.etag == turn.lease.etag and not held.released and held.expires > time.time()
    coalescer(s3).release(turn.lease, stored=False)


def test_a_waiter_answers_from_a_result_while_its_holder_still_holds_the_lease(s3, key):
    """The holder stored its answer and has not removed its lease yet (or died just then)."""
    held = coalescer(s3, lease=30.0)._claim(key)
    recorded = RecordingClient(s3, head_object=lambda kwargs: store_result(s3, key))  # stored as the lease is checked
    turn = coalescer(recorded).acquire(key, max_age_seconds=3600)
    assert turn.result is not None and not turn.gave_up and lease_exists(s3, key)
    coalescer(s3).release(held, stored=False)


def test_a_failed_lease_check_is_polled_again(s3, key):
    held = coalescer(s3, lease=30.0)._claim(key)
    failures = []

    def s3_fails_once(kwargs):
        if not failures:
            failures.append(kwargs)
            raise ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}}, "HeadObject")
        store_result(s3, key)

    turn = coalescer(RecordingClient(s3, head_object=s3_fails_once)).acquire(key, max_age_seconds=3600)
    assert failures and turn.result is not None and turn.lease is None and not turn.gave_up
    coalescer(s3).release(held, stored=False)


def test_a_waiter_re_claims_the_key_only_once(s3, key):
    """Its one re-claim lost to another request, which fails too: it runs the model without
    a lease rather than claim again."""
    first = coalescer(s3)._claim(key)
    other = coalescer(s3)
    puts = []

    def another_request_claims_first(kwargs):
        puts.append(kwargs)
        if len(puts) == 2:  # the waiter's re-claim, after the first holder failed
            lease = other._claim(key)
            threading.Timer(0.05, other.release, args=(lease,), kwargs={"stored": False}).start()  # ... and fails in turn

    recorded = RecordingClient(s3, put_object=another_request_claims_first)
    threading.Timer(0.05, coalescer(s3).release, args=(first,), kwargs={"stored": False}).start()  # the first holder fails
    turn = coalescer(recorded, wait=3.0, takeover=3.0).acquire(key, max_age_seconds=3600)
    assert len(puts) == 2 and turn.lease is None and turn.result is None and not turn.gave_up and not turn.takeover


def test_an_expired_lease_found_past_the_takeover_window_is_given_up_on(s3, key):
    assert coalescer(s3, lease=0.0)._claim(key) is not None  # expired as written
    recorded = RecordingClient(s3)
    turn = coalescer(recorded, wait=3.0, takeover=0.0).acquire(key, max_age_seconds=3600)
    assert turn.gave_up and turn.lease is None and turn.result is None
    assert recorded.names().count("put_object") == 1  # its first claim only: no takeover


def test_a_takeover_that_finds_a_result_stored_meanwhile_answers_from_it(s3, key):
    assert coalescer(s3, lease=0.0)._claim(key) is not None  # a dead holder's lease

    def stored_just_before_the_takeover(kwargs):
        if "IfMatch" in kwargs and not released_marker(s3, key):
            store_result(s3, key)

    turn = coalescer(RecordingClient(s3, put_object=stored_just_before_the_takeover)).acquire(key, max_age_seconds=3600)
    assert turn.result is not None and turn.lease is None
    assert not turn.takeover and not turn.expired_takeover
    assert released_marker(s3, key)  # the answer is stored: its lease stays, released


class StoresBeforeTheLeaseCheck:
    """The real client; the holder stores its result and leaves between a waiter's read of
    the result and its check of the lease (the race a burst hits)."""

    def __init__(self, s3, holder: Coalescer, lease: Lease):
        self.s3, self.holder, self.lease = s3, holder, lease

    def head_object(self, **kwargs):
        if self.lease is not None:
            store_result(self.s3, self.lease.key)
            self.holder.release(self.lease, stored=True)
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
    assert released_marker(s3, key)


def test_an_expired_lease_is_taken_over_by_one_waiter(s3, key):
    c = coalescer(s3, lease=5.0)
    dead = coalescer(s3, lease=0.0)._claim(key)  # expired as written; its holder never comes back
    assert dead is not None and dead.expires <= time.time() + 0.001
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
    c.release(leader.lease, stored=True)
    for t in threads:
        t.join()
    assert sum(1 for t in turns if t.lease) == 1
    assert sum(1 for t in turns if t.result is not None) == 4


def test_a_leader_that_fails_hands_the_key_to_one_waiter(s3, key):
    recorded = RecordingClient(s3)
    c = coalescer(recorded)
    leader = c.acquire(key, max_age_seconds=3600)
    turns, barrier = [], threading.Barrier(6)

    def wait():
        barrier.wait()
        turns.append(c.acquire(key, max_age_seconds=3600))

    threads = [threading.Thread(target=wait) for _ in range(5)]
    for t in threads:
        t.start()
    barrier.wait()
    recorded.wait_for(lambda r: r.names().count("head_object") >= 5)  # the five are waiting on the lease
    c.release(leader.lease, stored=False)  # the model failed: no result, lease removed
    deadline = time.monotonic() + 3
    while not any(t.lease for t in turns) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = next(t for t in turns if t.lease)
    assert second.takeover and not second.expired_takeover
    store_result(s3, key)
    c.release(second.lease, stored=True)
    for t in threads:
        t.join()
    assert [bool(t.lease) for t in turns].count(True) == 1
    assert [t.result is not None for t in turns].count(True) == 4


def test_a_waiter_re_claims_once_then_runs_the_model_itself(s3, key):
    c = coalescer(s3)
    first = c._claim(key)

    def holders_that_keep_failing():
        c.release(first, stored=False)
        time.sleep(0.05)
        # Someone else wins the re-claim race and fails too.
        for _ in range(50):
            other = c._claim(key)
            if other is not None:
                time.sleep(0.1)
                c.release(other, stored=False)
                return
            time.sleep(0.01)

    threading.Timer(0.1, holders_that_keep_failing).start()
    turn = c.acquire(key, max_age_seconds=3600)
    assert turn.waited and not turn.gave_up and turn.result is None  # not gave_up: well within its 3 s
    # Either it won the re-claim (runs as leader) or, having re-claimed once, runs alone.
    if turn.lease is not None:
        assert turn.takeover
        c.release(turn.lease, stored=False)


def test_a_waiters_last_pause_ends_at_its_budget(s3, key, monkeypatch):
    """A request that began 0.55 s ago with a 0.6 s budget: its first pause (0.2 s * 0.75)
    is cut to what is left of the budget."""
    held = coalescer(s3, lease=30.0)._claim(key)
    naps, _ = record_the_waiters_pauses(monkeypatch)
    waiter = Coalescer(BUCKET, s3, lease_seconds=30, wait_seconds=0.6, takeover_window_seconds=0.3, first_poll_seconds=0.2)
    turn = waiter.acquire(key, max_age_seconds=3600, started=time.monotonic() - 0.55)
    monkeypatch.undo()
    assert turn.gave_up and naps and naps[0] <= 0.05
    coalescer(s3).release(held, stored=False)


def test_a_waiter_never_waits_longer_than_its_budget(s3, key):
    held = coalescer(s3, lease=30.0)._claim(key)  # a live holder that never finishes within the budget
    recorded = RecordingClient(s3)
    began = time.monotonic()
    turn = coalescer(recorded, lease=30.0, wait=0.6, takeover=0.3).acquire(key, max_age_seconds=3600, started=began)
    assert turn.gave_up and turn.lease is None and turn.result is None
    assert time.monotonic() - began >= 0.6  # not before its budget
    # ... and not after it: past the budget, at most the poll under way when it ended.
    late = [name for name, at in recorded.calls if at >= began + 0.6]
    assert late in ([], ["head_object"], ["get_object", "head_object"]), late
    assert recorded.names().count("head_object") >= 2  # it did poll meanwhile
    coalescer(s3).release(held, stored=False)


def test_past_its_takeover_window_a_waiter_gives_up_instead_of_running_the_model(s3, key):
    """A holder failing late: a whole model read would not fit in the waiter's timeout."""
    holder = coalescer(s3)
    held = holder._claim(key)
    recorded = RecordingClient(s3)
    released = []

    def fail_late():  # 0.5 s after the waiter's start: past its 0.2 s takeover window
        holder.release(held, stored=False)
        released.append(len(recorded.calls))

    began = time.monotonic()
    threading.Timer(0.5, fail_late).start()
    turn = coalescer(recorded, wait=2.0, takeover=0.2).acquire(key, max_age_seconds=3600, started=began)
    assert turn.gave_up and turn.lease is None and turn.result is None
    assert recorded.names().count("put_object") == 1  # its first claim (lost); no re-claim: it would run the model
    # It gave up at the first poll that found the lease gone, not at its budget's end
    # (polling on would look at the lease every 0.1 s for 1.5 s more).
    assert released and recorded.names(released[0]).count("head_object") <= 2


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
    lease = first.acquire(key, max_age_seconds=60).lease
    assert lease is not None
    assert first.acquire(key, max_age_seconds=60).gave_up  # a 412, then polls whose result GETs find nothing: 404s
    assert first.release(lease, stored=False) and first.release(lease, stored=False)  # the second finds it gone: no failure
    again = first.acquire(key, max_age_seconds=60).lease
    assert first.release(again, stored=True) and first.release(again, stored=True)  # the second: a 412 (its marker)
    assert health.available()


# -- the adapter's miss path with a coalescer, against the local model server -------------

class LocalModel:
    """The local model server (local_run.model_server) behind boto3's sagemaker-runtime
    client, as the adapter calls SageMaker; `calls` counts the model's runs there. Its
    prompt markers: [[slow-ms:N]] holds a call N ms, [[fail-once]] fails the first call of
    a prompt (a ModelError) and answers the identical ones after it."""

    def __init__(self):
        self.server = ModelServer()
        self.running = BackgroundServer(self.server.app, name="model-under-test").start()
        client = boto3.client(
            "sagemaker-runtime", endpoint_url=self.running.url, region_name="us-east-1", aws_access_key_id="local",
            aws_secret_access_key="local", config=Config(read_timeout=10, max_pool_connections=64, retries={"total_max_attempts": 1}),
        )
        self.endpoint = SageMakerEndpoint("local", connect_timeout=2, read_timeout=10, throttle_retries=0, client=client)

    @property
    def calls(self) -> int:
        return self.server.invocations


@pytest.fixture(scope="module")
def local_model():
    model = LocalModel()
    yield model
    model.running.stop()


@pytest.fixture
def model(local_model):
    """The model's calls counted from this test's start."""
    before = local_model.calls
    return SimpleNamespace(endpoint=local_model.endpoint, calls=lambda: local_model.calls - before)


def adapter(s3, model, **timings) -> InferenceAdapter:
    return InferenceAdapter(
        STAGES["dev"].edge_cache_settings(), model.endpoint, ResultsStore(BUCKET, s3), logging.getLogger("test"),
        coalescer(s3, **timings),
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


def test_a_burst_of_identical_misses_makes_one_model_call(s3, model):
    answers = burst(adapter(s3, model), [chat(f"burst {time.time_ns()} [[slow-ms:300]]")] * 12)
    assert model.calls() == 1
    assert {r.status for r, _ in answers} == {200} and len({r.body for r, _ in answers}) == 1
    statuses = sorted((r.headers[STATUS_HEADER], r.headers.get(COALESCED_HEADER)) for r, _ in answers)
    assert statuses == [("HIT", "1")] * 11 + [("MISS", None)]
    outcomes = [o for _, o in answers]
    assert sum(o.lease_won for o in outcomes) == 1 and sum(o.coalesced for o in outcomes) == 11
    assert all(o.reason.endswith("coalesced") for o in outcomes if o.coalesced)


def key_of(request: OriginRequest) -> str:
    return cache_decision.decide(request.path, request.headers, request.body, STAGES["dev"].edge_cache_settings(), mac=MAC).key


def test_a_miss_leaves_a_released_marker_only_when_its_answer_was_stored(s3, model):
    """Stored -> the lease becomes a released marker (the next claim fails and finds the
    answer); the model failed, or the store did -> the lease is removed (the next request
    claims the key at once)."""
    def refuse_results(kwargs):
        if kwargs["Key"].startswith(RESULTS_PREFIX):
            raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")

    cases = {
        "stored": (chat(f"marker {time.time_ns()}"), s3, 200, True),
        "model failed": (chat(f"marker {time.time_ns()} [[fail-once]]"), s3, 502, False),
        "store failed": (chat(f"marker {time.time_ns()}"), RecordingClient(s3, put_object=refuse_results), 200, False),
    }
    for case, (request, store_client, status, marker) in cases.items():
        a = InferenceAdapter(STAGES["dev"].edge_cache_settings(), model.endpoint, ResultsStore(BUCKET, store_client),
                             logging.getLogger("test"), coalescer(s3))
        response, outcome = a.answer(request)
        response.finish()
        assert (response.status, outcome.lease_won, outcome.lease_released) == (status, True, True), case
        assert outcome.timings[TimingStep.RELEASE] >= 0, case  # the log line's figure (make bench reads it)
        assert (released_marker(s3, key_of(request)), lease_exists(s3, key_of(request))) == (marker, marker), case


def test_a_failed_leader_hands_over_and_the_waiters_still_get_answers(s3, model):
    answers = burst(adapter(s3, model), [chat(f"fails once {time.time_ns()} [[fail-once]] [[slow-ms:300]]")] * 8)
    assert model.calls() == 2  # the failed call, and one more
    assert sorted(r.status for r, _ in answers) == [200] * 7 + [502]  # the leader's own client gets the model error
    outcomes = [o for _, o in answers]
    # The failure comes at once: a request may claim the freed key afresh instead of taking it over.
    assert sum(o.lease_won or o.lease_takeover for o in outcomes) == 2 and sum(o.coalesced for o in outcomes) == 6
    assert len({r.body for r, _ in answers if r.status == 200}) == 1


def test_a_miss_that_finds_a_dead_holders_lease_takes_it_over_and_says_so(s3, model):
    request = chat(f"dead holder {time.time_ns()}")
    key = key_of(request)
    assert coalescer(s3, lease=0.0)._claim(key) is not None  # expired as written: a holder that never comes back
    response, outcome = adapter(s3, model).answer(request)
    response.finish()
    assert response.status == 200 and model.calls() == 1
    assert outcome.lease_takeover and outcome.lease_expired and not outcome.lease_won


def test_non_cacheable_and_no_cache_requests_never_wait(s3, model):
    sampled = [chat("roll [[slow-ms:200]]", temperature=1)] * 4
    fresh = [chat(f"fresh {time.time_ns()} [[slow-ms:200]]", headers={"cache-control": "no-cache"})] * 4
    answers = burst(adapter(s3, model), sampled + fresh)
    assert model.calls() == 8
    assert not any(o.coalesced or o.lease_won for _, o in answers)


def test_a_waiter_past_its_budget_answers_503_with_retry_after(s3, model):
    answers = burst(adapter(s3, model, wait=0.4, takeover=0.2), [chat(f"slow {time.time_ns()} [[slow-ms:1500]]")] * 3)
    assert model.calls() == 1
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


@pytest.mark.parametrize(("stored", "call", "message"), [
    (False, "delete_object", "removing the lease failed"),
    (True, "put_object", "marking the lease released failed"),
])
def test_a_lease_that_cannot_be_released_is_logged_with_its_key_and_the_error(s3, key, caplog, stored, call, message):
    """S3 refuses the release (access denied) or cannot be reached: a warning, never a failure."""
    def denied(kwargs):
        raise ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, call)

    unreachable = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="local",
                               aws_secret_access_key="local", config=Config(connect_timeout=0.5, retries={"total_max_attempts": 1}))
    logger = logging.getLogger("coalescing-under-test")
    for client, error in ((RecordingClient(s3, **{call: denied}), "ClientError: "), (unreachable, "EndpointConnectionError: ")):
        caplog.clear()
        released = Coalescer(BUCKET, client, lease_seconds=5, wait_seconds=3, takeover_window_seconds=3, logger=logger).release(
            Lease(key, '"etag"', time.time() + 5), stored=stored)
        assert released is False  # the adapter's log says so (lease_released: false)
        (record,) = [r for r in caplog.records if r.name == "coalescing-under-test"]
        assert (record.levelname, record.getMessage(), record.cache_key) == ("WARNING", message, key)
        assert record.error.startswith(error)


def test_a_waiters_first_look_is_at_once(s3, key, monkeypatch):
    """The holder may be storing just as this request lost the claim: its first look at
    the result comes without a pause; only the polls after it back off."""
    held = coalescer(s3, lease=30.0)._claim(key)
    store_result(s3, key)
    naps, _ = record_the_waiters_pauses(monkeypatch)
    turn = coalescer(s3).acquire(key, max_age_seconds=3600)
    monkeypatch.undo()
    assert (turn.waited, turn.result is not None, turn.lease, naps) == (True, True, None, [])
    coalescer(s3).release(held, stored=False)


def test_a_re_claim_holds_the_key_for_the_requests_own_lease_time(s3, key):
    """A stream's lease runs longer than the coalescer's default: a waiter that re-claims a
    failed holder's key takes it for its own request's time, as its first claim did."""
    first = coalescer(s3)._claim(key)
    threading.Timer(0.05, coalescer(s3).release, args=(first,), kwargs={"stored": False}).start()  # the holder fails
    turn = coalescer(s3, lease=5.0).acquire(key, max_age_seconds=3600, lease_seconds=40.0)
    assert turn.takeover and not turn.expired_takeover and turn.lease is not None
    assert turn.lease.expires == pytest.approx(time.time() + 40, abs=2)
    assert coalescer(s3)._lease_of(key).expires == turn.lease.expires
    coalescer(s3).release(turn.lease, stored=False)


def test_a_re_claim_that_finds_a_result_too_old_for_the_request_keeps_the_lease(s3, key):
    """Just re-claimed, it looks for a result stored meanwhile, by the request's own age
    limit: one older than the request accepts is no answer, and the waiter runs the model."""
    first = coalescer(s3)._claim(key)
    puts = []

    def an_old_result_lands_as_the_waiter_re_claims(kwargs):
        puts.append(kwargs)
        if len(puts) == 2:
            store_result(s3, key, **{STORED_AT_METADATA: str(int(time.time()) - 120)})

    threading.Timer(0.05, coalescer(s3).release, args=(first,), kwargs={"stored": False}).start()  # the holder fails
    recorded = RecordingClient(s3, put_object=an_old_result_lands_as_the_waiter_re_claims)
    turn = coalescer(recorded).acquire(key, max_age_seconds=60)
    assert len(puts) == 2 and turn.result is None and turn.takeover and turn.lease is not None
    coalescer(s3).release(turn.lease, stored=False)


@pytest.mark.parametrize(("takeover", "gave_up"), [(3.0, False), (0.0, True)])
def test_a_bucket_paused_while_waiting_runs_the_model_only_within_the_takeover_window(s3, key, takeover, gave_up):
    """The bucket fails while a request waits (its result read answers 503): nothing will be
    stored for it to find, so it stops waiting at once, uncoordinated; it runs the model
    itself while its takeover window is open, and gives up (503, retry) after it."""
    held = coalescer(s3, lease=30.0)._claim(key)
    health = BucketHealth(pause_seconds=60, failures=1)

    def outage(kwargs):
        raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")

    recorded = RecordingClient(s3, get_object=outage)
    waiting = Coalescer(BUCKET, recorded, lease_seconds=5, wait_seconds=3, takeover_window_seconds=takeover,
                        first_poll_seconds=0.02, max_poll_seconds=0.1, health=health)
    began = time.monotonic()
    turn = waiting.acquire(key, max_age_seconds=3600)
    assert (turn.waited, turn.unavailable, turn.gave_up, turn.lease, turn.result) == (True, True, gave_up, None, None)
    assert time.monotonic() - began < 2.5 and recorded.names().count("get_object") == 1  # no wait for its budget
    coalescer(s3).release(held, stored=False)


def test_a_store_the_bucket_refuses_as_down_counts_toward_its_pause(s3, key):
    """The results store's failures are the bucket's health too: a store S3 answers with a
    5xx counts as an outage (and pauses the leases after enough), a 4xx does not."""
    def answered(status):
        def fail(kwargs):
            raise ClientError({"Error": {"Code": "Err"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
        return fail

    for status, paused in ((403, False), (503, True)):
        health = BucketHealth(pause_seconds=60, failures=1)
        store = ResultsStore(BUCKET, RecordingClient(s3, put_object=answered(status)), health)
        with pytest.raises(ClientError):
            store.put(key, b"{}", content_type="application/json", ttl_seconds=60, model="m", model_version="v")
        assert (health.available(), health.last_failure.startswith("ClientError")) == (not paused, paused)
