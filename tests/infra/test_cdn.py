"""The distribution: behaviors, the edge function's association, origin access
controls, error caching, the results cache policy, TLS, logs, metrics and WAF."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from config.stages import STAGES
from lambdas.contract import API_KEY_STORE_NAME
from stacks.cdn_stack import API_KEY_CHECK_FILE, CACHE_READ_CHECK_FILE
from tests.conftest import STAGE_NAMES

CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"


def _distribution_config(synthesized, stage) -> dict:
    resources = synthesized[stage].templates["Cdn"]["Resources"]
    (config,) = [
        r["Properties"]["DistributionConfig"] for r in resources.values() if r["Type"] == "AWS::CloudFront::Distribution"
    ]
    return config


def _behavior(config, pattern) -> dict:
    (behavior,) = [b for b in config["CacheBehaviors"] if b["PathPattern"] == pattern]
    return behavior


def _origin(config, origin_id) -> dict:
    (origin,) = [o for o in config["Origins"] if o["Id"] == origin_id]
    return origin


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.parametrize("pattern", ["/v1/*", "/invocations"])
def test_inference_routes_take_all_methods_uncached_through_the_cache_key_function(synthesized, stage, pattern):
    config = _distribution_config(synthesized, stage)
    behavior = _behavior(config, pattern)
    assert set(behavior["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"}
    assert behavior["CachePolicyId"] == CACHING_DISABLED
    assert behavior["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST
    assert behavior["ViewerProtocolPolicy"] == "https-only"
    # Streamed answers pass event by event: CloudFront does not hold them back to compress.
    assert behavior["Compress"] is False
    association, on_response = behavior["LambdaFunctionAssociations"]
    assert association["EventType"] == "origin-request"
    assert association["IncludeBody"] is True
    # The same version shapes Lambda's and OAC's own errors on origin-response (no body).
    assert on_response["EventType"] == "origin-response" and "IncludeBody" not in on_response
    assert on_response["LambdaFunctionARN"] == association["LambdaFunctionARN"]
    # The version ARN read across regions from the edge stack (a numbered version).
    reader, attribute = association["LambdaFunctionARN"]["Fn::GetAtt"]
    assert reader.startswith("CacheKeyFunctionArnReader") and attribute == "FunctionArn"
    origin = _origin(config, behavior["TargetOriginId"])
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    # The outermost timeout of the stage's TimeoutBudget, within CloudFront's default quota.
    timeouts = STAGES[stage].endpoint.timeouts
    assert origin["CustomOriginConfig"]["OriginReadTimeout"] == timeouts.origin_read_seconds <= 60
    assert origin["CustomOriginConfig"]["OriginSSLProtocols"] == ["TLSv1.2"]
    assert "lambda-url" not in str(origin["DomainName"])  # taken from the function URL, not typed in
    assert "FunctionUrl" in str(origin["DomainName"])
    assert "OriginAccessControlId" in origin


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_results_behavior_is_get_head_from_the_results_bucket_keyed_on_path_only(synthesized, stage):
    config = _distribution_config(synthesized, stage)
    behavior = _behavior(config, "/_cache/*")
    assert behavior["AllowedMethods"] == ["GET", "HEAD"]
    assert "LambdaFunctionAssociations" not in behavior
    assert behavior["ViewerProtocolPolicy"] == "https-only"
    origin = _origin(config, behavior["TargetOriginId"])
    assert "ResultsBucket" in str(origin["DomainName"])
    assert "OriginAccessControlId" in origin
    assert origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}
    assert origin.get("OriginShield", {}).get("Enabled", False) is STAGES[stage].origin_shield

    policies = Template.from_json(synthesized[stage].templates["Cdn"]).find_resources("AWS::CloudFront::CachePolicy")
    (policy,) = policies.values()
    cache = STAGES[stage].cache
    policy_config = policy["Properties"]["CachePolicyConfig"]
    assert behavior["CachePolicyId"]["Ref"] in policies
    assert policy_config["MinTTL"] == 0
    assert policy_config["DefaultTTL"] == cache.default_ttl_seconds
    assert policy_config["MaxTTL"] == cache.max_ttl_seconds
    key = policy_config["ParametersInCacheKeyAndForwardedToOrigin"]
    assert key["HeadersConfig"] == {"HeaderBehavior": "none"}
    assert key["QueryStringsConfig"] == {"QueryStringBehavior": "none"}
    assert key["CookiesConfig"] == {"CookieBehavior": "none"}
    assert key["EnableAcceptEncodingGzip"] is False and key["EnableAcceptEncodingBrotli"] is False


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_default_behavior_is_read_only_and_uncached(synthesized, stage):
    default = _distribution_config(synthesized, stage)["DefaultCacheBehavior"]
    assert set(default["AllowedMethods"]) == {"GET", "HEAD", "OPTIONS"}
    assert default["CachePolicyId"] == CACHING_DISABLED
    assert "LambdaFunctionAssociations" not in default


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_errors_are_never_cached_at_the_edge(synthesized, stage):
    responses = _distribution_config(synthesized, stage)["CustomErrorResponses"]
    ttls = {r["ErrorCode"]: r["ErrorCachingMinTTL"] for r in responses}
    assert ttls[403] == 0 and ttls[404] == 0
    assert set(ttls.values()) == {0}
    assert {500, 502, 503, 504} <= set(ttls)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_origin_access_controls_sign_every_request(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["Cdn"])
    controls = template.find_resources("AWS::CloudFront::OriginAccessControl")
    types = sorted(c["Properties"]["OriginAccessControlConfig"]["OriginAccessControlOriginType"] for c in controls.values())
    assert types == ["lambda", "s3"]
    for control in controls.values():
        assert control["Properties"]["OriginAccessControlConfig"]["SigningBehavior"] == "always"
        assert control["Properties"]["OriginAccessControlConfig"]["SigningProtocol"] == "sigv4"
    # CloudFront needs both actions on a function URL created after October 2025.
    permissions = [p["Properties"] for p in template.find_resources("AWS::Lambda::Permission").values()]
    assert sorted(p["Action"] for p in permissions) == ["lambda:InvokeFunction", "lambda:InvokeFunctionUrl"]
    for permission in permissions:
        assert permission["Principal"] == "cloudfront.amazonaws.com"
        assert "OriginAdapter" in str(permission["FunctionName"])
        assert "Distribution" in str(permission["SourceArn"]) and "*" not in str(permission["SourceArn"])


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_results_bucket_policy_is_tls_only_and_readable_by_this_distribution_only(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["Cdn"])
    (policy,) = template.find_resources("AWS::S3::BucketPolicy").values()
    statements = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    deny = statements["DenyInsecureTransport"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    read = statements["AllowThisDistributionToReadResults"]
    assert read["Effect"] == "Allow"
    assert read["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert read["Action"] == "s3:GetObject"
    assert "/_cache/*" in str(read["Resource"])
    source_arn = read["Condition"]["StringEquals"]["AWS:SourceArn"]
    assert "Distribution" in str(source_arn) and "*" not in str(source_arn)
    assert len(statements) == 2


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_viewer_tls_logging_and_metrics(synthesized, stage):
    config = _distribution_config(synthesized, stage)
    settings = STAGES[stage]
    assert config["Aliases"] == [settings.domain.name]
    assert config["ViewerCertificate"] == {
        "AcmCertificateArn": settings.domain.certificate_arn,
        "MinimumProtocolVersion": "TLSv1.2_2021",
        "SslSupportMethod": "sni-only",
    }
    assert config["Logging"]["Prefix"] == f"cloudfront/{stage}/"
    assert "AccessLogs" in str(config["Logging"]["Bucket"])
    Template.from_json(synthesized[stage].templates["Cdn"]).has_resource_properties(
        "AWS::CloudFront::MonitoringSubscription",
        {"MonitoringSubscription": {"RealtimeMetricsSubscriptionConfig": {"RealtimeMetricsSubscriptionStatus": "Enabled"}}},
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_web_acl_rate_limits_per_api_key_where_the_stage_asks(synthesized, stage):
    """Counted per platform API key (a custom aggregation key on each key header), keyless
    requests per client IP; an over-limit caller gets 429 in the OpenAI error shape with
    Retry-After (a WAF custom response), not WAF's own 403."""
    limits = STAGES[stage].rate_limits
    config = _distribution_config(synthesized, stage)
    edge = Template.from_json(synthesized[stage].templates["Edge"])
    acls = edge.find_resources("AWS::WAFv2::WebACL")
    if limits is None:
        assert acls == {} and "WebACLId" not in config
        return
    (acl,) = acls.values()
    acl = acl["Properties"]
    assert acl["Scope"] == "CLOUDFRONT"
    rates = {r["Name"]: r for r in acl["Rules"] if "RateBasedStatement" in r["Statement"]}
    assert set(rates) == {"RatePerApiKeyBearer", "RatePerApiKeyHeader", "RatePerClientIpWithoutKey"}
    for name, header in (("RatePerApiKeyBearer", "authorization"), ("RatePerApiKeyHeader", "x-api-key")):
        statement = rates[name]["Statement"]["RateBasedStatement"]
        assert (statement["Limit"], statement["EvaluationWindowSec"]) == (limits.requests_per_key, limits.window_seconds)
        assert statement["AggregateKeyType"] == "CUSTOM_KEYS"
        assert statement["CustomKeys"] == [{"Header": {"Name": header, "TextTransformations": [{"Priority": 0, "Type": "NONE"}]}}]
    keyless = rates["RatePerClientIpWithoutKey"]["Statement"]["RateBasedStatement"]
    assert (keyless["AggregateKeyType"], keyless["Limit"]) == ("IP", limits.keyless_requests_per_ip)
    without = [s["NotStatement"]["Statement"]["SizeConstraintStatement"]["FieldToMatch"]["SingleHeader"]["Name"]
               for s in keyless["ScopeDownStatement"]["AndStatement"]["Statements"]
               if "SizeConstraintStatement" in s.get("NotStatement", {}).get("Statement", {})]
    assert sorted(without) == ["authorization", "x-api-key"]
    for rule in rates.values():
        response = rule["Action"]["Block"]["CustomResponse"]
        assert response["ResponseCode"] == 429
        assert {h["Name"]: h["Value"] for h in response["ResponseHeaders"]} == {
            "retry-after": str(limits.retry_after_seconds), "x-inference-cache": "BYPASS"}
        body = acl["CustomResponseBodies"][response["CustomResponseBodyKey"]]
        assert body["ContentType"] == "APPLICATION_JSON"
        error = json.loads(body["Content"])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert str(limits.requests_per_key) in error["message"]
    # The common rule set's 8 KB body rule would block ordinary prompts.
    names = {r["Name"] for r in acl["Rules"]}
    assert "AWSManagedRulesCommonRuleSet" not in names
    assert "WebAcl" in str(config["WebACLId"])
    edge.resource_count_is("AWS::WAFv2::LoggingConfiguration", 1)


