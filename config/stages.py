"""The stages, in one place. Accounts and certificates here are placeholders that
synthesize offline; README "Stages and real accounts" says what to replace."""

from __future__ import annotations

from config.aws_facts import TEI_REGISTRY_ACCOUNTS
from config.settings import (
    CacheSettings,
    CustomDomain,
    EmbeddingsSettings,
    EndpointSettings,
    ModelArchitecture,
    ModelSettings,
    ModelWorkspaceSettings,
    RateLimits,
    SlaSettings,
    StageSettings,
)

DEFAULT_STAGE = "dev"

_MODEL_ID = "meta-llama/Llama-3.1-8B-Instruct"
# Its config.json and parameter count (8,030,261,248: its safetensors index's total_size,
# 16,060,522,496 bytes of bfloat16); tests/unit/test_gpu_fit.py holds them equal to the
# published files (tests/fixtures/llama-3.1-8b-instruct/).
_LLAMA_3_1_8B = ModelArchitecture(
    parameters=8_030_261_248,
    num_hidden_layers=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_size=4096,
    vocab_size=128_256,
    max_position_embeddings=131_072,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)


def _lmi_image(region: str) -> str:
    # DJL LMI (vLLM backend): accepts OpenAI "messages" bodies on /invocations.
    return f"763104351884.dkr.ecr.{region}.amazonaws.com/djl-inference:0.36.0-lmi18.0.0-cu128"


def _tei_image(region: str, *, gpu: bool) -> str:
    # Hugging Face Text Embeddings Inference, as SageMaker publishes it (config.aws_facts).
    # The GPU image is 1.8.2 (`dimensions` for Matryoshka models); the newest CPU image is 1.7.0.
    if gpu:
        return f"{TEI_REGISTRY_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws.com/tei:2.0.1-tei1.8.2-gpu-py310-cu122-ubuntu22.04"
    return f"{TEI_REGISTRY_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws.com/tei-cpu:2.0.1-tei1.7.0-cpu-py310-ubuntu22.04"


# dev embeds with all-MiniLM-L6-v2 on CPU (384 dimensions, 256 tokens: the model the local
# run serves); staging and prod with mixedbread-ai/mxbai-embed-large-v1 on one A10G per
# instance (1024 dimensions, Matryoshka, 512 tokens). Why: docs/decisions.md, "Embeddings".
_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_MXBAI = "mixedbread-ai/mxbai-embed-large-v1"

