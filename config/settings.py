"""Typed stage settings, validated when a stage is built.

Pure Python on purpose (no aws_cdk import): `bin/cache-key` and the tests read
the cache settings of a stage without paying for the CDK's start-up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

from config.aws_facts import (
    CLOUDFRONT_ORIGIN_READ_TIMEOUT_DEFAULT_MAX_SECONDS,
    CLOUDFRONT_ORIGIN_READ_TIMEOUT_QUOTA_MAX_SECONDS,
    CPU_INSTANCE_TYPES,
    DTYPE_BYTES,
    FSX_PERSISTENT_2_USD_PER_GB_MONTH,
    FSX_THROUGHPUT_PER_TIB,
    GPU_MEMORY_MIB,
    GPUS_PER_INSTANCE,
    HOURS_PER_MONTH,
    INTERFACE_ENDPOINT_USD_PER_AZ_HOUR,
    LAMBDA_DEFAULT_ACCOUNT_CONCURRENCY,
    LAMBDA_MAX_TIMEOUT_SECONDS,
    LAMBDA_MIN_UNRESERVED_CONCURRENCY,
    LOG_RETENTION_DAYS,
    MAX_ALARM_MINUTES,
    NVME_FAMILIES,
    QUANTIZED_WEIGHT_BYTES,
    SAGEMAKER_BAKING_MAX_SECONDS,
    SAGEMAKER_INVOKE_TIMEOUT_SECONDS,
    SESSION_MANAGER_ENDPOINTS,
    TEI_DIMENSIONS_SINCE,
    TEI_REPOSITORIES,
)
from lambdas.cache_settings import EdgeCacheSettings
from lambdas.contract import (
    EDGE_BODY_LIMIT_BYTES,
    EMBEDDINGS_MAX_INPUTS,
    INFERENCE_ROUTES,
    MODEL_BUCKET_NAME,
    ORIGIN_READ_TIMEOUT_SECONDS,
    RESULTS_PATH,
)
from lambdas.embeddings_model import EmbeddingsModel
from stacks.burn_rates import FAST_BURN_RATE

CachePolicy = Literal["deterministic", "all"]

_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_CERT_ARN = re.compile(r"^arn:aws:acm:us-east-1:\d{12}:certificate/[0-9a-f-]{36}$")
_ECR_IMAGE = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[\w./-]+:[\w.-]+$")


class SettingsError(ValueError):
    """A stage's settings break a rule; raised at synth so nothing half-valid deploys."""


def gpu_count(instance_type: str) -> int:
    """GPUs on one instance of `instance_type` (e.g. "ml.g6e.12xlarge" -> 4)."""
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml" or (parts[1], parts[2]) not in GPUS_PER_INSTANCE:
        raise SettingsError(f"{instance_type} is not a known GPU hosting instance type (GPUS_PER_INSTANCE)")
    return GPUS_PER_INSTANCE[(parts[1], parts[2])]


def is_cpu_instance(instance_type: str) -> bool:
    """A known CPU hosting instance type (CPU_INSTANCE_TYPES), e.g. "ml.m5.xlarge"."""
    parts = instance_type.split(".")
    return len(parts) == 3 and parts[0] == "ml" and (parts[1], parts[2]) in CPU_INSTANCE_TYPES


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SettingsError(message)


@dataclass(frozen=True)
class CustomDomain:
    """Viewer-facing name; a custom certificate is what lets CloudFront refuse TLS < 1.2."""

    name: str
    certificate_arn: str

    def __post_init__(self) -> None:
        _require("." in self.name and not self.name.startswith("."), f"bad domain name {self.name!r}")
        _require(
            bool(_CERT_ARN.match(self.certificate_arn)),
            f"certificate for {self.name} must be an ACM certificate in us-east-1 (CloudFront's region)",
        )


@dataclass(frozen=True)
class CacheSettings:
    """What the edge function, the origin adapter and bin/cache-key decide with."""

    policy: CachePolicy = "deterministic"
    default_ttl_seconds: int = 86_400
    max_ttl_seconds: int = 7 * 86_400
    tenant_scoped: bool = False
    # Fields that never change the output; dropped from the canonical body.
    excluded_fields: tuple[str, ...] = ("user", "metadata", "store")
    # Server defaults the stage declares (e.g. {"temperature": 1.0}); a parameter sent
    # with exactly this value is treated as absent.
    declared_server_defaults: Mapping[str, float] = field(default_factory=dict)
    max_body_bytes: int = EDGE_BODY_LIMIT_BYTES
    max_nesting_depth: int = 32
    lookup_timeout_ms: int = 300

    def __post_init__(self) -> None:
        _require(self.policy in ("deterministic", "all"), f"cache policy {self.policy!r} is not deterministic|all")
        _require(0 < self.default_ttl_seconds <= self.max_ttl_seconds, "need 0 < default TTL <= max TTL")
        _require(self.max_ttl_seconds <= 365 * 86_400, "max TTL above one year")
        _require(
            0 < self.max_body_bytes <= EDGE_BODY_LIMIT_BYTES,
            f"body limit must be within the {EDGE_BODY_LIMIT_BYTES} bytes CloudFront gives origin triggers",
        )
        _require(2 <= self.max_nesting_depth <= 128, "nesting limit must be 2..128")
        # The edge function has 30 s in all; a lookup that waits longer than a second
        # costs more than the GPU call it might save on a small model.
        _require(10 <= self.lookup_timeout_ms <= 1000, "lookup timeout must be 10..1000 ms")

    @property
    def max_ttl_days(self) -> int:
        return max(1, math.ceil(self.max_ttl_seconds / 86_400))


