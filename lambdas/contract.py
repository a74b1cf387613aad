"""Names that the infrastructure, the runtime, the local run, the dashboards and the
tests all speak, each defined once. Stdlib-free constants only: the edge function
imports this on every cold start.

Import direction: stacks/config -> contract <- runtime; nothing here imports either side.
"""

# -- routes ------------------------------------------------------------------------------
CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
EMBEDDINGS_ROUTE = "/v1/embeddings"
INVOCATIONS_ROUTE = "/invocations"
OPENAI_ROUTES = (CHAT_ROUTE, COMPLETIONS_ROUTE, EMBEDDINGS_ROUTE)
INFERENCE_ROUTES = (*OPENAI_ROUTES, INVOCATIONS_ROUTE)
MODELS_ROUTE = "/v1/models"
# The origin adapter's readiness route (Lambda Web Adapter polls it before the first request).
HEALTH_ROUTE = "/healthz"
# CloudFront path patterns of the inference behavior (every route above falls under one).
INFERENCE_PATH_PATTERNS = ("/v1/*", INVOCATIONS_ROUTE)

# -- stored results -----------------------------------------------------------------------
# Key prefix of stored answers in the results bucket, and the distribution path that
# serves them (behavior /_cache/*).
RESULTS_PREFIX = "_cache/"
RESULTS_PATH = "/" + RESULTS_PREFIX
# User metadata of a stored answer: when it was stored (epoch seconds). S3 returns it as
# the x-amz-meta-created header, from which the edge computes the answer's age.
STORED_AT_METADATA = "created"
# ... and until when it may be served (epoch seconds): the writer's TTL, which binds every
# reader (x-amz-meta-expires).
EXPIRES_METADATA = "expires"
# Leases of misses being generated (coalescing, docs/decisions.md): _leases/{key}, claimed
# with a conditional PutObject, left as a released marker once an answer is stored. Never
# under RESULTS_PREFIX: CloudFront must not serve them.
LEASE_PREFIX = "_leases/"

# The model bucket of a stage, named so that bin/model-publish needs no deployed stack
# to find it; models are published under models/<name>/<version>/ (docs/decisions.md).
MODEL_BUCKET_NAME = "inference-cache-{stage}-models-{account}-{region}"

# -- headers ------------------------------------------------------------------------------
# The key the edge computed (the origin recomputes it and never trusts this).
KEY_HEADER = "x-inference-cache-key"
# HIT | MISS | BYPASS on every answer.
STATUS_HEADER = "x-inference-cache"
# "1" on a HIT the origin answered from an identical request's result it waited for.
COALESCED_HEADER = "x-inference-coalesced"
# The oldest answer a client accepts, in seconds.
TTL_HEADER = "x-inference-cache-ttl"
# The tenant scope the edge sets (any viewer value is removed first).
TENANT_HEADER = "x-inference-tenant"
# What OAC signs a POST to a function URL with: the SHA-256 of the body.
CONTENT_SHA256_HEADER = "x-amz-content-sha256"
# Where a request's time went (W3C Server Timing), step by step (TimingStep): decision and
# lookup on the edge's answers; on the origin adapter's, the edge's forwarded steps and its own.
SERVER_TIMING_HEADER = "server-timing"
# The edge's own Server-Timing entries on a request it forwards to the origin (edge-owned:
# any viewer copy is removed first); the origin adapter folds them into its answer's.
EDGE_TIMING_HEADER = "x-inference-edge-timing"

