"""The book's terms (Taiwan usage): find non-preferred variants in prose and rewrite them.

What is scanned — only text a reader reads as prose:

* ``docs/**/*.md`` outside code fences, inline code, link targets, URLs, HTML tags and comments,
  attribute lists (``{#id}``) and snippet lines (``--8<--``); mermaid diagrams are scanned for the
  Chinese terms only (their ``backend: python`` labels are configuration);
* the markdown cells of ``docs/notebooks/**/*.ipynb``;
* the comments and docstrings of ``code/servelab/**/*.py`` (pages include sections of these files).

``python -m servelab.book.terminology [PATH …]`` lists the hits; ``--fix`` rewrites them in place.
The glossary page ``docs/glossary.md`` lists the preferred terms; it is exempt (it names the variants).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tokenize
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from servelab.book.tree import ROOT

# (variant pattern, preferred term, what it is) — order matters: the longer variant comes first.
TERMS: tuple[tuple[str, str, str], ...] = (
    (r"(?<!高效)推理|(?<=高效)推理(?!與服務)", "推論", "inference (推理 only in the title 「高效推理與服務」)"),
    (r"模型倉庫", "模型儲存庫", "model repository"),
    (r"倉庫", "儲存庫", "repository"),
    (r"客戶端", "用戶端", "client"),
    (r"用戶(?!端)", "使用者", "user (用戶端 is the client)"),
    (r"實例", "執行個體", "instance"),
    (r"模板", "範本", "template"),
    (r"激活值|激活|啟動值", "活化值", "activation"),
    (r"默認", "預設", "default"),
    (r"內存", "記憶體", "memory"),
    (r"顯存", "GPU 記憶體", "GPU memory"),
    (r"緩存", "快取", "cache"),
    (r"線程", "執行緒", "thread"),
    (r"進程", "行程", "process"),
    (r"負優化", "反效果", "a change that makes things worse"),
    (r"優化", "最佳化", "optimization"),
    (r"性能", "效能", "performance"),
    (r"質量", "品質", "quality"),
    (r"數據", "資料", "data"),
    (r"文檔", "文件", "documentation"),
    (r"服務器", "伺服器", "server"),
    (r"網絡", "網路", "network"),
    (r"運行", "執行", "run"),
    (r"調用", "呼叫", "call"),
    (r"告警", "警示", "alert"),
    (r"(?<!回)報錯(?!誤)", "出錯", "error out (回報錯誤 is fine)"),
    (r"隊列", "佇列", "queue"),
    (r"並發", "並行", "concurrency"),
    (r"張量並行", "張量平行", "tensor parallelism"),
    (r"(?:管道|流水線)並行", "管線平行", "pipeline parallelism"),
    (r"批處理", "批次處理", "batch processing"),
    (r"信息", "資訊", "information"),
    (r"軟件", "軟體", "software"),
    (r"硬件", "硬體", "hardware"),
    (r"接口", "介面", "interface"),
    (r"支持", "支援", "support"),
    (r"創建", "建立", "create"),
    (r"字符", "字元", "character"),
    (r"加載", "載入", "load"),
    (r"獲取", "取得", "get"),
    (r"示例", "範例", "example"),
    (r"端口", "連接埠", "port"),
    (r"命令行", "命令列", "command line"),
    (r"調度", "排程", "schedule"),
    (r"集群", "叢集", "cluster"),
    (r"模塊", "模組", "module"),
    (r"函數", "函式", "function"),
    (r"變量", "變數", "variable"),
    (r"異步", "非同步", "asynchronous"),
    (r"源碼", "原始碼", "source code"),
    (r"令牌|詞元", "token", "token"),
)

# English words that prose writes in Chinese; allowed in code, links, and in parentheses right after
# the Chinese term on first use: 「後端（backend）」.
ENGLISH: tuple[tuple[str, str], ...] = (
    ("backend", "後端"),
    ("instance", "執行個體"),
)

EXEMPT = {"docs/glossary.md", "code/servelab/book/terminology.py"}  # they name the variants

COMPILED = [(re.compile(pattern), preferred, what) for pattern, preferred, what in TERMS]
ENGLISH_COMPILED = [(re.compile(rf"(?<![\w\-/.\x00]){word}s?(?![\w\-/.\x00])", re.IGNORECASE), word, zh)
                    for word, zh in ENGLISH]

MASK = "\x00"
FENCE = re.compile(r"^(?P<indent>[ \t>]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
INLINE_EXCLUDE = re.compile(
    r"(?P<code>(`+).+?\2)"  # inline code (any number of backticks)
    r"|(?P<target>\]\([^)]*\))"  # link target  [text](target)
    r"|(?P<ref>^\s*\[(?!\^)[^\]]+\]:\s*\S+.*$)"  # reference definition
    r"|(?P<url><?https?://[^\s>)]+>?)"
    r"|(?P<attr>\{[:#.][^}]*\}|\{\s*\.[^}]*\})"  # attribute list
    r"|(?P<tag></?[A-Za-z][^>]*>)"
    r"|(?P<snippet>^\s*-{1,}8<-{1,}.*$)",
    re.M,
)
LINK_TEXT = re.compile(r"\[(?P<text>[^\]]*)\]\(")
COMMENT = re.compile(r"<!--.*?-->", re.S)


def is_cjk(ch: str) -> bool:
    return bool(ch) and unicodedata.east_asian_width(ch) in "WF"


def is_ideograph(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _in_quoted_english(text: str, start: int, end: int) -> bool:
    """True inside 「…」 or “…” holding no Chinese: a quoted English title or message."""
    line_start = text.rfind("\n", 0, start) + 1
    for left, right in (("「", "」"), ("“", "”"), ("『", "』")):
        opening = text.rfind(left, line_start, start)
        closing = text.find(right, end)
        if opening >= 0 and closing >= 0 and right not in text[opening:start] \
                and not any(is_ideograph(ch) for ch in text[opening + 1:closing]):
            return True
    return False


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    found: str
    preferred: str
    start: int
    end: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: '{self.found}' → {self.preferred} ({self.what})"


# ---------------------------------------------------------------- what counts as prose


def _mask(text: str, start: int, end: int) -> str:
    return text[:start] + "".join(c if c == "\n" else MASK for c in text[start:end]) + text[end:]


def markdown_prose(text: str) -> tuple[str, str]:
    """Two masked copies of ``text`` (same length): prose for the Chinese terms, and prose for English
    words (which also hides mermaid diagrams and link texts)."""
    cjk = text
    for match in COMMENT.finditer(text):
        cjk = _mask(cjk, match.start(), match.end())
    lines = cjk.splitlines(keepends=True)
    out_cjk, out_en = [], []
    fence: str | None = None
    mermaid = False
    for line in lines:
        match = FENCE.match(line.rstrip("\n"))
        if fence is None and match:
            fence, mermaid = match["fence"], match["info"].strip().startswith("mermaid")
            masked = _mask(line, 0, len(line))
            out_cjk.append(masked)
            out_en.append(masked)
            continue
        if fence is not None:
            if match and match["fence"].startswith(fence[0]) and len(match["fence"]) >= len(fence) \
                    and not match["info"].strip():
                fence = None
                masked = _mask(line, 0, len(line))
                out_cjk.append(masked)
                out_en.append(masked)
                continue
            masked = _mask(line, 0, len(line))
            out_cjk.append(line if mermaid else masked)
            out_en.append(masked)
            continue
        prose = line
        for found in INLINE_EXCLUDE.finditer(line):
            prose = _mask(prose, found.start(), found.end())
        english = prose
        for found in LINK_TEXT.finditer(line):
            english = _mask(english, found.start(), found.end())
        out_cjk.append(prose)
        out_en.append(english)
    return "".join(out_cjk), "".join(out_en)


def python_prose(text: str) -> str:
    """``text`` with everything but comments and docstrings masked."""
    keep: list[tuple[int, int]] = []
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))

    def pos(row: int, col: int) -> int:
        return offsets[row - 1] + col

    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return _mask(text, 0, len(text))
    previous, depth = tokenize.NEWLINE, 0
    for token in tokens:
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        if token.type == tokenize.COMMENT:
            keep.append((pos(*token.start), pos(*token.end)))
        elif token.type == tokenize.STRING and depth == 0 and previous in (tokenize.NEWLINE, tokenize.INDENT,
                                                                           tokenize.DEDENT):
            keep.append((pos(*token.start), pos(*token.end)))  # a string statement: a docstring
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token.type
    masked = "".join(c if c == "\n" else MASK for c in text)
    chars = list(masked)
    for start, end in keep:
        chars[start:end] = text[start:end]
    return "".join(chars)


# ---------------------------------------------------------------- scanning


def _in_parenthesis_after(text: str, start: int, term: str) -> bool:
    """True when ``start`` sits inside ( … ) or （ … ） that follows ``term`` (「執行個體群組（instance
    group）」), or inside parentheses holding no Chinese at all (an English gloss)."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    depth = 0
    for index in range(start - 1, line_start - 1, -1):
        ch = text[index]
        if ch in ")）":
            depth += 1
        elif ch in "(（":
            if depth == 0:
                before = text[line_start:index].rstrip(" 」』\"'*_")
                closing = min([i for i in (text.find(")", start, line_end), text.find("）", start, line_end))
                               if i >= 0] or [line_end])
                return term in before[-6:] or not any(is_ideograph(c) for c in text[index + 1:closing])
            depth -= 1
    return False


