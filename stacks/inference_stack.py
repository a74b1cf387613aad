"""Inference in the home region: the SageMaker endpoints with autoscaling (the LLM's on
GPUs, and the embeddings model's where the stage serves one), the origin adapter that
CloudFront forwards cache misses to, and the results bucket the adapter writes cacheable
answers into."""

from __future__ import annotations

from importlib.metadata import version

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
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
    EMBEDDINGS_MODEL_ENV,
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
from stacks.model_endpoint import ModelEndpoint


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
        self.origin_adapter_name = settings.origin_adapter_name

        self.embeddings_endpoint_name = settings.embeddings_endpoint_name

        self.results_bucket = self._results_bucket(log_bucket)
        self.llm = self._llm_endpoint(vpc, subnets, model_bucket)
        self.endpoint, self.scaling_target = self.llm.endpoint, self.llm.scaling_target
        self.endpoint_log_group = self.llm.log_group
        self.embeddings = self._embeddings_endpoint(vpc, subnets, model_bucket)
        self.origin_adapter, self.origin_url = self._origin_adapter(model_bucket)

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
                # expiry time says so). A released marker (an answer was stored) is kept on
                # purpose: while it is there a claim fails, so a claim that succeeds needs
                # no read of the result. Removed after a day, S3's minimum.
                s3.LifecycleRule(prefix=LEASE_PREFIX, expiration=cdk.Duration.days(1)),
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(1)),
            ],
            removal_policy=cdk.RemovalPolicy.DESTROY,
            auto_delete_objects=False,
        )

    # -- SageMaker --------------------------------------------------------------------
    def _llm_endpoint(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection, model_bucket: s3.IBucket) -> ModelEndpoint:
        """The LLM: LMI (vLLM) on GPUs."""
        model, endpoint = self.settings.model, self.settings.endpoint
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
        return ModelEndpoint(
            self,
            "",
            endpoint_name=self.endpoint_name,
            endpoint=endpoint,
            image_uri=model.image_uri,
            s3_prefix=model.s3_prefix,
            model_version=model.model_version,
            environment=environment,
            model_bucket=model_bucket,
            vpc=vpc,
            subnets=subnets,
            log_retention_days=self.settings.log_retention_days,
            what="model",
            sla=self.settings.sla,
        )

    def _embeddings_endpoint(
        self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection, model_bucket: s3.IBucket
    ) -> ModelEndpoint | None:
        """The embeddings model: Text Embeddings Inference, its router's limits from the
        stage's settings (the origin adapter sends batches of at most max_client_batch_size)."""
        embeddings = self.settings.embeddings
        if embeddings is None:
            return None
        environment = {
            # The SageMaker entrypoint serves HF_MODEL_ID: the version SageMaker placed in /opt/ml/model.
            "HF_MODEL_ID": "/opt/ml/model",
            "MAX_CLIENT_BATCH_SIZE": str(embeddings.max_client_batch_size),
            "MAX_BATCH_TOKENS": str(embeddings.max_batch_tokens),
            "MAX_CONCURRENT_REQUESTS": str(embeddings.max_concurrent_inputs),
            # A too-long input is refused (422), never cut silently; the adapter says so too.
            "AUTO_TRUNCATE": "false",
        }
        return ModelEndpoint(
            self,
            "Embeddings",
            endpoint_name=self.embeddings_endpoint_name,
            endpoint=embeddings.endpoint,
            image_uri=embeddings.image_uri,
            s3_prefix=embeddings.s3_prefix,
            model_version=embeddings.model_version,
            environment=environment,
            model_bucket=model_bucket,
            vpc=vpc,
            subnets=subnets,
            log_retention_days=self.settings.log_retention_days,
            what="embeddings model",
            sla=self.settings.sla,
        )

    # -- origin adapter ---------------------------------------------------------------
    def _origin_adapter(self, model_bucket: s3.IBucket) -> tuple[lambda_.Function, lambda_.FunctionUrl]:
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
            description="Origin adapter: invoke the stage's endpoints, write and read _cache/ results, hold _leases/, "
            "write its own logs",
        )
        role.add_to_policy(
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[log_group.log_group_arn])
        )
        # InvokeEndpoint (and, by the same action, InvokeEndpointWithResponseStream) on the
        # stage's endpoints, by name: the LLM's and the embeddings model's.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:InvokeEndpoint"],
                resources=[e.arn for e in (self.llm, self.embeddings) if e is not None],
            )
        )
        if self.embeddings is not None:
            # The embeddings model's tokenizer, to count `usage` (embeddings.py): one object.
            role.add_to_policy(
                iam.PolicyStatement(actions=["s3:GetObject"], resources=[model_bucket.arn_for_objects(self.tokenizer_key)])
            )
        # GetObject: a coalesced waiter reads the result an identical request stored.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject"],
                resources=[self.results_bucket.arn_for_objects(f"{RESULTS_PREFIX}*")],
            )
        )
        # Coalescing leases: claim and released marker (conditional PutObject), check
        # (HeadObject), release with nothing stored (conditional DeleteObject).
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
            reserved_concurrent_executions=self.settings.adapter_reserved_concurrency,
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
                **(
                    {EMBEDDINGS_MODEL_ENV: self.settings.adapter_embeddings_model(model_bucket.bucket_name).to_json()}
                    if self.embeddings
                    else {}
                ),
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

    @property
    def tokenizer_key(self) -> str:
        """The embeddings model version's tokenizer in the model bucket."""
        return f"{self.settings.embeddings.s3_prefix}tokenizer.json"
