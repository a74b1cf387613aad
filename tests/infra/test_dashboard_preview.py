"""cli/dashboard_preview.py (`make dashboard`) renders each stage's synthesized dashboard as static
HTML: one positioned element per widget, at the widget's grid cell, with
CloudFormation tokens turned into readable placeholders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cli import dashboard_preview as preview
from tests.conftest import ROOT, STAGE_NAMES


class _Widgets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.widgets: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-x" in attrs:
            self.widgets.append(attrs)


def _cdk_out(synthesized) -> Path:
    # <outdir>/assembly-<stage>/<stack>.template.json
    any_stage = next(iter(synthesized.values()))
    return next(iter(any_stage.template_files.values())).parent.parent


@pytest.fixture(scope="module")
def rendered(synthesized, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dashboards")
    result = subprocess.run(
        [sys.executable, "-m", "cli.dashboard_preview", "--cdk-out", str(_cdk_out(synthesized)), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


def _body(synthesized, stage) -> dict:
    template = synthesized[stage].templates["Monitoring"]
    (board,) = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    context = {"AWS::Region": synthesized[stage].stage.settings.home_region}
    return json.loads(preview.resolve(board["DashboardBody"], context, template["Resources"]))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_one_html_file_per_stage_with_every_widget_at_its_grid_cell(synthesized, rendered, stage):
    html_text = (rendered / f"{stage}.html").read_text()
    parser = _Widgets()
    parser.feed(html_text)
    widgets = _body(synthesized, stage)["widgets"]
    assert len(parser.widgets) == len(widgets) >= 15
    for element, widget in zip(parser.widgets, widgets, strict=True):
        x, y, w, h = widget["x"], widget["y"], widget["width"], widget["height"]
        assert (element["data-x"], element["data-y"], element["data-width"], element["data-height"]) == tuple(
            str(v) for v in (x, y, w, h)
        )
        assert element["data-type"] == widget["type"]
        assert f"grid-column: {x + 1} / span {w}; grid-row: {y + 1} / span {h};" == element["style"]
    assert "grid-template-columns: repeat(24" in html_text


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_tokens_become_readable_placeholders_and_both_regions_show(synthesized, rendered, stage):
    html_text = (rendered / f"{stage}.html").read_text()
    assert "Fn::" not in html_text and '{"Ref"' not in html_text
    placeholders = set(re.findall(r"\$\{([^}]+)\}", html_text))
    assert "Cdn.Distribution" in placeholders
    # The file system is graphed only where the stage keeps the workspace.
    assert ("ModelStorage.Workspace" in placeholders) is synthesized[stage].stage.settings.workspace.enabled
    assert f"inference-cache-{stage}-origin-adapter" in html_text  # named, so no token
    home = synthesized[stage].stage.settings.home_region
    parser = _Widgets()
    parser.feed(html_text)
    regions = {r for w in parser.widgets for r in w["data-regions"].split()}
    assert regions == {home, "us-east-1"}
    # Home-region alarms are listed by name, not as unresolved ARNs.
    assert f"inference-cache-{stage}-model-latency-p99" in html_text
    assert f"inference-cache-{stage}-availability-fast-burn" in html_text


def test_resolve_handles_the_intrinsics_cdk_writes():
    resources = {"Alarm1ABCDEF12": {"Type": "AWS::CloudWatch::Alarm", "Properties": {"AlarmName": "a-name"}}}
    context = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
    value = {
        "Fn::Join": [
            "",
            [
                "r=",
                {"Ref": "AWS::Region"},
                " d=",
                {"Fn::ImportValue": "dev-Cdn:ExportsOutputRefDistribution830FAC524DF81588"},
                " a=",
                {"Fn::GetAtt": ["Alarm1ABCDEF12", "Arn"]},
                " b=",
                {"Fn::GetAtt": ["Bucket83908E77", "Arn"]},
            ],
        ]
    }
    assert preview.resolve(value, context, resources) == (
        "r=eu-west-1 d=${Cdn.Distribution} a=arn:aws:cloudwatch:eu-west-1:123456789012:alarm:a-name b=${Bucket.Arn}"
    )


def test_markdown_tables_and_headings_render():
    out = preview.render_markdown("# Title\nsome **bold** `code`\n\n| a | b |\n| --- | --- |\n| 1 | 2 |")
    assert "<h2>Title</h2>" in out and "<strong>bold</strong>" in out and "<code>code</code>" in out
    assert "<th>a</th><th>b</th>" in out and "<td>1</td><td>2</td>" in out


def test_missing_assembly_is_reported(tmp_path):
    with pytest.raises(SystemExit):
        preview.main(["--cdk-out", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
