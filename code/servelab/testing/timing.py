"""Suite time is a budget: a per-lesson time table at the end of every test session.

Loaded with ``-p servelab.testing.timing`` (pyproject's ``addopts``). It

* gives the session a scratch ``SERVELAB_MEMO_DIR`` for :func:`servelab.runtime.memo.experiment`, so a
  test and a notebook kernel measure an experiment once;
* times every test phase and every start/stop of the shared engine fixtures, and ends the session with a
  table: one row per lesson (setup, tests, code blocks, notebook), the shared engines, the book's and the
  runtime's own tests, and the total. The table is also written as ``suite_times.md``/``.json`` under the
  scratch results folder and to ``$SERVELAB_SUITE_TIMES`` (default ``<tmp>/servelab-suite-times.md``),
  which outlives the scratch folder.

Where a test's time goes, by its path:

* ``tests/<track>/<lab>/test_<lesson>.py``           → the lesson's *setup* and *tests* columns
* ``tests/book/test_notebooks.py::…[<track>/<lab>/<lesson>]`` → the lesson's *notebook* column
* ``docs/<track>/<lab>/<lesson>.md`` (code blocks)  → the lesson's *blocks* column
* the setup and teardown of the session fixtures in :data:`SHARED` → *shared engines*, never a lesson
* everything else → *book* (``tests/book``, ``docs/`` pages that are not lessons), *runtime*
  (``tests/runtime``) or *other*.

The budget (docs/contributing.md): 36 lessons in 30 minutes from a fresh clone on 2 cores, i.e. about
:data:`LESSON_BUDGET_S` seconds per lesson beyond the shared engines; a lesson over it is flagged.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

SHARED = ("bundled_model", "vllm_shared", "llm_shared", "triton_shared", "triton_scratch")
LESSON_BUDGET_S = 40.0
SUITE_BUDGET_S = 30 * 60
LESSON_TEST = re.compile(r"^tests/(?P<track>vllm|triton)/(?P<lab>[^/]+)/test_(?P<lesson>[^/]+)\.py::")
NOTEBOOK_TEST = re.compile(r"^tests/book/test_notebooks\.py::[^\[]+\[(?P<rel>[^\]]+)\]")
LESSON_PAGE = re.compile(r"^docs/(?P<track>vllm|triton)/(?P<lab>[^/]+)/(?P<lesson>[^/]+)\.md::")
COLUMNS = ("setup", "tests", "blocks", "notebook")


class SuiteClock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.collected_at: float | None = None
        self.lessons: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
        self.groups: dict[str, float] = defaultdict(float)
        self.shared: dict[str, dict[str, float]] = defaultdict(lambda: {"start": 0.0, "stop": 0.0})
        self._in_phase = 0.0  # shared-fixture time spent inside the current test phase
        self._stopping: dict[str, float] = {}

    # --- attribution ---------------------------------------------------------------------------------
    @staticmethod
    def place(nodeid: str) -> tuple[str, str]:
        """(row, column) for a test's node id."""
        nodeid = nodeid.replace("\\", "/")
        if m := LESSON_TEST.match(nodeid):
            return f"{m['track']}/{m['lab']}/{m['lesson']}", "tests"
        if m := NOTEBOOK_TEST.match(nodeid):
            return m["rel"], "notebook"
        if m := LESSON_PAGE.match(nodeid):
            return f"{m['track']}/{m['lab']}/{m['lesson']}", "blocks"
        if nodeid.startswith(("tests/book/", "docs/")):
            return "book", ""
        if nodeid.startswith("tests/runtime/"):
            return "runtime", ""
        return "other", ""

    def record(self, report) -> None:
        duration = max(0.0, report.duration - self._in_phase)
        self._in_phase = 0.0
        row, column = self.place(report.nodeid)
        if not column:
            self.groups[row] += duration
        elif column == "tests" and report.when in ("setup", "teardown"):
            self.lessons[row]["setup"] += duration
        else:
            self.lessons[row][column] += duration

    # --- the table -----------------------------------------------------------------------------------
    def rows(self) -> dict:
        total = time.monotonic() - self.start
        lessons = {}
        for rel in sorted(self.lessons):
            cells = {k: round(v, 1) for k, v in self.lessons[rel].items()}
            cells["total"] = round(sum(self.lessons[rel].values()), 1)
            lessons[rel] = cells
        shared = {name: {k: round(v, 1) for k, v in times.items()} for name, times in sorted(self.shared.items())}
        return {
            "lessons": lessons,
            "shared_engines": shared,
            "shared_engines_total": round(sum(sum(t.values()) for t in self.shared.values()), 1),
            "groups": {k: round(v, 1) for k, v in sorted(self.groups.items())},
            "collection": round((self.collected_at or self.start) - self.start, 1),
            "total": round(total, 1),
            "budget": {"lesson_s": LESSON_BUDGET_S, "suite_s": SUITE_BUDGET_S},
        }


