"""Every lesson notebook runs top to bottom on CPU against the session's engines.

A notebook gets only the shared engines it talks to (``vllm_endpoint``/``triton_endpoint`` in its code
reuse them through the exported variables), so running one lesson's notebook starts no engine it does not
need. Its stored outputs must be clean after the book's scrubber (no machine paths, no library noise).
"""

from __future__ import annotations

import shutil

import pytest

from servelab.book.notebooks import MARKER, engines_used, execute, hygiene_problems
from servelab.book.tree import lessons

NOTEBOOKS = [item for item in lessons() if item.notebook.exists()]


@pytest.mark.engine
@pytest.mark.parametrize("lesson", NOTEBOOKS, ids=[item.rel for item in NOTEBOOKS])
def test_notebook_runs(lesson, request, tmp_path):
    for fixture in engines_used(lesson.notebook):
        request.getfixturevalue(fixture)
    copy = tmp_path / lesson.notebook.name
    shutil.copy(lesson.notebook, copy)
    notebook = execute(copy, cwd=tmp_path)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert MARKER in text
    assert hygiene_problems(notebook) == []


def test_engines_used_reads_the_notebooks_code(tmp_path):
    import nbformat

    path = tmp_path / "n.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("vllm_endpoint in prose does not count"),
        nbformat.v4.new_code_cell("from servelab.runtime import triton_endpoint")]), path)
    assert engines_used(path) == ["triton_shared"]
