"""One model call per burst: coalescing identical cacheable misses (issue 13).

CloudFront collapses identical GETs, never POSTs: fifty clients asking the same new
question at once reach the origin fifty times. Before it calls the model for a cacheable
miss, the origin adapter claims the key with an S3 conditional write of a small lease
object, `_leases/{key}` (`PutObject` with `If-None-Match: *`, a prefix CloudFront does not
serve). The winner generates, stores `_cache/{key}` and releases its lease; the others poll
`_cache/{key}` (backoff with jitter, within their own timeout) and answer from it.

A holder that stored its answer does not remove its lease: it overwrites it with a released
marker (`If-Match` on its own ETag; `released` in the metadata, expired as written). So a
lease object exists for a key from its first claim on (S3 lifecycle removes it after a day),
and a claim that succeeds proves that no coordinated request stored an answer under the key
since then: the winner calls the model at once, without reading `_cache/{key}` first. That
read was one S3 round trip before every miss's first token; it closed the race where an
identical request stored its answer and removed its lease between this request's edge
lookup and its claim (issue 13), which the marker now closes. A holder with nothing stored
(the model failed, the answer may not be stored, the store failed) removes its lease (a
conditional delete): the next request claims the key at once.
A waiter that finds a released marker reads the result once more (it may have landed
between the waiter's two reads); with no answer it accepts there (expired, or older than it
accepts), it takes the marker over (`If-Match`) and generates anew: a key asked again after
its answer expired costs five S3 calls before the model instead of one, once per TTL.
What the marker does not cover, and costs a model call, never a wrong answer: an answer
stored without a lease (the bucket failed the claim: coordination was off) after this
request's edge lookup; a marker removed by a later holder that took it over and then
failed, between this request's lookup and its claim (milliseconds).

The lease object: JSON `{"owner", "claimed", "expires"}` (epoch seconds), and `expires`
again in its user metadata, so that a HeadObject tells a waiter whether the lease still
holds. S3 lifecycle removes leases after a day (its minimum); the `expires` time is what
keeps a dead holder's lease from blocking its key: past it, a waiter takes the lease over
with a conditional overwrite (`If-Match` on the expired lease's ETag: one waiter wins).
A holder removes its lease with a conditional delete (`If-Match` on its own ETag), so a
late holder never removes the lease of the waiter that took over from it.

What a waiter does, each poll:
- the result is there (not past its `expires` metadata, not older than the request
  accepts): answer from it (HIT, coalesced);
- the lease is gone and no result (the holder failed, or could not store): claim the key
  once more (one re-claim per request); having re-claimed once, run the model itself;
- the lease is a released marker and no result this request accepts (the answer expired,
  or is older than the request accepts): take it over, and generate anew;
- the lease expired (the holder died): take it over;
- past its wait budget: give up (503 with Retry-After; the client's retry is a new request).
A waiter runs the model (re-claim, takeover, fallback) only within its takeover window
(early enough that a whole model read still fits in its timeout); later it gives up.

Any S3 failure of the lease itself fails open: the request runs the model uncoordinated,
as it would without coalescing. It never fails a request. A failure that says the bucket
is slow or down pauses the lease calls of this process for a while (BucketHealth): the
misses that follow run the model at once instead of each paying the timeout again; a
waiter whose bucket is paused runs the model itself within its takeover window, or gives
up (nothing could be stored for it to find).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from lambdas.contract import LEASE_PREFIX, RESULTS_PREFIX, STORED_AT_METADATA
from lambdas.origin_adapter.results_store import BucketHealth

# The result's expiry in its user metadata (epoch seconds), written next to `created`.
RESULT_EXPIRES_METADATA = "expires"
# The lease's expiry in its user metadata (epoch seconds).
LEASE_EXPIRES_METADATA = "expires"
# Set on a released marker: its holder stored an answer and is done with the key.
LEASE_RELEASED_METADATA = "released"

# S3 answers a conditional write that lost a race with one of these.
_PRECONDITION_FAILED = ("PreconditionFailed", "412")
_CONFLICT = ("ConditionalRequestConflict", "409")
_MISSING = ("NoSuchKey", "404", "NotFound")
_CONFLICT_RETRIES = 3
_RELEASE_FAILED = {True: "marking the lease released failed", False: "removing the lease failed"}


@dataclass(frozen=True)
class Lease:
    key: str  # the cache key
    etag: str  # of our lease object: the conditional delete names it
    expires: float
    released: bool = False  # a released marker: its holder stored an answer and left


@dataclass(frozen=True)
class StoredResult:
    body: bytes
    content_type: str
    created: float | None


@dataclass
class Turn:
    """What coordination decided for one request.

    lease: set -> this request runs the model, stores, then calls release(lease, stored=...).
    result: set -> answer from it (coalesced).
    gave_up: True -> answer 503 (retry).
    Neither set and not gave_up -> run the model without a lease (fail open, fallback).
    """

    lease: Lease | None = None
    result: StoredResult | None = None
    gave_up: bool = False
    waited: bool = False  # it lost the first claim and polled
    takeover: bool = False  # it claimed after the holder failed, or took an expired lease
    expired_takeover: bool = False
    unavailable: bool = False  # S3 failed us (or is paused): uncoordinated


class Coalescer:
    def __init__(
        self,
        bucket: str,
        client,
        *,
        lease_seconds: float,
        wait_seconds: float,
        takeover_window_seconds: float,
        logger=None,
        first_poll_seconds: float = 0.05,
        max_poll_seconds: float = 0.5,
        health: BucketHealth | None = None,
    ):
        if not 0 < wait_seconds <= lease_seconds + 60:
            raise ValueError("wait budget must be positive")
        self.bucket = bucket
        self.client = client
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.takeover_window_seconds = takeover_window_seconds
        self.logger = logger
        self.first_poll_seconds = first_poll_seconds
        self.max_poll_seconds = max_poll_seconds
        self.health = health or BucketHealth()

    # -- the one entry point -----------------------------------------------------------
    def acquire(
        self, key: str, *, max_age_seconds: float, started: float | None = None, lease_seconds: float | None = None
    ) -> Turn:
        """Claim `key`, or wait for the identical request that holds it. `started` is the
        request's start (time.monotonic()); the budgets count from it. `lease_seconds`: how
        long a lease this request takes may hold the key (a stream runs longer than a whole
        answer); the coalescer's own by default."""
        started = time.monotonic() if started is None else started
        lease_seconds = self.lease_seconds if lease_seconds is None else lease_seconds
        turn = Turn()
        if not self.health.available():  # slow or down a moment ago: not worth the timeout again
            turn.unavailable = True
            return turn
        try:
            lease = self._claim(key, lease_seconds)
        except _Unavailable:
            turn.unavailable = True
            return turn
        if lease is not None:
            # No lease object: no coordinated request stored an answer here since a day
            # (see the module's docstring). The model at once, no read of the result.
            turn.lease = lease
            return turn
        return self._wait(key, max_age_seconds, started, turn, lease_seconds)

    def _unless_stored(self, turn: Turn, max_age_seconds: float) -> Turn:
        """Just claimed: an identical request may have stored its result and left after our
        edge lookup (or our last poll) missed it. Then answer from that, not the model."""
        result = self._result(turn.lease.key, max_age_seconds)
        if result is not None:
            self.release(turn.lease, stored=True)  # an answer is stored: the marker stays
            turn.lease, turn.takeover, turn.expired_takeover, turn.result = None, False, False, result
        return turn

    def release(self, lease: Lease, *, stored: bool) -> bool:
        """Let go of our lease, and only ours (conditional on its ETag): `stored` (an answer
        is stored under the key) -> overwrite it with a released marker; else remove it.
        Tried even while the bucket is paused (it runs after the answer went out; waiters
        wait for it). False when it failed: the lease then holds its key until it expires."""
        try:
            if stored:
                now = round(time.time(), 3)
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=_lease_key(lease.key),
                    # An owner of its own: no two markers share an ETag, so an If-Match on a
                    # marker's ETag never matches a later marker of the same key.
                    Body=json.dumps({"owner": uuid.uuid4().hex, "released": now, "expires": now}).encode(),
                    ContentType="application/json",
                    Metadata={LEASE_EXPIRES_METADATA: f"{now:.3f}", LEASE_RELEASED_METADATA: "1"},
                    IfMatch=lease.etag,
                )
            else:
                self.client.delete_object(Bucket=self.bucket, Key=_lease_key(lease.key), IfMatch=lease.etag)
        except ClientError as exc:
            if _code(exc) not in (*_PRECONDITION_FAILED, *_MISSING):  # not ours any more, or gone: nothing to do
                self._failed(_RELEASE_FAILED[stored], lease.key, exc)
                return False
        except BotoCoreError as exc:
            self._failed(_RELEASE_FAILED[stored], lease.key, exc)
            return False
        self.health.succeeded()
        return True

    # -- waiting -----------------------------------------------------------------------
    def _wait(self, key: str, max_age_seconds: float, started: float, turn: Turn, lease_seconds: float) -> Turn:
        turn.waited = True
        wait_until = started + self.wait_seconds
        takeover_until = started + self.takeover_window_seconds
        reclaimed = False
        interval = self.first_poll_seconds
        first = True
        while True:
            now = time.monotonic()
            if now >= wait_until:
                turn.gave_up = True
                return turn
            if not self.health.available():
                # Nothing can be stored for us to find: run the model while it still fits.
                turn.unavailable = True
                turn.gave_up = time.monotonic() >= takeover_until
                return turn
            if not first:  # the first look is at once: the holder may be storing as we lost the claim
                time.sleep(min(interval * random.uniform(0.5, 1.0), wait_until - now))
                interval = min(interval * 1.5, self.max_poll_seconds)
            first = False

            result = self._result(key, max_age_seconds)
            if result is not None:
                turn.result = result
                return turn
            try:
                held = self._lease_of(key)
            except _Unavailable:
                continue  # a failed poll: poll again
            may_run = time.monotonic() < takeover_until
            if held is None or held.released:
                # Gone, or done. The holder may have stored and left between our two reads: look again.
                result = self._result(key, max_age_seconds)
                if result is not None:
                    turn.result = result
                    return turn
                if not may_run:
                    turn.gave_up = True
                    return turn
                if held is not None:
                    # A released marker, and no answer this request accepts (expired, or older
                    # than it accepts): generate anew. No read after the takeover: the marker
                    # was in place from our lease check on, so nothing was stored meanwhile.
                    try:
                        lease = self._take_over(key, held.etag, lease_seconds)
                    except _Unavailable:
                        return turn
                    if lease is not None:
                        turn.lease = lease  # a new generation of the key, not a handover
                        return turn
                    continue  # another request took it first: poll on
                # No lease, no result: the holder failed (or could not store its answer).
                if reclaimed:
                    return turn  # run the model ourselves, uncoordinated
                reclaimed = True
                try:
                    lease = self._claim(key, lease_seconds)
                except _Unavailable:
                    return turn
                if lease is not None:
                    turn.lease, turn.takeover = lease, True
                    return self._unless_stored(turn, max_age_seconds)
            elif held.expires <= time.time():  # the holder died with its lease
                if not may_run:
                    turn.gave_up = True
                    return turn
                try:
                    lease = self._take_over(key, held.etag, lease_seconds)
                except _Unavailable:
                    return turn
                if lease is not None:
                    turn.lease, turn.takeover, turn.expired_takeover = lease, True, True
                    return self._unless_stored(turn, max_age_seconds)

    # -- S3 ----------------------------------------------------------------------------
    def _claim(self, key: str, lease_seconds: float | None = None) -> Lease | None:
        """Our lease if the key was free; None if another request holds it."""
        return self._put_lease(key, self.lease_seconds if lease_seconds is None else lease_seconds, IfNoneMatch="*")

    def _take_over(self, key: str, expired_etag: str, lease_seconds: float) -> Lease | None:
        """Replace the expired lease we saw, unless another waiter replaced (or removed) it first."""
        return self._put_lease(key, lease_seconds, IfMatch=expired_etag)

    def _put_lease(self, key: str, lease_seconds: float, **condition) -> Lease | None:
        for attempt in range(_CONFLICT_RETRIES + 1):
            claimed = time.time()
            # Rounded as written (ms): the lease we hold is the one a waiter reads back.
            expires = round(claimed + lease_seconds, 3)
            body = json.dumps({"owner": uuid.uuid4().hex, "claimed": round(claimed, 3), "expires": expires})
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket,
                    Key=_lease_key(key),
                    Body=body.encode(),
                    ContentType="application/json",
                    Metadata={LEASE_EXPIRES_METADATA: f"{expires:.3f}"},
                    **condition,
                )
                self.health.succeeded()
                return Lease(key, answer["ETag"], expires)
            except ClientError as exc:
                code = _code(exc)
                if code in _PRECONDITION_FAILED or code in _MISSING:
                    self.health.succeeded()
                    return None  # held by another (412), or the lease we meant to replace is gone (404)
                if code in _CONFLICT and attempt < _CONFLICT_RETRIES:
                    time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
                    continue
                self._failed("claiming the lease failed", key, exc)
                raise _Unavailable from exc
            except BotoCoreError as exc:
                self._failed("claiming the lease failed", key, exc)
                raise _Unavailable from exc
        return None  # conflicts each time: someone else is claiming it

    def _lease_of(self, key: str) -> Lease | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=_lease_key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                self.health.succeeded()
                return None
            self.health.note(exc)
            raise _Unavailable from exc
        except BotoCoreError as exc:
            self.health.note(exc)
            raise _Unavailable from exc
        self.health.succeeded()
        metadata = head.get("Metadata", {})
        try:
            expires = float(metadata.get(LEASE_EXPIRES_METADATA, ""))
        except ValueError:  # not a lease we wrote: treat it as expired by its age
            expires = head["LastModified"].timestamp() + self.lease_seconds
        return Lease(key, head["ETag"], expires, released=metadata.get(LEASE_RELEASED_METADATA) == "1")

    def _result(self, key: str, max_age_seconds: float) -> StoredResult | None:
        """The stored answer, if there is one this request may be answered with."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=f"{RESULTS_PREFIX}{key}")
            body = answer["Body"].read()
        except ClientError as exc:
            if _code(exc) not in _MISSING:
                self._failed("reading the result failed", key, exc)
            else:
                self.health.succeeded()
            return None
        except BotoCoreError as exc:
            self._failed("reading the result failed", key, exc)
            return None
        self.health.succeeded()
        metadata = answer.get("Metadata") or {}
        now = time.time()
        expires, created = _epoch(metadata.get(RESULT_EXPIRES_METADATA)), _epoch(metadata.get(STORED_AT_METADATA))
        if expires is not None and expires <= now:
            return None  # the writer says it is no longer an answer
        if created is not None and now - created > max_age_seconds:
            return None  # older than this request accepts
        return StoredResult(body, answer.get("ContentType") or "application/json", created)

    def _failed(self, message: str, key: str, exc: Exception) -> None:
        self.health.note(exc)
        if self.logger is not None:
            self.logger.warning(message, extra={"cache_key": key, "error": f"{type(exc).__name__}: {exc}"})


class _Unavailable(Exception):
    """S3 failed (not a lost race): coordination is off for this request."""


def _lease_key(key: str) -> str:
    return f"{LEASE_PREFIX}{key}"


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _epoch(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
