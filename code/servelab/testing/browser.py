"""The built site in a real browser: Debian's Chromium driven by Playwright, with no network.

``built_site()`` builds the book once per test session (``mkdocs build --strict`` into a temporary
folder); ``serve(folder)`` serves a folder on 127.0.0.1; ``audit_page`` loads one page and records what a
reader would meet there: console errors, requests that leave 127.0.0.1 (aborted), links, Mermaid
diagrams, code blocks and their copy buttons. The checks in ``tests/book/test_browser.py`` read these
records, and each is shown there to catch a failure planted into a copy of the site.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from servelab.book.tree import ROOT

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium package (make setup installs it)

# Material renders each diagram into a *closed* shadow root; open it so a test can see the SVG.
OPEN_SHADOW_ROOTS = """
const _attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (options) { return _attach.call(this, {...options, mode: "open"}); };
window.__servelabErrors = 0;  // a diagram that fails to draw rejects a promise: stop waiting for it
addEventListener("error", () => window.__servelabErrors++);
addEventListener("unhandledrejection", () => window.__servelabErrors++);
"""


@functools.cache
def built_site() -> Path:
    """The book built once for this process with ``mkdocs build --strict``."""
    out = Path(tempfile.mkdtemp(prefix="servelab-site-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(out)], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"mkdocs build --strict failed:\n{result.stderr[-4000:]}")
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - the test output stays readable
        pass


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 (a free port); yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the built site, as a path relative to the site root ('' for the landing page)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        rel = index.parent.relative_to(site).as_posix()
        if rel.startswith(("assets", "search")):
            continue
        pages.append("" if rel == "." else rel + "/")
    return pages


@dataclass
class PageAudit:
    path: str
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)          # absolute URLs of same-origin links
    missing_anchors: list[str] = field(default_factory=list)  # '#id' links to an id not on the page
    mermaid_blocks: int = 0                                  # in the HTML as served
    mermaid_svgs: int = 0                                    # drawn as an SVG without a syntax error
    code_blocks: int = 0
    copy_buttons: int = 0
    tab_labels: list[str] = field(default_factory=list)     # the labels of every tabbed set


def new_context(browser):
    """A browser context with the network cut off: every request not to 127.0.0.1 is aborted and logged."""
    context = browser.new_context()
    context.external_requests = []  # type: ignore[attr-defined]
    context.add_init_script(OPEN_SHADOW_ROOTS)

    def route(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            context.external_requests.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()

    context.route("**/*", route)
    return context


def audit_page(page, base: str, path: str, site: Path) -> PageAudit:
    audit = PageAudit(path)
    context = page.context
    start = len(context.external_requests)
    errors: list[str] = []
    on_console = lambda msg: errors.append(msg.text) if msg.type == "error" else None  # noqa: E731
    on_error = lambda exc: errors.append(f"uncaught: {exc}")  # noqa: E731
    page.on("console", on_console)
    page.on("pageerror", on_error)
    try:
        page.goto(base + path, wait_until="load")
        source = (site / path / "index.html").read_text(encoding="utf-8")
        audit.mermaid_blocks = len(re.findall(r'<pre class="mermaid"', source))
        if audit.mermaid_blocks:
            with contextlib.suppress(Exception):  # a diagram that fails to draw stays a <pre>: counted below
                page.wait_for_function("document.querySelectorAll('pre.mermaid').length === 0"
                                       " || window.__servelabErrors > 0", timeout=8000)
        else:
            page.wait_for_timeout(150)  # let the page's scripts start (errors surface here)
        facts = page.evaluate("""() => {
            const drawn = [...document.querySelectorAll('div.mermaid')].filter(d => d.shadowRoot
                && d.shadowRoot.querySelector('svg') && !/Syntax error/i.test(d.shadowRoot.textContent)).length;
            const blocks = [...document.querySelectorAll('.md-content pre > code')]
                .filter(c => !c.closest('.mermaid'));
            return {
                links: [...document.querySelectorAll('a[href]')].map(a => a.href),
                // a code annotation's marker links to its list item, which Material turns into a tooltip
                missing: [...document.querySelectorAll('a[href^="#"]')].filter(a => !a.closest('.md-annotation'))
                    .map(a => a.getAttribute('href').slice(1))
                    .filter(id => id && !document.getElementById(decodeURIComponent(id))),
                drawn,
                code: blocks.length,
                copy: blocks.filter(c => c.parentElement.querySelector(
                    'button.md-clipboard, button.md-code__button[data-md-type="copy"]')).length,
                tabs: [...document.querySelectorAll('.tabbed-labels > label')].map(l => l.textContent.trim()),
            };
        }""")
    finally:
        page.remove_listener("console", on_console)
        page.remove_listener("pageerror", on_error)
    audit.console_errors = errors
    audit.external_requests = context.external_requests[start:]
    origin = base.rstrip("/")
    here = base + path
    audit.links = sorted({link for link in facts["links"] if link.startswith(origin + "/")
                          and link.split("#")[0] != here})  # same-page anchors: checked in the DOM
    audit.missing_anchors = sorted(set(facts["missing"]))
    audit.mermaid_svgs = facts["drawn"]
    audit.code_blocks, audit.copy_buttons, audit.tab_labels = facts["code"], facts["copy"], facts["tabs"]
    return audit


def broken_links(links: list[str], base: str, site: Path) -> list[str]:
    """Links whose target file (or, for a page, its #anchor) does not exist in the built site."""
    broken = []
    ids: dict[Path, set[str]] = {}
    for link in links:
        parts = urlsplit(link)
        rel = unquote(parts.path[len(urlsplit(base).path):])
        target = site / rel
        if rel == "" or rel.endswith("/"):
            target = target / "index.html"
        if not target.is_file():
            broken.append(link)
            continue
        if parts.fragment and target.suffix == ".html":
            if target not in ids:
                ids[target] = set(re.findall(r'\sid="([^"]+)"', target.read_text(encoding="utf-8")))
            if unquote(parts.fragment) not in ids[target]:
                broken.append(link)
    return broken


def nav_order(site: Path) -> list[str]:
    """The site's pages in reading order, following each page's footer "next" link from the landing page."""
    order, path = [], ""
    while path not in order:
        order.append(path)
        html = (site / path / "index.html").read_text(encoding="utf-8")
        match = re.search(r'<a href="([^"]+)" class="md-footer__link md-footer__link--next"', html)
        if not match:
            break
        path = urlsplit(urljoin("http://x/" + path, match.group(1))).path.lstrip("/")
    return order


def chosen_tabs(page, label: str) -> tuple[int, int]:
    """(tabbed sets that offer ``label``, of them those where ``label`` is the selected tab)."""
    return tuple(page.evaluate("""label => {
        const sets = [...document.querySelectorAll('.tabbed-set')].filter(s =>
            [...s.querySelectorAll(':scope > .tabbed-labels > label')].some(l => l.textContent.trim() === label));
        const chosen = sets.filter(s => {
            const l = [...s.querySelectorAll(':scope > .tabbed-labels > label')].find(l => l.textContent.trim() === label);
            const input = document.getElementById(l.htmlFor);
            return input && input.checked;
        });
        return [sets.length, chosen.length];
    }""", label))


def color_scheme(page) -> tuple[str, float]:
    """The page's Material colour scheme and the relative luminance (0 dark … 1 light) of its background."""
    scheme, rgb = page.evaluate("""() => [document.body.getAttribute('data-md-color-scheme'),
        getComputedStyle(document.body).backgroundColor]""")
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", rgb)[:3])
    return scheme, 0.2126 * r + 0.7152 * g + 0.0722 * b


SEARCH_READY = "打字進行搜尋"  # Material's zh-TW placeholder once the search worker has built its index


def search(page, term: str) -> list[str]:
    """Type ``term`` into the site's search box; the result pages' URLs, best first ([] when none)."""
    box = page.locator("input.md-search__input")
    box.click()
    box.fill("")
    box.press("End")  # Material reads the query on keyup
    page.wait_for_function("t => document.querySelector('.md-search-result__meta').textContent.trim() === t",
                           arg=SEARCH_READY, timeout=30000)
    box.fill(term)
    box.press("End")
    page.wait_for_function("t => document.querySelector('.md-search-result__meta').textContent.trim() !== t",
                           arg=SEARCH_READY, timeout=10000)
    page.wait_for_timeout(50)
    return page.evaluate("() => [...document.querySelectorAll('.md-search-result__item > a')].map(a => a.href)")
