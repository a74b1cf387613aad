"""Model storage: the bucket the endpoint loads from, and FSx for Lustre beside it.

SageMaker real-time endpoints load model data from S3 only, so the bucket is the
source of truth. The Lustre file system is the workspace where models are prepared
(converted, quantized, sharded); its data repository association moves new, changed
and deleted files both ways between the file system and the bucket's models/ prefix.
A stage that keeps the workspace also gets the way in (stacks/model_workspace.py); a
stage that turns it off (ModelWorkspaceSettings.enabled) gets the bucket alone.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_fsx as fsx
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from config.settings import StageSettings
from stacks.common import retention
from stacks.model_workspace import WorkspaceHost

MODELS_PREFIX = "models/"
# Lustre: 988 for LNet, 1018-1023 for the servers' and clients' other connections.
LUSTRE_PORTS = (ec2.Port.tcp(988), ec2.Port.tcp_range(1018, 1023))
_SYNC_EVENTS = ["NEW", "CHANGED", "DELETED"]


class ModelStorageStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        log_bucket: s3.IBucket,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)

        self.model_bucket = s3.Bucket(
            self,
            "ModelBucket",
            # Named: bin/model-publish --stage finds it without a deployed stack.
            bucket_name=settings.model_bucket_name,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            server_access_logs_bucket=log_bucket,
            server_access_logs_prefix="model-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(noncurrent_version_expiration=cdk.Duration.days(30)),
                s3.LifecycleRule(abort_incomplete_multipart_upload_after=cdk.Duration.days(2)),
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.workspace: fsx.CfnFileSystem | None = None
        self.workspace_host: WorkspaceHost | None = None
        if settings.workspace.enabled:
            self._workspace(settings, vpc, subnets)

    def _workspace(self, settings: StageSettings, vpc: ec2.IVpc, subnets: ec2.SubnetSelection) -> None:
        # Hosts and jobs that mount the workspace join this group.
        self.workspace_clients = ec2.SecurityGroup(
            self, "WorkspaceClients", vpc=vpc, description="Lustre clients of the model workspace", allow_all_outbound=False
        )
        workspace_sg = ec2.SecurityGroup(
            self, "WorkspaceServers", vpc=vpc, description="FSx for Lustre model workspace", allow_all_outbound=False
        )
        for port in LUSTRE_PORTS:
            for peer in (workspace_sg, self.workspace_clients):
                workspace_sg.add_ingress_rule(peer, port, "Lustre traffic")
                workspace_sg.add_egress_rule(peer, port, "Lustre traffic")
            self.workspace_clients.add_egress_rule(workspace_sg, port, "Lustre traffic to the workspace")
            self.workspace_clients.add_ingress_rule(workspace_sg, port, "Lustre callbacks from the workspace")

        # One subnet: a Lustre file system lives in a single availability zone.
        subnet = vpc.select_subnets(subnet_type=subnets.subnet_type).subnets[0]
        # FSx only writes to log groups under /aws/fsx/.
        workspace_logs = logs.LogGroup(
            self,
            "WorkspaceLogs",
            log_group_name=settings.workspace_log_group_name,
            retention=retention(settings.log_retention_days),
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )
        # The L1 on purpose: the L2 opens 988-1023 wholesale; Lustre needs 988 and 1018-1023.
        self.workspace = fsx.CfnFileSystem(
            self,
            "Workspace",
            file_system_type="LUSTRE",
            file_system_type_version="2.15",
            storage_capacity=settings.workspace.capacity_gib,
            subnet_ids=[subnet.subnet_id],
            security_group_ids=[workspace_sg.security_group_id],
            lustre_configuration=fsx.CfnFileSystem.LustreConfigurationProperty(
                deployment_type="PERSISTENT_2",
                per_unit_storage_throughput=settings.workspace.throughput_per_tib,
                data_compression_type="LZ4",
                # Explicit (ModelWorkspaceSettings.backup_retention_days; docs/decisions.md).
                automatic_backup_retention_days=settings.workspace.backup_retention_days,
                log_configuration=fsx.CfnFileSystem.LogConfigurationProperty(
                    level="WARN_ERROR", destination=workspace_logs.log_group_arn
                ),
            ),
        )
        self.workspace.apply_removal_policy(cdk.RemovalPolicy.RETAIN)

        self.repository_association = fsx.CfnDataRepositoryAssociation(
            self,
            "ModelsRepository",
            file_system_id=self.workspace.ref,
            file_system_path="/" + MODELS_PREFIX.rstrip("/"),
            data_repository_path=f"s3://{self.model_bucket.bucket_name}/{MODELS_PREFIX}",
            # Metadata only; file contents load lazily on first read.
            batch_import_meta_data_on_create=True,
            s3=fsx.CfnDataRepositoryAssociation.S3Property(
                auto_import_policy=fsx.CfnDataRepositoryAssociation.AutoImportPolicyProperty(events=_SYNC_EVENTS),
                auto_export_policy=fsx.CfnDataRepositoryAssociation.AutoExportPolicyProperty(events=_SYNC_EVENTS),
            ),
        )
        # The way in: a host bin/workspace-host starts in the file system's subnet.
        self.workspace_host = WorkspaceHost(
            self,
            "WorkspaceHost",
            settings=settings,
            vpc=vpc,
            subnet=subnet,
            workspace=self.workspace,
            workspace_clients=self.workspace_clients,
            model_bucket=self.model_bucket,
        )
