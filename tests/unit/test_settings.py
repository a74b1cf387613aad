"""Stage settings are validated when a stage is built: bad values fail synth."""

from __future__ import annotations

import dataclasses
import json

import pytest

from config.settings import (
    CacheSettings,
    CustomDomain,
    EndpointSettings,
    ModelWorkspaceSettings,
    RateLimits,
    SettingsError,
    SlaSettings,
)
from config.stages import STAGES, stage
from lambdas.cache_settings import EdgeCacheSettings


def test_every_stage_is_valid_and_named_after_itself():
    assert list(STAGES) == ["dev", "staging", "prod"]
    for name, settings in STAGES.items():
        assert settings.name == name


def test_unknown_stage_names_the_known_ones():
    with pytest.raises(KeyError, match="dev, staging, prod"):
        stage("qa")


@pytest.mark.parametrize(
    "build",
    [
        lambda: CacheSettings(policy="sometimes"),
        lambda: CacheSettings(default_ttl_seconds=600, max_ttl_seconds=60),
        lambda: CacheSettings(max_body_bytes=2_000_000),
        lambda: CacheSettings(lookup_timeout_ms=5000),
        lambda: EndpointSettings(instance_type="ml.m5.xlarge", min_instances=1, max_instances=2, target_concurrency=4),
        lambda: EndpointSettings(instance_type="ml.g5.2xlarge", min_instances=0, max_instances=2, target_concurrency=4),
        lambda: EndpointSettings(instance_type="ml.g5.2xlarge", min_instances=3, max_instances=2, target_concurrency=4),
        lambda: EndpointSettings(
            instance_type="ml.g5.2xlarge", min_instances=1, max_instances=2, target_concurrency=4, volume_size_gb=100
        ),
        lambda: EndpointSettings(
            instance_type="ml.g5.2xlarge",
            min_instances=1,
            max_instances=2,
            target_concurrency=4,
            startup_health_check_timeout_seconds=4000,
        ),
        lambda: ModelWorkspaceSettings(capacity_gib=3600),
        lambda: ModelWorkspaceSettings(throughput_per_tib=200),
        lambda: SlaSettings(availability_target=1.0),
        lambda: SlaSettings(model_latency_p99_ms=20_000),
        lambda: CustomDomain(name="x.example.com", certificate_arn="arn:aws:acm:eu-west-1:111111111111:certificate/x"),
    ],
)
def test_invalid_settings_are_refused(build):
    with pytest.raises(SettingsError):
        build()


def test_stage_level_rules():
    dev = STAGES["dev"]
    with pytest.raises(SettingsError, match="account"):
        dataclasses.replace(dev, account="1234")
    with pytest.raises(SettingsError, match="availability zones"):
        dataclasses.replace(dev, availability_zones=("us-east-1a", "us-east-1b"))
    with pytest.raises(SettingsError, match="WAF"):
        dataclasses.replace(dev, rate_limits=RateLimits(requests_per_key=5))
    with pytest.raises(SettingsError, match="WAF evaluates over"):
        RateLimits(requests_per_key=100, window_seconds=180)


def test_edge_cache_config_carries_what_the_edge_function_needs():
    config = json.loads(STAGES["staging"].edge_cache_settings().to_json())
    assert config["routes"] == ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/invocations"]
    assert config["tenant_scoped"] is True
    assert config["model_version"] == STAGES["staging"].model.model_version
    assert config["max_body_bytes"] <= 1_048_576
    assert config["results_path"] == "/_cache/"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_cache_setting_reaches_the_edge_settings_with_the_stage_value(name):
    """A field added to CacheSettings and not to the edge record fails here (and at synth)."""
    settings = STAGES[name]
    edge = EdgeCacheSettings.from_json(settings.edge_cache_settings().to_json())
    for f in dataclasses.fields(CacheSettings):
        assert f.name in EdgeCacheSettings._fields
        expected = getattr(settings.cache, f.name)
        assert getattr(edge, f.name) == (tuple(expected) if isinstance(expected, tuple | list) else expected)
    assert (edge.stage, edge.model_id, edge.model_version) == (name, settings.model.model_id, settings.model.model_version)


def test_edge_settings_refuse_unknown_and_missing_fields():
    values = json.loads(STAGES["dev"].edge_cache_settings().to_json())
    with pytest.raises(TypeError):
        EdgeCacheSettings.from_dict({**values, "new_setting": 1})
    del values["policy"]
    with pytest.raises(TypeError):
        EdgeCacheSettings.from_dict(values)


