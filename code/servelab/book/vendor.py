"""Front-end files the site serves itself, so the published book works offline.

Material for MkDocs loads Mermaid from a CDN unless ``window.mermaid`` already exists. The site ships
its own copy instead: ``mermaid.min.js`` from the npm registry's ``mermaid`` package, fetched once by
``make setup`` with ``npm pack`` (the ordinary npm client) and checked against a pinned SHA-256.
The file is not committed (``docs/assets/vendor/`` is ignored by git); the MkDocs hook fetches it on a
build that finds it missing.

    python -m servelab.book.vendor        # fetch (no-op when present and intact)
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from servelab.book.tree import ROOT

MERMAID_VERSION = "11.17.2"  # Material 9.8.1 expects mermaid@11 (the version its CDN fallback loads)
MERMAID_SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"
VENDOR_DIR = ROOT / "docs" / "assets" / "vendor"
MERMAID_JS = VENDOR_DIR / "mermaid.min.js"
MERMAID_URI = "assets/vendor/mermaid.min.js"  # a page with a diagram loads it (with_mermaid, from the site hook)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mermaid_ok(path: Path = MERMAID_JS) -> bool:
    return path.is_file() and _sha256(path) == MERMAID_SHA256


def ensure_mermaid(dest: Path = MERMAID_JS) -> Path:
    """Put the pinned ``mermaid.min.js`` (and its licence) at ``dest``; fetch with ``npm pack`` if needed."""
    if mermaid_ok(dest):
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the site's Mermaid comes from the npm registry: install Node.js and npm "
                           "(Debian: apt-get install npm), then run `make setup`")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--silent", "--pack-destination", tmp],
                       check=True, capture_output=True, text=True)
        (tarball,) = Path(tmp).glob("mermaid-*.tgz")
        with tarfile.open(tarball) as tar:
            for member, name in (("package/dist/mermaid.min.js", dest.name), ("package/LICENSE", "mermaid.LICENSE")):
                source = tar.extractfile(member)
                assert source is not None, member
                dest.parent.mkdir(parents=True, exist_ok=True)
                (dest.parent / name).write_bytes(source.read())
    if not mermaid_ok(dest):
        dest.unlink()
        raise RuntimeError(f"mermaid@{MERMAID_VERSION} from npm does not match the pinned SHA-256")
    return dest


if __name__ == "__main__":
    print(ensure_mermaid().relative_to(ROOT), file=sys.stderr)


def with_mermaid(html: str, page_url: str) -> str:
    """A page with a diagram (``<pre class="mermaid">``) loads the site's Mermaid; a page without one is
    unchanged, and Material, finding no diagram, loads no Mermaid at all.

    The script goes at the end of Material's container (after ``</main>``), not in ``<head>``: with
    ``navigation.instant`` Material swaps in the next page's container and runs its scripts, waiting for a
    script's ``load`` before it draws the page, so a reader who arrives from a page without diagrams still
    has ``window.mermaid`` before Material looks for it (else Material would fetch it from a CDN)."""
    if '<pre class="mermaid"' not in html or "</main>" not in html:
        return html
    from mkdocs.utils import get_relative_url

    src = get_relative_url(MERMAID_URI, page_url or ".")
    return html.replace("</main>", f'</main>\n<script src="{src}"></script>', 1)
