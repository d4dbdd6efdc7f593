"""The book's contract: each rule holds on the real tree, and a planted violation of it is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servelab.book import contract
from servelab.book.tree import ROOT, lessons


@pytest.mark.parametrize("rule", sorted(contract.ALL_RULES))
def test_rule_holds_on_the_book(rule):
    errors = contract.ALL_RULES[rule](ROOT)
    assert not errors, f"{rule}: {len(errors)} violation(s)\n" + "\n".join(errors)


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


# --- the snippet contract: a copied snippet runs after the page's context section ------------------------
PLANTED_MODULE = """\
\"\"\"A planted lesson module.\"\"\"
from __future__ import annotations

# --8<-- [start:context]
import json
from dataclasses import dataclass

SHOWN = 3
# --8<-- [end:context]


def _hidden_helper(x):
    return x + 1


@dataclass
class Shape:
    n: int


# --8<-- [start:uses_hidden_helper]
def uses_hidden_helper(x):
    return _hidden_helper(x) * SHOWN
# --8<-- [end:uses_hidden_helper]

# --8<-- [start:self_sufficient]
def self_sufficient(x):
    return json.dumps({"x": x * SHOWN})
# --8<-- [end:self_sufficient]

# --8<-- [start:annotation_only]
def annotation_only(shape: Shape) -> int:
    return shape.n
# --8<-- [end:annotation_only]

# --8<-- [start:uses_file]
def uses_file():
    return json.dumps(__file__)
# --8<-- [end:uses_file]

class Model:
    # --8<-- [start:method]
    def execute(self, requests):
        return [self.answer(r) for r in requests]
    # --8<-- [end:method]
"""

CONTEXT_BLOCK = """\
??? info "本頁程式碼需要的匯入與常數（複製任一段程式碼前，先貼上這一段）"
    ```py title="servelab/planted.py"
    --8<-- "servelab/planted.py:context"
    ```
