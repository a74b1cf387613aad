"""Charts in one self-contained HTML file: Apache ECharts (the `echarts` npm package,
pinned in package.json, installed into node_modules/ by `make` and `npm ci`) embedded in
the page, so it opens offline, with no CDN. Each chart is an ECharts option built in
Python as JSON and drawn with the SVG renderer (the tests read the drawn SVG back).

Shared by `bin/cache-report`, `make dashboard` and the local run's live dashboard.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The "common" build: line, bar, pie and scatter charts with grid, tooltip, legend,
# title, dataZoom and mark lines, SVG and canvas renderers (715 KB; the full build is 1.1 MB).
ECHARTS_JS = ROOT / "node_modules" / "echarts" / "dist" / "echarts.common.min.js"
PALETTE = ["#0972d3", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


class ChartLibraryMissing(RuntimeError):
    pass


def echarts_js() -> str:
    """The library's code, to inline in a page."""
    try:
        return ECHARTS_JS.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChartLibraryMissing(
            f"{ECHARTS_JS.relative_to(ROOT)} is missing: run `npm ci` in {ROOT} (make does it on first use)"
        ) from None


def echarts_version() -> str:
    return json.loads((ECHARTS_JS.parent.parent / "package.json").read_text())["version"]


@dataclass
class Chart:
    """One chart: where it goes (`id`), what it answers (`title`, `question`), how it is
    drawn (an ECharts option) and the figures behind it, shown beside it as a table."""

    id: str
    title: str
    question: str
    option: dict
    height: int = 320
    notes: list[str] = field(default_factory=list)
    table: tuple[list[str], list[list]] | None = None  # (header, rows)
    html_extra: str = ""

    def html(self) -> str:
        notes = "".join(f"<p class='note'>{e(n)}</p>" for n in self.notes)
        table = ""
        if self.table:
            header, rows = self.table
            table = (
                "<details class='figures'><summary>figures</summary><table><thead><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in header)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
                + "</tbody></table></details>"
            )
        return (
            f"<section class='chart-card' id='card-{e(self.id)}'><h2>{e(self.title)}</h2>"
            f"<p class='question'>{e(self.question)}</p>"
            f"<div class='chart' id='{e(self.id)}' data-chart='{e(self.id)}' style='height:{self.height}px'></div>"
            f"{notes}{table}{self.html_extra}</section>"
        )


def e(text) -> str:
    return html.escape(str(text), quote=True)


def script_json(value) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


CSS = """
body { font: 14px/1.45 -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 20px; background: #f2f3f3; color: #16191f; }
h1 { font-size: 22px; margin: 0 0 6px; }
.meta { color: #545b64; margin: 0 0 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
.chart-card { background: #fff; border: 1px solid #d5dbdb; border-radius: 3px; padding: 10px 14px; min-width: 0; }
.chart-card h2 { font-size: 15px; margin: 0; }
.question { color: #545b64; margin: 2px 0 6px; font-size: 13px; }
.note { color: #545b64; font-size: 12px; margin: 4px 0; }
.figures table, table.facts { border-collapse: collapse; font-size: 12px; }
.figures td, .figures th, table.facts td, table.facts th { border: 1px solid #e1e4e6; padding: 2px 6px; text-align: left; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; margin: 0 0 14px; }
.kpi { background: #fff; border: 1px solid #d5dbdb; border-radius: 3px; padding: 8px 12px; min-width: 140px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: #545b64; font-size: 12px; }
.label { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; background: #fbe9d0; color: #8d4f00; }
code { font-size: 12px; }
"""

_INIT = """
(function () {
  var charts = %(charts)s;
  window.__charts = {};
  Object.keys(charts).forEach(function (id) {
    var el = document.getElementById(id);
    var chart = echarts.init(el, null, {renderer: 'svg'});
    chart.setOption(charts[id]);
    window.__charts[id] = chart;
  });
  window.addEventListener('resize', function () {
    Object.keys(window.__charts).forEach(function (id) { window.__charts[id].resize(); });
  });
  document.body.setAttribute('data-charts-drawn', String(Object.keys(charts).length));
})();
"""


def page(title: str, body_html: str, charts: list[Chart], *, script: str = "", css: str = "") -> str:
    """A whole HTML document: the library inline, then every chart drawn on load."""
    options = {chart.id: chart.option for chart in charts}
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)}</title><style>{CSS}{css}</style>"
        f"<script>{echarts_js()}</script></head><body>{body_html}"
        f"<script>{_INIT % {'charts': script_json(options)}}{script}</script></body></html>"
    )


def base_option(*, legend: bool = True, y_name: str = "", x_name: str = "") -> dict:
    """What every chart shares: tooltip, legend on top, a grid with room for axis names."""
    option: dict = {
        "color": PALETTE,
        "animation": False,
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 64, "right": 28, "top": 44 if legend else 20, "bottom": 48, "containLabel": True},
    }
    if legend:
        option["legend"] = {"top": 0, "type": "scroll"}
    if y_name:
        option["yAxis"] = {"type": "value", "name": y_name, "nameLocation": "middle", "nameGap": 48, "min": 0}
    if x_name:
        option["xAxis"] = {"type": "category", "name": x_name, "nameLocation": "middle", "nameGap": 30}
    return option
