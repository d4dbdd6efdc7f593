"""The snippet contract and the book's other rules, as functions a test (or a contributor) can call.

Each function takes the repository root and returns a list of human-readable violations; an empty list
means the rule holds. ``tests/book/test_contract.py`` runs them on the real tree and on trees with a
planted violation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from servelab.book.stale_apis import scan_text
from servelab.book.tree import lessons

SNIPPET_REF = re.compile(r"""^\s*-{1,}8<-{1,}\s+["']([^"':]+)(?::([\w\-]+))?["']\s*$""")
SECTION = re.compile(r"--8<--\s*\[(start|end):([\w\-]+)\]")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
RUN_BY_CODEBLOCKS = {"python", "bash", "sh"}
CODE_LANGS = {"py", "python", "python3", "pycon", "ipython", "bash", "sh", "zsh", "shell", "console",
              "shell-session", "shellsession", "ps1", "powershell"}
SNIPPET_BASES = ("code", ".")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    info: str
    body: list[str]

    @property
    def lang(self) -> str:
        return self.info.split()[0].lstrip(".{").rstrip("}") if self.info.strip() else ""


def markdown_files(root: Path) -> list[Path]:
    return sorted((root / "docs").rglob("*.md"))


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], match["indent"]
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        yield Block(path, start + 1, match["info"].strip(), body)
        i += 1


def snippet_refs(root: Path) -> Iterator[tuple[Path, int, str, str | None]]:
    """Every ``--8<-- "file:section"`` on a page: (page, line, file, section)."""
    for page in markdown_files(root):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            match = SNIPPET_REF.match(line)
            if match:
                yield page, number, match[1], match[2]


def resolve_snippet(root: Path, name: str) -> Path | None:
    for base in SNIPPET_BASES:
        candidate = root / base / name
        if candidate.is_file():
            return candidate
    return None


def sections_in(path: Path) -> set[str]:
    return {name for kind, name in SECTION.findall(path.read_text(encoding="utf-8")) if kind == "start"}


def missing_snippets(root: Path) -> list[str]:
    errors = []
    for page, line, name, section in snippet_refs(root):
        target = resolve_snippet(root, name)
        where = f"{page.relative_to(root)}:{line}"
        if target is None:
            errors.append(f"{where}: snippet file {name} does not exist")
        elif section and section not in sections_in(target):
            errors.append(f"{where}: section '{section}' not found in {name}")
    return errors


def unbalanced_sections(root: Path) -> list[str]:
    errors = []
    for path in sorted((root / "code").rglob("*.py")):
        found = SECTION.findall(path.read_text(encoding="utf-8"))
        starts = [n for k, n in found if k == "start"]
        ends = [n for k, n in found if k == "end"]
        if sorted(starts) != sorted(ends) or len(set(starts)) != len(starts):
            errors.append(f"{path.relative_to(root)}: unbalanced or repeated sections {starts} / {ends}")
    return errors


def dead_sections(root: Path) -> list[str]:
    """Sections in ``code/`` that no page includes."""
    used = {(resolve_snippet(root, name), section) for _, _, name, section in snippet_refs(root)}
    errors = []
    for path in sorted((root / "code").rglob("*.py")):
        for section in sorted(sections_in(path)):
            if (path, section) not in used:
                errors.append(f"{path.relative_to(root)}: section '{section}' is not shown by any page")
    return errors


def bare_blocks(root: Path) -> list[str]:
    """Code blocks in docs/ that neither pytest-codeblocks runs nor are snippet includes."""
    errors = []
    for page in markdown_files(root):
        for block in fenced_blocks(page):
            lang = block.lang.lower()
            if lang not in CODE_LANGS:
                continue
            content = [line for line in block.body if line.strip()]
            if content and all(SNIPPET_REF.match(line) for line in content):
                continue  # an include: the included code is tested in the package
            if block.info in RUN_BY_CODEBLOCKS:
                continue  # run as-is by pytest-codeblocks
            where = f"{page.relative_to(root)}:{block.line}"
            errors.append(f"{where}: ```{block.info} block is not run by pytest-codeblocks "
                          f"(use exactly ```python/```bash, or include it from the package)")
    skip = re.compile(r"<!--\s*pytest-codeblocks:skip")
    for page in markdown_files(root):
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if skip.search(line):
                errors.append(f"{page.relative_to(root)}:{number}: skipped code block (a block must run)")
    return errors


def mirror_errors(root: Path) -> list[str]:
    """A lesson with some of its four files must have all four; no lesson module outside the tree."""
    errors = []
    known = set()
    for lesson in lessons():
        files = {"page": lesson.page, "code": lesson.module, "tests": lesson.test, "notebook": lesson.notebook}
        files = {k: root / v.relative_to(lesson.page.parents[3]) for k, v in files.items()}
        known.add(files["code"])
        present = {k for k, v in files.items() if v.exists()}
        if present and present != set(files):
            missing = ", ".join(sorted(set(files) - present))
            errors.append(f"{lesson.rel}: has {', '.join(sorted(present))} but lacks {missing}")
    for track in ("vllm", "triton"):
        for module in sorted((root / "code" / "servelab" / track).rglob("l*.py")):
            if module not in known:
                errors.append(f"{module.relative_to(root)}: lesson module not in the lab tree")
    return errors


def stale_api_hits(root: Path) -> list[str]:
    errors = []
    skip = {root / "code" / "servelab" / "book" / "stale_apis.py"}
    paths = [*(root / "docs").rglob("*.md"), *(root / "code").rglob("*.py"), *(root / "docker").rglob("*")]
    for path in sorted(p for p in paths if p.is_file() and p not in skip):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, found, replacement in scan_text(text):
            errors.append(f"{path.relative_to(root)}:{number}: '{found}' is stale — use {replacement}")
    return errors


def unexecuted_notebooks(root: Path) -> list[str]:
    """Every code cell has output, and the notebook records where it ran."""
    from servelab.book.notebooks import MARKER

    errors = []
    for path in sorted((root / "docs" / "notebooks").rglob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
        rel = path.relative_to(root)
        for index, cell in enumerate(cells):
            if not cell.get("outputs"):
                errors.append(f"{rel}: code cell {index + 1} has no output (run make notebooks)")
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    errors.append(f"{rel}: code cell {index + 1} stored an error")
        text = json.dumps(notebook, ensure_ascii=False)
        if MARKER not in text:
            errors.append(f"{rel}: does not record where it ran ({MARKER}…)")
    return errors


ALL_RULES = {
    "missing_snippets": missing_snippets,
    "unbalanced_sections": unbalanced_sections,
    "dead_sections": dead_sections,
    "bare_blocks": bare_blocks,
    "mirror_errors": mirror_errors,
    "stale_api_hits": stale_api_hits,
    "unexecuted_notebooks": unexecuted_notebooks,
}
