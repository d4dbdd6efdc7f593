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
from servelab.book.tree import ROOT, lessons

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
    """Stale names outside a removed/replaced note: pages, the results tables they include, the code, the
    Docker files, and the notebooks' cell sources (not their outputs: those are the tools' own words)."""
    errors = []
    skip = {root / "code" / "servelab" / "book" / "stale_apis.py"}
    paths = [*(root / "docs").rglob("*.md"), *(root / "results").rglob("*.md"), *(root / "code").rglob("*.py"),
             *(root / "docker").rglob("*")]
    for path in sorted(p for p in paths if p.is_file() and p not in skip):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root)
        for number, found, replacement in scan_text(text, str(rel)):
            errors.append(f"{rel}:{number}: '{found}' is stale — use {replacement}")
    for path in sorted((root / "docs" / "notebooks").rglob("*.ipynb")):
        rel = path.relative_to(root)
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        for index, cell in enumerate(cells, 1):
            source = "".join(cell.get("source", []))
            for number, found, replacement in scan_text(source, str(rel)):
                errors.append(f"{rel}: cell {index} line {number}: '{found}' is stale — use {replacement}")
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


# --- the snippet contract: what a reader copies runs as shown -------------------------------------------
# Every Python snippet a lesson page includes, preceded by the page's ``context`` section(s), compiles and
# has no undefined names (pyflakes). A deliberately partial snippet is preceded by PARTIAL_MARKER.
PARTIAL_MARKER = "<!-- snippet: partial -->"
PARTIAL = re.compile(r"^\s*<!--\s*snippet:\s*partial\s*-->\s*$")
PYTHON_FENCES = {"py", "python", "python3"}
CONTEXT = "context"


@dataclass(frozen=True)
class Snippet:
    """One fenced Python block on a page made of ``--8<--`` includes of package code."""

    page: Path
    line: int
    refs: tuple[tuple[str, str | None], ...]  # (file, section)
    partial: bool

    @property
    def sections(self) -> str:
        return ", ".join(f"{name}:{section}" if section else name for name, section in self.refs)

    @property
    def is_context(self) -> bool:
        return all(section == CONTEXT for _, section in self.refs)


def section_text(path: Path, section: str | None) -> str:
    """The code pymdownx.snippets shows for ``file:section`` (nested section markers removed), dedented."""
    import textwrap

    lines = path.read_text(encoding="utf-8").splitlines()
    if section is not None:
        start = next((i for i, line in enumerate(lines) if re.search(rf"--8<--\s*\[start:{re.escape(section)}\]", line)), None)
        if start is None:
            return ""
        end = next((i for i in range(start + 1, len(lines))
                    if re.search(rf"--8<--\s*\[end:{re.escape(section)}\]", lines[i])), len(lines))
        lines = lines[start + 1:end]
    lines = [line for line in lines if not SECTION.search(line)]
    return textwrap.dedent("\n".join(lines)) + "\n"


def python_snippets(page: Path) -> list[Snippet]:
    """The page's Python fences that include ``.py`` files (``py title=…`` blocks of ``--8<--`` lines)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for block in fenced_blocks(page):
        if block.lang.lower() not in PYTHON_FENCES:
            continue
        refs = []
        for line in block.body:
            match = SNIPPET_REF.match(line)
            if match and match[1].endswith(".py"):
                refs.append((match[1], match[2]))
        if not refs:
            continue
        partial, i = False, block.line - 2  # the line before the fence, 0-based
        while i >= 0 and (not lines[i].strip() or lines[i].strip().startswith("<!--")):
            partial = partial or bool(PARTIAL.match(lines[i]))
            i -= 1
        found.append(Snippet(page, block.line, tuple(refs), partial))
    return found


def _undefined_names(code: str, skip_lines: int = 0) -> list[str]:
    """pyflakes' undefined-name findings (and syntax errors) in ``code``, after its first ``skip_lines``."""
    from pyflakes import checker, messages

    try:
        tree = compile(code, "<snippet>", "exec", flags=0x400, dont_inherit=True)  # ast.PyCF_ONLY_AST
    except SyntaxError as error:
        return [f"syntax error: {error.msg} (line {error.lineno})"]
    undefined = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)
    found = checker.Checker(tree, filename="<snippet>")
    names = []
    for message in sorted(found.messages, key=lambda m: m.lineno):
        if isinstance(message, undefined) and message.lineno > skip_lines:
            name = message.message_args[0]
            if name not in names:
                names.append(name)
    return names


