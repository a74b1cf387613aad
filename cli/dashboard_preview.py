#!/usr/bin/env python3
"""Static HTML previews of the synthesized CloudWatch dashboards, one file per stage.

    python -m cli.dashboard_preview [--cdk-out cdk.out] [--out build/dashboards]

Reads the cloud assembly that `cdk synth` (or `make synth`) wrote, finds every
AWS::CloudWatch::Dashboard in every stage's stacks, turns its DashboardBody back into
JSON (CloudFormation tokens become readable placeholders: `${Cdn.Distribution}` for an
imported value, the stack's own region and account for pseudo parameters) and lays the
widgets out the way CloudWatch does: a 24-column grid, each widget at its x/y with its
width and height. A reviewer sees what each widget graphs, from which region, with
which statistic, period, expressions and threshold lines, without an AWS account.

Each metric widget is drawn as the chart it will be (Apache ECharts, embedded: the file
opens offline): the same metrics, statistics, periods, expressions, axes and threshold
lines, with series from a synthetic traffic model (cli/dashboard_series.py), labelled
as such; the metric definitions stay beside each chart. Text widgets are their
markdown; alarm-status widgets list their alarms.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cli import charts
from cli.dashboard_series import RANGE_SECONDS, MathError, TrafficModel, evaluate, times

GRID_COLUMNS = 24
ROW_PX = 64  # one grid row: room for the chart and the metric definitions under it
SYNTHETIC = "synthetic traffic model"
_HASH_SUFFIX = re.compile(r"(?:[0-9A-F]{8})+$")
_PSEUDO = ("AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix", "AWS::StackName")


# -- reading the cloud assembly ----------------------------------------------------------


@dataclass
class Dashboard:
    stage: str
    stack: str  # display name, e.g. "dev/Monitoring"
    logical_id: str
    name: str
    region: str
    account: str
    body: dict
    widgets: list[dict] = field(default_factory=list)


def find_dashboards(cdk_out: Path) -> dict[str, list[Dashboard]]:
    """Stage name -> its dashboards, from a cloud assembly directory."""
    found: dict[str, list[Dashboard]] = {}
    for manifest_path, stage in _assemblies(cdk_out):
        manifest = json.loads(manifest_path.read_text())
        for artifact in manifest.get("artifacts", {}).values():
            if artifact.get("type") != "aws:cloudformation:stack":
                continue
            display = artifact.get("displayName", "")
            account, region = _environment(artifact.get("environment", ""))
            template_path = manifest_path.parent / artifact["properties"]["templateFile"]
            template = json.loads(template_path.read_text())
            stack_name = artifact["properties"].get("stackName") or display.replace("/", "-")
            context = {
                "AWS::Region": region,
                "AWS::AccountId": account,
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
                "AWS::StackName": stack_name,
            }
            resources = template.get("Resources", {})
            for logical_id, resource in template.get("Resources", {}).items():
                if resource.get("Type") != "AWS::CloudWatch::Dashboard":
                    continue
                props = resource.get("Properties", {})
                body = json.loads(resolve(props["DashboardBody"], context, resources))
                name = resolve(props.get("DashboardName", logical_id), context, resources)
                board = Dashboard(stage or display.split("/")[0], display, logical_id, name, region, account, body)
                board.widgets = body.get("widgets", [])
                found.setdefault(board.stage, []).append(board)
    return found


def _assemblies(cdk_out: Path):
    """(manifest path, stage name) for the root assembly and every nested one."""
    root = cdk_out / "manifest.json"
    if not root.exists():
        raise SystemExit(f"{root} not found: run `make synth` (or cdk synth) first")
    yield root, ""
    manifest = json.loads(root.read_text())
    for artifact in manifest.get("artifacts", {}).values():
        if artifact.get("type") == "cdk:cloud-assembly":
            props = artifact["properties"]
            nested = cdk_out / props["directoryName"] / "manifest.json"
            if nested.exists():
                yield nested, props.get("displayName", props["directoryName"])


def _environment(env: str) -> tuple[str, str]:
    # aws://123456789012/us-west-2
    parts = env.replace("aws://", "").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else ("${AWS::AccountId}", "${AWS::Region}")


def resolve(value, context: dict[str, str], resources: dict | None = None) -> str:
    """A CloudFormation value as a string, intrinsic functions turned into text.

    An alarm's Arn (Fn::GetAtt) becomes the ARN its name makes, so that alarm
    widgets list alarm names; other attributes become `${Resource.Attribute}`."""
    resources = resources or {}
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Fn::Join":
            separator, parts = arg
            return separator.join(resolve(part, context, resources) for part in parts)
        if fn == "Ref":
            return context.get(arg, "${" + arg + "}")
        if fn == "Fn::ImportValue":
            return "${" + _export_label(resolve(arg, context, resources)) + "}"
        if fn == "Fn::GetAtt":
            resource, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            target = resources.get(resource, {})
            name_key = {"AWS::CloudWatch::Alarm": "AlarmName", "AWS::CloudWatch::CompositeAlarm": "AlarmName"}.get(
                target.get("Type", "")
            )
            if attribute == "Arn" and name_key and isinstance(target.get("Properties", {}).get(name_key), str):
                return (
                    f"arn:{context.get('AWS::Partition', 'aws')}:cloudwatch:{context.get('AWS::Region')}:"
                    f"{context.get('AWS::AccountId')}:alarm:{target['Properties'][name_key]}"
                )
            return "${" + f"{_strip_hash(resource)}.{attribute}" + "}"
        if fn == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            for name in _PSEUDO:
                text = text.replace("${" + name + "}", context.get(name, "${" + name + "}"))
            return text
    return "${" + json.dumps(value, sort_keys=True) + "}"


def _export_label(export_name: str) -> str:
    # "staging-Cdn:ExportsOutputRefDistribution830FAC524DF81588" -> "Cdn.Distribution"
    stack, _, output = export_name.partition(":")
    stack = stack.split("-", 1)[-1]
    for prefix in ("ExportsOutputRef", "ExportsOutputFnGetAtt"):
        if output.startswith(prefix):
            output = output[len(prefix) :]
    return f"{stack}.{_strip_hash(output)}" if output else stack


def _strip_hash(logical_id: str) -> str:
    stripped = _HASH_SUFFIX.sub("", logical_id)
    return stripped or logical_id


# -- describing widgets -------------------------------------------------------------------


@dataclass
class Series:
    id: str | None
    label: str
    text: str  # what it is: "AWS/CloudFront Requests (DistributionId=…) Sum 5 min" or the expression
    region: str
    visible: bool
    axis: str
    is_expression: bool


def metric_series(widget: dict) -> list[Series]:
    props = widget.get("properties", {})
    widget_region = props.get("region", "")
    widget_stat = props.get("stat", "Average")
    widget_period = props.get("period", 300)
    series = []
    for row in props.get("metrics", []):
        options = row[-1] if row and isinstance(row[-1], dict) else {}
        names = [part for part in row if not isinstance(part, dict)]
        region = options.get("region", widget_region)
        period = options.get("period", widget_period)
        if "expression" in options:
            text = options["expression"]
            label = options.get("label", options.get("id", "expression"))
            is_expression = True
        else:
            namespace, metric = names[0], names[1]
            dims = ", ".join(f"{k}={v}" for k, v in zip(names[2::2], names[3::2], strict=True))
            stat = options.get("stat", widget_stat)
            text = f"{namespace} {metric} ({dims}) {stat}, {_period(period)}"
            label = options.get("label", metric)
            is_expression = False
        series.append(
            Series(
                id=options.get("id"),
                label=label,
                text=text,
                region=region,
                visible=options.get("visible", True),
                axis=options.get("yAxis", "left"),
                is_expression=is_expression,
            )
        )
    return series


def widget_regions(widget: dict) -> set[str]:
    if widget.get("type") == "alarm":
        return {arn.split(":")[3] for arn in widget.get("properties", {}).get("alarms", []) if arn.count(":") >= 5}
    return {s.region for s in metric_series(widget) if s.region}


_ISO_DURATION = re.compile(r"^-?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def _range_seconds(start: str | None) -> int:
    """A widget's or dashboard's relative start (-P30D, -PT6H) in seconds."""
    match = _ISO_DURATION.match(start or "")
    if not match or not any(match.groups()):
        return RANGE_SECONDS
    d, h, m, sec = (int(g or 0) for g in match.groups())
    return d * 86_400 + h * 3600 + m * 60 + sec


def widget_series(widget: dict, model: TrafficModel, range_seconds: int = RANGE_SECONDS) -> tuple[list[float], list[dict]]:
    """The widget's time axis and every series it defines, visible or not, with the
    model's values for metrics and metric math evaluated for expressions."""
    props = widget.get("properties", {})
    widget_stat = props.get("stat", "Average")
    widget_period = int(props.get("period", 300))
    single = props.get("setPeriodToTimeRange", False)
    if single:
        range_seconds = _range_seconds(props.get("start"))
        widget_period = range_seconds
    at = times(widget_period, range_seconds)
    rows, values, periods = [], {}, {}
    for i, row in enumerate(props.get("metrics", [])):
        options = row[-1] if row and isinstance(row[-1], dict) else {}
        names = [part for part in row if not isinstance(part, dict)]
        ident = options.get("id") or f"series{i}"
        period = widget_period if single else int(options.get("period", widget_period))
        entry = {"id": ident, "label": options.get("label") or (names[1] if len(names) > 1 else ident),
                 "visible": options.get("visible", True), "axis": options.get("yAxis", "left"),
                 "expression": options.get("expression")}
        if entry["expression"] is None:
            stat = options.get("stat", widget_stat)
            values[ident] = model.series(names[0], names[1], stat, period, at)
        periods[ident] = period
        rows.append(entry)
    pending = [r for r in rows if r["expression"] is not None]
    while pending:  # expressions may use other expressions: evaluate each once its inputs are there
        ready = [r for r in pending if all(n in values for n in _names(r["expression"]))]
        if not ready:
            raise MathError(f"expressions {[r['expression'] for r in pending]} use ids the widget does not define")
        for r in ready:
            values[r["id"]] = evaluate(r["expression"], values, periods)
            pending.remove(r)
    for r in rows:
        r["values"] = values[r["id"]]
    return at, rows


