"""The per-lesson time table ``make test`` ends with (servelab.testing.timing)."""

from __future__ import annotations

import json

import pytest

from servelab.testing.timing import SuiteClock

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(("nodeid", "place"), [
    ("tests/vllm/lab2_1/test_l02_basic_inference.py::test_x", ("vllm/lab2_1/l02_basic_inference", "tests")),
    ("tests/book/test_notebooks.py::test_notebook_runs[triton/lab2_1/l04_monitoring_and_performance]",
     ("triton/lab2_1/l04_monitoring_and_performance", "notebook")),
    ("docs/vllm/lab2_1/l01_setup_and_installation.md::line 120", ("vllm/lab2_1/l01_setup_and_installation", "blocks")),
    ("docs/index.md::line 3", ("book", "")),
    ("tests/book/test_contract.py::test_rule", ("book", "")),
    ("tests/runtime/test_vllm.py::test_x", ("runtime", "")),
])
def test_tests_are_placed_by_path(nodeid, place):
    assert SuiteClock.place(nodeid) == place


CONFTEST = """
import time
import pytest

@pytest.fixture(scope="session")
def vllm_shared():
    time.sleep(0.6)
    yield "engine"
    time.sleep(0.3)

@pytest.fixture
def lesson_setup():
    time.sleep(0.2)
"""

LESSON = """
import time

def test_uses_engine(vllm_shared, lesson_setup):
    time.sleep(0.1)

def test_plain():
    time.sleep(0.1)
"""

NOTEBOOKS = """
import time, pytest

@pytest.mark.parametrize("lesson", ["vllm/lab9_9/l01_demo"])
def test_notebook_runs(lesson, vllm_shared):
    time.sleep(0.4)
"""


def test_table_puts_engine_start_apart_from_the_lesson(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    (pytester.path / "tests" / "vllm" / "lab9_9").mkdir(parents=True)
    (pytester.path / "tests" / "book").mkdir(parents=True)
    (pytester.path / "tests" / "vllm" / "lab9_9" / "test_l01_demo.py").write_text(LESSON)
    (pytester.path / "tests" / "book" / "test_notebooks.py").write_text(NOTEBOOKS)
    times = pytester.path / "times.md"
    monkeypatch.setenv("SERVELAB_SUITE_TIMES", str(times))
    monkeypatch.delenv("SERVELAB_RESULTS_DIR", raising=False)
    result = pytester.runpytest_subprocess("-p", "servelab.testing.timing", "-p", "no:cacheprovider",
                                           "--rootdir", str(pytester.path), "tests")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*servelab: time per lesson*", "| vllm/lab9_9/l01_demo | *", "*shared engine: vllm_shared*",
                                 "*total*"])
    data = json.loads(times.with_suffix(".json").read_text())
    row = data["lessons"]["vllm/lab9_9/l01_demo"]
    assert 0.15 <= row["setup"] < 0.5          # lesson_setup's 0.2 s, not the engine's 0.6 s
    assert 0.15 <= row["tests"] < 0.5          # two tests of 0.1 s
    assert 0.35 <= row["notebook"] < 0.8
    engine = data["shared_engines"]["vllm_shared"]
    assert 0.55 <= engine["start"] < 1.2 and 0.25 <= engine["stop"] < 0.8
    assert data["total"] >= row["total"] + engine["start"]
