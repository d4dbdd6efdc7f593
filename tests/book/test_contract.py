"""The book's contract: each rule holds on the real tree, and a planted violation of it is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servelab.book import contract
from servelab.book.tree import ROOT, lessons


@pytest.mark.parametrize("rule", sorted(contract.ALL_RULES))
def test_rule_holds_on_the_book(rule):
    assert contract.ALL_RULES[rule](ROOT) == []


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the book's docs/ and code/ to plant violations in."""
    for name in ("docs", "code", "results"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docker").mkdir(exist_ok=True)
    return tmp_path


def _page(tree: Path, text: str) -> Path:
    page = tree / "docs" / "planted.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_missing_snippet_section_is_caught(tree):
    _page(tree, '# x\n\n```py\n--8<-- "servelab/runtime/settings.py:no_such_section"\n```\n')
    errors = contract.missing_snippets(tree)
    assert any("section 'no_such_section' not found" in e for e in errors)


def test_missing_snippet_file_is_caught(tree):
    _page(tree, '# x\n\n```py\n--8<-- "servelab/nowhere.py:main"\n```\n')
    assert any("servelab/nowhere.py does not exist" in e for e in contract.missing_snippets(tree))


def test_dead_snippet_is_caught(tree):
    module = tree / "code" / "servelab" / "runtime" / "settings.py"
    module.write_text(module.read_text() + "\n# --8<-- [start:orphan]\nX = 1\n# --8<-- [end:orphan]\n")
    assert any("section 'orphan' is not shown by any page" in e for e in contract.dead_sections(tree))


def test_unbalanced_section_is_caught(tree):
    module = tree / "code" / "servelab" / "runtime" / "settings.py"
    module.write_text(module.read_text() + "\n# --8<-- [start:half]\nX = 1\n")
    assert contract.unbalanced_sections(tree)


@pytest.mark.parametrize("fence", ["```py", "```console", "```pycon", "```python title=\"x.py\"", "```shell"])
def test_bare_code_block_is_caught(tree, fence):
    _page(tree, f"# x\n\n{fence}\nprint('never run')\n```\n")
    assert any("planted.md:3" in e for e in contract.bare_blocks(tree))


def test_runnable_and_included_blocks_pass(tree):
    _page(tree, '# x\n\n```python\nprint(1)\n```\n\n```py\n--8<-- "servelab/runtime/settings.py:settings"\n```\n')
    assert not [e for e in contract.bare_blocks(tree) if "planted.md" in e]


def test_skipped_block_is_caught(tree):
    _page(tree, "# x\n\n<!--pytest-codeblocks:skip-->\n```python\nprint(1)\n```\n")
    assert any("skipped code block" in e for e in contract.bare_blocks(tree))


@pytest.mark.parametrize("line", [
    "python -m vllm.entrypoints.openai.api_server --model x",
    'extra_body={"guided_json": schema}',
    "vllm serve m --disable-log-requests",
    "rate(vllm:gpu_cache_usage_perc[1m])",
    '@app.on_event("startup")',
    "LLM(model=m, speculative_model=d)",
])
def test_stale_api_is_caught(tree, line):
    _page(tree, f"# x\n\n一般說明。\n\n{line}\n")
    assert any("planted.md:5" in e for e in contract.stale_api_hits(tree))


def test_stale_api_inside_a_removed_note_is_allowed(tree):
    _page(tree, "# x\n\n!!! warning \"已移除\"\n    `guided_json` 已移除，改用 `structured_outputs`。\n")
    assert not [e for e in contract.stale_api_hits(tree) if "planted.md" in e]


def test_incomplete_lesson_is_caught(tree):
    lesson = next(item for item in lessons() if not item.page.exists())
    module = tree / lesson.module.relative_to(ROOT)
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text("def main():\n    return 0\n")
    errors = contract.mirror_errors(tree)
    assert any(lesson.rel in e and "lacks" in e for e in errors)


def test_unexecuted_notebook_is_caught(tree):
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    path = tree / "docs" / "notebooks" / "planted.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    errors = contract.unexecuted_notebooks(tree)
    assert any("planted.ipynb: code cell 1 has no output" in e for e in errors)
    assert any("planted.ipynb: does not record where it ran" in e for e in errors)