def render(data: dict) -> list[str]:
    lines = ["| 課程 lesson | setup s | tests s | blocks s | notebook s | total s | budget |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for rel, cells in data["lessons"].items():
        flag = "ok" if cells["total"] <= data["budget"]["lesson_s"] else f"OVER {data['budget']['lesson_s']:.0f} s"
        lines.append(f"| {rel} | {cells['setup']:.1f} | {cells['tests']:.1f} | {cells['blocks']:.1f} | "
                     f"{cells['notebook']:.1f} | {cells['total']:.1f} | {flag} |")
    for name, times in data["shared_engines"].items():
        lines.append(f"| shared engine: {name} (start + stop) | {times['start']:.1f} | | | | "
                     f"{times['start'] + times['stop']:.1f} | |")
    for name, seconds in data["groups"].items():
        lines.append(f"| {name} tests | | {seconds:.1f} | | | {seconds:.1f} | |")
    lines.append(f"| collection | | | | | {data['collection']:.1f} | |")
    lessons = sum(c["total"] for c in data["lessons"].values())
    lines.append(f"| **total** ({len(data['lessons'])} lessons: {lessons:.0f} s; shared engines: "
                 f"{data['shared_engines_total']:.0f} s) | | | | | **{data['total']:.1f}** | "
                 f"{'ok' if data['total'] <= data['budget']['suite_s'] else 'OVER'} |")
    return lines


_CLOCK_KEY = pytest.StashKey[SuiteClock]()


def pytest_configure(config):
    config.stash[_CLOCK_KEY] = SuiteClock()
    if not os.environ.get("SERVELAB_MEMO_DIR"):
        import shutil

        memo = tempfile.mkdtemp(prefix="servelab-memo-")
        os.environ["SERVELAB_MEMO_DIR"] = memo

        def _cleanup(path: str = memo) -> None:
            shutil.rmtree(path, ignore_errors=True)
            if os.environ.get("SERVELAB_MEMO_DIR") == path:
                del os.environ["SERVELAB_MEMO_DIR"]

        config.add_cleanup(_cleanup)


def pytest_collection_finish(session):
    session.config.stash[_CLOCK_KEY].collected_at = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    clock = request.config.stash.get(_CLOCK_KEY, None)
    if clock is None or fixturedef.argname not in SHARED:
        yield
        return
    name, start = fixturedef.argname, time.monotonic()
    yield
    spent = time.monotonic() - start
    clock.shared[name]["start"] += spent
    clock._in_phase += spent

    def _stopping() -> None:  # runs first among the fixture's finalizers (they run last-in, first-out)
        clock._stopping[name] = time.monotonic()

    fixturedef.addfinalizer(_stopping)


def pytest_fixture_post_finalizer(fixturedef, request):
    clock = request.config.stash.get(_CLOCK_KEY, None)
    if clock is None or fixturedef.argname not in clock._stopping:
        return
    spent = time.monotonic() - clock._stopping.pop(fixturedef.argname)
    clock.shared[fixturedef.argname]["stop"] += spent
    clock._in_phase += spent


def pytest_runtest_logreport(report):
    clock = _clock_of(report)
    if clock is not None:
        clock.record(report)


_ACTIVE: list[SuiteClock] = []


def _clock_of(report):  # reports carry no config; the session's clock is registered at session start
    return _ACTIVE[-1] if _ACTIVE else None


def pytest_sessionstart(session):
    _ACTIVE.append(session.config.stash[_CLOCK_KEY])


def pytest_sessionfinish(session):
    clock = session.config.stash.get(_CLOCK_KEY, None)
    if clock in _ACTIVE:
        _ACTIVE.remove(clock)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    clock = config.stash.get(_CLOCK_KEY, None)
    if clock is None or not (clock.lessons or clock.shared or clock.groups):
        return
    data = clock.rows()
    lines = render(data)
    terminalreporter.section("servelab: time per lesson (budget: docs/contributing.md)")
    for line in lines:
        terminalreporter.write_line(line)
    targets = []
    if os.environ.get("SERVELAB_RESULTS_DIR"):
        targets.append(Path(os.environ["SERVELAB_RESULTS_DIR"]) / "suite_times.md")
    targets.append(Path(os.environ.get("SERVELAB_SUITE_TIMES")
                        or Path(tempfile.gettempdir()) / "servelab-suite-times.md"))
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            target.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError:
            continue
    terminalreporter.write_line(f"written to {targets[-1]} (and .json)")
