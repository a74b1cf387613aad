"""The local run's model, as SageMaker gets it: published by content into the local
results bucket's S3 (the same code as bin/model-publish), then downloaded from the
version's prefix into a directory the model server loads, as SageMaker downloads an
uncompressed S3Prefix into /opt/ml/model. The version is the manifest's digest, so the
local run's cache keys follow the weights."""

from __future__ import annotations

import tempfile
from pathlib import Path

import boto3

from cli.model_publish import parse_args, publish


def publish_model(s3_url: str, region: str, bucket: str, base_prefix: str, src: Path) -> str:
    """Publishes `src` under `{base_prefix}{version}/`; returns the version."""
    client = local_s3_client(s3_url, region)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    args = parse_args([str(src), "--local", "--endpoint-url", s3_url, "--bucket", bucket, "--prefix", base_prefix, "--json"])
    return publish(args)["version"]


def fetch_model(s3_url: str, region: str, bucket: str, version_prefix: str) -> Path:
    """Every object under the version's prefix, into a fresh directory (paths kept)."""
    client = local_s3_client(s3_url, region)
    target = Path(tempfile.mkdtemp(prefix="inference-cache-model-"))
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=version_prefix):
        for item in page.get("Contents", []):
            path = target / item["Key"].removeprefix(version_prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(path))
    return target


def local_s3_client(s3_url: str, region: str):
    """A client of the local run's S3 (any credentials do)."""
    return boto3.client(
        "s3", endpoint_url=s3_url, region_name=region, aws_access_key_id="local", aws_secret_access_key="local"
    )