def lesson_pages(root: Path) -> list[Path]:
    pages = [root / item.page.relative_to(ROOT) for item in lessons()]
    return [page for page in pages if page.exists()]


def snippet_undefined_names(root: Path, pages: list[Path] | None = None) -> list[str]:
    """Each included Python snippet, pasted after the page's ``context`` section(s), runs as shown."""
    errors = []
    for page in pages if pages is not None else lesson_pages(root):
        rel = page.relative_to(root)
        snippets = python_snippets(page)
        contexts = [s for s in snippets if s.is_context]
        context_code = ""
        for snippet in contexts:
            for name, section in snippet.refs:
                target = resolve_snippet(root, name)
                if target is not None:
                    context_code += section_text(target, section)
        if context_code:
            names = _undefined_names(context_code)
            if names:
                errors.append(f"{rel}: context: undefined names {', '.join(names)}")
        skip = len(context_code.splitlines())
        for snippet in snippets:
            if snippet.is_context or snippet.partial:
                continue
            code = context_code
            for name, section in snippet.refs:
                target = resolve_snippet(root, name)
                if target is None:
                    continue  # missing_snippets reports it
                code += section_text(target, section)
            where = f"{rel}:{snippet.line} [{snippet.sections}]"
            names = _undefined_names(code, skip_lines=skip)
            if names:
                errors.append(f"{where}: undefined names {', '.join(names)}"
                              + ("" if context_code else " (the page shows no context section)"))
            if "__file__" in "\n".join(code.splitlines()[skip:]):
                errors.append(f"{where}: uses __file__ (in a reader's script it is the reader's own file)")
    return errors


def snippet_context_shown(root: Path) -> list[str]:
    """A lesson page with Python snippets shows its module's ``context`` section once, before the first one."""
    errors = []
    for item in lessons():
        page = root / item.page.relative_to(ROOT)
        if not page.exists():
            continue
        snippets = python_snippets(page)
        if not snippets:
            continue
        rel = page.relative_to(root)
        own = f"servelab/{item.rel}.py"
        shown = [s for s in snippets if (own, CONTEXT) in s.refs]
        if not shown:
            errors.append(f"{rel}: has Python snippets but does not show {own}:{CONTEXT} "
                          f"(a collapsed ??? info block before the first snippet)")
            continue
        if len(shown) > 1:
            errors.append(f"{rel}: shows {own}:{CONTEXT} {len(shown)} times (lines "
                          f"{', '.join(str(s.line) for s in shown)}); show it once")
        first = next((s for s in snippets if not s.is_context), None)
        if first is not None and first.line < shown[0].line:
            errors.append(f"{rel}:{first.line}: the first Python snippet comes before {own}:{CONTEXT} "
                          f"(line {shown[0].line})")
    return errors


ALL_RULES["snippet_undefined_names"] = snippet_undefined_names
ALL_RULES["snippet_context_shown"] = snippet_context_shown


def notebook_hygiene(root: Path) -> list[str]:
    """Stored notebook outputs show no machine paths and no library warnings (``make notebooks`` scrubs)."""
    from servelab.book.notebooks import hygiene_problems

    errors = []
    for path in sorted((root / "docs" / "notebooks").rglob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        rel = path.relative_to(root)
        errors.extend(f"{rel}: {problem} (python -m servelab.book.notebooks --scrub {rel})"
                      for problem in hygiene_problems(notebook))
    return errors


ALL_RULES["notebook_hygiene"] = notebook_hygiene
