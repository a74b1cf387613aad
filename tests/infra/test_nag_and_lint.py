"""cdk-nag (AwsSolutions) leaves no unacknowledged finding, and cfn-lint finds no error,
in any template of any stage."""

from __future__ import annotations

import pytest
from cfnlint.api import ManualArgs, lint_file

from tests.conftest import STACK_NAMES, STAGE_NAMES


def _problems(messages) -> list[str]:
    return [
        f"{m.level}: {m.id}: {m.entry.data}"
        for m in messages
        if m.level in ("error", "warning")
    ]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_no_unacknowledged_nag_findings_or_synth_warnings(synthesized, stage):
    problems = {stack: _problems(messages) for stack, messages in synthesized[stage].messages.items()}
    assert {stack: p for stack, p in problems.items() if p} == {}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_acknowledgement_names_one_finding_with_a_reason(synthesized, stage):
    acknowledged = 0
    for template in synthesized[stage].templates.values():
        for resource in template["Resources"].values():
            rules = resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
            for rule in rules:
                acknowledged += 1
                assert rule["id"].startswith("AwsSolutions-")
                assert len(rule["reason"]) >= 40, rule
                if rule["id"] == "AwsSolutions-IAM5":
                    assert len(rule.get("applies_to", [])) == 1, rule
    assert acknowledged > 0


@pytest.mark.parametrize("stack", STACK_NAMES)
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_cfn_lint_finds_no_errors(synthesized, stage, stack):
    path = synthesized[stage].template_files[stack]
    matches = lint_file(path, config=ManualArgs(regions=[synthesized[stage].stage.settings.home_region, "us-east-1"]))
    errors = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if m.rule.id.startswith("E")]
    assert errors == []
