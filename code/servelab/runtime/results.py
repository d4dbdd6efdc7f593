"""Result files: every figure in the book is written here by a run, with its provenance.

``results/<track>/<lab>/<lesson>/<name>.json`` holds the data and where it ran; ``<name>.md`` beside it
is the table a page includes with ``--8<-- "results/…/<name>.md"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from servelab.book.tree import ROOT
from servelab.runtime.provenance import describe, provenance

RESULTS = ROOT / "results"


def results_dir(lesson_rel: str) -> Path:
    return RESULTS / lesson_rel


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_cell(row.get(key, "")) for key in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_results(lesson_rel: str, name: str, rows: Sequence[dict], columns: dict[str, str],
                  extra: dict | None = None, root: Path | None = None) -> Path:
    """Write ``name.json`` (rows + provenance) and ``name.md`` (a table with a 'where it ran' line)."""
    prov = provenance()
    folder = (root or RESULTS) / lesson_rel
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "provenance": prov, "rows": list(rows), "columns": columns, **(extra or {})}
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    source = f"results/{lesson_rel}/{name}.json"
    table = markdown_table(rows, columns)
    (folder / f"{name}.md").write_text(f"{table}\n\n<small>執行環境：{describe(prov)}。資料檔：`{source}`</small>\n")
    return folder / f"{name}.json"


def read_results(lesson_rel: str, name: str) -> dict | None:
    path = RESULTS / lesson_rel / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
