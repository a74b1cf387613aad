"""The GPU endpoint, its scaling, the origin adapter and the results bucket."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aws_cdk.assertions import Match, Template

from config.aws_facts import LAMBDA_WEB_ADAPTER_LAYER_VERSION
from config.stages import STAGES
from lambdas.contract import HEALTH_ROUTE, WEB_ADAPTER_PORT
from stacks.bundles import ORIGIN_ADAPTER_HANDLER
from tests.conftest import STAGE_NAMES


def _template(synthesized, stage) -> Template:
    return Template.from_json(synthesized[stage].templates["Inference"])


def _only(template: Template, resource_type: str, prefix: str = "") -> dict:
    """The one resource of the type whose logical id starts with `prefix` and not with
    "Embeddings" unless asked: the LLM's endpoint keeps its unprefixed ids."""
    (resource,) = [
        r
        for name, r in template.find_resources(resource_type).items()
        if name.startswith(prefix) and (prefix or not name.startswith("Embeddings"))
    ]
    return resource["Properties"]


def _statements(template: Template, role_prefix: str) -> list[dict]:
    policies = template.find_resources("AWS::IAM::Policy")
    (policy,) = [p for name, p in policies.items() if name.startswith(role_prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _join(value) -> str:
    """A Fn::Join written out with its tokens named, for comparing resource strings."""
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_join(p) for p in parts)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_join(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(_join, value)) + "]"
    return str(value)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_endpoint_variant_timeouts_routing_and_capacity(synthesized, stage):
    settings = STAGES[stage].endpoint
    template = _template(synthesized, stage)
    (variant,) = _only(template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    assert variant["InstanceType"] == settings.instance_type
    assert variant["InitialInstanceCount"] == settings.min_instances
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == settings.startup_health_check_timeout_seconds
    assert variant["ModelDataDownloadTimeoutInSeconds"] == settings.model_data_download_timeout_seconds
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] >= 600
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    # NVMe instance types reject an EBS volume size; the others need one.
    assert ("VolumeSizeInGB" in variant) is (not settings.has_instance_storage)
    assert _only(template, "AWS::SageMaker::Endpoint")["EndpointName"] == f"inference-cache-{stage}"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_model_loads_uncompressed_prefix_network_isolated_in_the_vpc(synthesized, stage):
    model_settings = STAGES[stage].model
    model = _only(_template(synthesized, stage), "AWS::SageMaker::Model")
    container = model["PrimaryContainer"]
    assert container["Image"] == model_settings.image_uri
    source = container["ModelDataSource"]["S3DataSource"]
    assert source["S3DataType"] == "S3Prefix" and source["CompressionType"] == "None"
    assert source["S3Uri"]["Fn::Join"][1][-1] == f"/{model_settings.s3_prefix}"
    environment = container["Environment"]
    assert environment["HF_MODEL_ID"] == "/opt/ml/model"
    assert environment.get("OPTION_QUANTIZE") == model_settings.quantization
    assert environment["OPTION_LOAD_FORMAT"] == "safetensors"
    assert environment["OPTION_MODEL_LOADING_TIMEOUT"] == str(STAGES[stage].endpoint.startup_health_check_timeout_seconds)
    assert model["EnableNetworkIsolation"] is True
    assert len(model["VpcConfig"]["Subnets"]) == len(STAGES[stage].availability_zones)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_target_tracking_on_high_resolution_concurrency(synthesized, stage):
    settings = STAGES[stage].endpoint
    template = _template(synthesized, stage)
    target = _only(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == settings.min_instances
    assert target["MaxCapacity"] == settings.max_instances
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["ServiceNamespace"] == "sagemaker"
    assert "/variant/AllTraffic" in str(target["ResourceId"])
    policy = _only(template, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"
    }
    assert tracking["TargetValue"] == settings.target_concurrency
    assert tracking["ScaleOutCooldown"] == settings.scale_out_cooldown_seconds
    assert tracking["ScaleInCooldown"] == settings.scale_in_cooldown_seconds


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_may_only_invoke_this_endpoint_and_write_cache_results(synthesized, stage):
    template = _template(synthesized, stage)
    statements = _statements(template, "OriginAdapterRole")
    actions: dict[str, list] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]:
            actions.setdefault(action, []).append(statement["Resource"])
    assert set(actions) == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sagemaker:InvokeEndpoint",
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }
    # Both of the stage's endpoints, by name, and nothing else.
    (endpoints,) = actions["sagemaker:InvokeEndpoint"]
    assert sorted(_join(e).rsplit(":", 1)[1] for e in endpoints) == [
        f"endpoint/inference-cache-{stage}",
        f"endpoint/inference-cache-{stage}-embeddings",
    ]
    # Results: written and read under _cache/; coalescing leases: under _leases/ only.
    for action, prefixes in {
        "s3:PutObject": ["/_cache/*", "/_leases/*"],
        "s3:GetObject": ["/_cache/*", "/_leases/*"],
        "s3:DeleteObject": ["/_leases/*"],
    }.items():
        resources = [r for r in actions[action] if "ResultsBucket" in str(r)]
        assert len(resources) == len(prefixes), (action, resources)
        for resource, prefix in zip(resources, prefixes, strict=True):
            assert str(resource).count(prefix) == 1, (action, resource)
    # And one object of the model bucket: the embeddings version's tokenizer (to count usage).
    (tokenizer,) = [r for r in actions["s3:GetObject"] if "ResultsBucket" not in str(r)]
    assert _join(tokenizer).endswith(f"/{STAGES[stage].embeddings.s3_prefix}tokenizer.json")
    assert "ModelBucket" in str(tokenizer) and "*" not in _join(tokenizer)
    # The bucket itself (a missing key is 404, not 403), no object wildcard.
    (listing,) = actions["s3:ListBucket"]
    assert list(listing) == ["Fn::GetAtt"] and listing["Fn::GetAtt"][0].startswith("ResultsBucket")
    assert listing["Fn::GetAtt"][1] == "Arn"
    (logs,) = actions["logs:PutLogEvents"]
    assert "OriginAdapterLogs" in str(logs)
    template.has_resource_properties("AWS::IAM::Role", {
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({"Principal": {"Service": "lambda.amazonaws.com"}})]},
        "Description": Match.string_like_regexp("^Origin adapter"),
    })


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_function_and_its_url(synthesized, stage):
    template = _template(synthesized, stage)
    # Streamed: CloudFront gets each event as the adapter writes it.
    template.has_resource_properties("AWS::Lambda::Url", {"AuthType": "AWS_IAM", "InvokeMode": "RESPONSE_STREAM"})
    function = [
        f["Properties"]
        for f in template.find_resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Handler") == ORIGIN_ADAPTER_HANDLER
    ]
    (function,) = function
    assert function["FunctionName"] == f"inference-cache-{stage}-origin-adapter"
    timeouts = STAGES[stage].endpoint.timeouts
    # A stream's budget and the store after it; a whole answer's budget is the adapter's own (env).
    assert function["Timeout"] == timeouts.lambda_seconds == timeouts.stream_seconds + 6
    assert function["Environment"]["Variables"]["ADAPTER_TIMEOUT_SECONDS"] == str(timeouts.adapter_seconds)
    assert timeouts.adapter_seconds < timeouts.origin_read_seconds
    assert function["Runtime"] == "python3.14"
    assert function["TracingConfig"] == {"Mode": "Active"}
    assert function["Environment"]["Variables"]["ENDPOINT_NAME"] == f"inference-cache-{stage}"
    # What AdapterSettings.from_environment reads, set by the stack from the stage's settings.
    assert function["Environment"]["Variables"]["ENDPOINT_READ_TIMEOUT_SECONDS"] == str(
        STAGES[stage].endpoint.timeouts.model_read_seconds
    )
    # What the adapter knows of the embeddings model: the stage's settings, the version's tokenizer.
    embeddings = json.loads(function["Environment"]["Variables"]["EMBEDDINGS_MODEL"]["Fn::Join"][1][0]
                            + "BUCKET" + function["Environment"]["Variables"]["EMBEDDINGS_MODEL"]["Fn::Join"][1][2])
    assert embeddings == json.loads(STAGES[stage].adapter_embeddings_model("BUCKET").to_json())
    # Coalescing is on; its lease and wait budgets derive from the adapter's own timeout.
    assert function["Environment"]["Variables"]["ADAPTER_TIMEOUT_SECONDS"] == str(timeouts.adapter_seconds)
    assert function["Environment"]["Variables"]["COALESCE_IDENTICAL_MISSES"] == "true"
    # Lambda Web Adapter runs the web app from the handler file and streams its answers.
    # It falls back to buffered answers on any other invoke mode value, silently.
    assert function["Handler"] == "run.sh"
    assert {k: v for k, v in function["Environment"]["Variables"].items() if k.startswith(("AWS_LWA_", "AWS_LAMBDA_"))} == {
        "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
        "AWS_LWA_INVOKE_MODE": "response_stream",
        "AWS_LWA_PORT": str(WEB_ADAPTER_PORT),
        "AWS_LWA_READINESS_CHECK_PATH": HEALTH_ROUTE,
    }


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_results_bucket_is_private_encrypted_logged_and_expires_after_max_ttl(synthesized, stage):
    template = _template(synthesized, stage)
    buckets = template.find_resources("AWS::S3::Bucket")
    (bucket,) = [b["Properties"] for name, b in buckets.items() if name.startswith("ResultsBucket")]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert bucket["LoggingConfiguration"]["LogFilePrefix"] == "results-bucket/"
    (expiry,) = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "_cache/"]
    assert expiry["ExpirationInDays"] == STAGES[stage].cache.max_ttl_days
    assert expiry["Status"] == "Enabled"
    # Coalescing leases: removed after a day (S3's minimum) if a holder leaked one.
    (leases,) = [r for r in bucket["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "_leases/"]
    assert (leases["ExpirationInDays"], leases["Status"]) == (1, "Enabled")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_model_role_reads_only_this_model_version(synthesized, stage):
    statements = _statements(_template(synthesized, stage), "ModelExecutionRole")
    (get_object,) = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert str(get_object["Resource"]).count(STAGES[stage].model.s3_prefix) == 1
    (listing,) = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{STAGES[stage].model.s3_prefix}*"]}}
    assert not any(s["Action"] in ("s3:*", "s3:PutObject") for s in statements)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_adapter_uses_the_powertools_layer_of_the_pinned_version(synthesized, stage):
    requirements = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    pinned = re.search(r"^aws-lambda-powertools\S*==(\S+)$", requirements, re.M).group(1)
    template = synthesized[stage].templates["Inference"]
    parameters = {p.get("Default") for p in template.get("Parameters", {}).values()}
    assert f"/aws/service/powertools/python/arm64/python3.14/{pinned}" in parameters
    (function,) = [f for f in template["Resources"].values() if f["Properties"].get("Handler") == ORIGIN_ADAPTER_HANDLER]
    layers = function["Properties"]["Layers"]
    assert len(layers) == 2 and sum("Ref" in layer for layer in layers if isinstance(layer, dict)) == 1  # the SSM parameter
    # Lambda Web Adapter's arm64 layer, published by its account in the function's region.
    region = STAGES[stage].home_region
    assert f"arn:aws:lambda:{region}:753240598075:layer:LambdaAdapterLayerArm64:{LAMBDA_WEB_ADAPTER_LAYER_VERSION}" in layers
    assert function["Properties"]["Architectures"] == ["arm64"]


# -- the embeddings endpoint: the same constructs, Text Embeddings Inference -------------------


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_embeddings_endpoint_serves_tei_with_the_stages_limits(synthesized, stage):
    embeddings = STAGES[stage].embeddings
    template = _template(synthesized, stage)
    model = _only(template, "AWS::SageMaker::Model", "Embeddings")
    container = model["PrimaryContainer"]
    assert container["Image"] == embeddings.image_uri
    assert ("/tei:" in container["Image"]) is (embeddings.endpoint.gpus > 0)
    source = container["ModelDataSource"]["S3DataSource"]
    assert (source["S3DataType"], source["CompressionType"]) == ("S3Prefix", "None")
    assert source["S3Uri"]["Fn::Join"][1][-1] == f"/{embeddings.s3_prefix}"
    assert container["Environment"] == {
        "HF_MODEL_ID": "/opt/ml/model",
        "MAX_CLIENT_BATCH_SIZE": str(embeddings.max_client_batch_size),
        "MAX_BATCH_TOKENS": str(embeddings.max_batch_tokens),
        "MAX_CONCURRENT_REQUESTS": str(embeddings.max_concurrent_inputs),
        "AUTO_TRUNCATE": "false",
    }
    assert model["EnableNetworkIsolation"] is True
    assert len(model["VpcConfig"]["Subnets"]) == len(STAGES[stage].availability_zones)
    assert {"Key": "model-version", "Value": embeddings.model_version} in model["Tags"]
    (variant,) = _only(template, "AWS::SageMaker::EndpointConfig", "Embeddings")["ProductionVariants"]
    assert variant["InstanceType"] == embeddings.endpoint.instance_type
    assert variant["InitialInstanceCount"] == embeddings.endpoint.min_instances
    assert ("VolumeSizeInGB" in variant) is (not embeddings.endpoint.has_instance_storage)
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert _only(template, "AWS::SageMaker::Endpoint", "Embeddings")["EndpointName"] == f"inference-cache-{stage}-embeddings"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_embeddings_endpoint_scales_on_its_own_settings(synthesized, stage):
    settings = STAGES[stage].embeddings.endpoint
    template = _template(synthesized, stage)
    target = _only(template, "AWS::ApplicationAutoScaling::ScalableTarget", "Embeddings")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (settings.min_instances, settings.max_instances)
    assert "EmbeddingsEndpoint" in str(target["ResourceId"]) and "/variant/AllTraffic" in str(target["ResourceId"])
    policy = _only(template, "AWS::ApplicationAutoScaling::ScalingPolicy", "Embeddings")
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"
    }
    assert (tracking["TargetValue"], tracking["ScaleInCooldown"]) == (
        settings.target_concurrency,
        settings.scale_in_cooldown_seconds,
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_embeddings_model_role_reads_only_its_own_version(synthesized, stage):
    prefix = STAGES[stage].embeddings.s3_prefix
    statements = _statements(_template(synthesized, stage), "EmbeddingsModelExecutionRole")
    (get_object,) = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert _join(get_object["Resource"]).endswith(f"/{prefix}*")
    (listing,) = [s for s in statements if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}*"]}}
    logs = [s for s in statements if "logs:PutLogEvents" in s["Action"]]
    assert _join(logs[0]["Resource"]).endswith(f":log-group:/aws/sagemaker/Endpoints/inference-cache-{stage}-embeddings:*")
    # The LLM's role does not read the embeddings model, nor the reverse.
    llm = _statements(_template(synthesized, stage), "ModelExecutionRole")
    assert prefix not in json.dumps(llm)
