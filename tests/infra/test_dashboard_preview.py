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
from cli.dashboard_series import MathError, TrafficModel, evaluate
from tests.chromium import chromium_page, drawn_charts, non_blank_fraction
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


# -- every metric widget drawn as the chart it will be --------------------------------------


def _metric_widgets(synthesized, stage) -> list[dict]:
    return [w for w in _body(synthesized, stage)["widgets"] if w["type"] == "metric"]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_metric_widget_becomes_a_chart_of_its_own_series(synthesized, rendered, stage):
    html_text = (rendered / f"{stage}.html").read_text()
    widgets = _metric_widgets(synthesized, stage)
    assert len(widgets) >= 15
    assert html_text.count("data-chart='widget-") == len(widgets)
    assert "<script src" not in html_text and "echarts" in html_text  # the library inline: opens offline
    model = TrafficModel()
    for i, widget in enumerate(widgets):
        option = preview.widget_chart(widget, model, f"w{i}")
        rows = [r for r in preview.metric_series(widget) if r.visible]
        if widget["properties"].get("view") == "singleValue":
            assert option["xAxis"]["data"] == [r.label for r in rows]
            assert all(v is not None for v in option["series"][0]["data"])
            continue
        drawn = [s for s in option["series"] if s["data"]]
        assert [s["name"] for s in drawn] == [r.label for r in rows], widget["properties"]["title"]
        for series in drawn:  # every series has points, expressions evaluated
            assert sum(v is not None for v in series["data"]) >= 60, (widget["properties"]["title"], series["name"])
        marks = sorted(m["yAxis"] for s in option["series"] for m in s.get("markLine", {}).get("data", []))
        assert marks == sorted(a["value"] for a in widget["properties"].get("annotations", {}).get("horizontal", []))


def test_charts_keep_the_widgets_statistics_periods_and_axes(synthesized):
    body = _body(synthesized, "prod")
    (burn,) = [w for w in body["widgets"] if w["properties"].get("title") == "Error-budget burn rate (x budget)"]
    at, rows = preview.widget_series(burn, TrafficModel())
    by_id = {r["id"]: r for r in rows}
    # The 1 h window's request Sum is 12 five-minute periods' worth of the 5 min one.
    ratio = sum(by_id["requests1h"]["values"]) / sum(by_id["requests5m"]["values"])
    assert 10 < ratio < 14
    (hit_ratio,) = [w for w in body["widgets"] if w["properties"].get("title") == "Requests and hit ratio"]
    option = preview.widget_chart(hit_ratio, TrafficModel(), "x")
    assert [a.get("max") for a in option["yAxis"]] == [None, 100]
    right = [s for s in option["series"] if s["yAxisIndex"] == 1]
    assert right and all(0 <= v <= 100 for s in right for v in s["data"] if v is not None)


def test_metric_math_evaluates_point_by_point():
    inputs = {"a": [1.0, None, 4.0, 0.0], "b": [2.0, 2.0, None, 0.0]}
    assert evaluate("100 * a / (a + FILL(b, 0))", inputs, {}) == [33.333333, None, 100.0, None]
    assert evaluate("IF(FILL(a, 0) >= 1, a * 2, -1)", inputs, {}) == [2.0, -1.0, 8.0, -1.0]
    assert evaluate("a / PERIOD(a) / 1000000", {"a": [3e8]}, {"a": 300}) == [1.0]
    with pytest.raises(MathError):
        evaluate("a + c", inputs, {})
    with pytest.raises(MathError):
        evaluate("SUM(METRICS())", inputs, {})


@pytest.mark.chromium
def test_the_preview_opens_in_chromium_with_every_chart_drawn(synthesized, rendered):
    widgets = _metric_widgets(synthesized, "dev")
    with chromium_page() as page:
        page.goto((rendered / "dev.html").as_uri())
        page.wait_for_function("document.body.dataset.chartsDrawn")
        drawn = drawn_charts(page)
        assert len(drawn) == len(widgets)
        for chart_id, chart in drawn.items():
            assert chart["series"] >= 1 and chart["paths"] >= 6 and chart["height"] >= 200, chart_id
            assert any(any(v is not None for v in values) for values in chart["values"]), chart_id
            shot = page.query_selector(f"#{chart_id}").screenshot()
            assert non_blank_fraction(page, shot) > 0.02, chart_id
        assert page.errors == []
