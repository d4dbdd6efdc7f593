"""What the MkDocs hooks do so the published site works for a reader, offline.

- ``glossary_terms`` / ``teach_jieba``: every glossary term is one search token. Material's search
  plugin segments Chinese with jieba at build time; jieba's dictionary is Simplified Chinese and cuts
  Taiwan terms apart (執行個體 → 執行|個體), while the browser segments a query against the index's own
  tokens, so a term jieba cut apart could not be found as typed.
- ``patch_search_worker``: a Chinese query's last word takes part in the search (see below).
- ``notebook_download_button``: each notebook page offers its ``.ipynb`` for download.
- ``align_notebook_heading_ids``: a notebook page's table of contents links to its headings.
- ``merge_duplicate_search_entries``: mkdocs-jupyter pages give several search entries the same
  location. Material's search worker keeps one highlight table per location, so a query that hits such a
  page crashed in the worker ("Invalid query … reading '0'") and the reader saw no result at all — this
  is why 批次 found nothing although the index holds it.
- ``rewrite_notebook_links``: a notebook's Markdown links name source files (``../../../vllm/…/x.md``,
  relative to the ``.ipynb``); mkdocs-jupyter leaves them as they are, a 404 on the site. They are
  resolved like MkDocs resolves a page's links, and an unknown target is a warning (strict: an error).
"""

from __future__ import annotations

import html
import json
import logging
import posixpath
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("mkdocs.plugins.servelab")

# Used when docs/glossary.md does not exist (yet): the book's terminology (CONVENTIONS §7) plus the
# serving words every lab uses.
FALLBACK_TERMS = [
    "推論", "模型儲存庫", "用戶端", "使用者", "執行個體", "執行個體群組", "範本", "後端", "活化值", "預設",
    "記憶體", "快取", "執行緒", "行程", "最佳化", "效能", "品質", "資料", "文件", "伺服器", "網路", "執行",
    "呼叫", "警示", "並行", "佇列", "批次", "連續批次", "動態批次", "分頁", "吞吐量", "延遲", "量化",
]
_CELL_MARKUP = re.compile(r"[*_`]|\[([^\]]*)\]\([^)]*\)")
_HAN = re.compile(r"[\u3400-\u9fff]+")


def glossary_terms(glossary: Path) -> list[str]:
    """The zh-TW terms: the first column of each table row of the glossary page, else the fallback list."""
    if not glossary.exists():
        return list(FALLBACK_TERMS)
    terms: list[str] = []
    for line in glossary.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cell = line.strip().strip("|").split("|")[0]
        cell = _CELL_MARKUP.sub(lambda m: m.group(1) or "", cell)
        terms += [t for t in _HAN.findall(cell) if len(t) >= 2]  # 「引擎、引擎核心」, 「執行個體 (instance)」
    return list(dict.fromkeys(terms)) or list(FALLBACK_TERMS)


def teach_jieba(terms: list[str]) -> None:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    for term in terms:
        jieba.add_word(term)  # frequency chosen by jieba so the term is always cut as one word


_HREF = re.compile(r'(<a\s[^>]*?href=")([^"]+)(")')


def rewrite_notebook_links(content: str, page, files) -> str:
    """Rewrite a notebook page's links to other source files into the site's URLs."""
    src_dir = posixpath.dirname(page.file.src_uri)

    def fix(match: re.Match) -> str:
        href = html.unescape(match.group(2))
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("#", "/")) or not parts.path:
            return match.group(0)
        if not parts.path.endswith((".md", ".ipynb")):
            return match.group(0)
        target_uri = posixpath.normpath(posixpath.join(src_dir, unquote(parts.path)))
        target = files.get_file_from_path(target_uri)
        if target is None:
            log.warning("Notebook '%s' links to '%s', which is not a page of the site", page.file.src_uri, href)
            return match.group(0)
        if target.src_uri == page.file.src_uri:  # the download link: the .ipynb is copied beside the page
            return match.group(0)
        url = target.url_relative_to(page.file)
        if parts.fragment:
            url += "#" + parts.fragment
        return match.group(1) + html.escape(url) + match.group(3)

    return _HREF.sub(fix, content)


_HEADING = re.compile(r'<h([1-6])(\s[^>]*?)?\sid="([^"]*)"')


def align_notebook_heading_ids(content: str, page) -> str:
    """Give a notebook's headings the ids its table of contents links to.

    mkdocs-jupyter builds the table of contents from the Markdown (Chinese headings → ``#_1``, ``#_2``;
    inline code dropped), but nbconvert gives the headings other ids (``id=""`` for a Chinese heading), so
    the reader's contents links went nowhere. Headings and contents entries are paired in order, by level.
    """
    def flat(items):
        for item in items:
            yield item.level, item.id
            yield from flat(item.children)

    toc = list(flat(page.toc))
    headings = list(_HEADING.finditer(content))
    levels = {level for level, _ in toc}
    wanted = [m for m in headings if int(m.group(1)) in levels]
    if not toc or [int(m.group(1)) for m in wanted] != [level for level, _ in toc]:
        if toc:
            log.warning("Notebook '%s': its headings do not match its table of contents", page.file.src_uri)
        return content
    out, last = [], 0
    for match, (_, anchor) in zip(wanted, toc):
        out += [content[last:match.start(3)], html.escape(anchor)]
        last = match.end(3)
    return "".join(out) + content[last:]


# Material 9.8.1's search worker segments a Chinese query against the index's tokens, but its loop
# `for(let o=s+1;o<t.length;o++)` never tries a word that ends the query: 模型儲存庫 was searched as
# 模型* 儲存* and ranked pages about any 模型 first. The fix is one character, applied to the built site.
_WORKER_BUG = "for(let o=s+1;o<t.length;o++)t.slice(s,o)in e"
_WORKER_FIX = "for(let o=s+1;o<=t.length;o++)t.slice(s,o)in e"


def patch_search_worker(site_dir: Path) -> None:
    workers = sorted((site_dir / "assets" / "javascripts" / "workers").glob("search.*.min.js"))
    for worker in workers:
        text = worker.read_text(encoding="utf-8")
        if _WORKER_FIX in text:
            continue
        if _WORKER_BUG not in text:
            raise RuntimeError(f"{worker.name}: Material's query segmentation changed; review "
                               "servelab.book.site.patch_search_worker")
        worker.write_text(text.replace(_WORKER_BUG, _WORKER_FIX), encoding="utf-8")


def notebook_download_button(content: str, page) -> str:
    """A download button for the notebook (mkdocs-jupyter copies the ``.ipynb`` beside the page)."""
    import material

    name = posixpath.basename(page.file.src_uri)
    icon = (Path(material.__file__).parent / "templates" / ".icons" / "material" / "download.svg").read_text()
    button = (f'<a href="{html.escape(name)}" download title="下載筆記本（{html.escape(name)}）" '
              f'class="md-content__button md-icon servelab-download">{icon.strip()}</a>')
    return button + content


def merge_duplicate_search_entries(index_path: Path) -> int:
    """Merge search entries that share a location (keep the first, append the others' text)."""
    if not index_path.exists():
        return 0
    data = json.loads(index_path.read_text(encoding="utf-8"))
    merged: dict[str, dict] = {}
    for doc in data["docs"]:
        first = merged.get(doc["location"])
        if first is None:
            merged[doc["location"]] = doc
        else:
            first["text"] = " ".join(t for t in (first.get("text", ""), doc.get("text", "")) if t)
    dropped = len(data["docs"]) - len(merged)
    if dropped:
        data["docs"] = list(merged.values())
        index_path.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    return dropped
