"""Small helpers shared by the stacks."""

from __future__ import annotations

from aws_cdk import aws_logs as logs

from config.aws_facts import LOG_RETENTION_DAYS


def retention(days: int) -> logs.RetentionDays:
    return getattr(logs.RetentionDays, LOG_RETENTION_DAYS[days])
