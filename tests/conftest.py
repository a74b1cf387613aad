"""Shared fixtures. The whole app (every stage) is synthesized once per test session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SynthesizedStage:
    stage: object  # InferenceCacheStage
    templates: dict[str, dict]  # stack name ("Cdn", ...) -> template
    messages: dict[str, list]  # stack name -> synthesis messages (errors, warnings, info)
    template_files: dict[str, Path]


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory) -> dict[str, SynthesizedStage]:
    import aws_cdk as cdk

    import app as cdk_app

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    outdir = tmp_path_factory.mktemp("cdk.out")
    application = cdk_app.build_app(cdk.App(outdir=str(outdir), context=context))
    application.synth()
    result = {}
    for stage in (c for c in application.node.children if isinstance(c, cdk.Stage)):
        assembly = stage.synth()
        templates, messages, files = {}, {}, {}
        for artifact in assembly.stacks:
            name = artifact.hierarchical_id.split("/")[-1]
            templates[name] = artifact.template
            messages[name] = list(artifact.messages)
            files[name] = Path(assembly.directory) / artifact.template_file
        result[stage.stage_name] = SynthesizedStage(stage, templates, messages, files)
    return result


STAGE_NAMES = tuple(STAGES)
# Stages that keep the FSx for Lustre model workspace (ModelWorkspaceSettings.enabled).
WORKSPACE_STAGES = tuple(name for name in STAGES if STAGES[name].workspace.enabled)
STACK_NAMES = (
    "Foundation",
    "Alerting",
    "ModelStorage",
    "Inference",
    "Edge",
    "Cdn",
    "EdgeAlerting",
    "EdgeMonitoring",
    "Monitoring",
)
