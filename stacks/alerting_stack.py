"""Where alarms send their news: a paging topic and a ticket topic, encrypted.

A CloudWatch alarm can only notify a topic in its own region, so each stage has this
stack twice: `<stage>/Alerting` in the home region and `<stage>/EdgeAlerting` in
us-east-1 for the CloudFront and Lambda@Edge alarms (`region_label` tells the two
apart in the notifications' display names). The alarms are in stacks/sla_alarms.py.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from config.settings import StageSettings


class AlertingStack(cdk.Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, settings: StageSettings, region_label: str | None = None, **kwargs
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        stage_label = f"{settings.name} {region_label}" if region_label else settings.name

        # A customer managed key: CloudWatch alarms cannot publish to a topic that
        # uses the AWS managed aws/sns key.
        self.key = kms.Key(
            self,
            "AlertKey",
            description=f"inference-cache {stage_label}: encrypts alert topics",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        self.page_topic = self._topic("Page", f"inference-cache {stage_label}: page the on-call", settings)
        self.ticket_topic = self._topic("Ticket", f"inference-cache {stage_label}: open a ticket", settings)

    def _topic(self, name: str, display_name: str, settings: StageSettings) -> sns.Topic:
        topic = sns.Topic(self, f"{name}Topic", display_name=display_name, master_key=self.key, enforce_ssl=True)
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarms",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )
        if settings.sla.alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(settings.sla.alarm_email))
        return topic
