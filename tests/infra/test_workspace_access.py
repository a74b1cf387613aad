"""The way into the model workspace (issue 23): in every stage that keeps it, Session
Manager's endpoints in the file system's subnet, and a launch template whose hosts mount
the workspace, carry the publishing tools and terminate themselves when idle."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from config.aws_facts import SESSION_MANAGER_ENDPOINTS
from config.stages import STAGES
from stacks.workspace_host_scripts import (
    HOST_IMAGE_PARAMETER,
    HOST_TAG,
    LAUNCH_TEMPLATE_OUTPUT,
    MOUNT_POINT,
    SUBNET_OUTPUT,
    TOOLS_KEY,
)
from tests.conftest import WORKSPACE_STAGES


def _template(synthesized, stage) -> dict:
    return synthesized[stage].templates["ModelStorage"]


def _of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == resource_type}


def _only(template: dict, resource_type: str) -> tuple[str, dict]:
    ((logical_id, resource),) = _of_type(template, resource_type).items()
    return logical_id, resource["Properties"]


def _user_data(template: dict) -> str:
    """The boot script with each CloudFormation reference written as <LogicalId.Attribute>."""
    _, launch_template = _only(template, "AWS::EC2::LaunchTemplate")
    parts = launch_template["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "<{}.{}>".format(*p["Fn::GetAtt"]) if "Fn::GetAtt" in p
                   else f"<{json.dumps(p)}>" for p in parts)


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_session_manager_endpoints_sit_in_the_file_systems_subnet_and_take_only_the_hosts(synthesized, stage):
    template = _template(synthesized, stage)
    _, fs = _only(template, "AWS::FSx::FileSystem")
    endpoints = [r["Properties"] for r in _of_type(template, "AWS::EC2::VPCEndpoint").values()]
    region = STAGES[stage].home_region
    assert sorted(e["ServiceName"] for e in endpoints) == sorted(f"com.amazonaws.{region}.{s}" for s in SESSION_MANAGER_ENDPOINTS)
    for endpoint in endpoints:
        assert endpoint["VpcEndpointType"] == "Interface" and endpoint["PrivateDnsEnabled"] is True
        assert endpoint["SubnetIds"] == fs["SubnetIds"]  # one AZ, the file system's: paid per AZ-hour
        (group,) = endpoint["SecurityGroupIds"]
        assert group["Fn::GetAtt"][0].startswith("WorkspaceHostEndpointSecurityGroup")
    (rule,) = [
        r["Properties"] for r in _of_type(template, "AWS::EC2::SecurityGroupIngress").values()
        if "WorkspaceHostEndpointSecurityGroup" in json.dumps(r["Properties"]["GroupId"])
    ]
    assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (443, 443, "tcp")
    assert rule["SourceSecurityGroupId"]["Fn::GetAtt"][0].startswith("WorkspaceHostHostSecurityGroup")


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_hosts_launch_current_amazon_linux_imdsv2_encrypted_and_terminate_on_shutdown(synthesized, stage):
    workspace = STAGES[stage].workspace
    template = _template(synthesized, stage)
    _, launch_template = _only(template, "AWS::EC2::LaunchTemplate")
    data = launch_template["LaunchTemplateData"]
    assert data["ImageId"] == f"resolve:ssm:{HOST_IMAGE_PARAMETER}"
    assert data["InstanceType"] == workspace.host_instance_type
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    (volume,) = data["BlockDeviceMappings"]
    assert volume["Ebs"]["Encrypted"] is True and volume["Ebs"]["DeleteOnTermination"] is True
    groups = [g["Fn::GetAtt"][0] for g in data["SecurityGroupIds"]]
    assert [g.rstrip("0123456789ABCDEF") for g in groups] == ["WorkspaceHostHostSecurityGroup", "WorkspaceClients"]
    instance_tags = next(t["Tags"] for t in data["TagSpecifications"] if t["ResourceType"] == "instance")
    assert {"Key": HOST_TAG, "Value": stage} in instance_tags


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_the_boot_script_mounts_this_workspace_stages_the_tools_and_arms_the_idle_check(synthesized, stage):
    workspace = STAGES[stage].workspace
    template = _template(synthesized, stage)
    fs_id, _ = _only(template, "AWS::FSx::FileSystem")
    script = _user_data(template)
    assert script.startswith("#!/bin/bash\n")
    assert f"<{fs_id}.DNSName>@tcp:/<{fs_id}.LustreMountName> {MOUNT_POINT} lustre" in script
    assert "dnf install -y lustre-client python3.11 psmisc" in script
    assert f's3://{STAGES[stage].model_bucket_name}/{TOOLS_KEY}' in script
    assert f"ExecStart=/usr/local/sbin/workspace-idle-check {workspace.host_idle_minutes}" in script
    # The idle check is armed before anything that could fail (package install, mount).
    assert script.index("systemctl enable --now workspace-idle.timer") < script.index("dnf install")


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_the_host_role_is_session_manager_plus_the_tools_and_models_prefix(synthesized, stage):
    template = Template.from_json(_template(synthesized, stage))
    roles = template.find_resources("AWS::IAM::Role")
    (role_id,) = [k for k in roles if k.startswith("WorkspaceHostHostRole")]
    managed = json.dumps(roles[role_id]["Properties"]["ManagedPolicyArns"])
    assert managed.count("policy/") == 1 and "AmazonSSMManagedInstanceCore" in managed
    (policy,) = [p for k, p in template.find_resources("AWS::IAM::Policy").items() if k.startswith("WorkspaceHostHostRole")]
    statements = {json.dumps(s["Action"]): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(statements) == {
        '"s3:GetObject"', '["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]', '"s3:ListBucket"'
    }
    assert f"/{TOOLS_KEY}" in json.dumps(statements['"s3:GetObject"']["Resource"])
    assert "/models/*" in json.dumps(statements['["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]']["Resource"])
    # HeadBucket (model-publish's first call) is authorized as an unconditioned ListBucket.
    assert "Condition" not in statements['"s3:ListBucket"']
    assert "Delete" not in json.dumps(policy)


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_the_stack_tells_bin_workspace_host_its_launch_template_and_subnet(synthesized, stage):
    template = _template(synthesized, stage)
    lt_id, _ = _only(template, "AWS::EC2::LaunchTemplate")
    _, fs = _only(template, "AWS::FSx::FileSystem")
    outputs = template["Outputs"]
    assert outputs[LAUNCH_TEMPLATE_OUTPUT]["Value"] == {"Ref": lt_id}
    assert [outputs[SUBNET_OUTPUT]["Value"]] == fs["SubnetIds"]
