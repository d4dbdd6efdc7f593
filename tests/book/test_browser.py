"""The built site in a real browser, offline, as a reader meets it.

Debian's Chromium (``make setup`` installs it) driven by Playwright opens every page and notebook page
of the site built with ``mkdocs build --strict``, served on 127.0.0.1; every request that would leave
127.0.0.1 is aborted and counted as a failure. The checks: no console errors, no external requests,
every internal link resolves, every Mermaid diagram is drawn as SVG, Chinese search finds the right page,
a vLLM|Triton tab choice follows the reader to the next page, code blocks have copy buttons, dark mode
works. Each check is shown, at the end of this file, to catch a failure planted into a copy of the site.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from servelab.book.site import glossary_terms
from servelab.book.vendor import MERMAID_URI
from servelab.book.tree import ROOT
from servelab.testing.browser import (CHROMIUM, PageAudit, audit_page, broken_links, built_site, chosen_tabs,
                                      color_scheme, nav_order, new_context, search, serve, site_pages)

# Single two-character words first: they are what jieba and the browser's query segmentation disagree on.
SEARCH_TERMS = ["批次", "分頁", "延遲", "指標", "連續批次", "動態批次", "吞吐量", "模型儲存庫", "執行個體群組",
                "Prometheus"]
TABS = ("vLLM", "Triton")
TOP = 1  # the right page is the first result


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def site() -> Path:
    return built_site()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def base(site):
    with serve(site) as url:
        yield url


@pytest.fixture(scope="module")
def context(browser):
    context = new_context(browser)
    yield context
    context.close()


@pytest.fixture(scope="module")
def page(context):
    return context.new_page()


@pytest.fixture
def fresh_page(context):
    """A page of its own for one planted check (the module's ``page`` keeps the reader's state)."""
    page = context.new_page()
    yield page
    page.close()


@pytest.fixture(scope="module")
def audits(page, base, site) -> dict[str, PageAudit]:
    return {path: audit_page(page, base, path, site) for path in site_pages(site)}


# ------------------------------------------------------------------------------------ checks (reusable)

def console_problems(audits) -> list[str]:
    return [f"{a.path or '/'}: {err}" for a in audits.values() for err in a.console_errors]


def external_problems(audits) -> list[str]:
    return [f"{a.path or '/'}: {url}" for a in audits.values() for url in a.external_requests]


def link_problems(audits, base, site) -> list[str]:
    return ([f"{a.path or '/'} → {link}" for a in audits.values() for link in broken_links(a.links, base, site)]
            + [f"{a.path or '/'} → #{anchor}" for a in audits.values() for anchor in a.missing_anchors])


def mermaid_problems(audits) -> list[str]:
    return [f"{a.path}: {a.mermaid_svgs} of {a.mermaid_blocks} diagrams drawn" for a in audits.values()
            if a.mermaid_svgs != a.mermaid_blocks]


def copy_problems(audits) -> list[str]:
    return [f"{a.path}: {a.copy_buttons} copy buttons for {a.code_blocks} code blocks" for a in audits.values()
            if a.copy_buttons != a.code_blocks]


def pages_holding(site: Path) -> dict[str, set[str]]:
    """term → the pages whose indexed text or title holds it (as the reader sees the pages)."""
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    holding: dict[str, set[str]] = {}
    for term in search_terms(site):
        holding[term] = {doc["location"].split("#")[0] for doc in index["docs"]
                         if term in (doc["title"] + " " + doc["text"]).replace("\u200b", "")}
    return holding


def search_terms(site: Path) -> list[str]:
    return list(dict.fromkeys([*SEARCH_TERMS, *glossary_terms(ROOT / "docs" / "glossary.md")]))


def search_problems(page, base, holding: dict[str, set[str]], terms) -> list[str]:
    page.goto(base)
    problems = []
    for term in terms:
        results = [urlsplit(url).path[len(urlsplit(base).path):] for url in search(page, term)]
        if not results:
            problems.append(f"{term}: no result")
        elif not holding[term]:
            problems.append(f"{term}: no page holds it")
        elif not set(results[:TOP]) & holding[term]:
            problems.append(f"{term}: none of the first {TOP} results ({results[:TOP]}) holds it")
    return problems


def tab_problem(page, base, first: str, second: str, label: str = TABS[1]) -> str | None:
    page.goto(base + first)
    page.locator(".tabbed-labels > label", has_text=label).first.click()
    if chosen_tabs(page, label)[1] == 0:
        return f"{first}: clicking {label} did not select it"
    page.goto(base + second)
    offered, chosen = chosen_tabs(page, label)
    if not offered or chosen != offered:
        return f"{second}: {chosen} of {offered} tab sets show {label} after choosing it on {first}"
    return None


def instant_mermaid_problem(page, base, start: str, target: str) -> str | None:
    """Arrive at a page with diagrams by Material's instant navigation (a click, no page load) from a page
    without any: the diagrams must still be drawn, from the site's own Mermaid."""
    page.goto(base + start)
    page.evaluate("""href => { const a = document.createElement('a'); a.href = href; a.id = 'servelab-go';
                               a.textContent = 'go'; document.querySelector('article').append(a); }""", base + target)
    page.click("#servelab-go")
    page.wait_for_url(base + target)
    with contextlib.suppress(Exception):
        page.wait_for_function("document.querySelectorAll('pre.mermaid').length === 0", timeout=8000)
    drawn, blocks = page.evaluate("""() => [[...document.querySelectorAll('div.mermaid')].filter(d => d.shadowRoot
        && d.shadowRoot.querySelector('svg')).length, document.querySelectorAll('.mermaid').length]""")
    if blocks == 0 or drawn != blocks:
        return f"{start} → {target} (instant navigation): {drawn} of {blocks} diagrams drawn"
    return None


