"""The terminology guard: the book uses the glossary's terms, and a planted variant is caught (and fixed)."""

from __future__ import annotations

import json

import pytest

from servelab.book import terminology
from servelab.book.tree import ROOT


def test_the_book_uses_the_glossary_terms():
    hits = terminology.terminology_hits(ROOT)
    assert not hits, (f"{len(hits)} non-preferred term(s); run `python -m servelab.book.terminology --fix PATH`:\n"
                      + "\n".join(hits[:60]))


def test_every_preferred_term_is_in_the_glossary():
    glossary = (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8")
    for _, preferred, _ in terminology.TERMS:
        if preferred != "token":
            assert preferred in glossary, preferred


@pytest.mark.parametrize("text, found", [
    ("把模型放進模型倉庫。", "模型倉庫"),
    ("用戶送出請求。", "用戶"),
    ("客戶端逾時。", "客戶端"),
    ("Python backend 啟動 stub。", "backend"),
    ("這是推理引擎。", "推理"),
    ("聊天模板很重要。", "模板"),
    ("啟動值峰值 4 GiB。", "啟動值"),
    ("伺服器會報錯。", "報錯"),
    ("    ```mermaid\n    A[模型倉庫] --> B\n    ```", "模型倉庫"),
])
def test_planted_variant_is_caught(text, found):
    assert [hit.found for hit in terminology.scan_markdown(text)] == [found]


@pytest.mark.parametrize("text", [
    "# 高效推理與服務",
    "用戶端送出請求，使用者看到回應。",
    "Triton 不會回報錯誤。",
    "`backend: \"python\"` 指定後端。",
    "後端（backend）執行模型。",
    "以「後端」（Python-based backend）載入。",
    "執行個體群組（instance group）",
    "```yaml\nbackend: python  # 模型倉庫\n```",
    "見 [Python backend](https://github.com/triton-inference-server/python_backend)。",
    "<https://example.com/模型倉庫/backend>",
    "### 後端與 platform {#backend}",
    "<!-- 模型倉庫 backend -->",
    "錯誤訊息 **`unable to find backend library`**。",
    "官方文件的「PyTorch 2.0 Backend [Experimental]」。",
    "- Python-based backends: <https://docs.nvidia.com/x.html>",
])
def test_allowed_uses_are_not_hits(text):
    assert terminology.scan_markdown(text) == []


def test_fix_rewrites_prose_only():
    text = ("每個 instance 是一個行程，Python backend 讀 `model.py`；`backend: \"python\"`。\n"
            "```py\nrepo = '模型倉庫'  # backend\n```\n"
            "見 [模型倉庫](https://example.com/backend) 與 <https://x.org/backend>。\n")
    fixed = terminology.apply(text, terminology.scan_markdown(text))
    assert fixed == ("每個執行個體是一個行程，Python 後端讀 `model.py`；`backend: \"python\"`。\n"
                     "```py\nrepo = '模型倉庫'  # backend\n```\n"
                     "見 [模型儲存庫](https://example.com/backend) 與 <https://x.org/backend>。\n")
    assert terminology.scan_markdown(fixed) == []


def test_python_comments_and_docstrings_are_scanned_but_not_code():
    source = ('"""模型倉庫的工具。"""\n'
              'NAME = "模型倉庫"  # 客戶端用的名稱\n'
              'call("模型倉庫",\n'
              '     "客戶端")\n'
              'def f():\n'
              '    """English docstring about a backend."""\n')
    found = [(hit.line, hit.found) for hit in terminology.scan_python(source)]
    assert found == [(1, "模型倉庫"), (2, "客戶端")]
    fixed = terminology.apply(source, terminology.scan_python(source))
    assert 'NAME = "模型倉庫"' in fixed and '"客戶端")' in fixed and "模型儲存庫的工具" in fixed


def test_planted_variants_in_a_tree_are_caught_and_fixed(tmp_path):
    (tmp_path / "docs" / "notebooks" / "t").mkdir(parents=True)
    (tmp_path / "code" / "servelab").mkdir(parents=True)
    page = tmp_path / "docs" / "planted.md"
    page.write_text("# 頁\n\n用戶透過客戶端呼叫。\n", encoding="utf-8")
    module = tmp_path / "code" / "servelab" / "m.py"
    module.write_text("# 默認的線程數\nX = 1\n", encoding="utf-8")
    notebook = tmp_path / "docs" / "notebooks" / "t" / "n.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["## 聊天模板\n", "說明"]},
        {"cell_type": "code", "metadata": {}, "source": ["x = '模板'"], "outputs": [], "execution_count": None},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1, ensure_ascii=False) + "\n")
    hits = terminology.terminology_hits(tmp_path)
    assert len(hits) == 5, hits
    assert any("planted.md:3" in hit and "'用戶'" in hit for hit in hits)
    assert any("m.py:1" in hit and "'線程'" in hit for hit in hits)
    assert any("n.ipynb (markdown cell 1):1" in hit for hit in hits)
    for path in (page, module, notebook):
        terminology.fix_file(path, tmp_path)
    assert terminology.terminology_hits(tmp_path) == []
    assert "使用者透過用戶端呼叫" in page.read_text(encoding="utf-8")
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    assert cells[0]["source"] == ["## 聊天範本\n", "說明"] and cells[1]["source"] == ["x = '模板'"]


def test_cli_lists_and_exits_nonzero_on_hits(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("模型倉庫\n", encoding="utf-8")
    lines: list[str] = []
    assert terminology.main([str(page)], out=lines.append) == 1
    assert "'模型倉庫' → 模型儲存庫" in lines[0]
    assert terminology.main([str(page), "--fix"], out=lines.append) == 0
    assert page.read_text(encoding="utf-8") == "模型儲存庫\n"