def scan_masked(cjk: str, english: str, path: str = "") -> list[Hit]:
    hits = []
    for pattern, preferred, what in COMPILED:
        for match in pattern.finditer(cjk):
            hits.append(Hit(path, cjk.count("\n", 0, match.start()) + 1, match.group(0), preferred,
                            match.start(), match.end(), what))
    for pattern, word, zh in ENGLISH_COMPILED:
        for match in pattern.finditer(english):
            if _in_parenthesis_after(english, match.start(), zh):
                continue
            line_start = english.rfind("\n", 0, match.start()) + 1
            line_end = english.find("\n", match.end())
            if _in_quoted_english(english, match.start(), match.end()):
                continue
            if not any(is_ideograph(ch) for ch in english[line_start:line_end if line_end >= 0 else None]):
                continue  # an English sentence (a docstring, a quoted title) keeps its English words
            hits.append(Hit(path, english.count("\n", 0, match.start()) + 1, match.group(0), zh,
                            match.start(), match.end(), f"{word}: in prose write {zh}; English only in code "
                                                        f"or in parentheses after {zh}"))
    hits.sort(key=lambda h: h.start)
    kept, last = [], -1
    for hit in hits:  # overlapping patterns: the first (longest, earlier in TERMS) wins
        if hit.start >= last:
            kept.append(hit)
            last = hit.end
    return kept


