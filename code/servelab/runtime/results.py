"""Result files: every figure in the book is written here by a run, with its provenance.

``results/<track>/<lab>/<lesson>/<name>.json`` holds the data and where it ran; ``<name>.md`` beside it
is the table a page includes with ``--8<-- "results/…/<name>.md"``.

``SERVELAB_RESULTS_DIR`` points writes and reads elsewhere: the CPU test session sets it to a scratch copy,
so running the tests never rewrites the book's figures (a real run — ``servelab run``, ``make notebooks``,
the GPU suite — writes into ``results/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from servelab.book.tree import ROOT
from servelab.runtime.provenance import describe, provenance

RESULTS = ROOT / "results"  # the book's committed figures


def results_root() -> Path:
    override = os.environ.get("SERVELAB_RESULTS_DIR")
    return Path(override) if override else RESULTS


def results_dir(lesson_rel: str) -> Path:
    return results_root() / lesson_rel


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
    folder = (root or results_root()) / lesson_rel
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "provenance": prov, "rows": list(rows), "columns": columns, **(extra or {})}
    (folder / f"{name}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    source = f"results/{lesson_rel}/{name}.json"
    table = markdown_table(rows, columns)
    (folder / f"{name}.md").write_text(f"{table}\n\n<small>執行環境：{describe(prov)}。資料檔：`{source}`</small>\n")
    return folder / f"{name}.json"


def read_results(lesson_rel: str, name: str) -> dict | None:
    path = results_root() / lesson_rel / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
