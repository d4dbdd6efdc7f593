"""The site builds in strict mode, its navigation mirrors the tree, search segments Chinese, and a
missing snippet fails the build."""

from __future__ import annotations

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
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


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
            assert f'{item.slug}.ipynb' in html and "download" in html


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
