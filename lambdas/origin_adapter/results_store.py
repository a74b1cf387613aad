"""The results bucket: cacheable answers at _cache/{key}, served back by CloudFront."""

from __future__ import annotations

import time

import boto3

from lambdas.contract import EXPIRES_METADATA, RESULTS_PREFIX, STORED_AT_METADATA


class ResultsStore:
    def __init__(self, bucket: str, client=None):
        self.bucket = bucket
        self.client = client or boto3.client("s3")

    def put(self, key: str, body: bytes, *, content_type: str, ttl_seconds: int, model: str, model_version: str) -> None:
        now = int(time.time())
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
