"""The site builds in strict mode, its navigation mirrors the tree, search segments Chinese, the site
needs nothing from outside 127.0.0.1, notebook links resolve, CJK line breaks add no spaces, and a
missing snippet fails the build. (The same site in a real browser: test_browser.py.)"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servelab.book.tree import ROOT, TRACKS, lessons

MKDOCS = [sys.executable, "-m", "mkdocs"]


def build(project: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "build", "--strict", "-f", str(project / "mkdocs.yml"), "-d", str(out)],
                          capture_output=True, text=True, cwd=project)


@pytest.fixture(scope="module")
def site() -> Path:
    from servelab.testing.browser import built_site

    return built_site()  # one strict build per session, shared with tests/book/test_browser.py


def test_status_page_lists_all_36_lessons(site):
    html = (site / "status" / "index.html").read_text(encoding="utf-8")
    for item in lessons():
        assert item.seed_name in html
    assert html.count("<tr>") >= 36 + 9  # a header row per lab


def test_status_page_is_true(site):
    """A lesson counts as ✅ exactly when its four files exist."""
    from servelab.book.status import lesson_status

    html = (site / "status" / "index.html").read_text(encoding="utf-8")
    for item in lessons():
        status = lesson_status(item)
        row = re.search(rf"<tr>\s*<td>(?:(?!</tr>).)*{re.escape(item.seed_name)}(?:(?!</tr>).)*</tr>", html, re.S)
        assert row, item.seed_name
        assert status.mark in row.group(0)


def test_nav_shows_both_tracks(site):
    html = (site / "index.html").read_text(encoding="utf-8")
    for track in TRACKS:
        assert track.title in html


def test_written_lessons_are_in_the_nav_and_unwritten_are_not_pages(site):
    for item in lessons():
        page = site / item.track / item.lab / item.slug / "index.html"
        assert page.exists() == item.page.exists(), item.rel


def test_search_segments_chinese(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert "zh" in index["config"]["lang"]
    landing = " ".join(doc["text"] for doc in index["docs"] if doc["location"].split("#")[0] == "")
    assert "\u200b" in landing  # jieba's segment boundaries
    for term in ("連續批次", "分頁"):
        assert term in landing.replace("\u200b", ""), term


def test_notebook_pages_have_a_download_button(site):
    for item in lessons():
        if item.notebook.exists():
            html = (site / "notebooks" / item.track / item.lab / item.slug / "index.html").read_text(encoding="utf-8")
            assert re.search(rf'<a href="{item.slug}\.ipynb" download', html), item.rel
            assert (site / "notebooks" / item.track / item.lab / item.slug / f"{item.slug}.ipynb").is_file()


def test_lesson_pages_link_their_notebook(site):
    for item in lessons():
        if item.page.exists():
            html = (site / item.track / item.lab / item.slug / "index.html").read_text(encoding="utf-8")
            assert f"notebooks/{item.track}/{item.lab}/{item.slug}/" in html, item.rel


def test_missing_snippet_fails_the_build(tmp_path):
    for name in ("docs", "code", "results"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "planted.md").write_text(
        '# x\n\n```py\n--8<-- "servelab/runtime/settings.py:no_such_section"\n```\n', encoding="utf-8")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "no_such_section" in result.stderr


# ------------------------------------------------------------------------------ offline, search, notebooks

def test_the_site_serves_its_own_mermaid_and_asks_nothing_from_outside(site):
    from servelab.book.vendor import MERMAID_SHA256, MERMAID_URI

    assert hashlib.sha256((site / MERMAID_URI).read_bytes()).hexdigest() == MERMAID_SHA256
    html = (site / "index.html").read_text(encoding="utf-8")
    assert MERMAID_URI in html
    # only a page that draws a diagram loads the 3.5 MB script (the glossary has none)
    assert MERMAID_URI not in (site / "glossary" / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html  # theme.font: false
    assert "md-source" not in html and "github.com" not in html  # repository link off by default
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="https?://(?!127\.0\.0\.1)', text), page


def test_every_glossary_term_is_one_search_token(site):
    from servelab.book.site import glossary_terms

    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    tokens = {t for doc in index["docs"] for t in re.split(index["config"]["separator"], doc["title"] + " " + doc["text"])}
    missing = [t for t in glossary_terms(ROOT / "docs" / "glossary.md") if t not in tokens]
    assert missing == []


def test_search_entries_have_unique_locations(site):
    """Material's worker keeps one highlight table per location: a duplicate crashed every query hitting it."""
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = [doc["location"] for doc in index["docs"]]
    assert len(locations) == len(set(locations))


