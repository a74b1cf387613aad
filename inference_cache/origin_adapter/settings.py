"""Typed settings of the origin adapter, read once per cold start and validated."""

from __future__ import annotations

import os
from dataclasses import dataclass

from inference_cache import cache_settings
from inference_cache.cache_settings import EdgeCacheSettings
from inference_cache.contract import (
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    ORIGIN_READ_TIMEOUT_SECONDS,
    RESULTS_BUCKET_ENV,
)


@dataclass(frozen=True)
class AdapterSettings:
    endpoint_name: str
    results_bucket: str
    cache: EdgeCacheSettings  # the stage's cache settings (the JSON baked into the bundle)
    # How long to wait for the model's answer: the stage's timeout budget, set by the stack.
    read_timeout_seconds: float
    connect_timeout_seconds: float = 2.0
    throttle_retries: int = 2

    def __post_init__(self) -> None:
        if not self.endpoint_name:
            raise ValueError(f"{ENDPOINT_NAME_ENV} is not set")
        if not self.results_bucket:
            raise ValueError(f"{RESULTS_BUCKET_ENV} is not set")
        if not 0 < self.read_timeout_seconds < ORIGIN_READ_TIMEOUT_SECONDS:
            raise ValueError(f"{ENDPOINT_READ_TIMEOUT_ENV} must be set, under the {ORIGIN_READ_TIMEOUT_SECONDS} s SageMaker allows")
        if not 0 <= self.throttle_retries <= 5:
            raise ValueError("throttle retries must be 0..5")

    @classmethod
    def from_environment(cls) -> AdapterSettings:
        return cls(
            endpoint_name=os.environ.get(ENDPOINT_NAME_ENV, ""),
            results_bucket=os.environ.get(RESULTS_BUCKET_ENV, ""),
            cache=cache_settings.load(),
            read_timeout_seconds=float(os.environ.get(ENDPOINT_READ_TIMEOUT_ENV) or 0),
        )
