"""MkDocs hooks: navigation from the seed's lab tree, the generated status page, and what makes the site
work offline for a reader (local Mermaid, Chinese search, notebook links, CJK line breaks: see
``servelab.book.site``, ``servelab.book.vendor``, ``servelab.book.cjk``).

Registered in ``mkdocs.yml`` under ``hooks:``. A lesson enters the navigation when its page exists;
a lesson not written yet shows on the status page only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `code/` for mkdocs run without install

from mkdocs.plugins import event_priority  # noqa: E402
from mkdocs.structure.files import File  # noqa: E402

from servelab.book import site as site_fixes  # noqa: E402
from servelab.book.cjk import join_cjk_lines  # noqa: E402

from servelab.book.status import lesson_status, render_status_page  # noqa: E402
from servelab.book.tree import TRACKS  # noqa: E402


def build_nav(docs_dir: Path) -> list:
    nav: list = [{"首頁": "index.md"}]
    for track in TRACKS:
        section: list = [f"{track.slug}/index.md"]
        for lab in track.labs:
            pages = [{f"{lesson.seed_name[:2]} {lesson.title}": f"{lesson.rel}.md"}
                     for lesson in lab.lessons if (docs_dir / f"{lesson.rel}.md").exists()]
            if pages:
                section.append({f"{lab.seed_name.split('-')[1]} {lab.title}": pages})
        nav.append({track.title: section})
    nav.append({"關於本書": ["runtime.md", "glossary.md", "contributing.md", "status.md"]})
    return nav


def on_config(config):
    config["nav"] = build_nav(Path(config["docs_dir"]))
    # offline site: Mermaid is served by the site itself, fetched once from npm; only pages that draw a
    # diagram load it (on_post_page), the others do not download its 3.5 MB
    from servelab.book.vendor import MERMAID_URI, ensure_mermaid

    ensure_mermaid(Path(config["docs_dir"]) / MERMAID_URI)
    # Chinese search: every glossary term is one jieba token
    site_fixes.teach_jieba(site_fixes.glossary_terms(Path(config["docs_dir"]) / "glossary.md"))
    return config


def on_files(files, config):
    files.append(File.generated(config, "status.md", content=render_status_page()))
    return files


def render_lab_list(track_slug: str) -> str:
    """The labs of a track, each lesson linked when written (track pages sit at ``<track>/index.md``)."""
    track = next(t for t in TRACKS if t.slug == track_slug)
    lines = []
    for lab in track.labs:
        lines += [f"### {lab.seed_name.split('-')[1]} {lab.title}", "", f"`{lab.seed_name}`", ""]
        for lesson in lab.lessons:
            status = lesson_status(lesson)
            name = f"{lesson.seed_name} {lesson.title}"
            if status.page:
                name = f"[{name}]({lesson.lab}/{lesson.slug}.md)"
            lines.append(f"- {status.mark} {name}")
        lines.append("")
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    if "<!-- servelab:command " in markdown:  # exact command lines, from the launchers' argv builders
        from servelab.book.commands import expand

        markdown = expand(markdown)
    for track in TRACKS:
        marker = f"<!-- servelab:labs {track.slug} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render_lab_list(track.slug))
    return join_cjk_lines(markdown)  # no stray spaces from source line breaks between CJK characters


def on_page_content(html, page, config, files):
    if page.file.src_uri.endswith(".ipynb"):  # notebook links name source files: make them site URLs
        html = site_fixes.rewrite_notebook_links(html, page, files)
        html = site_fixes.align_notebook_heading_ids(html, page)
        html = site_fixes.notebook_download_button(html, page)
    return html


def on_post_page(output, page, config):
    from servelab.book.vendor import with_mermaid

    return with_mermaid(output, page.url)


@event_priority(-100)  # after the search plugin has written its index
def on_post_build(config):
    site_fixes.merge_duplicate_search_entries(Path(config["site_dir"]) / "search" / "search_index.json")
    site_fixes.patch_search_worker(Path(config["site_dir"]))