STAGES: dict[str, StageSettings] = {
    s.name: s
    for s in (
        StageSettings(
            name="dev",
            account="111111111111",
            home_region="us-west-2",
            availability_zones=("us-west-2a", "us-west-2b"),
            vpc_cidr="10.10.0.0/16",
            domain=CustomDomain(
                name="inference.dev.example.com",
                certificate_arn="arn:aws:acm:us-east-1:111111111111:certificate/00000000-0000-4000-8000-000000000001",
            ),
            cache=CacheSettings(policy="deterministic", default_ttl_seconds=3_600, max_ttl_seconds=86_400),
            model=ModelSettings(
                model_id=_MODEL_ID,
                model_version="2026-11-01",
                image_uri=_lmi_image("us-west-2"),
                s3_prefix="models/llama-3.1-8b-instruct/2026-11-01/",
                architecture=_LLAMA_3_1_8B,
                # bf16 weights (15.0 GiB) leave an A10G (22.35 GiB) room for ~25k tokens of KV
                # cache; the model's whole 131,072 would need 16 GiB (docs/decisions.md).
                max_model_len=16_384,
            ),
            endpoint=EndpointSettings(
                instance_type="ml.g5.2xlarge",
                min_instances=1,
                max_instances=2,
                target_concurrency=4,
                concurrent_requests_per_instance=8,
                scale_out_cooldown_seconds=60,
                scale_in_cooldown_seconds=300,
                # The shortest that lets the rollback alarms judge a new model version.
                rollout_baking_minutes=10,
            ),
            workspace=ModelWorkspaceSettings(
                capacity_gib=1200,
                throughput_per_tib=125,
                enabled=False,
                off_reason=(
                    "Dev serves versions published from a laptop or CI straight to the model bucket "
                    "(bin/model-publish); preparing models happens in staging's workspace. Kept, the "
                    "smallest file system would cost ~$196/month that nothing uses."
                ),
            ),
            embeddings=EmbeddingsSettings(
                model_id=_MINILM,
                model_version="2d2fdaed1488f8bd",
                image_uri=_tei_image("us-west-2", gpu=False),
                s3_prefix="models/all-minilm-l6-v2/2d2fdaed1488f8bd/",
                endpoint=EndpointSettings(
                    instance_type="ml.m5.xlarge",
                    min_instances=1,
                    max_instances=2,
                    target_concurrency=4,
                    concurrent_requests_per_instance=8,
                    volume_size_gb=30,
                    startup_health_check_timeout_seconds=600,
                    model_data_download_timeout_seconds=600,
                    rollout_baking_minutes=10,  # the stage's baking period, as its LLM
                ),
                dimensions=384,
                max_input_tokens=256,
                vocab_size=30_522,
            ),
            # Dev traffic is a developer's test traffic: a burst of failures from one person is
            # not evidence of an outage, so ratio alarms want twice the default volume.
            sla=SlaSettings(availability_target=0.99, alarm_email=None, min_requests_per_5_min=20),
            log_retention_days=14,
        ),
        StageSettings(
            name="staging",
            account="222222222222",
            home_region="us-west-2",
            availability_zones=("us-west-2a", "us-west-2b"),
            vpc_cidr="10.20.0.0/16",
            domain=CustomDomain(
                name="inference.staging.example.com",
                certificate_arn="arn:aws:acm:us-east-1:222222222222:certificate/00000000-0000-4000-8000-000000000002",
            ),
            cache=CacheSettings(policy="deterministic", tenant_scoped=True),
            model=ModelSettings(
                model_id=_MODEL_ID,
                model_version="2026-11-01",
                image_uri=_lmi_image("us-west-2"),
                s3_prefix="models/llama-3.1-8b-instruct/2026-11-01/",
                architecture=_LLAMA_3_1_8B,
                max_model_len=32_768,
                quantization="fp8",
            ),
            endpoint=EndpointSettings(
                instance_type="ml.g6e.2xlarge",
                min_instances=1,
                max_instances=4,
                target_concurrency=8,
                rollout_baking_minutes=20,
            ),
            embeddings=EmbeddingsSettings(
                model_id=_MXBAI,
                model_version="2026-12-01",
                image_uri=_tei_image("us-west-2", gpu=True),
                s3_prefix="models/mxbai-embed-large-v1/2026-12-01/",
                endpoint=EndpointSettings(
                    instance_type="ml.g5.xlarge",
                    min_instances=1,
                    max_instances=2,
                    target_concurrency=8,
                    startup_health_check_timeout_seconds=600,
                    model_data_download_timeout_seconds=600,
                    rollout_baking_minutes=20,  # the stage's baking period, as its LLM
                ),
                dimensions=1024,
                max_input_tokens=512,
                vocab_size=30_522,
                matryoshka=True,
            ),
            workspace=ModelWorkspaceSettings(capacity_gib=1200, throughput_per_tib=250),
            sla=SlaSettings(availability_target=0.995, alarm_email="inference-oncall@example.com"),
            # 20 requests/s per API key over 5 minutes.
            rate_limits=RateLimits(requests_per_key=6_000),
        ),
        StageSettings(
            name="prod",
            account="333333333333",
            home_region="us-east-2",
            availability_zones=("us-east-2a", "us-east-2b", "us-east-2c"),
            vpc_cidr="10.30.0.0/16",
            domain=CustomDomain(
                name="inference.example.com",
                certificate_arn="arn:aws:acm:us-east-1:333333333333:certificate/00000000-0000-4000-8000-000000000003",
            ),
            cache=CacheSettings(policy="deterministic", tenant_scoped=True),
            model=ModelSettings(
                model_id=_MODEL_ID,
                model_version="2026-11-01",
                image_uri=_lmi_image("us-east-2"),
                s3_prefix="models/llama-3.1-8b-instruct/2026-11-01/",
                architecture=_LLAMA_3_1_8B,
                max_model_len=32_768,
                quantization="fp8",
            ),
            endpoint=EndpointSettings(
                instance_type="ml.g6e.2xlarge",
                min_instances=2,
                max_instances=8,
                target_concurrency=8,
                scale_out_cooldown_seconds=60,
                scale_in_cooldown_seconds=900,
                # Two fleets are paid for while a rollout bakes; prod buys half an hour of evidence.
                rollout_baking_minutes=30,
            ),
            embeddings=EmbeddingsSettings(
                model_id=_MXBAI,
                model_version="2026-12-01",
                image_uri=_tei_image("us-east-2", gpu=True),
                s3_prefix="models/mxbai-embed-large-v1/2026-12-01/",
                endpoint=EndpointSettings(
                    instance_type="ml.g5.xlarge",
                    min_instances=2,
                    max_instances=4,
                    target_concurrency=8,
                    scale_in_cooldown_seconds=900,
                    startup_health_check_timeout_seconds=600,
                    model_data_download_timeout_seconds=600,
                    rollout_baking_minutes=30,  # the stage's baking period, as its LLM
                ),
                dimensions=1024,
                max_input_tokens=512,
                vocab_size=30_522,
                matryoshka=True,
            ),
            workspace=ModelWorkspaceSettings(capacity_gib=2400, throughput_per_tib=500),
            sla=SlaSettings(availability_target=0.999, alarm_email="inference-oncall@example.com"),
            # 100 requests/s per API key over 5 minutes: a server-side tenant's whole traffic.
            rate_limits=RateLimits(requests_per_key=30_000),
            origin_shield=True,
            log_retention_days=90,
        ),
    )
}


def stage(name: str) -> StageSettings:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
