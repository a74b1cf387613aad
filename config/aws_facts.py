"""Facts about AWS services that the settings are checked against and the stacks and
alarms build with. Not policy: change them when AWS changes, with a source."""

from __future__ import annotations

# GPUs per SageMaker GPU hosting instance type: the instance types a stage may use.
# SageMaker's GPUUtilization and GPUMemoryUtilization are summed over an instance's
# GPUs (0-400 % on a 4-GPU instance); the alarms and the dashboard divide by this count.
# Sizes not listed for a family do not exist as SageMaker hosting instances.
_SINGLE_GPU_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")
GPUS_PER_INSTANCE: dict[tuple[str, str], int] = {
    **{("g4dn", size): 1 for size in _SINGLE_GPU_SIZES},
    ("g4dn", "12xlarge"): 4,
    **{(family, size): 1 for family in ("g5", "g6", "g6e") for size in _SINGLE_GPU_SIZES},
    **{(family, "12xlarge"): 4 for family in ("g5", "g6", "g6e")},
    **{(family, "24xlarge"): 4 for family in ("g5", "g6", "g6e")},
    **{(family, "48xlarge"): 8 for family in ("g5", "g6", "g6e")},
    ("p4d", "24xlarge"): 8,
    ("p4de", "24xlarge"): 8,
    ("p5", "48xlarge"): 8,
    ("p5e", "48xlarge"): 8,
    ("p5en", "48xlarge"): 8,
}
# CPU hosting instance types an embeddings endpoint may use: x86-64 families (the Text
# Embeddings Inference CPU image is built for x86-64 only, so no Graviton), EBS-backed
# (no "d" variants: VolumeSizeInGB applies). SageMaker hosting sizes per family.
CPU_INSTANCE_TYPES: frozenset[tuple[str, str]] = frozenset(
    (family, size)
    for family in ("m5", "m6i", "m7i", "c5", "c6i", "c7i")
    for size in ("large", "xlarge", "2xlarge", "4xlarge")
)
# Memory of one GPU by instance family, MiB: the smaller of what AWS states for the
# instance type (EC2 DescribeInstanceTypes, GpuInfo.Gpus[].MemoryInfo.SizeInMiB, as
# published in aws/karpenter-provider-aws's generated instance-type reference) and what the
# driver reports to a process (nvidia-smi totals quoted in modal-labs/modal-client#2797,
# NVIDIA/TensorRT-LLM#7818, NVIDIA/nccl#1264): T4 16384 / 15360, A10G 22888 / 23028, L4
# 22888 / 23034, L40S 45776 / 46068, A100 40960, A100 80 GB 81920, H100 81920 / 81559,
# H200 144384 (no driver figure found). AWS's marketing pages say "24 GiB" for an A10G;
# a process gets less (docs/decisions.md, "The endpoint fits its GPU").

