"""cdk-nag (AwsSolutions) acknowledgements. Each names one resource and one finding
(for IAM5, one wildcard), with the reason it is right here."""

from __future__ import annotations

import aws_cdk as cdk
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import IConstruct

from config.settings import StageSettings
from stacks.cdn_stack import CdnStack
from stacks.edge_stack import EdgeStack
from stacks.foundation_stack import FoundationStack
from stacks.inference_stack import InferenceStack
from stacks.model_storage_stack import ModelStorageStack


def _ack(construct: IConstruct, rule: str, reason: str, applies_to: str | None = None) -> None:
    NagSuppressions.add_resource_suppressions(
        construct,
        [NagPackSuppression(id=f"AwsSolutions-{rule}", reason=reason, applies_to=[applies_to] if applies_to else None)],
    )


def _policy(role) -> IConstruct:
    return role.node.find_child("DefaultPolicy").node.default_child


def acknowledge_findings(
    s: StageSettings,
    *,
    foundation: FoundationStack,
    model_storage: ModelStorageStack,
    inference: InferenceStack,
    edge: EdgeStack,
    cdn: CdnStack,
) -> None:

    _ack(
        cdn.cache_key_function.lambda_.node.default_child,
        "L1",
        "Lambda@Edge supports Python up to 3.13 (CloudFront Developer Guide, restrictions on edge "
        "functions); python3.14 is not yet an edge runtime.",
    )
    _ack(
        _policy(edge.cache_key_function_role),
        "IAM5",
        "Lambda@Edge replicas write /aws/lambda/us-east-1.<function> in whichever region served the "
        "request, so the region is a wildcard; account and log group are fixed.",
        f"Resource::{_arn(edge)}:logs:*:{s.account}:log-group:/aws/lambda/us-east-1."
        f"{edge.cache_key_function_name}:*",
    )
    _ack(
        foundation.log_bucket.node.default_child,
        "S1",
        "This is the access-log bucket; logging it into itself would loop.",
    )
    _ack(
        inference.results_bucket.node.default_child,
        "S10",
        "TLS-only is enforced by the results bucket policy, which the CDN stack writes "
        "(DenyInsecureTransport) because it also names the distribution.",
    )
    for endpoint in (inference.llm, inference.embeddings):
        if endpoint is None:
            continue
        model_policy = _policy(endpoint.role)
        _ack(
            model_policy,
            "IAM5",
            "Read of exactly this model version's prefix; the endpoint loads every file under it.",
            f"Resource::<{_logical_id(model_storage.model_bucket)}.Arn>/{endpoint.s3_prefix}*",
        )
        _ack(
            model_policy,
            "IAM5",
            "ecr:GetAuthorizationToken and the EC2 network-interface actions SageMaker uses to place the "
            "model in the VPC do not support resource-level permissions; cloudwatch:PutMetricData is "
            "limited to /aws/sagemaker/* namespaces by condition.",
            "Resource::*",
        )
        _ack(
            model_policy,
            "IAM5",
            "Log streams of this endpoint only; stream names are created by SageMaker.",
            f"Resource::{_arn(inference)}:logs:{s.home_region}:{s.account}:log-group:{endpoint.log_group_name}:*",
        )
    adapter_policy = _policy(inference.node.find_child("OriginAdapterRole"))
    _ack(
        adapter_policy,
        "IAM5",
        "Writes and reads under _cache/ only (a coalesced waiter reads the result an identical "
        "request stored); object names are cache keys, unknown in advance.",
        f"Resource::<{_logical_id(inference.results_bucket)}.Arn>/_cache/*",
    )
    _ack(
        adapter_policy,
        "IAM5",
        "Coalescing leases under _leases/ only (claim, check, release of a miss being generated); "
        "object names are cache keys, unknown in advance.",
        f"Resource::<{_logical_id(inference.results_bucket)}.Arn>/_leases/*",
    )
    _ack(
        adapter_policy,
        "IAM5",
        "X-Ray tracing: xray:PutTraceSegments and PutTelemetryRecords do not support resource-level permissions.",
        "Resource::*",
    )
    host = model_storage.workspace_host
    if host is not None:
        _ack(
            host.role.node.default_child,
            "IAM4",
            "AmazonSSMManagedInstanceCore is the instance profile policy Session Manager documents for "
            "managed nodes (Systems Manager User Guide, instance permissions); the workspace host needs "
            "exactly Session Manager's calls, which it lists.",
            "Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore",
        )
        _ack(
            _policy(host.role),
            "IAM5",
            "bin/model-publish on the workspace host reads, writes and copies model files under models/ "
            "(their names are the model's files, unknown in advance); no delete.",
            f"Resource::<{_logical_id(model_storage.model_bucket)}.Arn>/models/*",
        )
    distribution = cdn.distribution.node.default_child
    _ack(
        distribution,
        "CFR1",
        "A public inference API for clients worldwide; no country is excluded by design.",
    )
    if edge.web_acl is None:
        _ack(
            distribution,
            "CFR2",
            f"Stage {s.name} declares no web ACL (rate_limits is None): it serves "
            "internal test traffic; staging and prod attach one.",
        )


def _arn(stack: cdk.Stack) -> str:
    """How nag prints an ARN's head: the literal partition when the stack knows it."""
    return "arn:<AWS::Partition>" if cdk.Token.is_unresolved(stack.partition) else f"arn:{stack.partition}"


def _logical_id(bucket) -> str:
    stack = bucket.stack
    return stack.get_logical_id(bucket.node.default_child)
