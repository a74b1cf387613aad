"""The results bucket's S3 client (results_store.results_bucket_client) against moto's S3
server on 127.0.0.1: what it puts on the wire, read from botocore's last step before the
socket (`before-send`: the request as sent), and what the bucket then holds."""

from __future__ import annotations

import pytest

from lambdas.origin_adapter.results_store import EXPECT_CONTINUE_MIN_BYTES, results_bucket_client

BUCKET = "client-results"


@pytest.fixture
def bucket(local_s3_environment):
    client = results_bucket_client(connect_timeout=1.0, read_timeout=5.0)
    client.create_bucket(Bucket=BUCKET)
    sent = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(request))
    return client, sent


def test_a_small_body_goes_without_waiting_for_100_continue(bucket):
    """A lease and an answer (at most 1 MB) go out with their headers: no Expect, so no
    round trip for S3's `100 Continue` before the body, on every lease of a miss."""
    client, sent = bucket
    client.put_object(Bucket=BUCKET, Key="_leases/k", Body=b'{"owner": "o"}', IfNoneMatch="*")
    client.put_object(Bucket=BUCKET, Key="_cache/k", Body=b"x" * (1024 * 1024), ContentType="application/json")
    assert [r.method for r in sent] == ["PUT", "PUT"]
    assert [r.headers.get("Expect") for r in sent] == [None, None]
    assert client.get_object(Bucket=BUCKET, Key="_cache/k")["Body"].read() == b"x" * (1024 * 1024)


def test_a_large_body_still_waits_for_100_continue(bucket):
    """From the threshold on (the AWS SDKs' default, 2 MB), botocore's own rule holds: S3 may
    refuse on the headers before the body is sent."""
    client, sent = bucket
    client.put_object(Bucket=BUCKET, Key="large", Body=b"y" * EXPECT_CONTINUE_MIN_BYTES)
    assert sent[-1].headers.get("Expect") == b"100-continue"
    assert client.head_object(Bucket=BUCKET, Key="large")["ContentLength"] == EXPECT_CONTINUE_MIN_BYTES
