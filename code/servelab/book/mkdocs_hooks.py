"""MkDocs hooks: navigation from the seed's lab tree, and the generated status page.

Registered in ``mkdocs.yml`` under ``hooks:``. A lesson enters the navigation when its page exists;
a lesson not written yet shows on the status page only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `code/` for mkdocs run without install

from mkdocs.structure.files import File  # noqa: E402

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
    nav.append({"關於本書": ["runtime.md", "contributing.md", "status.md"]})
    return nav


def on_config(config):
    config["nav"] = build_nav(Path(config["docs_dir"]))
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
    for track in TRACKS:
        marker = f"<!-- servelab:labs {track.slug} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render_lab_list(track.slug))
    return markdown
