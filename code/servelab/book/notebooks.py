"""Notebooks: the lessons' runnable companions.

* :func:`where_it_ran` — the first cell of every notebook prints where it ran (device, versions, date).
* :func:`execute` — run a notebook top to bottom with nbclient (CI executes into memory; ``--write``
  stores the outputs, so what a reader sees on the site comes from a real execution).
* :func:`scrub` — stored outputs carry no paths of the machine they ran on and no library noise
  (warnings, progress bars, ``nanobind`` leak reports); :func:`hygiene_problems` is the contract's check.
  The kernel also runs with :data:`KERNEL_ENV` (warnings filtered, progress bars off).

``python -m servelab.book.notebooks --write [NOTEBOOK ...]`` re-executes notebooks in place;
``--scrub`` only cleans the stored outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from servelab.book.tree import ROOT, lessons
from servelab.runtime.provenance import describe, provenance

MARKER = "執行環境："


# shared engine fixture → words in a notebook's code that mean it talks to that engine
NOTEBOOK_ENGINES = {
    "vllm_shared": ("vllm_endpoint", "SERVELAB_VLLM_URL"),
    "triton_shared": ("triton_endpoint", "SERVELAB_TRITON_ENDPOINT", "SERVELAB_TRITON_URL"),
}


def engines_used(path: Path) -> list[str]:
    """The session engines a notebook talks to (read from its code cells, not its prose)."""
    import json

    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return [fixture for fixture, words in NOTEBOOK_ENGINES.items() if any(word in code for word in words)]


def where_it_ran() -> None:
    """Print the line the notebook contract looks for."""
    print(f"{MARKER}{describe(provenance())}")


# --- hygiene: what a stored output may not contain ------------------------------------------------------
# The kernel's environment: library warnings and progress bars are not lesson output.
KERNEL_ENV = {
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning,"
                      "ignore::PendingDeprecationWarning",
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
MACHINE_PATH = re.compile(r"(?<![\w.:/~<>-])/(?:work|root|tmp|home|Users|private/var|var/folders)/[^\s'\"\]\),]*")
NOISE = [
    re.compile(r"^.*:\d+: \w*Warning: "),                 # warnings.warn: "file.py:12: FutureWarning: …"
    re.compile(r"^\[W\d{4} [^\]]*\] Warning: "),            # c10 (torch C++) warnings
    re.compile(r"^(\(\S+ pid=\d+\) )?(WARNING|INFO|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d "),  # vLLM's logger
    re.compile(r"^nanobind: |^ - leaked (instance|type|function)"),  # nanobind's leak report at exit
    re.compile(r"^Triton is installed, but doesn't include CPU backend"),
]
PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+ \[|Completed \| \d+/\d+ \[")
WARNING_SOURCE = re.compile(r"^\s{2,}\S")  # the source line Python prints under a warning
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scrub_text(text: str, root: Path = ROOT) -> str:
    """Machine paths → portable ones: repository-relative, ``~``, ``site-packages/``, ``<tmp>``."""
    text = re.sub(r"(?:/[^\s'\"/]+)*/lib/python3\.\d+/site-packages/", "site-packages/", text)
    for prefix in {str(root), str(root.resolve())}:
        text = text.replace(prefix + "/", "").replace(prefix, ".")
    text = re.sub(r"(?<![\w.:/~<>-])/(?:root|home/[^/\s'\"]+|Users/[^/\s'\"]+)(?=[/\s'\"]|$)", "~", text)
    for tmp in {tempfile.gettempdir(), "/tmp"}:
        text = re.sub(rf"(?<![\w.:/~<>-]){re.escape(tmp)}(?:/tmp[\w-]+|/pytest-of-[^/\s]+/pytest-\d+/[^/\s'\"]+)?",
                      "<tmp>", text)
    text = re.sub(r"(?<![\w.:/~<>-])/(?:private/)?var/folders/[^\s'\"]+?/T(?=/|\b)", "<tmp>", text)  # macOS
    return re.sub(r"(?<![\w.:/~<>-])/work/[^/\s'\"]+", "<repo>", text)


def scrub_stderr(text: str) -> str:
    """Drop warnings, library log lines, leak reports and progress bars from a stream; keep the rest."""
    kept, skip_source = [], False
    for line in re.split(r"(?<=\n)|\r", text):
        bare = ANSI.sub("", line.rstrip("\n"))
        if skip_source and WARNING_SOURCE.match(bare):
            skip_source = False
            continue
        skip_source = False
        if any(p.search(bare) for p in NOISE):
            skip_source = True
            continue
        if PROGRESS.search(bare):
            continue
        kept.append(line)
    return "".join(kept) if "".join(kept).strip() else ""


def scrub(notebook, root: Path = ROOT):
    """Clean a notebook's outputs in place (see :func:`scrub_text`, :func:`scrub_stderr`); returns it."""
    for cell in notebook["cells"]:
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = scrub_stderr("".join(output.get("text", "")))
                if not text:
                    continue
                output["text"] = scrub_text(text, root)
            for kind, value in (output.get("data") or {}).items():
                if kind.startswith("text/") or kind == "application/json":
                    joined = "".join(value) if isinstance(value, list) else value
                    if isinstance(joined, str):
                        output["data"][kind] = scrub_text(joined, root)
            if output.get("output_type") == "error":
                output["traceback"] = [scrub_text(line, root) for line in output.get("traceback", [])]
            outputs.append(output)
        cell["outputs"] = outputs
    return notebook


