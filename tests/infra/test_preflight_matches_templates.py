"""bin/preflight checks what the synthesized stacks will need, no more and no less: the SSM
parameters CloudFormation resolves at deploy time, the CDK bootstrap version the stacks
require, the fixed names they create, the layers they use. Each list in cli/preflight.py
is compared with every stage's cloud assembly, both ways, so a stack that gains a named
resource or a deploy-time parameter fails here until preflight checks it too."""

from __future__ import annotations

import pytest

from cli.preflight import (
    CDK_BOOTSTRAP_MIN_VERSION,
    CDK_BOOTSTRAP_VERSION_PARAMETER,
    NamedResource,
    check_lambda_concurrency,
    deploy_time_parameters,
    named_resources,
    stack_name,
    web_adapter_layer_arn,
)
from config.stages import STAGES
from tests.conftest import STAGE_NAMES
from tests.unit.preflight_accounts import StubbedAws, answer_lambda_concurrency

# Resource types created under a literal name, and the property that names them.
NAMED_TYPES = {
    "AWS::Logs::LogGroup": ("LogGroupName", "log-group"),
    "AWS::Lambda::Function": ("FunctionName", "lambda-function"),
    "AWS::SageMaker::Endpoint": ("EndpointName", "sagemaker-endpoint"),
    "AWS::S3::Bucket": ("BucketName", "s3-bucket"),
    "AWS::SSM::Parameter": ("Name", "ssm-parameter"),
    "AWS::CloudFront::KeyValueStore": ("Name", "key-value-store"),
    "AWS::CloudFront::Function": ("Name", "cloudfront-function"),
}
# CloudFront's resources are global; their API is called in us-east-1.
GLOBAL_TYPES = ("AWS::CloudFront::KeyValueStore", "AWS::CloudFront::Function")


def _stacks(synthesized, stage):
    return synthesized[stage].stage.synth().stacks


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_preflight_checks_every_ssm_parameter_the_stacks_resolve_at_deploy(synthesized, stage):
    settings = STAGES[stage]
    in_templates = set()
    for artifact in _stacks(synthesized, stage):
        for parameter in artifact.template.get("Parameters", {}).values():
            if parameter["Type"].startswith("AWS::SSM::Parameter::Value"):
                in_templates.add((artifact.environment.region, parameter["Default"]))
    checked = {(region, name) for region, name, _ in deploy_time_parameters(settings)}
    bootstrap = {(region, CDK_BOOTSTRAP_VERSION_PARAMETER) for region in (settings.home_region, "us-east-1")}
    assert in_templates == checked | bootstrap


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_preflight_requires_the_bootstrap_version_the_stacks_require(synthesized, stage):
    stacks = _stacks(synthesized, stage)
    assert {a.bootstrap_stack_version_ssm_parameter for a in stacks} == {CDK_BOOTSTRAP_VERSION_PARAMETER}
    assert max(a.requires_bootstrap_stack_version for a in stacks) == CDK_BOOTSTRAP_MIN_VERSION


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_preflight_knows_every_fixed_name_of_the_stage_and_its_stack(synthesized, stage):
    settings = STAGES[stage]
    in_templates = set()
    for artifact in _stacks(synthesized, stage):
        stack = artifact.hierarchical_id.split("/")[-1]
        assert artifact.stack_name == stack_name(settings, stack)
        for resource in artifact.template["Resources"].values():
            if resource["Type"] not in NAMED_TYPES:
                continue
            prop, kind = NAMED_TYPES[resource["Type"]]
            name = resource.get("Properties", {}).get(prop)
            if isinstance(name, str):
                region = "us-east-1" if resource["Type"] in GLOBAL_TYPES else artifact.environment.region
                in_templates.add(NamedResource(stack, region, kind, name))
    assert in_templates == set(named_resources(settings))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_preflight_checks_the_web_adapter_layer_and_the_adapter_the_stack_deploys(synthesized, stage):
    settings = STAGES[stage]
    template = synthesized[stage].templates["Inference"]
    (adapter,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("FunctionName") == settings.origin_adapter_name
    ]
    assert web_adapter_layer_arn(settings) in adapter["Layers"]
    # What the concurrency check counts is what the stack reserves (every endpoint's fleet).
    account = StubbedAws()
    answer_lambda_concurrency(account, settings, limit=10_000, unreserved=10_000)
    (finding,) = check_lambda_concurrency(account.aws, settings)
    assert f"the origin adapter reserves {adapter['ReservedConcurrentExecutions']}," in finding.detail
