"""```chart blocks: an SVG drawn from a real results file, bad specs stop the build, and a strict build works."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servelab.book import charts
from servelab.book.tree import ROOT

THROUGHPUT = "results/vllm/lab2_1/l02_basic_inference/throughput_gpu.json"
LOAD_TEST = "results/vllm/lab2_1/l04_production_deployment/load_test_gpu.json"

BAR = f"""\
source: {THROUGHPUT}
type: bar
x: engine
y: [tokens_per_s]
title: vLLM 與 HF 的吞吐量
x_label: 引擎
y_label: tokens/s
"""

LINE = f"""\
source: {LOAD_TEST}
type: line
x: max_concurrency
y: [p50_ttft_ms, p99_ttft_ms]
title: TTFT 與並行數
x_label: 並行數
y_label: ms
log_x: true
"""


def rows(source: str) -> list[dict]:
    return json.loads((ROOT / source).read_text(encoding="utf-8"))["rows"]


def test_bar_chart_draws_one_bar_per_row_with_labels_and_values():
    svg = charts.render(BAR)
    data = rows(THROUGHPUT)
    assert svg.count('<rect class="bar"') == len(data)
    for row in data:
        assert f">{row['engine']}<" in svg  # category label on the x axis
        assert f'data-value="{row["tokens_per_s"]}"' in svg
        assert f">{charts.fmt(row['tokens_per_s'])}<" in svg  # the printed value
    for text in ("vLLM 與 HF 的吞吐量", ">引擎<", ">tokens/s<", 'role="img"', "<title", "<desc"):
        assert text in svg
    device = json.loads((ROOT / THROUGHPUT).read_text(encoding="utf-8"))["provenance"]["device"]
    assert THROUGHPUT in svg and "執行環境：" in svg and device.split(" ×")[0] in svg  # caption: data file + provenance


def test_bars_are_taller_for_larger_values():
    svg = charts.render(BAR)
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    values = [row["tokens_per_s"] for row in rows(THROUGHPUT)]
    assert sorted(range(len(values)), key=values.__getitem__) == sorted(range(len(heights)), key=heights.__getitem__)


def test_line_chart_has_a_line_per_key_and_a_point_per_row():
    svg = charts.render(LINE)
    data = rows(LOAD_TEST)
    assert svg.count('<polyline class="line"') == 2
    assert svg.count('<circle class="point"') == 2 * len(data)
    assert "TTFT p99" in svg and 'class="legend-item"' in svg  # legend uses the table's column names
    for row in data:
        assert f">{row['max_concurrency']}<" in svg  # x ticks at the measured concurrencies


def test_series_and_where_group_and_filter_rows(tmp_path):
    source = tmp_path / "r.json"
    table = [{"batch": b, "concurrency": c, "tps": b * c * 1.5} for b in (8, 16) for c in (1, 4, 16)]
    source.write_text(json.dumps({"rows": table, "columns": {"concurrency": "並行數"}}))
    spec = ("source: r.json\ntype: line\nx: batch\ny: tps\nseries: concurrency\n"
            "where: {batch: 16}\ntitle: t\n")
    svg = charts.render(spec, root=tmp_path)
    assert svg.count('<polyline class="line"') == 3  # one per concurrency
    assert svg.count('<circle class="point"') == 3  # only batch 16 rows
    assert "並行數 16" in svg


def test_currentcolor_and_fixed_palette():
    svg = charts.render(BAR)
    assert 'fill="currentColor"' in svg and 'stroke="currentColor"' in svg
    assert charts.PALETTE[0] in svg
    assert "<script" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")


@pytest.mark.parametrize("spec, message", [
    (BAR.replace(THROUGHPUT, "results/nope.json"), "does not exist"),
    (BAR + "colour: red\n", "unknown key"),
    (BAR.replace("x: engine", "x: engin"), "no key 'engin'"),
    (BAR.replace("type: bar", "type: pie"), "type must be"),
    (BAR.replace("y: [tokens_per_s]", "y: [setup]"), "must be a number"),
    (BAR + "where: {engine: nothing}\n", "keeps no row"),
    (BAR.replace("title: vLLM 與 HF 的吞吐量\n", ""), "missing key"),
    (BAR.replace(THROUGHPUT, "../etc/passwd"), "repository-relative"),
])
def test_bad_spec_raises(spec, message):
    with pytest.raises(charts.ChartError, match=message):
        charts.fence_format(spec, "chart", "chart", {}, None)


def _project(tmp_path: Path, block: str) -> Path:
    """A tiny site with the book's theme and markdown extensions (from its mkdocs.yml), one page."""
    blocks = re.split(r"^(?=\S)", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)
    book = "".join(b for b in blocks if b.startswith(("theme:", "markdown_extensions:", "strict:")))
    (tmp_path / "mkdocs.yml").write_text(f"site_name: charts\ndocs_dir: docs\n{book}", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    page = textwrap.dedent("""\
        # 圖表

        | a | b |
        | --- | --- |
        | 1 | 2 |

        ```chart
        {block}```
        """).replace("{block}", block)
    (tmp_path / "docs" / "index.md").write_text(page, encoding="utf-8")
    return tmp_path


def _build(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(project / "mkdocs.yml"),
                           "-d", str(project / "site")], capture_output=True, text=True, cwd=project, timeout=300)


def test_strict_build_renders_the_chart(tmp_path):
    project = _project(tmp_path, BAR)
    result = _build(project)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (project / "site" / "index.html").read_text(encoding="utf-8")
    assert html.count('<rect class="bar"') == len(rows(THROUGHPUT))
    assert '<figure class="servelab-chart">' in html and "```chart" not in html


def test_strict_build_fails_on_a_bad_chart(tmp_path):
    project = _project(tmp_path, BAR.replace(THROUGHPUT, "results/vllm/missing.json"))
    result = _build(project)
    assert result.returncode != 0
    assert "results/vllm/missing.json does not exist" in result.stderr + result.stdout


def test_negative_values_hang_below_a_zero_line_with_valid_heights():
    """A measured loss can be negative (the gateway "won" a cell): bars start at 0 and go down, never a
    negative SVG height (a browser rejects it: the browser test caught one on Lab 2.3 l03)."""
    source = "results/vllm/lab2_3/l03_integration_with_vllm/gateway_overhead_gpu.json"
    spec = (f"source: {source}\ntype: bar\nx: max_concurrency\ny: [throughput_loss_pct]\nseries: way\n"
            "title: loss\n")
    values = [row["throughput_loss_pct"] for row in rows(source)]
    assert min(values) < 0 < max(values)  # the file has both signs
    svg = charts.render(spec)
    bars = re.findall(r'<rect class="bar" x="[\d.]+" y="([\d.-]+)" width="[\d.]+" height="([\d.-]+)" '
                      r'fill="[^"]+" data-value="([^"]+)"', svg)
    assert sorted(float(v) for _, _, v in bars) == sorted(values)
    assert all(float(height) >= 0 for _, height, _ in bars)
    zero = float(re.search(r'<line class="zero" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"', svg).group(1))
    for y, height, value in bars:
        top, bottom, value = float(y), float(y) + float(height), float(value)
        assert (bottom == pytest.approx(zero, abs=0.11)) if value >= 0 else (top == pytest.approx(zero, abs=0.11))
    assert charts.axis_ticks(-4.59, 52.1)[0] < 0 and 0.0 in charts.axis_ticks(-4.59, 52.1)
