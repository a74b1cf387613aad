"""The local run (`make serve`) started as a subprocess on a free port, once per
session, and stopped (with everything it started) afterwards. Each run has its own API
key store; `api_key` is a key created in it, as `bin/api-keys --local create` makes one.
`results_bucket` and `wait_stored` read a run's results bucket (the local S3); `wait_for`
polls a condition."""

from __future__ import annotations

import time

import boto3
import openai
import pytest
from botocore.exceptions import ClientError

from lambdas.contract import KEY_HEADER, RESULTS_PREFIX
from local_run.__main__ import RESULTS_BUCKET
from local_run.process import create_api_key, launched


@pytest.fixture(scope="session")
def local_run(tmp_path_factory):
    key_store = tmp_path_factory.mktemp("dev-keys") / "api-keys.json"
    with launched("--stage", "dev", "--key-store-file", str(key_store)) as started:
        yield {**started, "key_store": key_store, "api_key": create_api_key(key_store, "e2e")["key"]}


@pytest.fixture
def client(local_run):
    """The official openai client against the local run, with the run's API key; no
    retries, so each call is one request."""
    return openai.OpenAI(base_url=local_run["listening"] + "/v1", api_key=local_run["api_key"], max_retries=0)


def results_bucket(run: dict):
    """The run's results bucket (the local S3), read as the tests read it."""
    return boto3.client("s3", endpoint_url=run["results_store"], region_name="us-west-2",
                        aws_access_key_id="local", aws_secret_access_key="local")


def wait_for(predicate, seconds: float = 15.0):
    """predicate()'s first truthy value, polled every 0.1 s for `seconds`; else its last."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.1)
    return predicate()


def wait_stored(run: dict, miss, seconds: float = 15) -> None:
    """Until the answer of `miss` (a raw response) is in the results bucket. Its store runs
    after the answer: a repeat sent before it ends finds nothing at the edge and is
    coalesced at the origin (a HIT too, but not the edge's)."""
    key, bucket = f"{RESULTS_PREFIX}{miss.headers[KEY_HEADER]}", results_bucket(run)

    def stored() -> bool:
        try:
            bucket.head_object(Bucket=RESULTS_BUCKET, Key=key)
            return True
        except ClientError:
            return False

    assert wait_for(stored, seconds), f"{key} not stored in {seconds} s"