def _names(expression: str) -> set[str]:
    import ast

    return {n.id for n in ast.walk(ast.parse(expression.strip(), mode="eval")) if isinstance(n, ast.Name)
            and n.id not in ("IF", "FILL", "PERIOD")}


def widget_chart(widget: dict, model: TrafficModel, chart_id: str) -> dict:
    """The ECharts option that draws a metric widget as CloudWatch will."""
    props = widget.get("properties", {})
    at, rows = widget_series(widget, model)
    visible = [r for r in rows if r["visible"]]
    option = charts.base_option()
    option["legend"] = {"top": 0, "type": "scroll", "textStyle": {"fontSize": 10}}
    option["grid"] = {"left": 8, "right": 12, "top": 30, "bottom": 8, "containLabel": True}
    if props.get("view") == "singleValue":
        option["tooltip"] = {"trigger": "item"}
        option["xAxis"] = {"type": "category", "data": [r["label"] for r in visible], "axisLabel": {"fontSize": 10}}
        option["yAxis"] = {"type": "value", "min": 0}
        option["series"] = [{"name": SYNTHETIC, "type": "bar", "data": [r["values"][-1] for r in visible],
                             "label": {"show": True, "position": "top", "fontSize": 14, "fontWeight": "bold"}}]
        option["legend"] = {"show": False}
        return option
    axes = props.get("yAxis", {}) or {}
    sides = ["left"] + (["right"] if any(r["axis"] == "right" for r in visible) else [])
    option["yAxis"] = []
    for side in sides:
        spec = axes.get(side, {}) if isinstance(axes.get(side), dict) else {}
        axis = {"type": "value", "name": spec.get("label", ""), "position": side, "nameTextStyle": {"fontSize": 10},
                "axisLabel": {"fontSize": 10}}
        for bound in ("min", "max"):
            if spec.get(bound) is not None:
                axis[bound] = spec[bound]
        option["yAxis"].append(axis)
    option["xAxis"] = {"type": "category", "data": [_clock(t) for t in at], "axisLabel": {"fontSize": 10}}
    option["series"] = [
        {"name": r["label"], "type": "line", "data": r["values"], "showSymbol": False, "connectNulls": False,
         "yAxisIndex": sides.index(r["axis"]) if r["axis"] in sides else 0}
        for r in visible
    ]
    annotations = props.get("annotations", {}).get("horizontal", []) if isinstance(props.get("annotations"), dict) else []
    for note in annotations:
        side = note.get("yAxis", "left")
        index = sides.index(side) if side in sides else 0
        target = next((s for s in option["series"] if s["yAxisIndex"] == index), None)
        if target is None:
            target = {"name": note.get("label", "threshold"), "type": "line", "data": [], "yAxisIndex": index}
            option["series"].append(target)
        target.setdefault("markLine", {"symbol": "none", "silent": True, "data": []})["data"].append(
            {"yAxis": note.get("value"), "label": {"formatter": f"{note.get('label', '')} {note.get('value')}".strip(),
                                                   "position": "insideEndTop", "fontSize": 10},
             "lineStyle": {"color": note.get("color", "#7f7f7f"), "type": "dashed"}}
        )
    return option