def _function(synthesized, stage, name: str) -> tuple[str, dict]:
    resources = synthesized[stage].templates["Cdn"]["Resources"]
    ((logical_id, function),) = [(k, r) for k, r in resources.items()
                                 if r["Type"] == "AWS::CloudFront::Function" and r["Properties"]["Name"].endswith(name)]
    return logical_id, function["Properties"]


def _api_key_check(synthesized, stage) -> tuple[str, dict]:
    return _function(synthesized, stage, "-api-key-check")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_api_key_check_runs_on_viewer_request_of_every_origin_behavior_but_the_results(synthesized, stage):
    assert STAGES[stage].require_api_keys
    logical_id, function = _api_key_check(synthesized, stage)
    assert function["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0"
    assert function["AutoPublish"] is True
    assert function["FunctionCode"] == API_KEY_CHECK_FILE.read_text()
    config = _distribution_config(synthesized, stage)
    for behavior in [_behavior(config, "/v1/*"), _behavior(config, "/invocations"), config["DefaultCacheBehavior"]]:
        (association,) = behavior["FunctionAssociations"]
        assert association["EventType"] == "viewer-request"
        assert association["FunctionARN"] == {"Fn::GetAtt": [logical_id, "FunctionARN"]}
    # /_cache/* has a function of its own: the edge's credential, not a platform API key.
    (association,) = _behavior(config, "/_cache/*")["FunctionAssociations"]
    assert association["FunctionARN"] != {"Fn::GetAtt": [logical_id, "FunctionARN"]}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_only_the_edge_reads_stored_answers_a_function_on_viewer_request_of_cache(synthesized, stage):
    """Checked before CloudFront's cache or S3 is consulted, with the same key store (the
    stage secret); no other behavior runs it."""
    logical_id, function = _function(synthesized, stage, "-cache-read-check")
    assert function["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0" and function["AutoPublish"] is True
    assert function["FunctionCode"] == CACHE_READ_CHECK_FILE.read_text()
    template = Template.from_json(synthesized[stage].templates["Cdn"])
    ((store_id, _),) = template.find_resources("AWS::CloudFront::KeyValueStore").items()
    (store,) = function["FunctionConfig"]["KeyValueStoreAssociations"]
    assert store["KeyValueStoreARN"] == {"Fn::GetAtt": [store_id, "Arn"]}
    config = _distribution_config(synthesized, stage)
    (association,) = _behavior(config, "/_cache/*")["FunctionAssociations"]
    assert association == {"EventType": "viewer-request", "FunctionARN": {"Fn::GetAtt": [logical_id, "FunctionARN"]}}
    others = [*config["CacheBehaviors"], config["DefaultCacheBehavior"]]
    assert [b for b in others if {"Fn::GetAtt": [logical_id, "FunctionARN"]} in
            [a["FunctionARN"] for a in b.get("FunctionAssociations", [])]] == [_behavior(config, "/_cache/*")]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_api_key_store_is_named_for_bin_api_keys_and_associated_with_the_check(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["Cdn"])
    stores = template.find_resources("AWS::CloudFront::KeyValueStore")
    ((store_id, store),) = stores.items()
    assert store["Properties"]["Name"] == API_KEY_STORE_NAME.format(stage=stage)
    _, function = _api_key_check(synthesized, stage)
    (association,) = function["FunctionConfig"]["KeyValueStoreAssociations"]
    assert association["KeyValueStoreARN"] == {"Fn::GetAtt": [store_id, "Arn"]}
