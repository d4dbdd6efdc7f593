"""Every lesson notebook runs top to bottom on CPU against the session's engines."""

from __future__ import annotations

import shutil

import pytest

from servelab.book.notebooks import MARKER, execute
from servelab.book.tree import lessons

NOTEBOOKS = [item for item in lessons() if item.notebook.exists()]


@pytest.mark.engine
@pytest.mark.parametrize("lesson", NOTEBOOKS, ids=[item.rel for item in NOTEBOOKS])
def test_notebook_runs(lesson, vllm_shared, triton_shared, tmp_path):
    copy = tmp_path / lesson.notebook.name
    shutil.copy(lesson.notebook, copy)
    notebook = execute(copy, cwd=tmp_path)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert MARKER in text
