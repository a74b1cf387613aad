"""The way into the model workspace: what a host in the stage's VPC needs to mount FSx for
Lustre and to be reached without a route out of the isolated subnets.

- Session Manager's interface endpoints (ssm, ssmmessages, ec2messages) in the file
  system's subnet only: hosts start there (Lustre is single-AZ), and an endpoint is paid
  per AZ-hour.
- A launch template: Amazon Linux 2023 resolved at launch, IMDSv2 only, an encrypted root
  volume, an instance profile with Session Manager's managed policy and access to the
  model bucket's models/ prefix (to publish), the Lustre client group, and a boot script
  (stacks/workspace_host_scripts.py) that mounts the workspace, unpacks the publishing
  tools and shuts the host down when idle. Shutdown terminates it.
- Outputs bin/workspace-host reads: the launch template and the subnet.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from config.aws_facts import SESSION_MANAGER_ENDPOINTS
from config.settings import StageSettings
from stacks.workspace_host_scripts import (
    HOST_IMAGE_PARAMETER,
    HOST_TAG,
    LAUNCH_TEMPLATE_OUTPUT,
    SUBNET_OUTPUT,
    TOOLS_KEY,
    boot_script,
)

MODELS_PREFIX = "models/"
ROOT_VOLUME_GIB = 50


class WorkspaceHost(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        vpc: ec2.IVpc,
        subnet: ec2.ISubnet,
        workspace: fsx.CfnFileSystem,
        workspace_clients: ec2.ISecurityGroup,
        model_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)

        self.host_security_group = ec2.SecurityGroup(
            self, "HostSecurityGroup", vpc=vpc, description="Model workspace hosts", allow_all_outbound=False
        )
        # HTTPS out: the isolated subnet's only routes are the S3 gateway endpoint (model
        # bucket, package repositories) and the interface endpoints below.
        self.host_security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "S3 (gateway endpoint) and Session Manager endpoints"
        )
        endpoint_security_group = ec2.SecurityGroup(
            self, "EndpointSecurityGroup", vpc=vpc, description="Session Manager endpoints for workspace hosts",
            allow_all_outbound=False,
        )
        endpoint_security_group.add_ingress_rule(self.host_security_group, ec2.Port.tcp(443), "workspace hosts")
        self.endpoints = [
            ec2.InterfaceVpcEndpoint(
                self,
                f"{service.capitalize()}Endpoint",
                vpc=vpc,
                service=ec2.InterfaceVpcEndpointAwsService(service),
                subnets=ec2.SubnetSelection(subnets=[subnet]),
                security_groups=[endpoint_security_group],
                open=False,
                private_dns_enabled=True,
            )
            for service in SESSION_MANAGER_ENDPOINTS
        ]

        self.role = iam.Role(
            self,
            "HostRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Model workspace host: Session Manager, this stage's publishing tools and models/ prefix",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[model_bucket.arn_for_objects(TOOLS_KEY)])
        )
        # bin/model-publish from the host: list, read (skip and resume), write and copy
        # under models/ only; never delete (old versions stay published).
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[model_bucket.arn_for_objects(f"{MODELS_PREFIX}*")],
            )
        )
        # Unconditioned: bin/model-publish starts with HeadBucket, which S3 authorizes as
        # s3:ListBucket with no prefix (a prefix condition would refuse it).
        self.role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[model_bucket.bucket_arn]))

        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.resolve_ssm_parameter_at_launch(HOST_IMAGE_PARAMETER),
            instance_type=ec2.InstanceType(settings.workspace.host_instance_type),
            role=self.role,
            security_group=self.host_security_group,
            require_imdsv2=True,
            # What a host prepared is on the workspace: stopping would only keep paying for a disk.
            instance_initiated_shutdown_behavior=ec2.InstanceInitiatedShutdownBehavior.TERMINATE,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        ROOT_VOLUME_GIB, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3, delete_on_termination=True
                    ),
                )
            ],
            user_data=ec2.UserData.custom(
                boot_script(
                    dns_name=workspace.attr_dns_name,
                    mount_name=workspace.attr_lustre_mount_name,
                    bucket=settings.model_bucket_name,  # named: readable in the script
                    region=stack.region,
                    idle_minutes=settings.workspace.host_idle_minutes,
                )
            ),
        )
        self.launch_template.add_security_group(workspace_clients)
        cdk.Tags.of(self.launch_template).add(HOST_TAG, settings.name)

        cdk.CfnOutput(stack, LAUNCH_TEMPLATE_OUTPUT, value=self.launch_template.launch_template_id or "")
        cdk.CfnOutput(stack, SUBNET_OUTPUT, value=subnet.subnet_id)
