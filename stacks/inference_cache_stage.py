"""One stage (dev, staging, prod) of the inference edge cache: the same stacks for
every stage, their differences carried by StageSettings."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from config.settings import StageSettings
from stacks.alerting_stack import AlertingStack
from stacks.cdn_stack import CdnStack
from stacks.edge_stack import EDGE_REGION, EdgeStack
from stacks.foundation_stack import FoundationStack
from stacks.inference_stack import InferenceStack
from stacks.model_endpoint import VARIANT_NAME
from stacks.model_storage_stack import ModelStorageStack
from stacks.monitoring_stack import EdgeMonitoringStack, MonitoringStack
from stacks.nag import acknowledge_findings


class InferenceCacheStage(cdk.Stage):
    def __init__(self, scope: Construct, settings: StageSettings, **kwargs) -> None:
        home = cdk.Environment(account=settings.account, region=settings.home_region)
        edge = cdk.Environment(account=settings.account, region=EDGE_REGION)
        super().__init__(scope, settings.name, env=home, **kwargs)
        self.settings = settings
        cdk.Tags.of(self).add("project", "inference-cache")
        cdk.Tags.of(self).add("stage", settings.name)

        self.foundation = FoundationStack(self, "Foundation", settings=settings, env=home)
        self.alerting = AlertingStack(self, "Alerting", settings=settings, env=home)
        self.model_storage = ModelStorageStack(
            self,
            "ModelStorage",
            settings=settings,
            vpc=self.foundation.vpc,
            subnets=self.foundation.private_subnets,
            log_bucket=self.foundation.log_bucket,
            env=home,
        )
        self.inference = InferenceStack(
            self,
            "Inference",
            settings=settings,
            vpc=self.foundation.vpc,
            subnets=self.foundation.private_subnets,
            log_bucket=self.foundation.log_bucket,
            model_bucket=self.model_storage.model_bucket,
            env=home,
        )
        self.edge = EdgeStack(self, "Edge", settings=settings, env=edge)
        self.cdn = CdnStack(
            self,
            "Cdn",
            settings=settings,
            edge_stack=self.edge,
            origin_url=self.inference.origin_url,
            results_bucket=self.inference.results_bucket,
            log_bucket=self.foundation.log_bucket,
            env=home,
        )
        # SLA alarms where their metrics live, each region with its own topics.
        self.edge_alerting = AlertingStack(self, "EdgeAlerting", settings=settings, region_label=EDGE_REGION, env=edge)
        self.edge_monitoring = EdgeMonitoringStack(
            self,
            "EdgeMonitoring",
            settings=settings,
            distribution_id=self.cdn.distribution.distribution_id,
            edge_function_name=self.edge.cache_key_function_name,
            page_topic=self.edge_alerting.page_topic,
            ticket_topic=self.edge_alerting.ticket_topic,
            env=edge,
        )
        self.monitoring = MonitoringStack(
            self,
            "Monitoring",
            settings=settings,
            distribution_id=self.cdn.distribution.distribution_id,
            endpoint_name=self.inference.endpoint_name,
            variant_name=VARIANT_NAME,
            origin_adapter_name=self.inference.origin_adapter_name,
            file_system_id=self.model_storage.workspace.ref if self.model_storage.workspace else None,
            page_topic=self.alerting.page_topic,
            ticket_topic=self.alerting.ticket_topic,
            edge_region=EDGE_REGION,
            edge_alarm_names=self.edge_monitoring.alarm_names,
            embeddings_endpoint_name=self.inference.embeddings_endpoint_name if settings.embeddings else None,
            env=home,
        )
        # The dashboard names the us-east-1 alarms by ARN; create them first.
        self.monitoring.add_stack_dependency(self.edge_monitoring)
        acknowledge_findings(
            settings,
            foundation=self.foundation,
            model_storage=self.model_storage,
            inference=self.inference,
            edge=self.edge,
            cdn=self.cdn,
        )
