"""Model storage (bucket, FSx for Lustre, repository association), the edge function
and the VPC the home-region stacks share."""

from __future__ import annotations

import pytest
from aws_cdk.assertions import Match, Template

from config.stages import STAGES
from tests.conftest import STAGE_NAMES, WORKSPACE_STAGES


def _only(template: Template, resource_type: str) -> dict:
    (resource,) = template.find_resources(resource_type).values()
    return resource["Properties"]


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_lustre_workspace_is_persistent_2_lz4_2_15_with_stage_throughput(synthesized, stage):
    workspace = STAGES[stage].workspace
    fs = _only(Template.from_json(synthesized[stage].templates["ModelStorage"]), "AWS::FSx::FileSystem")
    assert fs["FileSystemType"] == "LUSTRE"
    assert fs["FileSystemTypeVersion"] == "2.15"
    assert fs["StorageCapacity"] == workspace.capacity_gib
    lustre = fs["LustreConfiguration"]
    assert lustre["DeploymentType"] == "PERSISTENT_2"
    assert lustre["PerUnitStorageThroughput"] == workspace.throughput_per_tib
    assert lustre["DataCompressionType"] == "LZ4"
    assert lustre["LogConfiguration"]["Level"] == "WARN_ERROR"
    assert len(fs["SubnetIds"]) == 1


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_repository_association_syncs_new_changed_deleted_both_ways(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["ModelStorage"])
    association = _only(template, "AWS::FSx::DataRepositoryAssociation")
    events = ["NEW", "CHANGED", "DELETED"]
    assert association["S3"] == {"AutoImportPolicy": {"Events": events}, "AutoExportPolicy": {"Events": events}}
    assert association["FileSystemPath"] == "/models"
    assert "/models/" in str(association["DataRepositoryPath"]) and "ModelBucket" in str(association["DataRepositoryPath"])
    assert association["BatchImportMetaDataOnCreate"] is True


@pytest.mark.parametrize("stage", WORKSPACE_STAGES)
def test_lustre_security_group_opens_only_lustre_ports(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["ModelStorage"])
    groups = template.find_resources("AWS::EC2::SecurityGroup")
    by_id = {logical_id: group for logical_id, group in groups.items()}
    ports: dict[str, set] = {}
    for rule in template.find_resources("AWS::EC2::SecurityGroupIngress").values():
        (target,) = [g for g in by_id if g in str(rule["Properties"]["GroupId"])]
        ports.setdefault(target, set()).add((rule["Properties"]["FromPort"], rule["Properties"]["ToPort"]))
    # The file system and its clients speak Lustre only; the Session Manager endpoints
    # take HTTPS from the workspace hosts only.
    servers, clients, endpoints = (next(g for g in by_id if g.startswith(p)) for p in
                                   ("WorkspaceServers", "WorkspaceClients", "WorkspaceHostEndpointSecurityGroup"))
    assert ports == {servers: {(988, 988), (1018, 1023)}, clients: {(988, 988), (1018, 1023)}, endpoints: {(443, 443)}}
    for group in groups.values():
        assert "0.0.0.0/0" not in str(group["Properties"].get("SecurityGroupIngress", ""))


def test_a_stage_without_the_workspace_has_no_file_system_no_way_in_and_says_why(synthesized):
    off = [name for name in STAGE_NAMES if name not in WORKSPACE_STAGES]
    assert off == ["dev"]  # dev turns it off by default; staging and prod keep it
    for stage in off:
        assert STAGES[stage].workspace.off_reason
        template = synthesized[stage].templates["ModelStorage"]
        types = {r["Type"] for r in template["Resources"].values()}
        assert not types & {"AWS::FSx::FileSystem", "AWS::FSx::DataRepositoryAssociation", "AWS::EC2::LaunchTemplate",
                            "AWS::EC2::VPCEndpoint", "AWS::EC2::SecurityGroup", "AWS::IAM::InstanceProfile"}
        assert "AWS::S3::Bucket" in types  # the model bucket stays: the endpoint loads from it


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_model_bucket_is_versioned_private_and_tls_only(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["ModelStorage"])
    template.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "VersioningConfiguration": {"Status": "Enabled"},
            "PublicAccessBlockConfiguration": Match.object_like({"BlockPublicPolicy": True, "RestrictPublicBuckets": True}),
        },
    )
    template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                )
            }
        },
    )


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_edge_function_lives_in_us_east_1_as_retained_numbered_version_with_edge_trust(synthesized, stage):
    edge_stage = synthesized[stage]
    assert edge_stage.stage.edge.region == "us-east-1"
    assert edge_stage.stage.cdn.region == STAGES[stage].home_region
    template = Template.from_json(edge_stage.templates["Edge"])
    (function,) = [
        f["Properties"]
        for f in template.find_resources("AWS::Lambda::Function").values()
        if f["Properties"].get("FunctionName") == f"inference-cache-{stage}-cache-key"
    ]
    assert function["Runtime"] == "python3.13"
    assert "Environment" not in function and "Layers" not in function and "VpcConfig" not in function
    assert function["Timeout"] <= 30
    ((version_id, version),) = template.find_resources("AWS::Lambda::Version").items()
    assert version["DeletionPolicy"] == "Retain" and version["UpdateReplacePolicy"] == "Retain"
    (role,) = [r for name, r in template.find_resources("AWS::IAM::Role").items() if name.startswith("CacheKeyFunctionRole")]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert sorted(trust["Principal"]["Service"]) == ["edgelambda.amazonaws.com", "lambda.amazonaws.com"]
    # The version ARN is published for the CDN stack to read across regions.
    (parameter,) = template.find_resources("AWS::SSM::Parameter").values()
    assert parameter["Properties"]["Value"] == {"Ref": version_id}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_vpc_is_isolated_with_s3_endpoint_and_flow_logs(synthesized, stage):
    template = Template.from_json(synthesized[stage].templates["Foundation"])
    template.resource_count_is("AWS::EC2::NatGateway", 0)
    template.resource_count_is("AWS::EC2::InternetGateway", 0)
    template.resource_count_is("AWS::EC2::Subnet", len(STAGES[stage].availability_zones))
    template.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Gateway"})
    template.resource_count_is("AWS::EC2::FlowLog", 1)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_model_bucket_is_named_where_bin_model_publish_looks(synthesized, stage):
    from cli.model_stage import stage_target

    resources = synthesized[stage].templates["ModelStorage"]["Resources"]
    (bucket,) = [r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::S3::Bucket" and k.startswith("ModelBucket")]
    assert bucket["BucketName"] == stage_target(stage)[0] == STAGES[stage].model_bucket_name
    assert len(bucket["BucketName"]) <= 63