"""


def _snippet(section: str, marker: str = "") -> str:
    return f'{marker}\n```py title="servelab/planted.py"\n--8<-- "servelab/planted.py:{section}"\n```\n'


@pytest.fixture
def planted(tree) -> Path:
    (tree / "code" / "servelab" / "planted.py").write_text(PLANTED_MODULE, encoding="utf-8")
    return tree


def _undefined(tree: Path, page_text: str) -> list[str]:
    page = _page(tree, page_text)
    return contract.snippet_undefined_names(tree, pages=[page])


def test_snippet_using_a_hidden_helper_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_hidden_helper"))
    assert len(errors) == 1
    assert "planted.md:9 [servelab/planted.py:uses_hidden_helper]: undefined names _hidden_helper" in errors[0]


def test_snippet_with_its_context_passes(planted):
    assert _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("self_sufficient")) == []


def test_snippet_without_the_context_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + _snippet("self_sufficient"))
    assert any("undefined names json, SHOWN" in e and "no context section" in e for e in errors)


def test_future_annotations_do_not_hide_a_name(planted):
    """``from __future__ import annotations`` in the module is not on the page: the annotation must resolve."""
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("annotation_only"))
    assert any("undefined names Shape" in e for e in errors)


def test_file_in_a_snippet_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_file"))
    assert any("uses __file__" in e for e in errors)


def test_partial_snippet_is_skipped_only_when_marked(planted):
    unmarked = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_hidden_helper"))
    marked = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n"
                        + _snippet("uses_hidden_helper", contract.PARTIAL_MARKER))
    assert unmarked and marked == []


def test_indented_method_snippet_is_dedented(planted):
    assert _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("method")) == []


def test_undefined_name_in_the_context_is_caught(planted):
    module = planted / "code" / "servelab" / "planted.py"
    module.write_text(module.read_text().replace("SHOWN = 3", "SHOWN = HIDDEN_CONSTANT"))
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK)
    assert any("context: undefined names HIDDEN_CONSTANT" in e for e in errors)


def _lesson_with_snippets():
    return next(item for item in lessons() if item.page.exists())


def test_lesson_page_without_its_context_is_caught(tree):
    lesson = _lesson_with_snippets()
    page = tree / lesson.page.relative_to(ROOT)
    own = f"servelab/{lesson.rel}.py"
    page.write_text(f'# x\n\n```py title="{own}"\n--8<-- "{own}:main"\n```\n', encoding="utf-8")
    errors = [e for e in contract.snippet_context_shown(tree) if lesson.rel in e]
    assert errors and f"does not show {own}:context" in errors[0]


def test_lesson_page_with_its_context_first_passes(tree):
    lesson = _lesson_with_snippets()
    page = tree / lesson.page.relative_to(ROOT)
    own = f"servelab/{lesson.rel}.py"
    context = f'??? info "x"\n    ```py title="{own}"\n    --8<-- "{own}:context"\n    ```\n\n'
    snippet = f'```py title="{own}"\n--8<-- "{own}:main"\n```\n'
    page.write_text("# x\n\n" + context + snippet, encoding="utf-8")
    assert not [e for e in contract.snippet_context_shown(tree) if lesson.rel in e]
    page.write_text("# x\n\n" + snippet + "\n" + context, encoding="utf-8")
    assert any("comes before" in e for e in contract.snippet_context_shown(tree) if lesson.rel in e)


# --- notebook hygiene: no machine paths, no library warnings in stored outputs --------------------------
def _stored_notebook(tree: Path, outputs: list[dict]) -> Path:
    import nbformat

    cell = nbformat.v4.new_code_cell("from servelab.book.notebooks import where_it_ran\nwhere_it_ran()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="執行環境：CPU\n"),
                    *[nbformat.v4.new_output("stream", **o) for o in outputs]]
    path = tree / "docs" / "notebooks" / "planted.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("stdout", "model at /root/.cache/servelab/models/smollm2\n", "machine path /root/.cache"),
    ("stdout", "repository: /tmp/tmpab12cd/serve-repo\n", "machine path /tmp/tmpab12cd"),
    ("stdout", "('/work/main/.venv/bin/python', 0)\n", "machine path /work/main/.venv"),
    ("stdout", "/home/alice/servelab\n", "machine path /home/alice"),
    ("stderr", "x.py:3: FutureWarning: `reduce_op` is deprecated\n  if x:\n", "library noise"),
    ("stderr", "foo.py:9: UserWarning: careful\n", "library noise"),
    ("stderr", "[W1126 05:02:38.3 utils.cpp:68] Warning: NUMA binding\n", "library noise"),
    ("stderr", "nanobind: leaked 30 instances!\n", "library noise"),
])
def test_dirty_notebook_output_is_caught_and_scrubbed(tree, name, text, expected):
    from servelab.book.notebooks import scrub_file

    path = _stored_notebook(tree, [{"name": name, "text": text}])
    errors = [e for e in contract.notebook_hygiene(tree) if "planted.ipynb" in e]
    assert any(expected in e for e in errors), errors
    assert scrub_file(path)
    assert not [e for e in contract.notebook_hygiene(tree) if "planted.ipynb" in e]
    assert "執行環境：CPU" in path.read_text(encoding="utf-8")  # the provenance line stays
    assert not [e for e in contract.unexecuted_notebooks(tree) if "planted.ipynb" in e]


def test_scrubber_keeps_real_output_and_makes_paths_portable(tree):
    from servelab.book.notebooks import scrub_stderr, scrub_text

    assert scrub_text(f"{ROOT}/results/x.json") == "results/x.json"
    assert scrub_text("/root/.cache/servelab/models/m") == "~/.cache/servelab/models/m"
    assert scrub_text("/x/venv/lib/python3.11/site-packages/vllm/a.py") == "site-packages/vllm/a.py"
    assert scrub_text("http://127.0.0.1:8000/v1/models") == "http://127.0.0.1:8000/v1/models"
    assert scrub_stderr("x.py:1: UserWarning: w\n  src\nTraceback: real\n") == "Traceback: real\n"
