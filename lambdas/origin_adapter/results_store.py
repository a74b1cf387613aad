"""The results bucket: cacheable answers at _cache/{key}, served back by CloudFront.

The cache is an optimization: a slow or failing bucket must cost a client nothing but the
cache. So the adapter reaches the bucket with one S3 client per process (kept-alive
connections), time budgets far below the answer's and no retries (`results_bucket_client`),
and `BucketHealth` pauses the calls on the answer's path (the lease) for a while after one
timed out, could not connect or got a 5xx: the requests that follow run the model
uncoordinated instead of each paying the timeout again (docs/decisions.md, "A miss pays only for the model").
"""

from __future__ import annotations

import threading
import time

import boto3
from botocore import handlers as botocore_handlers
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.utils import determine_content_length

from lambdas.contract import EXPIRES_METADATA, RESULTS_PREFIX, STORED_AT_METADATA

# Bodies from this size on are sent after S3's `100 Continue`, as the AWS SDKs for Go v2
# and Kotlin do by default (continueHeaderThresholdBytes: 2 MB); botocore asks for it before
# every PutObject body, however small.
EXPECT_CONTINUE_MIN_BYTES = 2 * 1024 * 1024


def results_bucket_client(*, connect_timeout: float, read_timeout: float, max_connections: int = 10):
    """The process's one S3 client for the results bucket (leases, polls, stores): botocore's
    retries off (a retry on the answer's path is time the client waits), TCP keepalive on
    the pooled connections, and no `Expect: 100-continue` wait before a small body (a lease,
    an answer: at most 1 MB), which costs every lease on a miss's path a round trip."""
    client = boto3.client(
        "s3",
        config=Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},
            max_pool_connections=max_connections,
            tcp_keepalive=True,
        ),
    )
    client.meta.events.unregister("before-call.s3", botocore_handlers.add_expect_header)
    client.meta.events.register("before-call.s3", _expect_continue_for_large_bodies)
    return client


def _expect_continue_for_large_bodies(model, params, **kwargs) -> None:
    length = determine_content_length(params.get("body"))
    if length is None or length >= EXPECT_CONTINUE_MIN_BYTES:  # unknown: botocore's own rule
        botocore_handlers.add_expect_header(model, params, **kwargs)


class BucketHealth:
    """Whether the results bucket is worth a call on the answer's path now. `failures` calls
    in a row that say the bucket is slow or down (a timeout, no connection, a 5xx) pause the
    lease calls of this process for `pause_seconds`; the first call after the pause tries
    again. One slow call among good ones (a busy moment) pauses nothing. A lost race (412,
    409) or a missing object is no failure; any other answer ends a run of failures."""

    def __init__(self, pause_seconds: float = 10.0, failures: int = 3) -> None:
        self.pause_seconds, self.failures = pause_seconds, failures
        self._paused_until = 0.0
        self._in_a_row = 0
        self._lock = threading.Lock()
        self.last_failure = ""

    def available(self) -> bool:
        return time.monotonic() >= self._paused_until

    def note(self, exc: BaseException) -> None:
        """Count `exc` if it says the bucket is slow or down; pause after enough in a row."""
        if not is_outage(exc):
            self.succeeded()
            return
        with self._lock:
            self._in_a_row += 1
            self.last_failure = f"{type(exc).__name__}: {exc}"[:300]
            if self._in_a_row >= self.failures:
                self._paused_until = time.monotonic() + self.pause_seconds
                self._in_a_row = 0

    def succeeded(self) -> None:
        """The bucket answered (any answer but an outage's)."""
        self._in_a_row = 0


def is_outage(exc: BaseException) -> bool:
    """A failure of the bucket itself (not of the request): a timeout, no connection, a 5xx."""
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    # Read and connect timeouts, refused or dropped connections (not a parameter mistake).
    return isinstance(exc, (HTTPClientError, BotoConnectionError, OSError))


class ResultsStore:
    def __init__(self, bucket: str, client=None, health: BucketHealth | None = None):
        self.bucket = bucket
        self.client = client or boto3.client("s3")
        self.health = health or BucketHealth()

    def put(self, key: str, body: bytes, *, content_type: str, ttl_seconds: int, model: str, model_version: str) -> None:
        """Store one answer; botocore's exception when the call fails (the health notes it).
        Tried even while the bucket is paused: it runs after the answer went out, delays no
        one, and an identical request may be waiting for it."""
        now = int(time.time())
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=f"{RESULTS_PREFIX}{key}",
                Body=body,
                ContentType=content_type,
                # CloudFront's /_cache/* behavior takes the object's TTL from here.
                CacheControl=f"max-age={ttl_seconds}",
                Metadata={
                    "model": model,
                    "model-version": model_version,
                    STORED_AT_METADATA: str(now),
                    # The writer's TTL binds every reader, whatever age that reader accepts.
                    EXPIRES_METADATA: str(now + ttl_seconds),
                },
            )
        except (BotoCoreError, ClientError) as exc:
            self.health.note(exc)
            raise
        self.health.succeeded()