def diagram_pages(audits, site) -> tuple[str, list[str]]:
    """A page without diagrams (where Material loads no Mermaid), then the pages with diagrams, in reading order."""
    order = [p for p in nav_order(site) if p in audits]
    plain = next(p for p in order if p and not audits[p].mermaid_blocks and not p.startswith("notebooks/"))
    return plain, [p for p in order if audits[p].mermaid_blocks]


def dark_mode_problem(page, base, path: str = "") -> str | None:
    page.goto(base + path)
    scheme, light = color_scheme(page)
    page.locator("form[data-md-component=palette] label:not([hidden])").first.click()
    page.wait_for_timeout(100)
    new_scheme, dark = color_scheme(page)
    page.locator("form[data-md-component=palette] label:not([hidden])").first.click()  # back to light
    if new_scheme != "slate" or dark > 0.2 or light < 0.8:
        return f"palette toggle: {scheme} ({light:.2f}) → {new_scheme} ({dark:.2f})"
    return None


def tab_pages(audits, site) -> tuple[str, str]:
    """Two pages in reading order that both offer the vLLM|Triton tabs."""
    with_tabs = [p for p in nav_order(site) if p in audits and set(TABS) <= set(audits[p].tab_labels)]
    assert len(with_tabs) >= 2, with_tabs
    return with_tabs[0], with_tabs[1]


# ----------------------------------------------------------------------------------- the site as built

def test_every_page_and_notebook_page_was_opened(audits, site):
    assert "" in audits and any(p.startswith("notebooks/") for p in audits), sorted(audits)
    assert len(audits) >= 10


def test_no_console_errors(audits):
    assert console_problems(audits) == []


def test_no_request_leaves_the_site(audits):
    assert external_problems(audits) == []


def test_every_internal_link_resolves(audits, base, site):
    assert sum(len(a.links) for a in audits.values() if a.path.startswith("notebooks/")) > 0
    assert link_problems(audits, base, site) == []


def test_every_mermaid_block_is_drawn_as_svg(audits):
    assert sum(a.mermaid_blocks for a in audits.values()) > 0
    assert mermaid_problems(audits) == []


def test_diagrams_are_drawn_after_instant_navigation_from_a_page_without_any(page, base, audits, site):
    plain, with_diagrams = diagram_pages(audits, site)
    assert MERMAID_URI not in (site / plain / "index.html").read_text(encoding="utf-8")  # no 3.5 MB script
    assert instant_mermaid_problem(page, base, plain, with_diagrams[0]) is None


def test_code_blocks_have_copy_buttons(audits):
    assert sum(a.code_blocks for a in audits.values()) > 0
    assert copy_problems(audits) == []


def test_chinese_search_finds_the_right_page(page, base, site):
    holding = pages_holding(site)
    assert search_problems(page, base, holding, search_terms(site)) == []


def test_tab_choice_follows_the_reader(page, base, audits, site):
    first, second = tab_pages(audits, site)
    assert tab_problem(page, base, first, second) is None


def test_dark_mode_toggles(page, base):
    assert dark_mode_problem(page, base) is None


# ------------------------------------------------------------------ each check catches a planted failure

def _config_without(html: str, feature: str) -> str:
    match = re.search(r'(<script id="__config" type="application/json">)(.*?)(</script>)', html, re.S)
    assert match, "no __config"
    config = json.loads(match.group(2))
    assert feature in config["features"]
    config["features"].remove(feature)
    return html[:match.start(2)] + json.dumps(config) + html[match.end(2):]


