"""One SageMaker real-time endpoint: its model's execution role and security group, the
model (one container, loading an uncompressed S3 prefix, network-isolated in the VPC),
the endpoint configuration, the log group, the endpoint, and target-tracking autoscaling.

The stage has two (the LLM's and the embeddings model's), built by the same code, so
what one endpoint gets (blue/green rollouts with rollback on its own alarms, alarms,
scaling) the other gets too. A plain
builder rather than a Construct: the LLM's resources keep the logical ids they had
before the embeddings endpoint existed (its prefix is empty), so adding the second
endpoint replaces nothing that is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker

from config.settings import EndpointSettings, SlaSettings
from stacks.common import retention
from stacks.rollouts import RolloutGuard

VARIANT_NAME = "AllTraffic"


class ModelEndpoint:
    """Builds one endpoint into `stack`; every construct id starts with `prefix`."""

    def __init__(
        self,
        stack: cdk.Stack,
        prefix: str,
        *,
        endpoint_name: str,
        endpoint: EndpointSettings,
        image_uri: str,
        s3_prefix: str,
        model_version: str,
        environment: Mapping[str, str],
        model_bucket: s3.IBucket,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_retention_days: int,
        what: str,
        sla: SlaSettings,
    ) -> None:
        self.stack, self.prefix, self.endpoint_name, self.settings = stack, prefix, endpoint_name, endpoint
        self.s3_prefix = s3_prefix
        self.role = self._role(image_uri, s3_prefix, model_bucket, what)
        security_group = ec2.SecurityGroup(
            stack, f"{prefix}ModelSecurityGroup", vpc=vpc, description=f"SageMaker {what} containers", allow_all_outbound=False
        )
        # Model download over HTTPS. The subnets are isolated: the S3 gateway endpoint
        # is the only route out, so "anywhere" here reaches S3 and nothing else.
        security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "S3 through the gateway endpoint")
        self.model = sagemaker.CfnModel(
            stack,
            f"{prefix}Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=True,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image_uri,
                environment=dict(environment),
                model_data_source=sagemaker.CfnModel.ModelDataSourceProperty(
                    s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                        s3_uri=f"s3://{model_bucket.bucket_name}/{s3_prefix}",
                        s3_data_type="S3Prefix",
                        compression_type="None",
                    )
                ),
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[security_group.security_group_id],
                subnets=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids,
            ),
            tags=[cdk.CfnTag(key="model-version", value=model_version)],
        )
        # The model is validated against its role's permissions at creation.
        self.model.node.add_dependency(self.role.node.find_child("DefaultPolicy"))
        self.endpoint = self._endpoint(log_retention_days, sla)
        self.scaling_target = self._autoscaling()

    def _role(self, image_uri: str, s3_prefix: str, model_bucket: s3.IBucket, what: str) -> iam.Role:
        stack = self.stack
        role = iam.Role(
            stack,
            f"{self.prefix}ModelExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"SageMaker {what}: read this model version, pull the image, write logs and metrics",
        )
        role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[model_bucket.arn_for_objects(f"{s3_prefix}*")]))
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[model_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{s3_prefix}*"]}},
            )
        )
        image_account, _, image_path = image_uri.partition(".dkr.ecr.")
        image_region = image_path.split(".")[0]
        repository = image_path.split("/", 1)[1].split(":")[0]
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                resources=[f"arn:{stack.partition}:ecr:{image_region}:{image_account}:repository/{repository}"],
            )
        )
        role.add_to_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[self.log_streams_arn],
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
        return role

    @property
    def log_group_name(self) -> str:
        return f"/aws/sagemaker/Endpoints/{self.endpoint_name}"

    @property
    def log_streams_arn(self) -> str:
        stack = self.stack
        return f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{self.log_group_name}:*"

    @property
    def arn(self) -> str:
        """The endpoint's ARN, by name (what InvokeEndpoint is granted on)."""
        stack = self.stack
        return f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:endpoint/{self.endpoint_name}"

    def _endpoint(self, log_retention_days: int, sla: SlaSettings) -> sagemaker.CfnEndpoint:
        settings, prefix = self.settings, self.prefix
        variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT_NAME,
            model_name=self.model.attr_model_name,
            instance_type=settings.instance_type,
            initial_instance_count=settings.min_instances,
            initial_variant_weight=1.0,
            container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_seconds,
            model_data_download_timeout_in_seconds=settings.model_data_download_timeout_seconds,
            volume_size_in_gb=settings.volume_size_gb,
            routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(routing_strategy="LEAST_OUTSTANDING_REQUESTS"),
        )
        endpoint_config = sagemaker.CfnEndpointConfig(self.stack, f"{prefix}EndpointConfig", production_variants=[variant])
        # Blue/green with automatic rollback on the new fleet's own alarms (stacks/rollouts.py).
        self.rollout_guard = RolloutGuard(
            self.stack,
            f"{prefix}Rollout",
            endpoint_name=self.endpoint_name,
            variant_name=VARIANT_NAME,
            endpoint_config_name=endpoint_config.attr_endpoint_config_name,
            endpoint=settings,
            sla=sla,
        )
        self.rollout_guard.grant_describe(self.role)
        # SageMaker creates this group on first start with no retention; owning it here
        # sets the stage's retention (the endpoint waits for it).
        self.log_group = logs.LogGroup(
            self.stack,
            f"{prefix}EndpointLogs",
            log_group_name=self.log_group_name,
            retention=retention(log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        cfn_endpoint = sagemaker.CfnEndpoint(
            self.stack,
            f"{prefix}Endpoint",
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
        cfn_endpoint.node.add_dependency(self.log_group)
        return cfn_endpoint

    def _autoscaling(self) -> appscaling.ScalableTarget | None:
        settings = self.settings
        if not settings.autoscaling:
            return None
        target = appscaling.ScalableTarget(
            self.stack,
            f"{self.prefix}InstanceScaling",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{self.endpoint.attr_endpoint_name}/variant/{VARIANT_NAME}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=settings.min_instances,
            max_capacity=settings.max_instances,
        )
        # High-resolution concurrency (10 s samples) scales out well before the
        # one-minute invocation metrics would notice a burst.
        target.scale_to_track_metric(
            "ConcurrencyTracking",
            target_value=settings.target_concurrency,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION,
            scale_out_cooldown=cdk.Duration.seconds(settings.scale_out_cooldown_seconds),
            scale_in_cooldown=cdk.Duration.seconds(settings.scale_in_cooldown_seconds),
        )
        return target