def test_search_worker_tries_the_last_word_of_a_query(site):
    from servelab.book.site import _WORKER_FIX

    (worker,) = (site / "assets" / "javascripts" / "workers").glob("search.*.min.js")
    assert _WORKER_FIX in worker.read_text(encoding="utf-8")


def test_notebook_links_point_at_site_pages(site):
    for item in lessons():
        if not item.notebook.exists():
            continue
        html = (site / "notebooks" / item.track / item.lab / item.slug / "index.html").read_text(encoding="utf-8")
        for href in re.findall(r'<a\s[^>]*?href="([^"#]+\.(?:md|ipynb))"', html):
            assert href == f"{item.slug}.ipynb", (item.rel, href)  # only the download link names a file


def test_notebook_link_rewrite():
    from types import SimpleNamespace

    from servelab.book.site import rewrite_notebook_links

    class Files:
        def get_file_from_path(self, path):
            if path == "vllm/lab2_1/l04.md":
                return SimpleNamespace(src_uri=path, url_relative_to=lambda _: "../../../../vllm/lab2_1/l04/")
            return page.file if path == page.file.src_uri else None

    page = SimpleNamespace(file=SimpleNamespace(src_uri="notebooks/vllm/lab2_1/l04.ipynb"))
    html = ('<a href="../../../vllm/lab2_1/l04.md#sec">x</a> <a href="https://x.org/a.md">y</a> <a href="#top">z</a>'
            ' <a href="l04.ipynb">download</a>')
    assert rewrite_notebook_links(html, page, Files()) == (
        '<a href="../../../../vllm/lab2_1/l04/#sec">x</a> <a href="https://x.org/a.md">y</a> <a href="#top">z</a>'
        ' <a href="l04.ipynb">download</a>')


# ------------------------------------------------------------------------------------------ CJK line breaks

def test_cjk_line_breaks_are_joined_outside_code_tables_and_html():
    from servelab.book.cjk import join_cjk_lines

    assert join_cjk_lines("看**重點**\n**粗體**開頭\n[連結](x.md)\n接著\n* 清單") == "看**重點****粗體**開頭[連結](x.md)接著\n* 清單"
    src = ("記憶體裡塞進更多對話、\n在流量高峰時也穩定。\nvLLM 的\nEnglish\n中文\n\n- 清單第一行，\n  第二行\n"
           "\n```py\n# 程式碼裡的中文\n# 不合併\n```\n\n    縮排程式碼一\n    縮排程式碼二\n\n!!! note\n    提醒一\n    提醒二\n"
           "\n| 表格 | 欄 |\n| 中 |\n文 |\n\n硬換行  \n下一行\n<div>中文\n中文</div>\n")
    assert join_cjk_lines(src) == (
        "記憶體裡塞進更多對話、在流量高峰時也穩定。\nvLLM 的\nEnglish\n中文\n\n- 清單第一行，第二行\n"
        "\n```py\n# 程式碼裡的中文\n# 不合併\n```\n\n    縮排程式碼一\n    縮排程式碼二\n\n!!! note\n    提醒一提醒二\n"
        "\n| 表格 | 欄 |\n| 中 |\n文 |\n\n硬換行  \n下一行\n<div>中文\n中文</div>\n")


def test_no_stray_space_between_cjk_characters_on_the_pages(site):
    """A space between two CJK characters in a page's prose comes from a source line break."""
    from servelab.book.cjk import CJK

    stray = re.compile(f"[{CJK}]\n[{CJK}]")
    for page in site.rglob("index.html"):
        if "notebooks" in page.parts or "assets" in page.parts:
            continue
        for paragraph in re.findall(r"<p>(.*?)</p>", page.read_text(encoding="utf-8"), re.S):
            text = re.sub(r"<[^>]+>", "", re.sub(r"<code\b.*?</code>", "x", paragraph, flags=re.S))
            assert not stray.search(text), (page, text)
