#!/usr/bin/env python3
"""The CDK app: every stage, or the one named with `-c stage=NAME`."""

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from config.stages import STAGES, stage
from stacks.inference_cache_stage import InferenceCacheStage


def build_app(app: cdk.App) -> cdk.App:
    only = app.node.try_get_context("stage")
    for settings in [stage(only)] if only else STAGES.values():
        # Aspects do not cross Stage boundaries, so the checks go on each stage.
        cdk.Aspects.of(InferenceCacheStage(app, settings)).add(AwsSolutionsChecks(verbose=True))
    return app


if __name__ == "__main__":
    build_app(cdk.App()).synth()