def test_api_keys_are_required_unless_a_stage_says_why():
    dev = STAGES["dev"]
    assert all(s.require_api_keys for s in STAGES.values())
    with pytest.raises(SettingsError, match="say why"):
        dataclasses.replace(dev, require_api_keys=False)
    assert not dataclasses.replace(dev, require_api_keys=False, api_keys_off_reason="behind a private VPN").require_api_keys
    # Tenant scopes come from verified keys: no keys, no tenant-scoped cache.
    with pytest.raises(SettingsError, match="tenant-scoped"):
        dataclasses.replace(STAGES["staging"], require_api_keys=False, api_keys_off_reason="test")


def test_model_prefix_names_the_model_version_it_loads():
    model = STAGES["dev"].model
    with pytest.raises(SettingsError, match="must end with the model version"):
        dataclasses.replace(model, model_version="0123456789abcdef")
    assert dataclasses.replace(
        model, model_version="0123456789abcdef", s3_prefix="models/llama-3.1-8b-instruct/0123456789abcdef/"
    ).s3_prefix.endswith("/0123456789abcdef/")


# -- issue 10: timeout budget, adapter concurrency, FSx backups, lookup objective ----------


def test_timeout_budget_is_strictly_ordered_with_margins():
    from config.settings import TimeoutBudget

    budget = TimeoutBudget()
    assert budget.model_read_seconds + 6 <= budget.adapter_seconds
    assert budget.adapter_seconds + 5 <= budget.origin_read_seconds <= 60
    with pytest.raises(SettingsError, match="SageMaker"):
        TimeoutBudget(model_read_seconds=60, adapter_seconds=70, origin_read_seconds=80, origin_read_quota_seconds=90)
    # The old values: adapter = origin read = 60 s, model read 55 s.
    with pytest.raises(SettingsError, match="adapter timeout"):
        TimeoutBudget(model_read_seconds=55, adapter_seconds=60, origin_read_seconds=60)
    with pytest.raises(SettingsError, match="origin read timeout"):
        TimeoutBudget(model_read_seconds=48, adapter_seconds=56, origin_read_seconds=60)
    # Above CloudFront's default 60 s only with a declared quota increase (at most 180 s).
    with pytest.raises(SettingsError, match="quota"):
        TimeoutBudget(model_read_seconds=50, adapter_seconds=60, origin_read_seconds=70)
    assert TimeoutBudget(
        model_read_seconds=50, adapter_seconds=60, origin_read_seconds=70, origin_read_quota_seconds=90
    ).origin_read_seconds == 70
    with pytest.raises(SettingsError, match="quota"):
        TimeoutBudget(origin_read_quota_seconds=240)


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_reads_the_model_within_the_budget(name):
    endpoint = STAGES[name].endpoint
    assert endpoint.timeouts.model_read_seconds < endpoint.timeouts.adapter_seconds < endpoint.timeouts.origin_read_seconds


def test_adapter_concurrency_settings_are_validated():
    endpoint = STAGES["prod"].endpoint
    assert endpoint.adapter_reserved_concurrency == 8 * 16 * 1.5
    with pytest.raises(SettingsError, match="scaling target"):
        dataclasses.replace(endpoint, concurrent_requests_per_instance=4)  # below target_concurrency 8
    with pytest.raises(SettingsError, match="headroom"):
        dataclasses.replace(endpoint, adapter_concurrency_headroom=0.8)
    with pytest.raises(SettingsError, match="headroom"):
        dataclasses.replace(endpoint, adapter_concurrency_headroom=5)
    prod = STAGES["prod"]
    # Beyond what the container batches at once.
    with pytest.raises(SettingsError, match=r"generates at once \(max_num_seqs 64\)"):
        dataclasses.replace(prod, endpoint=dataclasses.replace(endpoint, concurrent_requests_per_instance=128))
    # One adapter serves both endpoints: its reservation covers both fleets at their maximum.
    assert prod.adapter_reserved_concurrency == 8 * 16 * 1.5 + 4 * 16 * 1.5
    assert dataclasses.replace(prod, embeddings=None).adapter_reserved_concurrency == 8 * 16 * 1.5
    # The reservation must leave Lambda's 100 unreserved in the account's quota.
    with pytest.raises(SettingsError, match="unreserved"):
        dataclasses.replace(prod, lambda_concurrency_quota=387)
    assert dataclasses.replace(prod, lambda_concurrency_quota=388).lambda_concurrency_quota == 388


def test_workspace_backups_and_lookup_failure_objective_are_bounded():
    assert ModelWorkspaceSettings(backup_retention_days=7).backup_retention_days == 7
    with pytest.raises(SettingsError, match="backup"):
        ModelWorkspaceSettings(backup_retention_days=91)
    with pytest.raises(SettingsError, match="lookup"):
        SlaSettings(edge_lookup_failure_rate_max=0)


# -- embeddings --------------------------------------------------------------------------