def _clock(t: float) -> str:
    import time

    return time.strftime("%H:%M", time.gmtime(t))


def _period(seconds) -> str:
    seconds = int(seconds)
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# -- rendering ----------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def render_markdown(markdown: str) -> str:
    """The subset CloudWatch text widgets use here: headings, tables, paragraphs,
    **bold** and `code`."""
    out, table = [], []

    def inline(text: str) -> str:
        text = _e(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    def flush_table() -> None:
        if not table:
            return
        rows = [r for r in table if not re.fullmatch(r"\|[\s\-|:]+\|", r.strip())]
        cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
        head, *body = cells
        out.append(
            "<table><thead><tr>"
            + "".join(f"<th>{inline(c)}</th>" for c in head)
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
            + "</tbody></table>"
        )
        table.clear()

    for line in markdown.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush_table()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level + 1}>{inline(heading.group(2))}</h{level + 1}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    return "\n".join(out)


def render_widget(widget: dict, home_region: str, chart_id: str | None = None) -> str:
    x, y = widget.get("x", 0), widget.get("y", 0)
    w, h = widget.get("width", 6), widget.get("height", 6)
    kind = widget.get("type", "metric")
    props = widget.get("properties", {})
    regions = sorted(widget_regions(widget))
    style = f"grid-column: {x + 1} / span {w}; grid-row: {y + 1} / span {h};"
    attrs = (
        f'class="widget widget-{_e(kind)}" data-type="{_e(kind)}" data-x="{x}" data-y="{y}" '
        f'data-width="{w}" data-height="{h}" data-regions="{_e(" ".join(regions))}" style="{style}"'
    )
    badges = "".join(f'<span class="badge{" cross" if r != home_region else ""}">{_e(r)}</span>' for r in regions)
    if kind == "text":
        return (
            f"<section {attrs}><div class='body markdown'>{render_markdown(props.get('markdown', ''))}</div></section>"
        )
    if kind == "alarm":
        items = "".join(
            f"<li><span class='alarm-state'>&#9679;</span> {_e(arn.split(':alarm:')[-1])} "
            f"<span class='dim'>{_e(arn.split(':')[3] if arn.count(':') >= 5 else '')}</span></li>"
            for arn in props.get("alarms", [])
        )
        return (
            f"<section {attrs}><header><h3>{_e(props.get('title', 'Alarm status'))}</h3>"
            f"<span class='view'>alarm status</span>{badges}</header><ul class='alarms'>{items}</ul></section>"
        )
    view = props.get("view", "timeSeries")
    extras = []
    if props.get("setPeriodToTimeRange"):
        extras.append("period = time range")
    if widget.get("properties", {}).get("start") or widget.get("start"):
        extras.append(f"range {props.get('start') or widget.get('start')}")
    rows = []
    for s in metric_series(widget):
        cls = ["series"]
        if not s.visible:
            cls.append("hidden-input")
        if s.region and s.region != home_region:
            cls.append("cross-region")
        kind_text = "expression" if s.is_expression else "metric"
        rows.append(
            f"<tr class='{' '.join(cls)}'><td class='id'>{_e(s.id or '')}</td>"
            f"<td>{_e(s.label)}{' <span class=dim>(input)</span>' if not s.visible else ''}"
            f"{' <span class=dim>right axis</span>' if s.axis == 'right' else ''}</td>"
            f"<td class='{kind_text}'><code>{_e(s.text)}</code></td><td>{_e(s.region)}</td></tr>"
        )
    annotations = (
        props.get("annotations", {}).get("horizontal", []) if isinstance(props.get("annotations"), dict) else []
    )
    notes = "".join(
        f"<li><span class='swatch' style='background:{_e(a.get('color', '#999'))}'></span>"
        f"{_e(a.get('value'))} {_e(a.get('label', ''))}{' (right axis)' if a.get('yAxis') == 'right' else ''}</li>"
        for a in annotations
    )
    axis = props.get("yAxis", {}) or {}
    axis_text = "; ".join(
        f"{side}: {_e(spec.get('label', ''))} {_range(spec)}"
        for side, spec in axis.items()
        if isinstance(spec, dict) and spec
    )
    chart = (
        f"<div class='chart' id='{_e(chart_id)}' data-chart='{_e(chart_id)}'></div>"
        f"<p class='dim'><span class='label'>{SYNTHETIC}</span> series are synthetic; the definitions below are the widget's</p>"
        if chart_id else ""
    )
    return (
        f"<section {attrs}><header><h3>{_e(props.get('title', ''))}</h3>"
        f"<span class='view'>{_e(view)}{(' · ' + _e(', '.join(extras))) if extras else ''}</span>{badges}</header>"
        f"{chart}<table class='series'><thead><tr><th>id</th><th>label</th><th>metric / expression</th><th>region</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        + (f"<ul class='annotations'>{notes}</ul>" if notes else "")
        + (f"<p class='dim axis'>y axis {axis_text}</p>" if axis_text else "")
        + "</section>"
    )


