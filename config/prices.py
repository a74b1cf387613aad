"""Prices and speeds that `bin/cache-report` turns requests into dollars and GPU time
with: dated facts, each with its source, in one place. Not policy and not settings:
change them when AWS changes its prices (with the date and the page), and override any
of them per report with the command's flags (`bin/cache-report --help`).

Every price is on-demand, in US dollars, for the US regions the stages run in
(us-east-1, us-east-2, us-west-2 charge the same for these), without free tiers
(a free tier is a one-off per account, not what traffic costs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    value: float
    unit: str
    as_of: str  # when the source said so (YYYY-MM)
    source: str


# -- what a hit saves: the GPU instance ------------------------------------------------------
# SageMaker real-time inference, on-demand, per instance-hour (Linux). Source: the
# SageMaker pricing page, "Real-Time Inference" tab (aws.amazon.com/sagemaker/pricing).
SAGEMAKER_INSTANCE_PER_HOUR: dict[str, Fact] = {
    "ml.g5.2xlarge": Fact(1.515, "USD/instance-hour", "2026-03", "aws.amazon.com/sagemaker/pricing, Real-Time Inference"),
    # ml.g6e is priced as EC2 g6e.2xlarge on demand (2.24208 USD/h) plus SageMaker's ml.
    # premium of about 25 %: check the page before quoting a report's dollars for g6e.
    "ml.g6e.2xlarge": Fact(2.803, "USD/instance-hour", "2026-03", "aws.amazon.com/sagemaker/pricing, Real-Time Inference "
                           "(EC2 g6e.2xlarge 2.24208 USD/h x 1.25)"),
}

# How fast one request is generated on one GPU of the instance (tokens per second of
# one stream; the instance serves `EndpointSettings.target_concurrency` such streams at
# once under autoscaling). Decoding an 8B model is bound by memory bandwidth: a measured
# vLLM run of Llama-3.1-8B-Instruct (BF16) on an A100 40GB decodes one stream at about
# 75 tokens/s, 77 % of its bandwidth / model-bytes ceiling (johnmusgrave.com, "vLLM
# throughput-latency sweep on NVIDIA A100", 2026). The same 77 % of each GPU's ceiling:
#   A10G (g5): 600 GB/s / 16.1 GB (BF16 weights) x 0.77 = 29 tokens/s
#   L40S (g6e): 864 GB/s / 8.0 GB (FP8 weights, the staging and prod quantization) x 0.77 = 83 tokens/s
# Prefill (reading the prompt) is bound by compute: 2 x 8e9 FLOP per token at 40 % of the
# GPU's dense tensor throughput (A10G 125 TFLOPS BF16; L40S 362 TFLOPS FP8; NVIDIA's data
# sheets): 3,100 and 9,000 tokens/s.
DECODE_TOKENS_PER_SECOND: dict[str, Fact] = {
    "ml.g5.2xlarge": Fact(29, "tokens/s per stream", "2026-03", "A10G 600 GB/s / 16.1 GB x 0.77 (see above)"),
    "ml.g6e.2xlarge": Fact(83, "tokens/s per stream", "2026-03", "L40S 864 GB/s / 8.0 GB x 0.77 (see above)"),
}
PREFILL_TOKENS_PER_SECOND: dict[str, Fact] = {
    "ml.g5.2xlarge": Fact(3_100, "tokens/s", "2026-03", "A10G 125 TFLOPS x 0.4 / 16 GFLOP per token"),
    "ml.g6e.2xlarge": Fact(9_000, "tokens/s", "2026-03", "L40S 362 TFLOPS x 0.4 / 16 GFLOP per token"),
}
# Tokens from text: about 4 characters of English per token (OpenAI's tokenizer guide,
# help.openai.com "What are tokens and how to count them?"). A request log holds no
# answers, so the answer's length is stated: at most the request's max_tokens.
CHARS_PER_TOKEN = Fact(4.0, "characters/token", "2026-03", "help.openai.com, What are tokens and how to count them?")
OUTPUT_TOKENS_PER_ANSWER = Fact(
    250, "tokens", "2026-03", "stated: a short chat answer; override with --output-tokens or measure (GpuSecondsOnMiss)"
)

# -- what the cache adds: requests at the edge ----------------------------------------------
# CloudFront HTTPS requests, United States, Mexico and Canada: 0.0100 USD per 10,000
# (aws.amazon.com/cloudfront/pricing, "HTTP/HTTPS requests"). Every inference POST is
# one, and every lookup the edge function makes (GET /_cache/<key>) is another.
CLOUDFRONT_HTTPS_REQUEST = Fact(0.0100 / 10_000, "USD/request", "2026-06", "aws.amazon.com/cloudfront/pricing")
# Lambda@Edge: 0.60 USD per 1M requests and 0.00005001 USD per GB-second, billed per
# 1 ms (aws.amazon.com/lambda/pricing, "Lambda@Edge pricing"; billing granularity:
# What's New, 2021-03-31). The function has 256 MB (stacks/cdn_stack.py).
LAMBDA_EDGE_REQUEST = Fact(0.60 / 1_000_000, "USD/request", "2026-06", "aws.amazon.com/lambda/pricing, Lambda@Edge")
LAMBDA_EDGE_GB_SECOND = Fact(0.00005001, "USD/GB-second", "2026-06", "aws.amazon.com/lambda/pricing, Lambda@Edge")
LAMBDA_EDGE_MEMORY_GB = 0.25
# Billed duration of one origin-request invocation: the decision and, for cacheable
# requests, one lookup over a kept-alive connection (docs/decisions.md, "Edge lookup").
LAMBDA_EDGE_MS_PER_REQUEST = Fact(25, "ms", "2026-03", "stated: decision ~1 ms + lookup; bench/bench_edge_hit_path.py")
# S3 Standard requests (aws.amazon.com/s3/pricing, "Requests & data retrievals"):
# PUT 0.005 USD per 1,000 (a stored answer, and the lease of each cacheable miss);
# GET 0.0004 USD per 1,000 (a lookup CloudFront's cache does not answer).
S3_PUT_REQUEST = Fact(0.005 / 1_000, "USD/request", "2026-06", "aws.amazon.com/s3/pricing, Requests & data retrievals")
S3_GET_REQUEST = Fact(0.0004 / 1_000, "USD/request", "2026-06", "aws.amazon.com/s3/pricing, Requests & data retrievals")
# CloudWatch Logs ingestion, standard class: 0.50 USD per GB (aws.amazon.com/cloudwatch/pricing,
# "Logs"). Each request writes the edge function's log line and, on a miss, the origin
# adapter's log line and EMF record.
CLOUDWATCH_LOGS_PER_GB = Fact(0.50, "USD/GB", "2026-06", "aws.amazon.com/cloudwatch/pricing, Logs")
LOG_BYTES_PER_EDGE_REQUEST = Fact(400, "bytes", "2026-03", "the edge function's JSON log line with Lambda's START/END/REPORT")
LOG_BYTES_PER_ORIGIN_REQUEST = Fact(1_500, "bytes", "2026-03", "the origin adapter's log line and EMF record")

DAYS_PER_MONTH = 30.4
