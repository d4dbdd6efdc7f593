"""Notebooks: the lessons' runnable companions.

* :func:`where_it_ran` — the first cell of every notebook prints where it ran (device, versions, date).
* :func:`execute` — run a notebook top to bottom with nbclient (CI executes into memory; ``--write``
  stores the outputs, so what a reader sees on the site comes from a real execution).

``python -m servelab.book.notebooks --write [NOTEBOOK ...]`` re-executes notebooks in place.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from servelab.book.tree import lessons
from servelab.runtime.provenance import describe, provenance

MARKER = "執行環境："


def where_it_ran() -> None:
    """Print the line the notebook contract looks for."""
    print(f"{MARKER}{describe(provenance())}")


def execute(path: Path, write: bool = False, timeout: int = 900, cwd: Path | None = None):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    env_cwd = str(cwd or path.parent)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": env_cwd}})
    client.execute()
    if write:
        nbformat.write(notebook, path)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="execute the lesson notebooks")
    parser.add_argument("--write", action="store_true", help="store the outputs in the notebooks")
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.paths or [item.notebook for item in lessons() if item.notebook.exists()]
    for path in paths:
        start = time.monotonic()
        execute(path, write=args.write)
        print(f"{path}: ok ({time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