@dataclass(frozen=True)
class ModelArchitecture:
    """What a model's own files say about its size, which decides whether it fits a GPU:
    its config.json (layers, KV heads, head size, context, vocabulary, dtype) and its
    parameter count (the elements of its safetensors). bin/model-publish records these in
    a version's manifest (`from_config`); a stage types them in its settings, and a test
    holds the two equal for the published model."""

    parameters: int
    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str

    def __post_init__(self) -> None:
        for name in ("parameters", "num_hidden_layers", "num_key_value_heads", "head_dim", "hidden_size",
                     "vocab_size", "max_position_embeddings"):
            _require(type(getattr(self, name)) is int and getattr(self, name) > 0, f"model architecture: {name} must be a positive integer")
        _require(self.torch_dtype in DTYPE_BYTES, f"model architecture: torch_dtype {self.torch_dtype!r} is not one of {sorted(DTYPE_BYTES)}")

    # What from_config needs of a config.json.
    CONFIG_KEYS = ("num_attention_heads", "num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings")

    @classmethod
    def from_config(cls, config: Mapping, parameters: int) -> ModelArchitecture:
        """From a Hugging Face config.json (decoder-only transformers: Llama, Mistral, Qwen
        and their kin) and the checkpoint's parameter count."""
        heads = config["num_attention_heads"]
        return cls(
            parameters=parameters,
            num_hidden_layers=config["num_hidden_layers"],
            num_key_value_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            hidden_size=config["hidden_size"],
            vocab_size=config["vocab_size"],
            max_position_embeddings=config["max_position_embeddings"],
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            torch_dtype=config.get("torch_dtype") or config.get("dtype") or "float32",
        )

    @property
    def embedding_parameters(self) -> int:
        """The input embedding and the output head (one matrix when tied): quantization
        methods leave them in the checkpoint's dtype."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def kv_bytes_per_token(self) -> int:
        """KV cache of one token: K and V for every layer and KV head (vLLM's cache dtype
        "auto" is the model's dtype)."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim * DTYPE_BYTES[self.torch_dtype]


@dataclass(frozen=True)
class ModelSettings:
    """The model the endpoint serves and the container that serves it."""

    model_id: str
    model_version: str
    image_uri: str
    # Key prefix in the model bucket holding uncompressed safetensors for this version.
    s3_prefix: str
    # The model's size, from its own files (ModelArchitecture).
    architecture: ModelArchitecture
    # The context the container serves, prompt and answer together (LMI
    # OPTION_MAX_MODEL_LEN, vLLM max_model_len). vLLM reserves KV cache for one whole
    # sequence of it at start, and by default it is the model's whole context.
    max_model_len: int
    # Sequences generated at once (LMI OPTION_MAX_ROLLING_BATCH_SIZE, vLLM max_num_seqs).
    max_num_seqs: int = 64
    # The share of each GPU's memory vLLM may use (LMI OPTION_GPU_MEMORY_UTILIZATION).
    gpu_memory_utilization: float = 0.9
    # What the GPU holds besides weights and KV cache, per GPU: activations of a batch,
    # CUDA graphs, the CUDA context (the GPU-fit check; stated, not measured here).
    gpu_memory_headroom_gib: float = 2.0
    # Serving container's quantization option (LMI OPTION_QUANTIZE); None = full precision.
    quantization: str | None = None
    tensor_parallel_degree: int | str = "max"
    extra_environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_published_model(self.model_id, self.model_version, self.image_uri, self.s3_prefix)
        _require(self.quantization is None or self.quantization in QUANTIZED_WEIGHT_BYTES, f"quantization {self.quantization!r}")
        _require(
            0 < self.max_model_len <= self.architecture.max_position_embeddings,
            f"max_model_len {self.max_model_len} must be within the model's context "
            f"({self.architecture.max_position_embeddings} tokens, max_position_embeddings)",
        )
        _require(1 <= self.max_num_seqs <= 1024, "max_num_seqs must be 1..1024")
        _require(0.5 <= self.gpu_memory_utilization <= 0.98, "gpu_memory_utilization must be 0.5..0.98")
        _require(0 <= self.gpu_memory_headroom_gib <= 64, "GPU memory headroom must be 0..64 GiB")
        overridden = {"OPTION_MAX_MODEL_LEN", "OPTION_MAX_ROLLING_BATCH_SIZE", "OPTION_GPU_MEMORY_UTILIZATION"} & set(
            self.extra_environment
        )
        _require(not overridden, f"{sorted(overridden)} are settings of their own (the GPU-fit check reads them)")

    def weight_bytes(self) -> float:
        """The weights in GPU memory: quantized layers at the method's bytes per weight,
        the embedding and output head in the checkpoint's dtype."""
        a = self.architecture
        dtype = DTYPE_BYTES[a.torch_dtype]
        if self.quantization is None:
            return a.parameters * dtype
        embeddings = min(a.embedding_parameters, a.parameters)
        return (a.parameters - embeddings) * QUANTIZED_WEIGHT_BYTES[self.quantization] + embeddings * dtype


_GIB = 1024**3


@dataclass(frozen=True)
class GpuFit:
    """One GPU of the endpoint at start, GiB: what vLLM must hold against what it may use."""

    instance_type: str
    gpu_memory_gib: float
    tensor_parallel: int
    weights_gib: float
    kv_cache_gib: float  # one sequence of max_model_len tokens
    headroom_gib: float
    budget_gib: float  # gpu_memory_utilization x the GPU's memory
    max_model_len: int
    longest_context_that_fits: int  # tokens of KV cache the budget leaves after weights and headroom

    @property
    def needed_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.headroom_gib

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.budget_gib


def gpu_fit(model: ModelSettings, instance_type: str) -> GpuFit:
    """vLLM's start-up arithmetic for `model` on `instance_type`: the weights and the KV
    cache of one full max_model_len sequence, split over the tensor-parallel GPUs, plus
    headroom, within gpu_memory_utilization of each GPU (vLLM refuses to start otherwise:
    "... larger than the maximum number of tokens that can be stored in KV cache")."""
    gpus = gpu_count(instance_type)
    tp = gpus if model.tensor_parallel_degree == "max" else int(model.tensor_parallel_degree)
    per_gpu = GPU_MEMORY_MIB[instance_type.split(".")[1]] / 1024
    kv_per_token = model.architecture.kv_bytes_per_token() / tp
    weights = model.weight_bytes() / tp / _GIB
    budget = model.gpu_memory_utilization * per_gpu
    room = (budget - weights - model.gpu_memory_headroom_gib) * _GIB
    return GpuFit(
        instance_type=instance_type,
        gpu_memory_gib=per_gpu,
        tensor_parallel=tp,
        weights_gib=weights,
        kv_cache_gib=model.max_model_len * kv_per_token / _GIB,
        headroom_gib=model.gpu_memory_headroom_gib,
        budget_gib=budget,
        max_model_len=model.max_model_len,
        longest_context_that_fits=max(0, int(room // kv_per_token)),
    )


def _check_published_model(model_id: str, model_version: str, image_uri: str, s3_prefix: str) -> None:
    """The rules every served model follows: a version as bin/model-publish names it, an
    ECR image, and the version's own prefix in the model bucket."""
    _require(bool(model_id.strip()), "model id is empty")
    _require(bool(re.match(r"^[\w.-]{1,64}$", model_version)), f"model version {model_version!r}")
    _require(bool(_ECR_IMAGE.match(image_uri)), f"image {image_uri!r} is not an ECR image URI")
    _require(
        s3_prefix.startswith("models/") and s3_prefix.endswith("/"),
        "model prefix must be under models/ and end with / (the endpoint loads a whole prefix)",
    )
    # bin/model-publish writes a version's files under {base}{version}/: the prefix the
    # endpoint loads and the version in every cache key must name the same weights.
    _require(
        s3_prefix.endswith(f"/{model_version}/"),
        f"model prefix {s3_prefix!r} must end with the model version ({model_version}/)",
    )


# What the origin adapter does besides waiting for the model, within its own timeout:
# connect (2 s, the runtime's connect timeout), throttle back-off between its retries
# (< 1 s), and storing the answer in the results bucket (a PutObject, ~1-3 s).
ADAPTER_OVERHEAD_SECONDS = 6
# The rollback alarms judge a rollout's new fleet over 1-minute periods and go to ALARM
# when ROLLBACK_ALARM_DATAPOINTS of the last ROLLBACK_ALARM_PERIODS breach (stacks/rollouts.py).
ROLLBACK_ALARM_PERIODS, ROLLBACK_ALARM_DATAPOINTS = 5, 3
# A baking period holds the alarm's whole window twice: once for the new fleet's traffic,
# once for SageMaker's metrics to reach CloudWatch and the alarm to evaluate them.
MIN_BAKING_MINUTES = 2 * ROLLBACK_ALARM_PERIODS
# Added to a rollout's longest waits (download, start-up, baking) for its overall limit:
# instance provisioning and traffic shifting, which no setting bounds.
ROLLOUT_TIMEOUT_MARGIN_SECONDS = 600
# What CloudFront waits for besides the adapter's own timeout: a cold start (init is
# not counted in the Lambda timeout) and the function URL's own overhead.
ORIGIN_OVERHEAD_SECONDS = 5


@dataclass(frozen=True)
class TimeoutBudget:
    """One request's time budget. A whole answer, innermost first: the adapter's read of
    the model's answer < the adapter's budget < CloudFront's origin read timeout, ordered
    with margins, so the adapter answers (504, its own error shape) before CloudFront gives
    up on it and answers a bare 504 while the adapter goes on. InvokeEndpoint gives the
    container 60 s.

    A streamed answer is not bound by InvokeEndpoint's 60 s: it has `stream_seconds` from
    the request to its last byte, and the function's Lambda timeout is derived from it.
    CloudFront's origin read timeout bounds the gap between bytes of a stream, not the
    whole stream (CloudFront Developer Guide, "Response timeout"): the model read timeout,
    which bounds the gap between the model's parts, stays below it."""

    model_read_seconds: int = 48
    adapter_seconds: int = 54
    origin_read_seconds: int = 60
    # A streamed answer, request to last byte: the adapter ends a stream still running then
    # with an error event (nothing stored). SageMaker states no limit of its own for
    # InvokeEndpointWithResponseStream (only ModelInvocationTimeExceeded, a 504 here).
    stream_seconds: int = 300
    # The account's CloudFront "response timeout per origin" quota. Above 60 s only
    # with an approved quota increase: declare it here, or synth refuses.
    origin_read_quota_seconds: int = CLOUDFRONT_ORIGIN_READ_TIMEOUT_DEFAULT_MAX_SECONDS

    def __post_init__(self) -> None:
        _require(
            0 < self.model_read_seconds < SAGEMAKER_INVOKE_TIMEOUT_SECONDS,
            f"model read timeout must be under the {SAGEMAKER_INVOKE_TIMEOUT_SECONDS} s SageMaker gives the container",
        )
        _require(
            self.adapter_seconds >= self.model_read_seconds + ADAPTER_OVERHEAD_SECONDS,
            f"adapter timeout must be >= model read + {ADAPTER_OVERHEAD_SECONDS} s (connect, throttle back-off, "
            "result store)",
        )
        _require(
            self.origin_read_seconds >= self.adapter_seconds + ORIGIN_OVERHEAD_SECONDS,
            f"origin read timeout must be >= adapter timeout + {ORIGIN_OVERHEAD_SECONDS} s (cold start, function URL)",
        )
        _require(
            CLOUDFRONT_ORIGIN_READ_TIMEOUT_DEFAULT_MAX_SECONDS
            <= self.origin_read_quota_seconds
            <= CLOUDFRONT_ORIGIN_READ_TIMEOUT_QUOTA_MAX_SECONDS,
            f"origin read quota is {CLOUDFRONT_ORIGIN_READ_TIMEOUT_DEFAULT_MAX_SECONDS}.."
            f"{CLOUDFRONT_ORIGIN_READ_TIMEOUT_QUOTA_MAX_SECONDS} s",
        )
        _require(
            self.origin_read_seconds <= self.origin_read_quota_seconds,
            f"origin read timeout {self.origin_read_seconds} s is above the declared CloudFront quota "
            f"({self.origin_read_quota_seconds} s); request an increase and declare it in origin_read_quota_seconds",
        )
        _require(
            self.stream_seconds >= self.adapter_seconds,
            f"a stream's budget ({self.stream_seconds} s) must be at least a whole answer's ({self.adapter_seconds} s)",
        )
        _require(
            self.lambda_seconds <= LAMBDA_MAX_TIMEOUT_SECONDS,
            f"stream budget {self.stream_seconds} s + {ADAPTER_OVERHEAD_SECONDS} s for the store and the close is above "
            f"Lambda's {LAMBDA_MAX_TIMEOUT_SECONDS} s (15 min) function timeout",
        )

    @property
    def lambda_seconds(self) -> int:
        """The origin adapter's Lambda timeout: a stream's budget and what follows its last
        byte (storing it, closing), or a whole answer's budget, whichever is longer."""
        return max(self.adapter_seconds, self.stream_seconds + ADAPTER_OVERHEAD_SECONDS)


@dataclass(frozen=True)
class EndpointSettings:
    instance_type: str
    min_instances: int
    max_instances: int
    # Concurrent requests per model copy that target tracking holds.
    target_concurrency: float
    scale_out_cooldown_seconds: int = 60
    scale_in_cooldown_seconds: int = 600
    volume_size_gb: int | None = None
    # Large models take minutes to download and to warm up; 60 s defaults would kill them.
    startup_health_check_timeout_seconds: int = 1800
    model_data_download_timeout_seconds: int = 1800
    # Model read < adapter timeout < origin read timeout, one setting each.
    timeouts: TimeoutBudget = field(default_factory=TimeoutBudget)
    # Requests one instance serves at once (within the container's rolling batch) and
    # the headroom above max_instances x that: the origin adapter's reserved concurrency.
    # More adapter invocations than the fleet can serve would only wait on the GPU while
    # taking concurrency that Lambda@Edge replicas in the home region share.
    concurrent_requests_per_instance: int = 16
    adapter_concurrency_headroom: float = 1.5
    # Blue/green rollouts (docs/decisions.md, "Rollouts that undo themselves"): how long the
    # new fleet serves all traffic, watched by its rollback alarms, before the old fleet
    # is terminated; a rollback alarm in ALARM meanwhile moves the traffic back.
    rollout_baking_minutes: int = 15
    # False only for the first of the two deploys that change the instance type:
    # SageMaker refuses an instance-type update on a variant registered for autoscaling
    # (README, "Changing the instance type").
    autoscaling: bool = True

    def __post_init__(self) -> None:
        if not is_cpu_instance(self.instance_type):
            gpu_count(self.instance_type)  # a known GPU (or CPU) hosting instance type, or SettingsError
        # Scaling a plain production variant to zero is not possible (inference components are).
        _require(1 <= self.min_instances <= self.max_instances, "need 1 <= min instances <= max instances")
        _require(self.max_instances <= 100, "max instances above 100")
        _require(self.target_concurrency > 0, "scaling target must be positive")
        _require(0 <= self.scale_out_cooldown_seconds <= self.scale_in_cooldown_seconds, "scale-out cooldown must not exceed scale-in cooldown")
        _require(
            self.target_concurrency <= self.concurrent_requests_per_instance <= 1024,
            "concurrent requests per instance must be at least the scaling target (and at most 1024)",
        )
        _require(1.0 <= self.adapter_concurrency_headroom <= 3.0, "adapter concurrency headroom must be 1.0..3.0")
        for name in ("startup_health_check_timeout_seconds", "model_data_download_timeout_seconds"):
            _require(60 <= getattr(self, name) <= 3600, f"{name} must be 60..3600")
        _require(
            MIN_BAKING_MINUTES <= self.rollout_baking_minutes <= SAGEMAKER_BAKING_MAX_SECONDS // 60,
            f"rollout baking period must be {MIN_BAKING_MINUTES}..{SAGEMAKER_BAKING_MAX_SECONDS // 60} minutes "
            f"(the rollback alarms need {ROLLBACK_ALARM_PERIODS} one-minute periods, and time to see them)",
        )
        if self.has_instance_storage:
            _require(self.volume_size_gb is None, f"{self.instance_type} has NVMe storage; SageMaker rejects VolumeSizeInGB")
        else:
            _require(self.volume_size_gb is not None and 1 <= self.volume_size_gb <= 512, "volume size 1..512 GB required")

    @property
    def adapter_reserved_concurrency(self) -> int:
        """What the whole fleet at its maximum serves at once, with headroom."""
        return math.ceil(self.max_instances * self.concurrent_requests_per_instance * self.adapter_concurrency_headroom)

    @property
    def rollout_timeout_seconds(self) -> int:
        """The longest a blue/green rollout may run before SageMaker gives up on it: the new
        fleet's model download and start-up, the baking period, and a margin."""
        return (
            self.model_data_download_timeout_seconds
            + self.startup_health_check_timeout_seconds
            + self.rollout_baking_minutes * 60
            + ROLLOUT_TIMEOUT_MARGIN_SECONDS
        )

    @property
    def blue_green_instances(self) -> int:
        """Instances of this type a rollout at the maximum holds at once: the new fleet is
        provisioned beside the old one at the retained (scaled) count."""
        return 2 * self.max_instances

    @property
    def has_instance_storage(self) -> bool:
        return self.instance_type.split(".")[1] in NVME_FAMILIES

    @property
    def gpus(self) -> int:
        """GPUs per instance; 0 on a CPU instance type."""
        return 0 if is_cpu_instance(self.instance_type) else gpu_count(self.instance_type)


@dataclass(frozen=True)
class ModelWorkspaceSettings:
    """FSx for Lustre beside the model bucket, and the way in: a host started on demand in
    the stage's VPC (bin/workspace-host) that mounts it and stops itself when idle."""

    capacity_gib: int = 1200
    throughput_per_tib: int = 250
    # Automatic daily backups, days kept; 0 = none. The workspace is where models are
    # prepared; what is finished is exported to the versioned model bucket (the source
    # of truth) by the data repository association, so by default nothing is backed up.
    backup_retention_days: int = 0
    # Off: no file system, no way in, nothing paid; models are published straight to the
    # bucket (bin/model-publish). A stage that turns it off says why.
    enabled: bool = True
    off_reason: str | None = None
    # The workspace host: its default instance type (bin/workspace-host --instance-type
    # picks another) and the minutes without a session or a process on the workspace
    # after which it shuts itself down (and is terminated: its work lives on Lustre).
    host_instance_type: str = "m7i.xlarge"
    host_idle_minutes: int = 30

    def __post_init__(self) -> None:
        _require(
            self.enabled or bool((self.off_reason or "").strip()),
            "a stage without the model workspace must say why (off_reason)",
        )
        _require(bool(re.match(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", self.host_instance_type)), f"instance type {self.host_instance_type!r}")
        _require(10 <= self.host_idle_minutes <= 24 * 60, "workspace host idle minutes must be 10..1440")
        _require(
            self.capacity_gib in (1200, 2400) or (self.capacity_gib > 0 and self.capacity_gib % 2400 == 0),
            "PERSISTENT_2 capacity is 1200, 2400 or a multiple of 2400 GiB",
        )
        _require(self.throughput_per_tib in FSX_THROUGHPUT_PER_TIB, f"throughput per TiB is one of {FSX_THROUGHPUT_PER_TIB}")
        _require(0 <= self.backup_retention_days <= 90, "FSx backup retention is 0..90 days")

    @property
    def monthly_cost_usd(self) -> float:
        """What the file system costs a month at list price (capacity x the PERSISTENT_2 SSD
        price of its throughput tier), plus the Session Manager endpoints of the way in;
        0 when off. Prices: config/aws_facts.py, dated, with sources."""
        if not self.enabled:
            return 0.0
        storage = self.capacity_gib * FSX_PERSISTENT_2_USD_PER_GB_MONTH[self.throughput_per_tib]
        endpoints = len(SESSION_MANAGER_ENDPOINTS) * INTERFACE_ENDPOINT_USD_PER_AZ_HOUR * HOURS_PER_MONTH
        return round(storage + endpoints, 2)


def tei_image(image_uri: str) -> tuple[str, tuple[int, ...]]:
    """(processor "gpu" | "cpu", TEI version) of a Text Embeddings Inference image URI, as
    the SageMaker Hugging Face TEI containers are tagged (config.aws_facts)."""
    repository, _, tag = image_uri.rpartition("/")[2].partition(":")
    match = re.search(r"-tei(\d+)\.(\d+)\.(\d+)-(gpu|cpu)-", tag)
    if repository not in TEI_REPOSITORIES or match is None:
        raise SettingsError(
            f"image {image_uri!r} is not a SageMaker Text Embeddings Inference image "
            f"(repository {' or '.join(TEI_REPOSITORIES)}, tag <prefix>-tei<version>-<gpu|cpu>-...)"
        )
    processor = match.group(4)
    _require(
        processor == TEI_REPOSITORIES[repository],
        f"image {image_uri!r}: repository {repository} holds {TEI_REPOSITORIES[repository]} images, the tag says {processor}",
    )
    return processor, tuple(int(match.group(i)) for i in (1, 2, 3))


@dataclass(frozen=True)
class EmbeddingsSettings:
    """An embeddings model on its own SageMaker endpoint, served by Hugging Face Text
    Embeddings Inference (TEI). The origin adapter answers /v1/embeddings from it, in the
    OpenAI shape (lambdas/origin_adapter/embeddings.py); its version keys the embeddings
    cache as the LLM's version keys the other routes."""

    model_id: str
    model_version: str
    image_uri: str
    # The version's prefix in the model bucket (bin/model-publish --embeddings).
    s3_prefix: str
    endpoint: EndpointSettings
    # Facts of the model, from its own files: the vector size (config.json hidden_size, or
    # the last Dense layer's), the longest input in tokens (sentence_bert_config.json
    # max_seq_length: TEI refuses longer inputs), the vocabulary (config.json vocab_size:
    # token-id inputs must be below it).
    dimensions: int
    max_input_tokens: int
    vocab_size: int
    # Trained for shortened vectors (Matryoshka Representation Learning): only then may a
    # request ask for fewer `dimensions` (TEI cuts the vector and normalizes it again).
    matryoshka: bool = False
    # TEI's router limits, set on the container (its MAX_CLIENT_BATCH_SIZE,
    # MAX_BATCH_TOKENS, MAX_CONCURRENT_REQUESTS): inputs per call (the origin adapter sends
    # at most this many per call, one call after the other); tokens per forward pass
    # (TEI's queue fills a batch from every waiting request's inputs up to it); inputs
    # admitted at once (beyond it TEI answers 429).
    max_client_batch_size: int = 32
    max_batch_tokens: int = 16_384
    max_concurrent_inputs: int = 512
    # The longest one call (one batch) may take: the adapter's read timeout for the
    # embeddings endpoint. A request's last batch starts at the latest this long before
    # the stage's model read timeout runs out, so the whole answer fits in it.
    batch_read_seconds: int = 12

    def __post_init__(self) -> None:
        _check_published_model(self.model_id, self.model_version, self.image_uri, self.s3_prefix)
        processor, version = tei_image(self.image_uri)
        _require(
            (processor == "gpu") == (self.endpoint.gpus > 0),
            f"TEI image for {processor} on {self.endpoint.instance_type} "
            f"({self.endpoint.gpus} GPUs): use the {'tei' if self.endpoint.gpus else 'tei-cpu'} image",
        )
        _require(
            not self.matryoshka or version >= TEI_DIMENSIONS_SINCE,
            f"TEI {'.'.join(map(str, version))} has no `dimensions` (from "
            f"{'.'.join(map(str, TEI_DIMENSIONS_SINCE))}): a Matryoshka model needs a newer image",
        )
        _require(1 <= self.dimensions <= 16_384, f"embedding dimensions {self.dimensions} must be 1..16384")
        _require(1 <= self.max_input_tokens <= 131_072, f"max input tokens {self.max_input_tokens} must be 1..131072")
        _require(self.vocab_size >= 1, "vocabulary size must be positive")
        _require(
            1 <= self.max_client_batch_size <= EMBEDDINGS_MAX_INPUTS,
            f"max client batch size {self.max_client_batch_size} must be 1..{EMBEDDINGS_MAX_INPUTS}",
        )
        _require(
            1 <= self.batch_read_seconds < self.endpoint.timeouts.model_read_seconds,
            f"batch read timeout {self.batch_read_seconds} s must be below the model read timeout "
            f"({self.endpoint.timeouts.model_read_seconds} s): the batches of one request share it",
        )
        # TEI's queue never batches an input longer than max_batch_tokens: it would wait forever.
        _require(
            self.max_batch_tokens >= self.max_input_tokens,
            f"max batch tokens {self.max_batch_tokens} below the model's {self.max_input_tokens} input tokens: "
            "TEI could never schedule the longest input",
        )
        # TEI takes a permit per input; the fleet's planned load must be admitted, not refused.
        planned = self.max_client_batch_size * self.endpoint.concurrent_requests_per_instance
        _require(
            self.max_concurrent_inputs >= planned,
            f"max concurrent inputs {self.max_concurrent_inputs} below what one instance is planned to hold "
            f"({self.endpoint.concurrent_requests_per_instance} requests x {self.max_client_batch_size} inputs = {planned})",
        )


@dataclass(frozen=True)
class SlaSettings:
    """Service-level objectives and the alarm thresholds derived from them.

    Latencies are p99 in milliseconds (SageMaker reports ModelLatency in microseconds;
    the alarms convert). Ratios are fractions (0.01 = 1 %). GPU percentages are per GPU
    (SageMaker sums them over an instance's GPUs; the alarms normalize)."""

    availability_target: float = 0.999
    edge_origin_latency_p99_ms: int = 10_000
    model_latency_p99_ms: int = 8_000
    # The embeddings endpoint's ModelLatency p99 (one call: at most max_client_batch_size inputs).
    embeddings_model_latency_p99_ms: int = 2_000
    origin_adapter_duration_p99_ms: int = 9_000
    endpoint_error_rate_max: float = 0.01
    cache_hit_ratio_floor: float = 0.2
    alarm_email: str | None = None
    # Lambda@Edge execution, validation and throttling errors per CloudFront request.
    edge_function_error_rate_max: float = 0.001
    # Ratio alarms (burn rates, error rates, hit ratio) judge only windows that carry at
    # least this many requests per 5 minutes on average: a handful of requests on an
    # idle stage is no evidence, and must not page.
    min_requests_per_5_min: int = 10
    # Sustained GPU saturation, as the average per GPU across the fleet.
    gpu_utilization_high_pct: float = 90.0
    # vLLM reserves ~90 % of GPU memory for its KV cache at start, so "high" sits above
    # that reservation: the worst instance close to out-of-memory.
    gpu_memory_high_pct: float = 97.0
    gpu_high_minutes: int = 30
    # Autoscaling at its maximum instance count this long: out of headroom.
    capacity_pinned_minutes: int = 30
    # FSx for Lustre workspace: free space below this fraction of its capacity.
    fsx_free_capacity_floor: float = 0.1
    # Edge /_cache/ lookups answered with neither 200 nor 403/404 (S3 or CloudFront
    # failing, timeouts): each one sends a possible hit to the GPU.
    edge_lookup_failure_rate_max: float = 0.01

    def __post_init__(self) -> None:
        _require(0.9 <= self.availability_target < 1, "availability target must be in [0.9, 1)")
        _require(
            FAST_BURN_RATE * self.error_budget < 1,
            f"an error budget of {self.error_budget:.4g} cannot burn {FAST_BURN_RATE}x faster than allowed "
            f"(the fast-burn alarm could never fire); availability target must exceed {1 - 1 / FAST_BURN_RATE:.4f}",
        )
        _require(0 < self.endpoint_error_rate_max < 1, "error-rate objective must be in (0, 1)")
        _require(0 <= self.cache_hit_ratio_floor < 1, "hit-ratio floor must be in [0, 1)")
        _require(
            self.model_latency_p99_ms < self.origin_adapter_duration_p99_ms <= self.edge_origin_latency_p99_ms,
            "latency objectives must nest: model < origin adapter <= edge origin latency",
        )
        _require(self.model_latency_p99_ms > 0, "model latency objective must be positive")
        _require(
            0 < self.embeddings_model_latency_p99_ms < self.origin_adapter_duration_p99_ms,
            "embeddings model latency objective must be positive and below the origin adapter's",
        )
        _require(self.edge_origin_latency_p99_ms <= ORIGIN_READ_TIMEOUT_SECONDS * 1000, "latency objective beyond the origin timeout")
        _require(self.alarm_email is None or "@" in self.alarm_email, "alarm email is not an address")
        _require(0 < self.edge_function_error_rate_max < 1, "edge function error-rate objective must be in (0, 1)")
        _require(1 <= self.min_requests_per_5_min <= 1_000_000, "minimum requests per 5 minutes must be 1..1e6")
        for name in ("gpu_utilization_high_pct", "gpu_memory_high_pct"):
            _require(0 < getattr(self, name) <= 100, f"{name} is a per-GPU percentage in (0, 100]")
        for name in ("gpu_high_minutes", "capacity_pinned_minutes"):
            minutes = getattr(self, name)
            _require(
                minutes % 5 == 0 and 5 <= minutes <= MAX_ALARM_MINUTES,
                f"{name} must be a multiple of 5 in 5..{MAX_ALARM_MINUTES} (alarms evaluate 5-minute periods, at most a day)",
            )
        _require(0 < self.fsx_free_capacity_floor < 1, "FSx free-capacity floor must be a fraction in (0, 1)")
        _require(0 < self.edge_lookup_failure_rate_max < 1, "edge lookup failure-rate objective must be in (0, 1)")

    @property
    def error_budget(self) -> float:
        """The fraction of requests allowed to fail over the SLO window."""
        return round(1 - self.availability_target, 10)


# The rate windows AWS WAF evaluates over (rate-based rule statement, EvaluationWindowSec).
WAF_EVALUATION_WINDOWS = (60, 120, 300, 600)


@dataclass(frozen=True)
class RateLimits:
    """AWS WAF rate limits, per platform API key: a key over `requests_per_key` requests in
    `window_seconds` gets 429 in the OpenAI error shape, with Retry-After, until its rate
    falls (WAF counts per custom aggregation key: the key header's value). Requests with no
    key header at all (they only ever get 401s) are counted per client IP. The edge
    function's own /_cache/ lookups are counted by neither (docs/security.md)."""

    requests_per_key: int
    window_seconds: int = 300
    keyless_requests_per_ip: int = 600
    retry_after_seconds: int = 30

    def __post_init__(self) -> None:
        for name in ("requests_per_key", "keyless_requests_per_ip"):
            _require(10 <= getattr(self, name) <= 2_000_000_000, f"WAF rate limit {name} must be 10..2e9 (WAF's bounds)")
        _require(self.window_seconds in WAF_EVALUATION_WINDOWS, f"WAF evaluates over {WAF_EVALUATION_WINDOWS} s")
        _require(1 <= self.retry_after_seconds <= self.window_seconds, "Retry-After must be 1 s .. the window")

    @property
    def per_key_per_second(self) -> float:
        return self.requests_per_key / self.window_seconds


@dataclass(frozen=True)
class StageSettings:
    name: str
    account: str
    home_region: str
    availability_zones: tuple[str, ...]
    vpc_cidr: str
    domain: CustomDomain
    cache: CacheSettings
    model: ModelSettings
    endpoint: EndpointSettings
    workspace: ModelWorkspaceSettings
    sla: SlaSettings
    # The embeddings model behind /v1/embeddings; None: the stage serves none, and the edge
    # answers /v1/embeddings 404 model_not_found.
    embeddings: EmbeddingsSettings | None = None
    # WAF's rate limits per API key (RateLimits); None = no web ACL.
    rate_limits: RateLimits | None = None
    # Origin Shield in front of the results bucket collapses lookups from all edges.
    origin_shield: bool = False
    log_retention_days: int = 30
    # Every request must carry an API key the platform issued (bin/api-keys), checked by a
    # CloudFront Function before anything else runs. A stage that turns this off must say
    # why in `api_keys_off_reason`.
    require_api_keys: bool = True
    api_keys_off_reason: str | None = None
    # The account's Lambda concurrency quota in the home region; the origin adapter's
    # reservation must leave Lambda's minimum unreserved for everything else there,
    # Lambda@Edge replicas included.
    lambda_concurrency_quota: int = LAMBDA_DEFAULT_ACCOUNT_CONCURRENCY

    def __post_init__(self) -> None:
        _require(bool(re.match(r"^[a-z][a-z0-9]{1,15}$", self.name)), f"stage name {self.name!r}")
        _require(bool(_ACCOUNT.match(self.account)), f"{self.name}: account must be 12 digits")
        _require(bool(_REGION.match(self.home_region)), f"{self.name}: bad region {self.home_region!r}")
        _require(len(self.availability_zones) >= 2, f"{self.name}: need at least two availability zones")
        _require(
            all(az.startswith(self.home_region) for az in self.availability_zones),
            f"{self.name}: availability zones must be in {self.home_region}",
        )
        _require(bool(re.match(r"^\d+\.\d+\.\d+\.\d+/(1[6-9]|2[0-4])$", self.vpc_cidr)), f"{self.name}: VPC CIDR /16../24")
        _require(self.log_retention_days in LOG_RETENTION_DAYS, f"log retention is one of {sorted(LOG_RETENTION_DAYS)} days")
        bucket = self.model_bucket_name
        _require(len(bucket) <= 63, f"{self.name}: model bucket name {bucket!r} is longer than S3's 63 characters")
        _require(
            self.require_api_keys or bool((self.api_keys_off_reason or "").strip()),
            f"{self.name}: a stage without API keys must say why (api_keys_off_reason)",
        )
        # Caches are scoped by the tenant the API key check verified; without the check a
        # viewer could name any tenant and read its answers.
        _require(
            self.require_api_keys or not self.cache.tenant_scoped,
            f"{self.name}: tenant-scoped caches need API keys (the tenant comes from the verified key)",
        )

        _require(
            self.endpoint.target_concurrency <= self.model.max_num_seqs,
            f"{self.name}: the scaling target ({self.endpoint.target_concurrency} concurrent requests per instance) is "
            f"above max_num_seqs ({self.model.max_num_seqs}): the fleet would queue requests before it scales out",
        )
        _require(
            self.endpoint.concurrent_requests_per_instance <= self.model.max_num_seqs,
            f"{self.name}: concurrent requests per instance ({self.endpoint.concurrent_requests_per_instance}) above "
            f"the sequences the container generates at once (max_num_seqs {self.model.max_num_seqs})",
        )
        # The LLM runs on GPUs (LMI/vLLM); the embeddings model may run on either.
        _require(self.endpoint.gpus > 0, f"{self.name}: the LLM endpoint needs a GPU instance, not {self.endpoint.instance_type}")
        tp = self.model.tensor_parallel_degree
        gpus = gpu_count(self.endpoint.instance_type)
        _require(
            tp == "max" or (type(tp) is int and 1 <= tp <= gpus and gpus % tp == 0),
            f"{self.name}: tensor_parallel_degree {tp!r} must be 'max' or divide the {gpus} GPUs of {self.endpoint.instance_type}",
        )
        fit = gpu_fit(self.model, self.endpoint.instance_type)
        _require(
            fit.fits,
            f"{self.name}: {self.model.model_id} does not fit {fit.instance_type} (per GPU, tensor parallel {fit.tensor_parallel}): "
            f"weights {fit.weights_gib:.2f} GiB + KV cache for one {fit.max_model_len}-token context "
            f"{fit.kv_cache_gib:.2f} GiB + headroom {fit.headroom_gib:.2f} GiB = {fit.needed_gib:.2f} GiB, above "
            f"{self.model.gpu_memory_utilization:.0%} of {fit.gpu_memory_gib:.2f} GiB ({fit.budget_gib:.2f} GiB); vLLM would "
            f"refuse to start. Set max_model_len to at most {fit.longest_context_that_fits} tokens, quantize, or pick a larger GPU.",
        )
        if self.embeddings is not None:
            # One origin adapter serves both endpoints within one time budget.
            _require(
                self.embeddings.endpoint.timeouts == self.endpoint.timeouts,
                f"{self.name}: the embeddings endpoint's timeouts must be the stage's (endpoint.timeouts): "
                "one origin adapter, one time budget",
            )
        reserved = self.adapter_reserved_concurrency
        _require(
            reserved <= self.lambda_concurrency_quota - LAMBDA_MIN_UNRESERVED_CONCURRENCY,
            f"{self.name}: origin adapter reserved concurrency {reserved} must leave "
            f"{LAMBDA_MIN_UNRESERVED_CONCURRENCY} of the {self.lambda_concurrency_quota} account quota unreserved",
        )

    @property
    def adapter_reserved_concurrency(self) -> int:
        """The origin adapter's reserved concurrency: each endpoint's fleet at its maximum,
        with headroom (EndpointSettings.adapter_reserved_concurrency), added up: the one
        function serves both."""
        fleets = [self.endpoint] + ([self.embeddings.endpoint] if self.embeddings else [])
        return sum(e.adapter_reserved_concurrency for e in fleets)

    @property
    def endpoint_name(self) -> str:
        """The LLM's SageMaker endpoint."""
        return f"inference-cache-{self.name}"

    @property
    def embeddings_endpoint_name(self) -> str:
        """The embeddings model's SageMaker endpoint (when the stage has one)."""
        return f"inference-cache-{self.name}-embeddings"

    # The other fixed names the stacks create, which bin/preflight checks are free.
    @property
    def origin_adapter_name(self) -> str:
        """The origin adapter's Lambda function."""
        return f"inference-cache-{self.name}-origin-adapter"

    @property
    def cache_key_function_name(self) -> str:
        """The Lambda@Edge function (us-east-1)."""
        return f"inference-cache-{self.name}-cache-key"

    @property
    def api_key_check_name(self) -> str:
        """The viewer-request CloudFront Function on the API routes."""
        return f"inference-cache-{self.name}-api-key-check"

    @property
    def cache_read_check_name(self) -> str:
        """The viewer-request CloudFront Function on /_cache/*."""
        return f"inference-cache-{self.name}-cache-read-check"

    @property
    def workspace_log_group_name(self) -> str:
        """The FSx for Lustre workspace's log group."""
        return f"/aws/fsx/inference-cache-{self.name}-workspace"

    @property
    def waf_log_group_name(self) -> str:
        """The web ACL's log group (WAF requires the aws-waf-logs- prefix)."""
        return f"aws-waf-logs-inference-cache-{self.name}"

    @property
    def endpoints(self) -> dict[str, EndpointSettings]:
        """Every SageMaker endpoint of the stage, by name: what bin/preflight sizes instance
        quotas for."""
        found = {self.endpoint_name: self.endpoint}
        if self.embeddings is not None:
            found[self.embeddings_endpoint_name] = self.embeddings.endpoint
        return found

    @property
    def pinned_models(self) -> tuple[ModelSettings | EmbeddingsSettings, ...]:
        """Every model version the stage's endpoints load: each must be published (its
        manifest in the model bucket) before a deploy creates or updates the endpoint."""
        return (self.model,) if self.embeddings is None else (self.model, self.embeddings)

    @property
    def model_bucket_name(self) -> str:
        """Named, so bin/model-publish finds the bucket without a deployed stack."""
        return MODEL_BUCKET_NAME.format(stage=self.name, account=self.account, region=self.home_region)

    def edge_cache_settings(self) -> EdgeCacheSettings:
        """What the edge function and the origin adapter decide with, baked into their
        bundles (Lambda@Edge has no environment variables): every CacheSettings field,
        generated from the dataclass (a new field cannot be forgotten), and the model."""
        return EdgeCacheSettings.from_dict(
            {
                **{f.name: getattr(self.cache, f.name) for f in fields(CacheSettings)},
                "stage": self.name,
                "routes": INFERENCE_ROUTES,
                "results_path": RESULTS_PATH,
                "model_id": self.model.model_id,
                "model_version": self.model.model_version,
                "embeddings_model_id": self.embeddings.model_id if self.embeddings else None,
                "embeddings_model_version": self.embeddings.model_version if self.embeddings else None,
            }
        )

    def adapter_embeddings_model(self, model_bucket: str) -> EmbeddingsModel | None:
        """What the origin adapter needs to answer /v1/embeddings (None: the stage has no
        embeddings model), written into its environment; `model_bucket` holds the
        version's tokenizer.json."""
        e = self.embeddings
        if e is None:
            return None
        return EmbeddingsModel(
            endpoint_name=self.embeddings_endpoint_name,
            dimensions=e.dimensions,
            matryoshka=e.matryoshka,
            vocab_size=e.vocab_size,
            batch_inputs=e.max_client_batch_size,
            batch_read_seconds=e.batch_read_seconds,
            tokenizer_uri=f"s3://{model_bucket}/{e.s3_prefix}tokenizer.json",
        )