def apply(text: str, hits: Iterable[Hit]) -> str:
    for hit in sorted(hits, key=lambda h: h.start, reverse=True):
        start, end = hit.start, hit.end
        if is_cjk(hit.preferred[0]) and not is_cjk(hit.found[0]):  # an English word becomes Chinese
            if start >= 2 and text[start - 1] == " " and is_cjk(text[start - 2]):
                start -= 1
            if end + 1 < len(text) and text[end] == " " and is_cjk(text[end + 1]):
                end += 1
        text = text[:start] + hit.preferred + text[end:]
    return text


def scan_markdown(text: str, path: str = "") -> list[Hit]:
    return scan_masked(*markdown_prose(text), path=path)


def scan_python(text: str, path: str = "") -> list[Hit]:
    prose = python_prose(text)
    return scan_masked(prose, prose, path=path)


def _notebook_cells(path: Path) -> tuple[dict, list[dict]]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return notebook, [c for c in notebook["cells"] if c["cell_type"] == "markdown"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def scan_file(path: Path, root: Path = ROOT) -> list[Hit]:
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    if rel in EXEMPT:
        return []
    if path.suffix == ".md":
        return scan_markdown(path.read_text(encoding="utf-8"), rel)
    if path.suffix == ".py":
        return scan_python(path.read_text(encoding="utf-8"), rel)
    if path.suffix == ".ipynb":
        _, cells = _notebook_cells(path)
        hits = []
        for number, cell in enumerate(cells, 1):
            for hit in scan_markdown(_source(cell)):
                hits.append(Hit(f"{rel} (markdown cell {number})", hit.line, hit.found, hit.preferred,
                                hit.start, hit.end, hit.what))
        return hits
    return []


def fix_file(path: Path, root: Path = ROOT) -> int:
    """Rewrite the hits of one file in place; returns how many were fixed."""
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    if rel in EXEMPT:
        return 0
    if path.suffix in (".md", ".py"):
        text = path.read_text(encoding="utf-8")
        hits = scan_markdown(text) if path.suffix == ".md" else scan_python(text)
        if hits:
            path.write_text(apply(text, hits), encoding="utf-8")
        return len(hits)
    if path.suffix == ".ipynb":
        notebook, cells = _notebook_cells(path)
        count = 0
        for cell in cells:
            text = _source(cell)
            hits = scan_markdown(text)
            if hits:
                count += len(hits)
                cell["source"] = apply(text, hits).splitlines(keepends=True)
        if count:
            path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return count
    return 0


def book_files(root: Path = ROOT) -> list[Path]:
    docs = root / "docs"
    files = [*docs.rglob("*.md"), *(p for p in (docs / "notebooks").rglob("*.ipynb")
                                    if ".ipynb_checkpoints" not in p.parts),
             *(p for p in (root / "code" / "servelab").rglob("*.py") if "__pycache__" not in p.parts)]
    return sorted(files)


def expand(paths: Iterable[str], root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        path = path if path.is_absolute() else Path.cwd() / path
        if path.is_dir():
            out += [p for p in book_files(root) if p.is_relative_to(path.resolve())] or \
                   sorted(p for ext in ("*.md", "*.py", "*.ipynb") for p in path.rglob(ext))
        else:
            out.append(path.resolve())
    return out


def terminology_hits(root: Path = ROOT) -> list[str]:
    """The contract-style rule: every hit in the book, as a message."""
    return [str(hit) for path in book_files(root) for hit in scan_file(path, root)]


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.book.terminology",
                                     description="List (or --fix) non-preferred terms in the book's prose.")
    parser.add_argument("paths", nargs="*", help="files or folders (default: docs/ and code/servelab/)")
    parser.add_argument("--fix", action="store_true", help="rewrite the hits in place")
    args = parser.parse_args(argv)
    files = expand(args.paths) if args.paths else book_files()
    total = 0
    for path in files:
        hits = scan_file(path)
        for hit in hits:
            out(str(hit))
        if args.fix and hits:
            fix_file(path)
        total += len(hits)
    verb = "fixed" if args.fix else "found"
    out(f"{total} terminology hit(s) {verb} in {len(files)} file(s)")
    return 1 if total and not args.fix else 0


if __name__ == "__main__":
    sys.exit(main())
