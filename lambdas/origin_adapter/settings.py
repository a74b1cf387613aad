"""Typed settings of the origin adapter, read once per cold start and validated."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cache_decision


@dataclass(frozen=True)
class AdapterSettings:
    endpoint_name: str
    results_bucket: str
    cache: dict  # the stage's cache settings (the JSON baked into the bundle)
    # SageMaker gives the container 60 s; CloudFront gives the origin 60 s. Read within that.
    connect_timeout_seconds: float = 2.0
    read_timeout_seconds: float = 55.0
    throttle_retries: int = 2

    def __post_init__(self) -> None:
        if not self.endpoint_name:
            raise ValueError("ENDPOINT_NAME is not set")
        if not self.results_bucket:
            raise ValueError("RESULTS_BUCKET is not set")
        if not 0 < self.read_timeout_seconds < 60:
            raise ValueError("read timeout must be under the 60 s SageMaker allows")
        if not 0 <= self.throttle_retries <= 5:
            raise ValueError("throttle retries must be 0..5")

    @classmethod
    def from_environment(cls) -> AdapterSettings:
        return cls(
            endpoint_name=os.environ.get("ENDPOINT_NAME", ""),
            results_bucket=os.environ.get("RESULTS_BUCKET", ""),
            cache=cache_decision.load_settings(),
            read_timeout_seconds=float(os.environ.get("ENDPOINT_READ_TIMEOUT_SECONDS", "55")),
        )
