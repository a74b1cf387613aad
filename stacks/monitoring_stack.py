"""Monitoring stacks: SLA alarms where their metrics live, and the stage's dashboard.

- `<stage>/EdgeMonitoring` (us-east-1): CloudFront and Lambda@Edge alarms, notifying
  `<stage>/EdgeAlerting`'s topics. It reads the distribution id from the home-region
  `<stage>/Cdn` stack through CDK's cross-region references (SSM, written at deploy).
- `<stage>/Monitoring` (home region): endpoint (the LLM's and the embeddings model's),
  origin adapter, capacity and workspace alarms notifying `<stage>/Alerting`'s topics, and the dashboard (which also graphs
  the us-east-1 metrics and shows the us-east-1 alarms).
"""

from __future__ import annotations

import dataclasses

import aws_cdk as cdk
from aws_cdk import aws_sns as sns
from constructs import Construct

from config.settings import StageSettings
from stacks.dashboard import SlaDashboard
from stacks.sla_alarms import EdgeSlaAlarms, HomeSlaAlarms, alarm_name
from stacks.sla_metrics import EdgeMetrics, HomeMetrics


class EdgeMonitoringStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        distribution_id: str,
        edge_function_name: str,
        page_topic: sns.ITopic,
        ticket_topic: sns.ITopic,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, cross_region_references=True, **kwargs)
        self.alarms = EdgeSlaAlarms(
            self,
            "SlaAlarms",
            settings=settings,
            distribution_id=distribution_id,
            edge_function_name=edge_function_name,
            page_topic=page_topic,
            ticket_topic=ticket_topic,
        )

    @property
    def alarm_names(self) -> list[str]:
        """Plain names (not tokens), so other regions can refer to them without exports."""
        return [alarm_name(self.alarms.settings, slug) for slug in self.alarms.alarms]


class MonitoringStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        distribution_id: str,
        endpoint_name: str,
        variant_name: str,
        origin_adapter_name: str,
        file_system_id: str | None,
        page_topic: sns.ITopic,
        ticket_topic: sns.ITopic,
        edge_region: str,
        edge_alarm_names: list[str],
        embeddings_endpoint_name: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        home = HomeMetrics(
            endpoint_name=endpoint_name,
            variant_name=variant_name,
            function_name=origin_adapter_name,
            file_system_id=file_system_id,
        )
        # The embeddings endpoint: the same metrics, another endpoint name.
        embeddings = dataclasses.replace(home, endpoint_name=embeddings_endpoint_name) if embeddings_endpoint_name else None
        self.alarms = HomeSlaAlarms(
            self,
            "SlaAlarms",
            settings=settings,
            metrics=home,
            page_topic=page_topic,
            ticket_topic=ticket_topic,
            embeddings=embeddings,
        )
        self.dashboard = SlaDashboard(
            self,
            "SlaDashboard",
            settings=settings,
            edge=EdgeMetrics(distribution_id, region=edge_region),
            home=home,
            embeddings=embeddings,
            home_alarms=list(self.alarms.alarms.values()),
            edge_alarm_names=edge_alarm_names,
            edge_region=edge_region,
        ).dashboard