@pytest.fixture(scope="module")
def planted(site, audits, tmp_path_factory):
    """A copy of the built site with one failure planted per check; the names of the planted pages."""
    copy = tmp_path_factory.mktemp("planted") / "site"
    shutil.copytree(site, copy)
    lessons = [p for p in nav_order(site) if p in audits and audits[p].code_blocks and not p.startswith("notebooks/")]
    notebook = next(p for p in audits if p.startswith("notebooks/"))
    diagram = next(p for p in audits if audits[p].mermaid_blocks)
    first_tabs, second_tabs = tab_pages(audits, site)
    plain, with_diagrams = diagram_pages(audits, site)
    where = {"console": lessons[0], "external": lessons[1], "link": lessons[2], "notebook_link": notebook,
             "mermaid": diagram, "copy": lessons[3], "tabs": second_tabs, "tabs_from": first_tabs, "dark": "",
             "plain": plain}
    used = set(where.values())  # the index too: search and dark mode start there
    where["instant"] = next(p for p in reversed(with_diagrams) if p not in used)

    def edit(path: str, change) -> None:
        file = copy / path / "index.html"
        before = file.read_text(encoding="utf-8")
        after = change(before)
        assert after != before, path
        file.write_text(after, encoding="utf-8")

    edit(where["console"], lambda h: h.replace("</body>", "<script>console.error('planted')</script></body>"))
    edit(where["external"], lambda h: h.replace("</body>", '<img src="https://fonts.example.invalid/x.png"></body>'))
    edit(where["link"], lambda h: h.replace("</article>", '<a href="../no-such-lesson/">x</a></article>', 1))
    edit(where["notebook_link"], lambda h: h.replace(
        "</article>", '<a href="../../../vllm/lab2_1/l04_production_deployment.md">課程頁面</a></article>', 1))
    edit(where["mermaid"], lambda h: re.sub(r'(<pre class="mermaid"><code>)', r"\1flowchart LR\n  A --&gt;&gt;&gt; {{[\n",
                                              h, count=1))
    edit(where["instant"], lambda h: re.sub(r'<script src="[^"]*mermaid\.min\.js"></script>', "", h))
    edit(where["copy"], lambda h: _config_without(h, "content.code.copy"))
    edit(where["tabs"], lambda h: re.sub(r'<script>var tabs=__md_get\("__tabs"\).*?</script>', "",
                                          _config_without(h, "content.tabs.link"), flags=re.S))
    edit(where["dark"], lambda h: h.replace('data-md-color-scheme="slate"', 'data-md-color-scheme="default"'))
    # search: every entry holding 批次 removed; an entry holding 分頁 duplicated under its location
    index_file = copy / "search" / "search_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8"))
    docs = [d for d in index["docs"] if "批次" not in (d["title"] + d["text"]).replace("\u200b", "")]
    docs.append(dict(next(d for d in docs if "分頁" in d["text"].replace("\u200b", "")), text="重複"))
    index_file.write_text(json.dumps({**index, "docs": docs}, ensure_ascii=False), encoding="utf-8")
    with serve(copy) as url:
        yield copy, url, where


@pytest.fixture(scope="module")
def planted_audits(planted, context):
    copy, url, where = planted
    page = context.new_page()
    paths = {where[k] for k in ("console", "external", "link", "notebook_link", "mermaid", "copy")}
    yield {path: audit_page(page, url, path, copy) for path in sorted(paths)}
    page.close()


def test_planted_console_error_is_caught(planted, planted_audits):
    assert any("planted" in p for p in console_problems(planted_audits))


def test_planted_external_request_is_caught(planted, planted_audits):
    _, _, where = planted
    assert external_problems(planted_audits) == [f"{where['external']}: https://fonts.example.invalid/x.png"]


def test_planted_broken_links_are_caught(planted, planted_audits):
    copy, url, where = planted
    problems = link_problems(planted_audits, url, copy)
    assert any(p.startswith(where["link"]) and "no-such-lesson" in p for p in problems), problems
    assert any(p.startswith(where["notebook_link"]) and p.endswith(".md") for p in problems), problems


def test_planted_broken_mermaid_is_caught(planted, planted_audits):
    _, _, where = planted
    assert any(p.startswith(where["mermaid"]) for p in mermaid_problems(planted_audits))


def test_planted_diagram_page_without_its_script_is_caught(planted, fresh_page):
    _, url, where = planted
    assert instant_mermaid_problem(fresh_page, url, where["plain"], where["instant"]) is not None


def test_planted_missing_copy_buttons_are_caught(planted, planted_audits):
    _, _, where = planted
    assert [p.split(":")[0] for p in copy_problems(planted_audits)] == [where["copy"]]


def test_planted_search_failures_are_caught(planted, fresh_page, site):
    _, url, _ = planted
    problems = search_problems(fresh_page, url, pages_holding(site), ["批次", "分頁", "吞吐量"])
    assert [p.split(":")[0] for p in problems] == ["批次", "分頁"], problems


def test_planted_tab_link_failure_is_caught(planted, fresh_page):
    _, url, where = planted
    assert tab_problem(fresh_page, url, where["tabs_from"], where["tabs"]) is not None


def test_planted_dark_mode_failure_is_caught(planted, fresh_page):
    _, url, _ = planted
    assert dark_mode_problem(fresh_page, url) is not None