def hygiene_problems(notebook) -> list[str]:
    """What a stored notebook must not show: machine paths (any output), library noise (streams)."""
    problems = []
    cells = [c for c in notebook["cells"] if c.get("cell_type") == "code"]
    for index, cell in enumerate(cells, 1):
        for output in cell.get("outputs", []):
            texts = []
            if output.get("output_type") == "stream":
                texts.append((output.get("name"), "".join(output.get("text", ""))))
            for kind, value in (output.get("data") or {}).items():
                if kind.startswith("text/"):
                    texts.append((kind, "".join(value) if isinstance(value, list) else str(value)))
            for kind, text in texts:
                for found in sorted(set(MACHINE_PATH.findall(text))):
                    problems.append(f"code cell {index} ({kind}): machine path {found}")
                if kind in ("stdout", "stderr"):
                    for line in re.split(r"\n|\r", text):
                        if any(p.search(ANSI.sub("", line)) for p in NOISE):
                            problems.append(f"code cell {index} ({kind}): library noise: "
                                            f"{ANSI.sub('', line).strip()[:120]}")
    return problems


def kernel_env() -> dict[str, str]:
    return {**os.environ, **KERNEL_ENV}


def execute(path: Path, write: bool = False, timeout: int = 900, cwd: Path | None = None):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    env_cwd = str(cwd or path.parent)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": env_cwd}})
    client.execute(env=kernel_env())
    scrub(notebook)
    if write:
        nbformat.write(notebook, path)
    return notebook


def scrub_file(path: Path) -> bool:
    """Scrub a stored notebook in place; True when it changed."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    before = nbformat.writes(notebook)
    after = nbformat.writes(scrub(notebook))
    if after != before:
        path.write_text(after + ("" if after.endswith("\n") else "\n"), encoding="utf-8")
    return after != before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="execute the lesson notebooks")
    parser.add_argument("--write", action="store_true", help="store the outputs in the notebooks")
    parser.add_argument("--scrub", action="store_true",
                        help="only clean the stored outputs (machine paths, warnings), executing nothing")
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.paths or [item.notebook for item in lessons() if item.notebook.exists()]
    if args.scrub:
        for path in paths:
            print(f"{path}: {'scrubbed' if scrub_file(path) else 'clean'}")
        return 0
    for path in paths:
        start = time.monotonic()
        execute(path, write=args.write)
        print(f"{path}: ok ({time.monotonic() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
