"""The CloudFront distribution: inference POSTs go through the cache-key function to
the origin adapter; /_cache/* GETs are the cache itself, served from the results bucket.

It lives in the home region beside the origins it grants itself access to (the
function URL's invoke permissions and the results bucket's policy must name this
distribution, so they are declared here, after it).
"""

from __future__ import annotations

from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

import lambdas
from config.settings import StageSettings
from lambdas.contract import (
    API_KEY_STORE_NAME,
    INFERENCE_PATH_PATTERNS,
    RESULTS_PREFIX,
)
from stacks.bundles import EDGE_HANDLER, lambda_bundle
from stacks.edge_stack import EdgeStack

# CloudFront accepts custom error-caching TTLs for these codes; all are set to 0 so an
# error is never pinned at the edge (403/404 above all: that is what a cache miss on
# /_cache/ looks like, and pinning it would send every repeat to the GPU).
# The CloudFront Function checking API keys (JavaScript, runtime cloudfront-js-2.0).
VIEWER_REQUEST_DIR = Path(lambdas.__file__).resolve().parent / "viewer_request"
API_KEY_CHECK_FILE = VIEWER_REQUEST_DIR / "api_key_check.js"
CACHE_READ_CHECK_FILE = VIEWER_REQUEST_DIR / "cache_read_check.js"
ERROR_CODES_NOT_CACHED = (400, 403, 404, 405, 414, 416, 500, 501, 502, 503, 504)


class CdnStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        edge_stack: EdgeStack,
        origin_url: lambda_.IFunctionUrl,
        results_bucket: s3.IBucket,
        log_bucket: s3.IBucket,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, cross_region_references=True, **kwargs)
        self.settings = settings

        self.cache_key_function = cloudfront.experimental.EdgeFunction(
            self,
            "CacheKeyFunction",
            stack_id=edge_stack.node.id,
            function_name=edge_stack.cache_key_function_name,
            role=edge_stack.cache_key_function_role,
            description=f"inference-cache {settings.name}: canonical cache key and edge lookup for POST inference",
            runtime=lambda_.Runtime.PYTHON_3_13,
            handler=EDGE_HANDLER,
            code=lambda_.Code.from_asset(lambda_bundle("edge", settings)),
            memory_size=256,
            timeout=cdk.Duration.seconds(5),
            # Replicated versions cannot be deleted until CloudFront lets go of them,
            # hours later. Retaining them keeps updates and rollbacks from failing.
            current_version_options=lambda_.VersionOptions(removal_policy=cdk.RemovalPolicy.RETAIN),
        )

        # The results bucket is referenced by name so that CDK does not try to grant
        # in the bucket's own stack (that would be a cycle); the grant is below.
        results_ref = s3.Bucket.from_bucket_attributes(
            self, "ResultsBucketRef", bucket_name=results_bucket.bucket_name, region=settings.home_region
        )
        cdk.Annotations.of(self).acknowledge_warning(
            "@aws-cdk/aws-cloudfront-origins:updateImportedBucketPolicyOac",
            "the results bucket policy is written in this stack (ResultsBucketPolicy)",
        )
        results_origin = origins.S3BucketOrigin.with_origin_access_control(
            results_ref,
            origin_access_levels=[cloudfront.AccessLevel.READ],
            origin_shield_enabled=settings.origin_shield,
            origin_shield_region=settings.home_region if settings.origin_shield else None,
        )
        adapter_origin = origins.FunctionUrlOrigin.with_origin_access_control(
            origin_url,
            # The outermost of the TimeoutBudget: above the adapter's own timeout.
            read_timeout=cdk.Duration.seconds(settings.endpoint.timeouts.origin_read_seconds),
            keepalive_timeout=cdk.Duration.seconds(60),
        )

        self.results_cache_policy = cloudfront.CachePolicy(
            self,
            "ResultsCachePolicy",
            comment="Stored inference results: keyed on the path (the cache key) only",
            header_behavior=cloudfront.CacheHeaderBehavior.none(),
            query_string_behavior=cloudfront.CacheQueryStringBehavior.none(),
            cookie_behavior=cloudfront.CacheCookieBehavior.none(),
            enable_accept_encoding_gzip=False,
            enable_accept_encoding_brotli=False,
            min_ttl=cdk.Duration.seconds(0),
            default_ttl=cdk.Duration.seconds(settings.cache.default_ttl_seconds),
            max_ttl=cdk.Duration.seconds(settings.cache.max_ttl_seconds),
        )
        # Callers with a platform API key only: checked at the viewer request, before the
        # edge function or the origin runs (docs/api-keys.md).
        # The stage's key store: API keys by hash, and the stage secret (docs/security.md).
        self.api_key_store = cloudfront.KeyValueStore(
            self,
            "ApiKeyStore",
            key_value_store_name=API_KEY_STORE_NAME.format(stage=settings.name),
            comment=f"inference-cache {settings.name}: API keys by SHA-256, and the stage secret (bin/api-keys)",
        )
        key_check = self._api_key_check(settings) if settings.require_api_keys else []
        inference_behavior = cloudfront.BehaviorOptions(
            origin=adapter_origin,
            allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
            cached_methods=cloudfront.CachedMethods.CACHE_GET_HEAD,
            cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
            # Host must stay the function URL's own for the OAC signature to verify.
            origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            # A redirect would drop a POST body; plain HTTP is refused instead.
            viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
            # Streamed answers go out event by event: nothing is held back to compress them.
            compress=False,
            function_associations=key_check,
            edge_lambdas=[
                cloudfront.EdgeLambda(
                    function_version=self.cache_key_function.current_version,
                    event_type=cloudfront.LambdaEdgeEventType.ORIGIN_REQUEST,
                    include_body=True,
                ),
                # The same function turns Lambda's and OAC's own errors (a throttled
                # reserved concurrency: 429) into the OpenAI error shape.
                cloudfront.EdgeLambda(
                    function_version=self.cache_key_function.current_version,
                    event_type=cloudfront.LambdaEdgeEventType.ORIGIN_RESPONSE,
                ),
            ],
        )
        results_behavior = cloudfront.BehaviorOptions(
            origin=results_origin,
            allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
            cached_methods=cloudfront.CachedMethods.CACHE_GET_HEAD,
            cache_policy=self.results_cache_policy,
            viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
            compress=False,
            # Only the stage's own edge function reads stored answers: its credential is
            # checked before CloudFront's cache or S3 is consulted.
            function_associations=[self._cache_read_check(settings)],
        )

        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment=f"inference-cache {settings.name}",
            domain_names=[settings.domain.name],
            certificate=acm.Certificate.from_certificate_arn(self, "Certificate", settings.domain.certificate_arn),
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            price_class=cloudfront.PriceClass.PRICE_CLASS_ALL,
            # Anything that is not an inference route (GET /v1/models goes through /v1/*)
            # reaches the adapter read-only and uncached.
            default_behavior=cloudfront.BehaviorOptions(
                origin=adapter_origin,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD_OPTIONS,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                # The origin adapter is a Lambda function: no anonymous invocations either.
                function_associations=key_check,
            ),
            additional_behaviors={
                **{pattern: inference_behavior for pattern in INFERENCE_PATH_PATTERNS},
                f"/{RESULTS_PREFIX}*": results_behavior,
            },
            error_responses=[
                cloudfront.ErrorResponse(http_status=code, ttl=cdk.Duration.seconds(0)) for code in ERROR_CODES_NOT_CACHED
            ],
            enable_logging=True,
            log_bucket=log_bucket,
            log_file_prefix=f"cloudfront/{settings.name}/",
            web_acl_id=edge_stack.web_acl.attr_arn if edge_stack.web_acl else None,
        )

        # Cache hit rate, origin latency and error-rate-by-status metrics.
        cloudfront.CfnMonitoringSubscription(
            self,
            "AdditionalMetrics",
            distribution_id=self.distribution.distribution_id,
            monitoring_subscription=cloudfront.CfnMonitoringSubscription.MonitoringSubscriptionProperty(
                realtime_metrics_subscription_config=cloudfront.CfnMonitoringSubscription.RealtimeMetricsSubscriptionConfigProperty(
                    realtime_metrics_subscription_status="Enabled"
                )
            ),
        )
        self._results_bucket_policy(results_bucket)

    def _cache_read_check(self, settings: StageSettings) -> cloudfront.FunctionAssociation:
        """The CloudFront Function on /_cache/*: 403 for everyone but the edge function."""
        self.cache_read_check = cloudfront.Function(
            self,
            "CacheReadCheck",
            function_name=settings.cache_read_check_name,
            comment="403 unless the edge function's credential (derived from the stage secret)",
            code=cloudfront.FunctionCode.from_file(file_path=str(CACHE_READ_CHECK_FILE)),
            runtime=cloudfront.FunctionRuntime.JS_2_0,
            key_value_store=self.api_key_store,
            auto_publish=True,
        )
        return cloudfront.FunctionAssociation(function=self.cache_read_check, event_type=cloudfront.FunctionEventType.VIEWER_REQUEST)

    def _api_key_check(self, settings: StageSettings) -> list[cloudfront.FunctionAssociation]:
        """The CloudFront Function that checks keys in the stage's key store and hands the
        edge function the stage secret."""
        self.api_key_check = cloudfront.Function(
            self,
            "ApiKeyCheck",
            function_name=settings.api_key_check_name,
            comment="401 without a valid platform API key; sets the verified tenant header",
            code=cloudfront.FunctionCode.from_file(file_path=str(API_KEY_CHECK_FILE)),
            runtime=cloudfront.FunctionRuntime.JS_2_0,
            key_value_store=self.api_key_store,
            auto_publish=True,
        )
        return [
            cloudfront.FunctionAssociation(
                function=self.api_key_check, event_type=cloudfront.FunctionEventType.VIEWER_REQUEST
            )
        ]

    def _results_bucket_policy(self, bucket: s3.IBucket) -> None:
        policy = iam.PolicyDocument(
            statements=[
                iam.PolicyStatement(
                    sid="DenyInsecureTransport",
                    effect=iam.Effect.DENY,
                    principals=[iam.AnyPrincipal()],
                    actions=["s3:*"],
                    resources=[bucket.bucket_arn, bucket.arn_for_objects("*")],
                    conditions={"Bool": {"aws:SecureTransport": "false"}},
                ),
                iam.PolicyStatement(
                    sid="AllowThisDistributionToReadResults",
                    principals=[iam.ServicePrincipal("cloudfront.amazonaws.com")],
                    actions=["s3:GetObject"],
                    resources=[bucket.arn_for_objects(f"{RESULTS_PREFIX}*")],
                    conditions={"StringEquals": {"AWS:SourceArn": self.distribution.distribution_arn}},
                ),
            ]
        )
        s3.CfnBucketPolicy(self, "ResultsBucketPolicy", bucket=bucket.bucket_name, policy_document=policy)
