"""CJK typography for the book's pages.

A browser renders a source line break as a space. Between two Chinese characters that space is a typo
(「記憶體裡塞進更多對話、 在流量高峰」), so before Markdown runs, a prose line that ends in a CJK character
is joined with the next line when that one starts with a CJK character. Code (fenced or indented), tables,
raw HTML lines and hard breaks (two trailing spaces, a trailing backslash) are left alone.
"""

from __future__ import annotations

import re

# Han (basic + extension A + compatibility), CJK symbols and punctuation, kana, full-width forms.
CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# a CJK character, maybe followed by closing emphasis or a link's target: 「**重點**」「[頁面](x.md)」
_ENDS_CJK = re.compile(f"[{CJK}](?:[*_~]+|\\]\\([^()\\s]*\\))?$")
# a CJK character, maybe after opening emphasis or a link's text bracket (not a list marker: no space)
_STARTS_CJK = re.compile(f"^[ \t]*(?:[*_~]+|\\[)?[{CJK}]")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
# lines that open a block whose indented body is prose, not code
_OPENER = re.compile(r"^[ \t]*(?:[-*+]\s|\d+[.)]\s|!!!|\?\?\?|===|:\s|>)")


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" "))


def _joinable(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("|", "<")) and _ENDS_CJK.search(line) is not None


def join_cjk_lines(markdown: str) -> str:
    """Join source lines broken between two CJK characters, outside code, tables and HTML."""
    lines = markdown.split("\n")
    out: list[str] = []
    fence: str | None = None       # the opening fence while inside a fenced block
    in_indented_code = False
    prev_nonblank = ""             # the last non-blank line before the current blank run
    blank_before = True
    last_was_code = False          # the last line appended was indented code
    for line in lines:
        stripped = line.strip()
        if fence is not None:
            out.append(line)
            match = _FENCE.match(line)
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not stripped[len(match.group(1)):].strip():
                fence = None
            continue
        match = _FENCE.match(line)
        if match:
            fence = match.group(1)
            out.append(line)
            blank_before, prev_nonblank = False, line
            continue
        if not stripped:
            out.append(line)
            blank_before = True
            continue
        if in_indented_code and _indent(line) < 4:
            in_indented_code = False
        elif blank_before and _indent(line) >= 4 and _indent(prev_nonblank) < 4 and not _OPENER.match(prev_nonblank):
            in_indented_code = True
        if (not in_indented_code and not last_was_code and out and not blank_before and _joinable(out[-1])
                and _STARTS_CJK.match(line) and not stripped.startswith(("|", "<"))):
            out[-1] = out[-1] + stripped
        else:
            out.append(line)
        blank_before, prev_nonblank, last_was_code = False, line, in_indented_code
    return "\n".join(out)