def _range(spec: dict) -> str:
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None and hi is None:
        return ""
    return f"[{'' if lo is None else lo}..{'' if hi is None else hi}]"


_CSS = """
body { font: 13px/1.4 -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 16px; background: #f2f3f3; color: #16191f; }
h1 { font-size: 20px; margin: 0 0 4px; } h2.board { font-size: 16px; margin: 24px 0 4px; }
.meta { color: #545b64; margin-bottom: 12px; }
.grid { display: grid; grid-template-columns: repeat(24, minmax(0, 1fr)); grid-auto-rows: %(row)dpx; gap: 6px; }
.widget { background: #fff; border: 1px solid #d5dbdb; border-radius: 2px; padding: 6px 8px; overflow: auto; min-width: 0; }
.widget header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 6px; margin-bottom: 4px; }
.widget h3 { font-size: 13px; margin: 0; font-weight: 600; }
.view { color: #687078; font-size: 11px; }
.badge { font-size: 10px; padding: 0 5px; border-radius: 8px; background: #e9ebed; color: #16191f; }
.badge.cross { background: #0972d3; color: #fff; }
table.series { border-collapse: collapse; width: 100%%; font-size: 11px; }
table.series td, table.series th { border-top: 1px solid #eaeded; padding: 1px 4px; text-align: left; vertical-align: top; }
tr.hidden-input { color: #879596; }
tr.cross-region td:last-child { color: #0972d3; font-weight: 600; }
td.expression code { color: #8a3ffc; } code { white-space: pre-wrap; word-break: break-word; }
.id { color: #879596; font-family: monospace; }
ul.annotations, ul.alarms { list-style: none; padding: 0; margin: 4px 0 0; font-size: 11px; }
.swatch { display: inline-block; width: 14px; height: 3px; margin-right: 4px; vertical-align: middle; }
.alarm-state { color: #879596; } .dim { color: #879596; font-size: 11px; }
.markdown table { border-collapse: collapse; } .markdown td, .markdown th { border: 1px solid #d5dbdb; padding: 2px 6px; }
.markdown h2 { font-size: 16px; margin: 0 0 6px; }
.widget .chart { height: 230px; }
.widget .label { font-size: 10px; padding: 0 5px; border-radius: 8px; background: #fbe9d0; color: #8d4f00; }
"""


