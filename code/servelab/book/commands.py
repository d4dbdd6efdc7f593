"""Exact command lines on pages: ``<!-- servelab:command module:function ARG … -->`` → a ```bash block.

A page line that is exactly such a marker (indented or not) is replaced at build time by a bash block with
``function(ARG, …)`` — an argv list, the one the book's launcher runs (e.g.
``servelab.runtime.vllm_engine:serve_argv cpu``) — shell-quoted, one option per line with ``\\``
continuations. Leading ``NAME=value`` words are the environment the launcher sets. ``$HOME``,
``$VIRTUAL_ENV`` and ``$PATH`` stay unquoted so the copied line runs in the reader's shell.
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Sequence

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- servelab:command (?P<target>[\w.]+:\w+)(?P<args>(?: [^>]*?)?) -->[ \t]*$",
                    re.M)
_VARS = r"\$(?:HOME|VIRTUAL_ENV|PATH)"
_RAW = re.compile(rf"^(?:[\w@%+=:,./-]|{_VARS})+$")
_ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_quote(token: str) -> str:
    """:func:`shlex.quote`, except that ``$HOME``, ``$VIRTUAL_ENV`` and ``$PATH`` stay expandable."""
    if _RAW.match(token):
        return token
    return "".join(piece if re.fullmatch(_VARS, piece) else shlex.quote(piece)
                   for piece in re.split(f"({_VARS})", token) if piece)


def shell_join(argv: Sequence[str]) -> str:
    """One line; equals :func:`shlex.join` for argv without the three variables."""
    return " ".join(shell_quote(str(token)) for token in argv)


def groups(argv: Sequence[str]) -> list[list[str]]:
    """Lines of a command: the environment words, the command up to its first option, then one option
    (with its values) per line."""
    argv = [str(a) for a in argv]
    lines: list[list[str]] = []
    i = 0
    env = []
    while i < len(argv) and _ENV_WORD.match(argv[i]):
        env.append(argv[i])
        i += 1
    if env:  # on one line when short, else one NAME=value per line
        lines += [env] if len(" ".join(env)) <= 100 else [[word] for word in env]
    command = []
    while i < len(argv) and not argv[i].startswith("-"):
        command.append(argv[i])
        i += 1
    if command:
        lines.append(command)
    while i < len(argv):
        group = [argv[i]]
        i += 1
        while i < len(argv) and not argv[i].startswith("--") and "=" not in group[0]:
            group.append(argv[i])
            i += 1
        lines.append(group)
    return lines


def format_command(argv: Sequence[str]) -> str:
    """Shell text with ``\\`` continuations; joining its lines gives :func:`shell_join` (``argv``)."""
    return " \\\n".join(("  " if group[0].startswith("-") else "") + shell_join(group)
                         for group in groups(argv))


def unformat(text: str) -> str:
    """Undo :func:`format_command`'s line breaks (what the shell sees)."""
    return re.sub(r" \\\n\s*", " ", text)


def call(target: str, args: Sequence[str] = ()) -> list[str]:
    module_name, function = target.split(":")
    return list(getattr(importlib.import_module(module_name), function)(*args))


def render(target: str, args: Sequence[str] = (), indent: str = "") -> str:
    body = format_command(call(target, args))
    block = ["```bash", *body.splitlines(), "```"]
    return "\n".join(indent + line if line else line for line in block)


def expand(markdown: str) -> str:
    """Replace every ``servelab:command`` marker line of a page with its bash block."""
    return MARKER.sub(lambda m: render(m["target"], shlex.split(m["args"] or ""), m["indent"]), markdown)