# -- the stage secret (docs/security.md) ----------------------------------------------------
# Cache keys are MACs under it, and the edge's /_cache/ lookups carry a credential derived
# from it. It lives in the stage's API key store under this key (bin/api-keys rotate-secret).
STAGE_SECRET_STORE_KEY = "stage-secret"
# Set by the viewer-request API key check from the store (any viewer copy removed first),
# read by the edge function, and forwarded by CloudFront to the origin adapter.
STAGE_SECRET_HEADER = "x-inference-stage-secret"
# The credential the edge function presents on its /_cache/ lookups, checked by the
# /_cache/* viewer-request function: HMAC-SHA256(stage secret, CACHE_READ_CONTEXT), hex.
CACHE_READ_HEADER = "x-inference-cache-read"
CACHE_READ_CONTEXT = "inference-cache/cache-read/1"
# What a cache key's MAC key is derived under: HMAC-SHA256(stage secret, this).
CACHE_KEY_CONTEXT = "inference-cache/cache-key/3"

# -- API keys -------------------------------------------------------------------------------
# The CloudFront KeyValueStore of a stage's API keys (key: SHA-256 hex of the API key),
# named so: the stack creates it, bin/api-keys finds it by this name.
API_KEY_STORE_NAME = "inference-cache-{stage}-api-keys"

# -- limits -------------------------------------------------------------------------------
# CloudFront hands origin-request triggers at most 1 MB of body (inputTruncated beyond),
# and a generated origin-request response may be at most 1 MB with its headers.
EDGE_BODY_LIMIT_BYTES = 1_048_576
GENERATED_RESPONSE_LIMIT_BYTES = 1_048_576
# The largest stored answer the edge can serve: the generated-response limit less room
# for its headers. Larger answers are never stored (they could never be served).
SERVABLE_BODY_LIMIT_BYTES = GENERATED_RESPONSE_LIMIT_BYTES - 8_192
# OpenAI's embeddings API takes at most this many inputs in one request; more is a 400.
EMBEDDINGS_MAX_INPUTS = 2048
# Response timeout CloudFront allows without a quota increase; SageMaker allows the
# container 60 s, so the whole path is bounded by the same minute.
ORIGIN_READ_TIMEOUT_SECONDS = 60

# -- edge settings file and environment -----------------------------------------------------
# Lambda@Edge has no environment variables: the stage's cache settings are baked into the
# bundle as this file, beside the package's modules.
SETTINGS_FILE = "cache_settings.json"
# For local runs and tests only: another settings file.
SETTINGS_ENV = "INFERENCE_CACHE_SETTINGS"
# For local runs and tests only: where the edge's /_cache/ lookups go instead of
# https://{distributionDomainName}.
LOOKUP_BASE_ENV = "INFERENCE_CACHE_LOOKUP_BASE"
# For local runs and tests only: a CA file (PEM) the lookup's TLS context trusts instead
# of the system's, for an HTTPS server with a certificate of the test's own CA.
LOOKUP_CA_ENV = "INFERENCE_CACHE_LOOKUP_CA"
# The origin adapter's environment, set by the Inference stack.
ENDPOINT_NAME_ENV = "ENDPOINT_NAME"
RESULTS_BUCKET_ENV = "RESULTS_BUCKET"
ENDPOINT_READ_TIMEOUT_ENV = "ENDPOINT_READ_TIMEOUT_SECONDS"
# The embeddings endpoint and what the adapter needs to know of its model (a JSON object,
# lambdas.origin_adapter.embeddings.EmbeddingsModel); unset on a stage without one.
EMBEDDINGS_MODEL_ENV = "EMBEDDINGS_MODEL"
# The adapter's budget for a whole answer (the stage's TimeoutBudget.adapter_seconds).
ADAPTER_TIMEOUT_ENV = "ADAPTER_TIMEOUT_SECONDS"
# A streamed answer's budget, request to last byte (TimeoutBudget.stream_seconds); the
# function's Lambda timeout is this and the time to store and close after it.
STREAM_BUDGET_ENV = "STREAM_BUDGET_SECONDS"
# "true": identical cacheable misses share one model call (the stack sets it; unset: off).
COALESCING_ENV = "COALESCE_IDENTICAL_MISSES"
# How long the lease calls pause after the results bucket timed out or failed (seconds;
# unset: AdapterSettings' default). Local runs and tests shorten it.
RESULTS_BUCKET_PAUSE_ENV = "RESULTS_BUCKET_PAUSE_SECONDS"
# The port the origin adapter's web app listens on inside Lambda, where Lambda Web Adapter
# forwards each request (its AWS_LWA_PORT; run.sh reads the same variable).
WEB_ADAPTER_PORT = 8000