def render_stage(stage: str, boards: list[Dashboard]) -> str:
    from config.settings import gpu_count
    from config.stages import STAGES

    settings = STAGES.get(stage)
    model = TrafficModel(
        gpus=gpu_count(settings.endpoint.instance_type) if settings else 1,
        instances=float(settings.endpoint.min_instances) if settings else 2.0,
        free_gib=settings.workspace.capacity_gib * 0.6 if settings else 800.0,
    )
    drawn: list[charts.Chart] = []
    parts = [
        f"<h1>Stage {_e(stage)}: dashboard preview</h1>",
        "<p class='meta'>Generated from the synthesized template; layout as CloudWatch draws it "
        "(24 columns; each widget at its x, y, width, height). Each metric widget is drawn with its own metrics, "
        f"statistics, periods, expressions and threshold lines, over series from a <span class='label'>{SYNTHETIC}</span> "
        "(cli/dashboard_series.py), not measurements. Regions in blue are read across regions. "
        "Placeholders like <code>${Cdn.Distribution}</code> are values CloudFormation resolves at deploy time.</p>",
    ]
    for b, board in enumerate(boards):
        regions = sorted(set().union(*(widget_regions(w) for w in board.widgets)) if board.widgets else set())
        parts.append(
            f"<h2 class='board'>{_e(board.name)}</h2><p class='meta'>stack {_e(board.stack)} ({_e(board.region)}, "
            f"account {_e(board.account)}) · {len(board.widgets)} widgets · regions {_e(', '.join(regions))} · "
            f"default range {_e(board.body.get('start', 'console default'))}</p>"
        )
        parts.append(f"<div class='grid' data-dashboard='{_e(board.name)}'>")
        for i, widget in enumerate(board.widgets):
            chart_id = None
            if widget.get("type") == "metric":
                chart_id = f"widget-{b}-{i}"
                drawn.append(charts.Chart(chart_id, "", "", widget_chart(widget, model, chart_id)))
            parts.append(render_widget(widget, board.region, chart_id))
        parts.append("</div>")
    return charts.page(f"{stage} dashboards (preview)", "\n".join(parts), drawn, css=_CSS % {"row": ROW_PX})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cdk-out", type=Path, default=Path("cdk.out"), help="cloud assembly directory (default cdk.out)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("build/dashboards"), help="output directory (default build/dashboards)"
    )
    args = parser.parse_args(argv)

    dashboards = find_dashboards(args.cdk_out)
    if not dashboards:
        print(f"no AWS::CloudWatch::Dashboard in {args.cdk_out}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for stage, boards in sorted(dashboards.items()):
        path = args.out / f"{stage}.html"
        path.write_text(render_stage(stage, boards), encoding="utf-8")
        widgets = sum(len(b.widgets) for b in boards)
        print(f"{path}: {len(boards)} dashboard(s), {widgets} widgets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
