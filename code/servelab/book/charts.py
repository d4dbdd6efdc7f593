"""Charts drawn from results files at build time: a ```chart fence becomes an inline SVG.

A page places the block next to the table it illustrates::

    ```chart
    source: results/vllm/lab2_1/l02_basic_inference/throughput_gpu.json
    type: bar                 # bar | line
    x: engine                 # a row key: category (bar) or number (line)
    y: [tokens_per_s]         # one or more row keys (numbers)
    series: concurrency       # optional: one bar/line per distinct value of this key
    where: {batch: 16}        # optional: keep rows whose keys equal these values
    title: vLLM 與 HF 的吞吐量
    x_label: 引擎
    y_label: tokens/s
    log_x: false              # optional (line charts)
    ```

``mkdocs.yml`` registers :func:`fence_format` as a ``pymdownx.superfences`` custom fence. The SVG is
drawn here in Python (no JavaScript, no CDN). Text and axes use ``currentColor`` so the chart follows
Material's light and dark schemes; series colors come from a fixed palette. A bad spec (unknown key,
missing file, a key the rows do not have) raises :class:`ChartError`, which stops the build.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pymdownx.superfences import SuperFencesException

from servelab.book.tree import ROOT
from servelab.runtime.provenance import describe

KEYS = {"source", "type", "x", "y", "series", "where", "title", "x_label", "y_label", "log_x"}
REQUIRED = ("source", "type", "x", "y", "title")
TYPES = ("bar", "line")
# Tableau 10: readable on both the light (white) and the dark (slate) scheme.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

WIDTH = 680
FONT = 12
PLOT_HEIGHT = 260
MARGIN_LEFT = 72
MARGIN_RIGHT = 24


class ChartError(SuperFencesException):
    """A chart spec that cannot be drawn; superfences re-raises it, so the build stops."""


@dataclass
class Spec:
    source: str
    type: str
    x: str
    y: list[str]
    title: str
    series: str | None = None
    where: dict = field(default_factory=dict)
    x_label: str = ""
    y_label: str = ""
    log_x: bool = False


# ---------------------------------------------------------------- spec and data


def parse_spec(text: str) -> Spec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ChartError(f"chart: the block is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ChartError("chart: the block must be a YAML mapping (source:, type:, x:, y:, title:)")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ChartError(f"chart: unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    missing = [key for key in REQUIRED if raw.get(key) in (None, "", [])]
    if missing:
        raise ChartError(f"chart: missing key(s) {missing}")
    if raw["type"] not in TYPES:
        raise ChartError(f"chart: type must be one of {TYPES}, not {raw['type']!r}")
    y = raw["y"] if isinstance(raw["y"], list) else [raw["y"]]
    where = raw.get("where") or {}
    if not isinstance(where, dict):
        raise ChartError(f"chart: where must be a mapping like {{batch: 16}}, not {where!r}")
    log_x = raw.get("log_x", False)
    if not isinstance(log_x, bool):
        raise ChartError(f"chart: log_x must be true or false, not {log_x!r}")
    return Spec(source=str(raw["source"]), type=raw["type"], x=str(raw["x"]), y=[str(k) for k in y],
                title=str(raw["title"]), series=raw.get("series"), where=where,
                x_label=str(raw.get("x_label") or ""), y_label=str(raw.get("y_label") or ""), log_x=log_x)


def load_source(source: str, root: Path = ROOT) -> dict:
    path = (root / source).resolve()
    if Path(source).is_absolute() or root.resolve() not in path.parents:
        raise ChartError(f"chart: source must be a repository-relative path, not {source!r}")
    if not path.is_file():
        raise ChartError(f"chart: results file {source} does not exist (run the lesson to write it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ChartError(f"chart: {source} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ChartError(f"chart: {source} has no 'rows' list (write it with write_results)")
    return data


def select_rows(spec: Spec, data: dict) -> list[dict]:
    rows = data["rows"]
    known = set().union(*(row.keys() for row in rows)) if rows else set()
    for key in [spec.x, *spec.y, *([spec.series] if spec.series else []), *spec.where]:
        if key not in known:
            raise ChartError(f"chart: {spec.source} rows have no key {key!r}; keys: {sorted(known)}")
    rows = [row for row in rows if all(row.get(k) == v for k, v in spec.where.items())]
    if not rows:
        raise ChartError(f"chart: where {spec.where} keeps no row of {spec.source}")
    for row in rows:
        for key in spec.y + ([spec.x] if spec.type == "line" else []):
            value = row.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ChartError(f"chart: {spec.source}: {key!r} must be a number in every row, got {value!r}")
            if key == spec.x and spec.log_x and value <= 0:
                raise ChartError(f"chart: log_x needs positive x values, got {value!r}")
    return rows


# ---------------------------------------------------------------- drawing helpers


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def fmt(value: float) -> str:
    """Numbers as the results tables print them (3 significant digits, thousands separators)."""
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def text_width(text: str, size: float = FONT) -> float:
    return sum(size if unicodedata.east_asian_width(ch) in "WF" else 0.6 * size for ch in str(text))


def wrap(text: str, width: float, size: float = FONT, max_lines: int = 3) -> list[str]:
    """Split a label into lines that fit ``width`` (at spaces when possible, else between characters)."""
    lines: list[str] = []
    line = ""
    for token in _tokens(str(text)):
        if line and text_width(line + token, size) > width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    lines.append(line.rstrip())
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + ["".join(lines[max_lines - 1:])]
    return lines


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    word = ""
    for ch in text:
        if unicodedata.east_asian_width(ch) in "WF":  # CJK: a break is allowed between characters
            if word:
                tokens.append(word)
                word = ""
            tokens.append(ch)
        elif ch == " ":
            tokens.append(word + " ")
            word = ""
        else:
            word += ch
    if word:
        tokens.append(word)
    return tokens


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 … a round number ≥ top, in 1/2/2.5/5 × 10^k steps."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-12 * top:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def axis_ticks(low: float, high: float) -> list[float]:
    """Ticks from a round number ≤ min(low, 0) to one ≥ max(high, 0), with 0 among them and one step size
    (the one :func:`nice_ticks` picks for the larger of the two magnitudes), so negative values get an axis too."""
    up = nice_ticks(max(high, -low, 0))
    step = up[1] - up[0]
    ticks = [t for t in up if t < high + step - 1e-12 * step] if high > 0 else [0.0]
    while ticks[-1] < high - 1e-12 * step:
        ticks.append(round(ticks[-1] + step, 12))
    while ticks[0] > low + 1e-12 * step:
        ticks.insert(0, round(ticks[0] - step, 12))
    return ticks if len(ticks) > 1 else [0.0, 1.0]


def text_el(x: float, y: float, content: str, anchor: str = "middle", size: float = FONT,
            extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="currentColor"{extra}>{esc(content)}</text>')


# ---------------------------------------------------------------- chart


@dataclass
class Series:
    label: str
    key: str
    rows: list[dict]
    color: str


def build_series(spec: Spec, rows: list[dict], columns: dict) -> list[Series]:
    groups: list[tuple[str | None, list[dict]]] = [(None, rows)]
    if spec.series:
        values: list = []
        for row in rows:
            if row.get(spec.series) not in values:
                values.append(row.get(spec.series))
        name = columns.get(spec.series, spec.series)
        groups = [(f"{name} {value}", [r for r in rows if r.get(spec.series) == value]) for value in values]
    out = []
    for group, group_rows in groups:
        for key in spec.y:
            parts = [group] if group else []
            if len(spec.y) > 1 or not group:
                parts.append(str(columns.get(key, key)))
            out.append(Series(label=" · ".join(parts), key=key, rows=group_rows,
                              color=PALETTE[len(out) % len(PALETTE)]))
    return out


def legend(series: list[Series], top: float) -> tuple[list[str], float]:
    """Swatches and labels, wrapped into lines; returns the elements and the height used."""
    parts, x, y = [], MARGIN_LEFT, top
    for item in series:
        width = 18 + text_width(item.label) + 16
        if x + width > WIDTH - MARGIN_RIGHT and x > MARGIN_LEFT:
            x, y = MARGIN_LEFT, y + FONT + 8
        parts.append(f'<g class="legend-item"><rect x="{x:.1f}" y="{y - FONT + 2:.1f}" width="12" height="12" '
                     f'rx="2" fill="{item.color}"/>{text_el(x + 18, y + 1, item.label, "start")}</g>')
        x += width
    return parts, y - top + FONT + 10


def render_svg(spec: Spec, data: dict, rows: list[dict]) -> str:
    columns = data.get("columns") or {}
    series = build_series(spec, rows, columns)
    uid = "chart-" + hashlib.sha1(repr(spec).encode()).hexdigest()[:10]
    parts: list[str] = []

    title_lines = wrap(spec.title, WIDTH - 40, FONT + 3, max_lines=2)
    y = 22.0
    for line in title_lines:
        parts.append(text_el(WIDTH / 2, y, line, size=FONT + 3, extra=' font-weight="bold"'))
        y += FONT + 8
    legend_parts, legend_height = legend(series, y + 4) if len(series) > 1 else ([], 0)
    parts += legend_parts
    top = y + legend_height + 8
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    bottom = top + PLOT_HEIGHT

    values = [row[s.key] for s in series for row in s.rows]
    ticks = axis_ticks(min(values), max(values))
    y_low, y_top = ticks[0], ticks[-1]

    def ypos(value: float) -> float:
        span = y_top - y_low
        return bottom - ((value - y_low) / span) * (bottom - top) if span else bottom

    axis = ['<g class="axis y-axis">']
    for tick in ticks:
        ty = ypos(tick)
        axis.append(f'<line x1="{left}" x2="{right}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="currentColor" '
                    f'stroke-opacity="0.15"/>')
        axis.append(text_el(left - 6, ty + 4, fmt(tick), "end"))
    axis.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="currentColor"/>')
    if y_low < 0:  # the zero line, where bars start
        axis.append(f'<line class="zero" x1="{left}" x2="{right}" y1="{ypos(0):.1f}" y2="{ypos(0):.1f}" '
                    f'stroke="currentColor"/>')
    axis.append("</g>")
    parts += axis

    if spec.type == "bar":
        marks, x_axis, label_height = _bars(spec, rows, series, left, right, bottom, ypos)
    else:
        marks, x_axis, label_height = _lines(spec, series, left, right, bottom, ypos)
    parts += x_axis + marks
    parts.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="currentColor"/>')

    height = bottom + label_height
    if spec.x_label:
        height += FONT + 10
        parts.append(text_el((left + right) / 2, height - 4, spec.x_label, extra=' class="x-label"'))
    if spec.y_label:
        cy = (top + bottom) / 2
        parts.append(text_el(16, cy, spec.y_label, extra=f' class="y-label" transform="rotate(-90 16 {cy:.1f})"'))
    height += 10

    desc = _description(spec, series)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="servelab-chart" role="img" '
            f'viewBox="0 0 {WIDTH} {height:.0f}" width="100%" style="max-width:{WIDTH}px;height:auto" '
            f'aria-labelledby="{uid}-title {uid}-desc">'
            f'<title id="{uid}-title">{esc(spec.title)}</title><desc id="{uid}-desc">{esc(desc)}</desc>')
    return head + "".join(parts) + "</svg>"


def _bars(spec, rows, series, left, right, bottom, ypos):
    categories: list = []
    for row in rows:
        if row[spec.x] not in categories:
            categories.append(row[spec.x])
    band = (right - left) / len(categories)
    bar_width = min(band * 0.8 / len(series), 110)
    inner = bar_width * len(series)
    marks, axis = ['<g class="marks">'], ['<g class="axis x-axis">']
    label_lines = 1
    for index, category in enumerate(categories):
        x0 = left + index * band + (band - inner) / 2
        for number, item in enumerate(series):
            for row in (r for r in item.rows if r[spec.x] == category):
                value = row[item.key]
                bx, by, zero = x0 + number * bar_width, ypos(value), ypos(0)
                marks.append(f'<rect class="bar" x="{bx + 1:.1f}" y="{min(by, zero):.1f}" '
                             f'width="{bar_width - 2:.1f}" height="{abs(zero - by):.1f}" fill="{item.color}" '
                             f'data-value="{value}">'
                             f'<title>{esc(category)} · {esc(item.label)}: {esc(fmt(value))}</title></rect>')
                label_y = by - 4 if value >= 0 else by + FONT + 2  # a negative bar's value goes below it
                marks.append(text_el(bx + bar_width / 2, label_y, fmt(value), size=FONT - 1,
                                     extra=' class="value"'))
        lines = wrap(category, band - 6)
        label_lines = max(label_lines, len(lines))
        for offset, line in enumerate(lines):
            axis.append(text_el(left + (index + 0.5) * band, bottom + 16 + offset * (FONT + 3), line))
    return marks + ["</g>"], axis + ["</g>"], 10 + label_lines * (FONT + 3)


def _lines(spec, series, left, right, bottom, ypos):
    xs = sorted({row[spec.x] for item in series for row in item.rows})
    scale = (lambda v: math.log10(v)) if spec.log_x else (lambda v: v)
    lo, hi = scale(xs[0]), scale(xs[-1])
    if not spec.log_x:
        lo = min(lo, 0)
    pad = 12

    def xpos(value: float) -> float:
        return left + pad + (scale(value) - lo) / ((hi - lo) or 1) * (right - left - 2 * pad)

    ticks = xs if len(xs) <= 12 else _spread(xs, 8)
    axis = ['<g class="axis x-axis">']
    for tick in ticks:
        tx = xpos(tick)
        axis.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="currentColor"/>')
        axis.append(text_el(tx, bottom + 16, fmt(tick)))
    marks = ['<g class="marks">']
    for item in series:
        points = sorted((row[spec.x], row[item.key]) for row in item.rows)
        path = " ".join(f"{xpos(x):.1f},{ypos(v):.1f}" for x, v in points)
        marks.append(f'<polyline class="line" points="{path}" fill="none" stroke="{item.color}" '
                     f'stroke-width="2"/>')
        for x, v in points:
            marks.append(f'<circle class="point" cx="{xpos(x):.1f}" cy="{ypos(v):.1f}" r="3.5" '
                         f'fill="{item.color}" data-value="{v}"><title>{esc(item.label)} @ {esc(fmt(x))}: '
                         f'{esc(fmt(v))}</title></circle>')
    return marks + ["</g>"], axis + ["</g>"], 10 + FONT + 3


def _spread(values: list, count: int) -> list:
    step = (len(values) - 1) / (count - 1)
    return [values[round(i * step)] for i in range(count)]


def _description(spec: Spec, series: list[Series]) -> str:
    kind = "長條圖" if spec.type == "bar" else "折線圖"
    parts = []
    for item in series:
        values = "、".join(f"{row[spec.x]} = {fmt(row[item.key])}" for row in item.rows)
        parts.append(f"{item.label}：{values}")
    return f"{kind}。{'；'.join(parts)}。"


def caption(spec: Spec, data: dict) -> str:
    where = f"執行環境：{esc(describe(data['provenance']))}。" if data.get("provenance") else ""
    return f"<figcaption><small>{where}資料檔：<code>{esc(spec.source)}</code></small></figcaption>"


def render(text: str, root: Path = ROOT) -> str:
    """The ```chart block's YAML → ``<figure>`` with the SVG and a caption naming data and provenance."""
    spec = parse_spec(text)
    data = load_source(spec.source, root)
    rows = select_rows(spec, data)
    return (f'<figure class="servelab-chart">{render_svg(spec, data, rows)}{caption(spec, data)}</figure>')


def fence_format(src, language, class_name, options, md, **kwargs):
    """``pymdownx.superfences`` custom fence formatter (``format:`` in mkdocs.yml)."""
    try:
        return render(src)
    except ChartError as error:
        raise ChartError(f"{error}\n--- chart block ---\n{src}") from None
