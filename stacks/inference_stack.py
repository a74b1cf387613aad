"""GPU inference in the home region: the SageMaker endpoint with autoscaling, the
origin adapter that CloudFront forwards cache misses to, and the results bucket the
adapter writes cacheable answers into."""

from __future__ import annotations

from importlib.metadata import version

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from config.aws_facts import (
    LAMBDA_WEB_ADAPTER_LAYER_ARN,
    LAMBDA_WEB_ADAPTER_LAYER_VERSION,
    POWERTOOLS_LAYER_PARAMETER,
)
from config.settings import StageSettings
from lambdas.contract import (
    ADAPTER_TIMEOUT_ENV,
    COALESCING_ENV,
    ENDPOINT_NAME_ENV,
    ENDPOINT_READ_TIMEOUT_ENV,
    HEALTH_ROUTE,
    LEASE_PREFIX,
    METRICS_NAMESPACE,
    ORIGIN_ADAPTER_SERVICE,
    RESULTS_BUCKET_ENV,
    RESULTS_PREFIX,
    STREAM_BUDGET_ENV,
    WEB_ADAPTER_PORT,
)
from stacks.bundles import ORIGIN_ADAPTER_HANDLER, lambda_bundle
from stacks.common import retention
from stacks.rollouts import RolloutGuard

VARIANT_NAME = "AllTraffic"


class InferenceStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_bucket: s3.IBucket,
        model_bucket: s3.IBucket,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        self.endpoint_name = settings.endpoint_name
        # Named, so that alarms elsewhere refer to it by name, not by a stack export.
        self.origin_adapter_name = f"inference-cache-{settings.name}-origin-adapter"

        self.results_bucket = self._results_bucket(log_bucket)
        self.endpoint = self._endpoint(vpc, subnets, model_bucket)
        self.scaling_target = self._autoscaling()
        self.origin_adapter, self.origin_url = self._origin_adapter()

    # -- results bucket -------------------------------------------------------------
    def _results_bucket(self, log_bucket: s3.IBucket) -> s3.Bucket:
        # Its policy (TLS only, CloudFront read of _cache/*) lives in the CDN stack: it
        # names the distribution, which is created after this stack.
        return s3.Bucket(
            self,
            "ResultsBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=log_bucket,
            server_access_logs_prefix="results-bucket/",
            lifecycle_rules=[
                # Nothing is served past the max TTL, so nothing needs keeping past it.
                s3.LifecycleRule(prefix=RESULTS_PREFIX, expiration=cdk.Duration.days(self.settings.cache.max_ttl_days)),
                # Coalescing leases hold a key for the adapter's timeout at most (their
                # expiry time says so); a leaked one is removed after a day, S3's minimum.
                s3.LifecycleRule(prefix=LEASE_PREFIX, expiration=cdk.Duration.days(1)),
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(1)),
            ],
            removal_policy=cdk.RemovalPolicy.DESTROY,
            auto_delete_objects=False,
        )

    # -- SageMaker --------------------------------------------------------------------
    def _endpoint(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection, model_bucket: s3.IBucket) -> sagemaker.CfnEndpoint:
        model = self.settings.model
        endpoint = self.settings.endpoint

        role = iam.Role(
            self,
            "ModelExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker model: read this model version, pull the image, write logs and metrics",
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[model_bucket.arn_for_objects(f"{model.s3_prefix}*")])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[model_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{model.s3_prefix}*"]}},
            )
        )
        image_account, _, image_path = model.image_uri.partition(".dkr.ecr.")
        image_region = image_path.split(".")[0]
        repository = image_path.split("/", 1)[1].split(":")[0]
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                resources=[f"arn:{self.partition}:ecr:{image_region}:{image_account}:repository/{repository}"],
            )
        )
        role.add_to_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[
                    f"arn:{self.partition}:logs:{self.region}:{self.account}:log-group:/aws/sagemaker/Endpoints/{self.endpoint_name}:*"
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*"]}},
            )
        )
        # What SageMaker needs to place the model's network interfaces in the VPC.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ec2:CreateNetworkInterface",
                    "ec2:CreateNetworkInterfacePermission",
                    "ec2:DeleteNetworkInterface",
                    "ec2:DeleteNetworkInterfacePermission",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeDhcpOptions",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                ],
                resources=["*"],
            )
        )

        model_sg = ec2.SecurityGroup(
            self, "ModelSecurityGroup", vpc=vpc, description="SageMaker model containers", allow_all_outbound=False
        )
        # Model download over HTTPS. The subnets are isolated: the S3 gateway endpoint
        # is the only route out, so "anywhere" here reaches S3 and nothing else.
        model_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "S3 through the gateway endpoint")

        environment = {
            # LMI reads the uncompressed checkpoint SageMaker placed in /opt/ml/model.
            "HF_MODEL_ID": "/opt/ml/model",
            "OPTION_ROLLING_BATCH": "vllm",
            "TENSOR_PARALLEL_DEGREE": str(model.tensor_parallel_degree),
            # The GPU-fit check's three figures (config.settings.gpu_fit), as the container reads them.
            "OPTION_MAX_MODEL_LEN": str(model.max_model_len),
            "OPTION_MAX_ROLLING_BATCH_SIZE": str(model.max_num_seqs),
            "OPTION_GPU_MEMORY_UTILIZATION": str(model.gpu_memory_utilization),
            "OPTION_TRUST_REMOTE_CODE": "false",
            # Load safetensors only, never a .bin/.pt copy a snapshot may also hold.
            "OPTION_LOAD_FORMAT": "safetensors",
            # LMI's own model-loading limit, kept equal to SageMaker's start-up health check
            # (LMI's docs: it must not exceed it); one setting for both (docs/decisions.md).
            "OPTION_MODEL_LOADING_TIMEOUT": str(endpoint.startup_health_check_timeout_seconds),
            "SERVING_FAIL_FAST": "true",
            **({"OPTION_QUANTIZE": model.quantization} if model.quantization else {}),
            **dict(model.extra_environment),
        }
        cfn_model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=role.role_arn,
            enable_network_isolation=True,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=model.image_uri,
                environment=environment,
                model_data_source=sagemaker.CfnModel.ModelDataSourceProperty(
                    s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                        s3_uri=f"s3://{model_bucket.bucket_name}/{model.s3_prefix}",
                        s3_data_type="S3Prefix",
                        compression_type="None",
                    )
                ),
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[model_sg.security_group_id],
                subnets=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
            ),
            tags=[cdk.CfnTag(key="model-version", value=model.model_version)],
        )
        # The model is validated against its role's permissions at creation.
        cfn_model.node.add_dependency(role.node.find_child("DefaultPolicy"))

        variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT_NAME,
            model_name=cfn_model.attr_model_name,
            instance_type=endpoint.instance_type,
            initial_instance_count=endpoint.min_instances,
            initial_variant_weight=1.0,
            container_startup_health_check_timeout_in_seconds=endpoint.startup_health_check_timeout_seconds,
            model_data_download_timeout_in_seconds=endpoint.model_data_download_timeout_seconds,
            volume_size_in_gb=endpoint.volume_size_gb,
            routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                routing_strategy="LEAST_OUTSTANDING_REQUESTS"
            ),
        )
        endpoint_config = sagemaker.CfnEndpointConfig(self, "EndpointConfig", production_variants=[variant])
        # Blue/green with automatic rollback on the new fleet's own alarms (stacks/rollouts.py).
        self.rollout_guard = RolloutGuard(
            self,
            "Rollout",
            endpoint_name=self.endpoint_name,
            variant_name=VARIANT_NAME,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            endpoint=endpoint,
            sla=self.settings.sla,
        )
        self.rollout_guard.grant_describe(role)
        # SageMaker creates this group on first start with no retention; owning it here
        # sets the stage's retention (the endpoint waits for it).
        self.endpoint_log_group = logs.LogGroup(
            self,
            "EndpointLogs",
            log_group_name=f"/aws/sagemaker/Endpoints/{self.endpoint_name}",
            retention=retention(self.settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        cfn_endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            # Without this every rollout (UpdateEndpoint) resets the variant to the new
            # config's InitialInstanceCount, dropping what autoscaling reached (8 -> 2); the
            # new (green) fleet starts at the retained count. Nothing is excluded: the one
            # other retained property, DataCaptureConfig, is "not currently supported" as an
            # exclusion (SageMaker API reference, VariantProperty) and no capture is set.
            retain_all_variant_properties=True,
            # How each update rolls out, declared here; RetainDeploymentConfig false, so the
            # template's DeploymentConfig, not one left by an earlier API call, applies.
            deployment_config=self.rollout_guard.deployment_config,
            retain_deployment_config=False,
        )
        cfn_endpoint.node.add_dependency(self.endpoint_log_group)
        return cfn_endpoint

    def _autoscaling(self) -> appscaling.ScalableTarget | None:
        endpoint = self.settings.endpoint
        if not endpoint.autoscaling:
            return None
        target = appscaling.ScalableTarget(
            self,
            "InstanceScaling",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint.attr_endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=endpoint.min_instances,
            max_capacity=endpoint.max_instances,
        )
        # High-resolution concurrency (10 s samples) scales out well before the
        # one-minute invocation metrics would notice a burst.
        target.scale_to_track_metric(
            "ConcurrencyTracking",
            target_value=endpoint.target_concurrency,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION,
            scale_out_cooldown=cdk.Duration.seconds(endpoint.scale_out_cooldown_seconds),
            scale_in_cooldown=cdk.Duration.seconds(endpoint.scale_in_cooldown_seconds),
        )
        return target

    # -- origin adapter ---------------------------------------------------------------
    def _origin_adapter(self) -> tuple[lambda_.Function, lambda_.FunctionUrl]:
        log_group = logs.LogGroup(
            self,
            "OriginAdapterLogs",
            retention=retention(self.settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        role = iam.Role(
            self,
            "OriginAdapterRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Origin adapter: invoke this endpoint, write and read _cache/ results, hold _leases/, write its own logs",
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[log_group.log_group_arn])
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:InvokeEndpoint"],
                resources=[
                    f"arn:{self.partition}:sagemaker:{self.region}:{self.account}:endpoint/{self.endpoint_name}"
                ],
            )
        )
        # GetObject: a coalesced waiter reads the result an identical request stored.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject"],
                resources=[self.results_bucket.arn_for_objects(f"{RESULTS_PREFIX}*")],
            )
        )
        # Coalescing leases: claim (conditional PutObject), check (HeadObject), release
        # (conditional DeleteObject).
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
                resources=[self.results_bucket.arn_for_objects(f"{LEASE_PREFIX}*")],
            )
        )
        # Without ListBucket, S3 answers 403 for a missing key instead of 404: a waiter
        # could not tell "not stored yet" or "lease removed" from a refusal.
        role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.results_bucket.bucket_arn]))

        # Powertools from its public layer, the version pinned in requirements.txt, found
        # through the SSM parameter AWS publishes for it (resolved at deploy, not synth).
        powertools = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "Powertools",
            ssm.StringParameter.value_for_string_parameter(
                self,
                POWERTOOLS_LAYER_PARAMETER.format(
                    architecture="arm64", runtime="python3.14", version=version("aws-lambda-powertools")
                ),
            ),
        )
        # Lambda Web Adapter runs the adapter's web app (run.sh) and streams its answers
        # through the function URL as they are written (docs/decisions.md, "Streaming misses").
        web_adapter = lambda_.LayerVersion.from_layer_version_arn(
            self,
            "WebAdapter",
            LAMBDA_WEB_ADAPTER_LAYER_ARN.format(
                partition=self.partition, region=self.region, version=LAMBDA_WEB_ADAPTER_LAYER_VERSION
            ),
        )
        function = lambda_.Function(
            self,
            "OriginAdapter",
            function_name=self.origin_adapter_name,
            description=f"inference-cache {self.settings.name}: calls the SageMaker endpoint on edge cache misses",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler=ORIGIN_ADAPTER_HANDLER,
            code=lambda_.Code.from_asset(lambda_bundle("origin_adapter", self.settings)),
            memory_size=512,
            # A stream's budget and the store after it (TimeoutBudget.lambda_seconds); a whole
            # answer keeps its own budget, model read < adapter < CloudFront's origin read timeout.
            timeout=cdk.Duration.seconds(self.settings.endpoint.timeouts.lambda_seconds),
            # The fleet at its maximum, with headroom: a burst of misses cannot take the
            # home region's pool that Lambda@Edge replicas there share.
            reserved_concurrent_executions=self.settings.endpoint.adapter_reserved_concurrency,
            role=role,
            layers=[web_adapter, powertools],
            log_group=log_group,
            tracing=lambda_.Tracing.ACTIVE,
            environment={
                ENDPOINT_NAME_ENV: self.endpoint_name,
                RESULTS_BUCKET_ENV: self.results_bucket.bucket_name,
                ENDPOINT_READ_TIMEOUT_ENV: str(self.settings.endpoint.timeouts.model_read_seconds),
                # Coalescing's lease and wait budgets are derived from these two.
                ADAPTER_TIMEOUT_ENV: str(self.settings.endpoint.timeouts.adapter_seconds),
                STREAM_BUDGET_ENV: str(self.settings.endpoint.timeouts.stream_seconds),
                COALESCING_ENV: "true",
                # Lambda Web Adapter: its bootstrap runs the handler (run.sh), waits for the
                # app's readiness route, and streams each answer (a typo here would silently
                # buffer every answer: tests pin these values).
                "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
                "AWS_LWA_INVOKE_MODE": "response_stream",
                "AWS_LWA_PORT": str(WEB_ADAPTER_PORT),
                "AWS_LWA_READINESS_CHECK_PATH": HEALTH_ROUTE,
                "POWERTOOLS_SERVICE_NAME": ORIGIN_ADAPTER_SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
        )
        # RESPONSE_STREAM: the answer reaches CloudFront as it is written (up to 200 MB)
        # instead of once it is whole (6 MB).
        url = function.add_function_url(
            auth_type=lambda_.FunctionUrlAuthType.AWS_IAM, invoke_mode=lambda_.InvokeMode.RESPONSE_STREAM
        )
        return function, url