GPU_MEMORY_MIB: dict[str, int] = {
    "g4dn": 15360, "g5": 22888, "g6": 22888, "g6e": 45776, "p4d": 40960, "p4de": 81920,
    "p5": 81559, "p5e": 144384, "p5en": 144384,
}
# Bytes per weight or KV-cache element by the checkpoint's dtype, and by the serving
# container's quantization (weight-only 4-bit methods: half a byte; fp8: one).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTIZED_WEIGHT_BYTES = {"fp8": 1.0, "awq": 0.5, "gptq": 0.5, "bitsandbytes": 0.5}
# GPU families with NVMe instance storage: SageMaker rejects VolumeSizeInGB (and a
# volume KMS key) for them; the model lives on the local NVMe.
NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en")
# FSx for Lustre PERSISTENT_2 throughput per TiB of storage (MB/s/TiB).
FSX_THROUGHPUT_PER_TIB = (125, 250, 500, 1000)
# List prices, USD per GB-month of PERSISTENT_2 SSD storage by throughput tier, the same in
# us-east-1, us-east-2 and us-west-2 (the stages' home regions). Source: the Amazon FSx for
# Lustre pricing page, aws.amazon.com/fsx/lustre/pricing/, as of 2026-12-06; the 125 tier
# also matches c3x.dev's estimate (1.2 TB at 125 MB/s/TiB ~ $174/month, 2026). Check the
# page before budgeting: prices change.
FSX_PERSISTENT_2_USD_PER_GB_MONTH = {125: 0.145, 250: 0.210, 500: 0.340, 1000: 0.600}
# Interface VPC endpoints (AWS PrivateLink pricing, aws.amazon.com/privatelink/pricing/, as of
# 2026-12-06): USD 0.01 per endpoint per AZ-hour in these regions, plus 0.01 per GB processed.
INTERFACE_ENDPOINT_USD_PER_AZ_HOUR = 0.01
HOURS_PER_MONTH = 730
# What Session Manager needs in subnets without a route out (Systems Manager User Guide,
# "Use VPC endpoints ... for Systems Manager"): ssm, ssmmessages, and ec2messages.
SESSION_MANAGER_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages")
# CloudWatch Logs retention periods this project allows, by the name of
# aws_logs.RetentionDays' member.
LOG_RETENTION_DAYS = {
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    731: "TWO_YEARS",
}
# CloudWatch evaluates at most one day of an alarm's periods.
MAX_ALARM_MINUTES = 1440
# CloudFront origin response (read) timeout: 1-60 s by default quota ("Response timeout
# per origin"); up to 180 s with an approved Service Quotas increase.
CLOUDFRONT_ORIGIN_READ_TIMEOUT_DEFAULT_MAX_SECONDS = 60
CLOUDFRONT_ORIGIN_READ_TIMEOUT_QUOTA_MAX_SECONDS = 180
# InvokeEndpoint: the container must answer within 60 s (SageMaker API reference).
SAGEMAKER_INVOKE_TIMEOUT_SECONDS = 60
# The longest a Lambda function may run: 15 minutes ("Lambda quotas", function timeout;
# the API reference's CreateFunction now says 1,800 s: the stricter figure is the quotas
# page's). It bounds a streamed response through a function URL (RESPONSE_STREAM).
LAMBDA_MAX_TIMEOUT_SECONDS = 900
# Blue/green rollouts (SageMaker API reference, TrafficRoutingConfig and
# BlueGreenUpdatePolicy): a baking period (WaitIntervalInSeconds) is 0..3600 s; a
# rollout's MaximumExecutionTimeoutInSeconds is 600..28800 s; AutoRollbackConfig takes
# 1..10 alarms.
SAGEMAKER_BAKING_MAX_SECONDS = 3600
SAGEMAKER_ROLLOUT_TIMEOUT_MAX_SECONDS = 28_800
SAGEMAKER_ROLLBACK_ALARMS_MAX = 10
# Lambda keeps at least this much of a region's account concurrency unreserved;
# 1000 is the default account quota per region (Lambda Developer Guide, quotas).
LAMBDA_MIN_UNRESERVED_CONCURRENCY = 100
LAMBDA_DEFAULT_ACCOUNT_CONCURRENCY = 1000
# Regions that run Lambda@Edge replicas: the regions of CloudFront's regional edge
# caches (CloudFront Developer Guide, "Lambda@Edge: logs and CloudWatch metrics"; the
# regional edge cache locations). A replica logs to /aws/lambda/us-east-1.<name> in
# the region that ran it.
LAMBDA_EDGE_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "eu-central-1",
    "eu-west-1",
    "eu-west-2",
    "sa-east-1",
)
# AWS Lambda Web Adapter, the public layer that runs the origin adapter's web app behind
# its function URL and streams the app's answers (awslabs/aws-lambda-web-adapter README,
# "Lambda functions packaged as Zip package"): published by this account in each region,
# one layer per architecture. The version is the latest stable release's.
LAMBDA_WEB_ADAPTER_LAYER_ARN = "arn:{partition}:lambda:{region}:753240598075:layer:LambdaAdapterLayerArm64:{version}"
LAMBDA_WEB_ADAPTER_LAYER_VERSION = 25  # aws-lambda-web-adapter v0.9.1

# Hugging Face Text Embeddings Inference (TEI) on SageMaker: the Deep Learning Containers
# AWS publishes per region (sagemaker-python-sdk src/sagemaker/image_uri_config/
# huggingface-tei.json and huggingface-tei-cpu.json): repository "tei" (GPU) or "tei-cpu",
# tag "<prefix>-tei<version>-<gpu|cpu>-py310-<cuda and os>". The registry account differs
# per region.
TEI_REGISTRY_ACCOUNTS = {"us-east-1": "683313688378", "us-east-2": "257758044811", "us-west-2": "246618743249"}
TEI_REPOSITORIES = {"tei": "gpu", "tei-cpu": "cpu"}
# The `dimensions` field of TEI's embed request (Matryoshka truncation, then normalization)
# exists from TEI 1.8.0 (huggingface/text-embeddings-inference #676); older routers ignore
# the unknown field and answer full-size vectors.
TEI_DIMENSIONS_SINCE = (1, 8, 0)
# Powertools for AWS Lambda (Python): AWS publishes each release's public layer ARN as an
# SSM parameter per region, architecture and runtime (Powertools docs, "Lambda Layer":
# /aws/service/powertools/python/{architecture}/{runtime}/{version}). The Inference stack
# resolves it at deploy time; bin/preflight checks it exists first.
POWERTOOLS_LAYER_PARAMETER = "/aws/service/powertools/python/{architecture}/{runtime}/{version}"
