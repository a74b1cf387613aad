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
# GPU families with NVMe instance storage: SageMaker rejects VolumeSizeInGB (and a
# volume KMS key) for them; the model lives on the local NVMe.
NVME_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en")
# FSx for Lustre PERSISTENT_2 throughput per TiB of storage (MB/s/TiB).
FSX_THROUGHPUT_PER_TIB = (125, 250, 500, 1000)
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