def test_the_llm_needs_a_gpu_the_embeddings_model_may_run_on_cpus():
    dev = STAGES["dev"]
    assert dev.embeddings.endpoint.gpus == 0 and dev.endpoint.gpus == 1
    cpu = EndpointSettings(instance_type="ml.m5.xlarge", min_instances=1, max_instances=2, target_concurrency=4, volume_size_gb=30)
    with pytest.raises(SettingsError, match="LLM endpoint needs a GPU"):
        dataclasses.replace(dev, endpoint=cpu)
    with pytest.raises(SettingsError, match="not a known GPU"):  # neither a GPU nor a known CPU type
        EndpointSettings(instance_type="ml.c7g.large", min_instances=1, max_instances=2, target_concurrency=4, volume_size_gb=30)


def test_dev_embeds_with_the_model_the_local_run_serves_at_its_published_version():
    """dev's facts are all-MiniLM-L6-v2's own files; its version is their manifest digest
    (bin/model-publish --stage dev --embeddings --pin writes the same)."""
    from cli.model_manifest import build_manifest
    from local_run.embeddings_server import EMBEDDING_MODEL, packaged_embedding_model

    model_dir = packaged_embedding_model()
    embeddings = STAGES["dev"].embeddings
    config = json.loads((model_dir / "config.json").read_text())
    assert embeddings.model_id == EMBEDDING_MODEL
    assert embeddings.model_version == build_manifest(model_dir).version
    assert embeddings.dimensions == config["hidden_size"]
    assert embeddings.vocab_size == config["vocab_size"]
    assert embeddings.max_input_tokens == json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    assert not embeddings.matryoshka


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # The GPU image on a CPU instance (and the reverse) cannot start.
        ({"image_uri": STAGES["staging"].embeddings.image_uri}, "TEI image for gpu"),
        ({"image_uri": "763104351884.dkr.ecr.us-west-2.amazonaws.com/djl-inference:0.36.0-lmi18.0.0-cu128"}, "Text Embeddings"),
        ({"matryoshka": True}, "has no `dimensions`"),  # the CPU image is TEI 1.7
        ({"max_batch_tokens": 128}, "never schedule"),
        ({"max_concurrent_inputs": 100}, "planned to hold"),
        ({"max_client_batch_size": 4096}, "max client batch size"),
        ({"batch_read_seconds": 48}, "batch read timeout"),
        ({"model_version": "next"}, "must end with the model version"),
    ],
)
def test_embeddings_settings_are_validated(change, message):
    with pytest.raises(SettingsError, match=message):
        dataclasses.replace(STAGES["dev"].embeddings, **change)


def test_one_adapter_one_time_budget():
    from config.settings import TimeoutBudget

    dev = STAGES["dev"]
    other = dataclasses.replace(dev.embeddings.endpoint, timeouts=TimeoutBudget(model_read_seconds=40, adapter_seconds=50,
                                                                                origin_read_seconds=60))
    with pytest.raises(SettingsError, match="one time budget"):
        dataclasses.replace(dev, embeddings=dataclasses.replace(dev.embeddings, endpoint=other))


@pytest.mark.parametrize("name", list(STAGES))
def test_the_edge_settings_name_the_embeddings_model_or_none(name):
    settings = STAGES[name]
    edge = settings.edge_cache_settings()
    assert (edge.embeddings_model_id, edge.embeddings_model_version) == (
        settings.embeddings.model_id,
        settings.embeddings.model_version,
    )
    none = dataclasses.replace(settings, embeddings=None).edge_cache_settings()
    assert (none.embeddings_model_id, none.embeddings_model_version) == (None, None)
    assert dataclasses.replace(settings, embeddings=None).adapter_embeddings_model("b") is None
    record = settings.adapter_embeddings_model("models-bucket")
    assert record.endpoint_name == f"inference-cache-{name}-embeddings"
    assert record.tokenizer_uri == f"s3://models-bucket/{settings.embeddings.s3_prefix}tokenizer.json"
    assert record.batch_inputs == settings.embeddings.max_client_batch_size


def test_a_stream_has_a_budget_of_its_own_within_lambdas_15_minutes():
    from config.settings import TimeoutBudget

    timeouts = TimeoutBudget()
    assert (timeouts.stream_seconds, timeouts.lambda_seconds) == (300, 306)
    assert TimeoutBudget(stream_seconds=894).lambda_seconds == 900
    with pytest.raises(SettingsError, match=r"stream budget 895 s \+ 6 s .* above Lambda's 900 s"):
        TimeoutBudget(stream_seconds=895)
    with pytest.raises(SettingsError, match=r"a stream's budget \(50 s\) must be at least a whole answer's \(54 s\)"):
        TimeoutBudget(stream_seconds=50)
