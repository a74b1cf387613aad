"""Typed settings of the origin adapter, read once per cold start and validated."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lambdas import cache_settings
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    ADAPTER_TIMEOUT_ENV,
    COALESCING_ENV,
    EMBEDDINGS_MODEL_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    ORIGIN_READ_TIMEOUT_SECONDS,
    RESULTS_BUCKET_ENV,
    RESULTS_BUCKET_PAUSE_ENV,
    STREAM_BUDGET_ENV,
)
from lambdas.embeddings_model import EmbeddingsModel


@dataclass(frozen=True)
class AdapterSettings:
    endpoint_name: str
    results_bucket: str
    cache: EdgeCacheSettings  # the stage's cache settings (the JSON baked into the bundle)
    # How long to wait for the model's answer: the stage's timeout budget, set by the stack.
    read_timeout_seconds: float
    connect_timeout_seconds: float = 2.0
    throttle_retries: int = 2
    # The adapter's budget for a whole answer (the stack sets it; unset: the model read +
    # 6 s, config.settings.ADAPTER_OVERHEAD_SECONDS).
    adapter_timeout_seconds: float | None = None
    # A streamed answer's budget, request to last byte (the stack sets it; unset: a whole
    # answer's). The function's Lambda timeout is this + 6 s.
    stream_seconds: float | None = None
    # Identical cacheable misses share one model call (coalescing.py).
    coalescing: bool = False
    # The results bucket's budgets (leases, polls, stores): per call, no retries, far below
    # the answer's; after a timeout, a refused connection or a 5xx the lease calls pause
    # this long (results_store.BucketHealth).
    cache_connect_timeout_seconds: float = 0.5
    cache_read_timeout_seconds: float = 2.0
    cache_pause_seconds: float = 10.0
    # The embeddings model's endpoint (embeddings.py); None on a stage without one.
    embeddings: EmbeddingsModel | None = None

    def __post_init__(self) -> None:
        if not self.endpoint_name:
            raise ValueError(f"{ENDPOINT_NAME_ENV} is not set")
        if not self.results_bucket:
            raise ValueError(f"{RESULTS_BUCKET_ENV} is not set")
        if not 0 < self.read_timeout_seconds < ORIGIN_READ_TIMEOUT_SECONDS:
            raise ValueError(f"{ENDPOINT_READ_TIMEOUT_ENV} must be set, under the {ORIGIN_READ_TIMEOUT_SECONDS} s SageMaker allows")
        if not 0 <= self.throttle_retries <= 5:
            raise ValueError("throttle retries must be 0..5")
        if self.adapter_timeout_seconds is None:
            object.__setattr__(self, "adapter_timeout_seconds", self.read_timeout_seconds + _ADAPTER_OVERHEAD_SECONDS)
        if not self.read_timeout_seconds < self.adapter_timeout_seconds <= ORIGIN_READ_TIMEOUT_SECONDS:
            raise ValueError(f"{ADAPTER_TIMEOUT_ENV} must be above the model read timeout, at most {ORIGIN_READ_TIMEOUT_SECONDS} s")
        cache_call = self.cache_connect_timeout_seconds + self.cache_read_timeout_seconds
        if not (0 < self.cache_connect_timeout_seconds and 0 < self.cache_read_timeout_seconds
                and cache_call < self.read_timeout_seconds):
            raise ValueError(f"a results bucket call's budget ({cache_call} s) must be positive and below "
                             f"the model read ({self.read_timeout_seconds} s)")
        if 2 * cache_call > _ADAPTER_OVERHEAD_SECONDS:  # the store and the release after a stream's last byte
            raise ValueError(f"the store and the lease release ({2 * cache_call} s) must fit in the "
                             f"{_ADAPTER_OVERHEAD_SECONDS} s the function's timeout leaves after a stream")
        if not 0 < self.cache_pause_seconds <= 300:
            raise ValueError(f"the results bucket's pause ({self.cache_pause_seconds} s) must be within 0..300 s")
        if self.stream_seconds is None:
            object.__setattr__(self, "stream_seconds", self.answer_seconds)
        if not self.answer_seconds <= self.stream_seconds <= _LAMBDA_MAX_SECONDS - _ADAPTER_OVERHEAD_SECONDS:
            raise ValueError(f"{STREAM_BUDGET_ENV} must be at least a whole answer's budget, and leave room in Lambda's 15 min")
        # The cache settings key /v1/embeddings by the embeddings model; the endpoint must be that model's.
        if (self.embeddings is None) != (self.cache.embeddings_model_id is None):
            raise ValueError(f"{EMBEDDINGS_MODEL_ENV} must be set exactly when the stage's cache settings name an embeddings model")
        if self.embeddings is not None and not self.embeddings.batch_read_seconds < self.read_timeout_seconds:
            raise ValueError("the embeddings batch read timeout must be below the model read timeout")

    # -- coalescing timings (docs/decisions.md, "Coalescing identical misses") --
    @property
    def lease_seconds(self) -> float:
        """A lease lasts as long as its holder can live: the adapter's timeout (the model
        read + connect, back-off and store). Past it the holder is gone for sure; the key
        is never blocked longer, and that is under CloudFront's origin read timeout."""
        return self.adapter_timeout_seconds

    @property
    def answer_seconds(self) -> float:
        """How long a request may take before the adapter must answer it: its timeout less
        the time to send the answer. A stream still running then is ended (an error event,
        nothing stored) rather than cut by Lambda mid-event."""
        return self.adapter_timeout_seconds - _ANSWER_MARGIN_SECONDS

    @property
    def stream_lease_seconds(self) -> float:
        """A streamed miss's lease lasts as long as its holder can live: its stream budget
        and the store after it (the function's Lambda timeout)."""
        return self.stream_seconds + _ADAPTER_OVERHEAD_SECONDS

    @property
    def wait_seconds(self) -> float:
        """How long a waiter polls for the result: as long as it may take to answer."""
        return self.answer_seconds

    @property
    def takeover_window_seconds(self) -> float:
        """A waiter runs the model itself only within this long of its own start: later,
        a full model read would not fit in its timeout (it answers 503, retry, instead)."""
        return max(0.0, self.adapter_timeout_seconds - self.read_timeout_seconds - _TAKEOVER_MARGIN_SECONDS)

    @classmethod
    def from_environment(cls) -> AdapterSettings:
        return cls(
            endpoint_name=os.environ.get(ENDPOINT_NAME_ENV, ""),
            results_bucket=os.environ.get(RESULTS_BUCKET_ENV, ""),
            cache=cache_settings.load(),
            read_timeout_seconds=float(os.environ.get(ENDPOINT_READ_TIMEOUT_ENV) or 0),
            adapter_timeout_seconds=float(os.environ[ADAPTER_TIMEOUT_ENV]) if os.environ.get(ADAPTER_TIMEOUT_ENV) else None,
            stream_seconds=float(os.environ[STREAM_BUDGET_ENV]) if os.environ.get(STREAM_BUDGET_ENV) else None,
            coalescing=_flag(os.environ.get(COALESCING_ENV, "false"), COALESCING_ENV),
            **({"cache_pause_seconds": float(os.environ[RESULTS_BUCKET_PAUSE_ENV])}
               if os.environ.get(RESULTS_BUCKET_PAUSE_ENV) else {}),
            embeddings=EmbeddingsModel.from_json(os.environ[EMBEDDINGS_MODEL_ENV]) if os.environ.get(EMBEDDINGS_MODEL_ENV) else None,
        )


# What the adapter spends besides the model read (config.settings.ADAPTER_OVERHEAD_SECONDS).
_ADAPTER_OVERHEAD_SECONDS = 6.0
# Lambda's longest function timeout (config.aws_facts.LAMBDA_MAX_TIMEOUT_SECONDS).
_LAMBDA_MAX_SECONDS = 900.0
# A waiter's answer from the result it read: building the response, returning it.
_ANSWER_MARGIN_SECONDS = 2.0
# A takeover's own overhead besides the model read: connect and store.
_TAKEOVER_MARGIN_SECONDS = 4.0


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")