# -- metrics (embedded metric format from the origin adapter) -----------------------------
METRICS_NAMESPACE = "InferenceCache"
ORIGIN_ADAPTER_SERVICE = "origin-adapter"


class TimingStep:
    """Server-Timing step names, in the order a miss takes them (milliseconds). `origin` is
    the origin adapter's whole time until its answer began, its own steps included; `store`
    and `release` run after the answer (the log line has their times)."""

    KEY_CHECK = "key-check"  # the API key check; reported by the local front only
    DECISION = "decision"  # the edge's cache decision
    LOOKUP = "lookup"  # the edge's GET /_cache/{key}
    ORIGIN_DECISION = "origin-decision"  # the adapter recomputes the decision
    LEASE = "lease"  # claiming the key (or waiting for an identical request)
    MODEL = "model"  # the model call (a stream: until its stream began)
    STORE = "store"  # after the answer
    RELEASE = "release"  # after the answer and its store
    ORIGIN = "origin"


class Metric:
    """EMF metric names the origin adapter emits and the alarms and dashboard read."""

    REQUESTS = "Requests"
    CACHE_MISS = "CacheMiss"
    CACHE_BYPASS = "CacheBypass"
    CACHE_STORE = "CacheStore"
    CACHE_STORE_FAILED = "CacheStoreFailed"
    STORED_BYTES = "StoredBytes"
    INFERENCE_LATENCY = "InferenceLatency"
    GPU_SECONDS_ON_MISS = "GpuSecondsOnMiss"
    MODEL_ERROR = "ModelError"
    CACHE_KEY_MISMATCH = "CacheKeyMismatch"
    # Coalescing: answered from an identical request's result; claims won; leases taken
    # over (the holder failed or its lease expired); waits given up (503, retry).
    COALESCED = "CoalescedWaiter"
    LEASE_WON = "LeaseWon"
    LEASE_TAKEOVER = "LeaseTakeover"
    LEASE_EXPIRED = "LeaseExpired"  # of the takeovers: a lease past its expiry (its holder died)
    COALESCE_GAVE_UP = "CoalesceGaveUp"
    # The results bucket failed a lease call (or was paused after failing): the miss ran
    # the model without coordination.
    LEASE_UNAVAILABLE = "LeaseUnavailable"
    # Streaming: from the request to its first event (ms); streams that ended without a
    # complete answer (client gone, model error, timeout), never stored.
    TIME_TO_FIRST_TOKEN = "TimeToFirstToken"
    STREAM_CUT_OFF = "StreamCutOff"


class EdgeLogMetric:
    """Metrics the infrastructure derives from the edge function's JSON log line (one per
    request; `lookup` is set on requests that made a /_cache/ lookup), by CloudWatch Logs
    metric filters in us-east-1, in namespace METRICS_NAMESPACE."""

    REQUESTS = "EdgeRequests"
    LOOKUPS = "EdgeLookups"
    LOOKUP_FAILED = "EdgeLookupFailed"


class EdgeLog:
    """The edge function's JSON log line, as the metric filters read it: every request has
    DURATION; one that made a /_cache/ lookup has LOOKUP, whose failures start with one of
    LOOKUP_FAILURES ("lookup-status-<code>": neither 200 nor 403/404;
    "lookup-failed-<exception>": no answer at all)."""

    DURATION = "ms"
    LOOKUP = "lookup"
    LOOKUP_STATUS = "lookup-status-"
    LOOKUP_ERROR = "lookup-failed-"
    LOOKUP_FAILURES = (LOOKUP_STATUS, LOOKUP_ERROR)
