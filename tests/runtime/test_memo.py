"""``@experiment``: one measurement per test session, shared by a test and a notebook kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from servelab.runtime.memo import MEMO_ENV, experiment, experiment_key

CALLS: list[tuple] = []


@experiment
def measure(n, scale=2):
    CALLS.append((n, scale))
    return {"n": n, "value": n * scale}


@pytest.fixture
def memo(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "memo"
    monkeypatch.setenv(MEMO_ENV, str(folder))
    CALLS.clear()
    return folder


def test_outside_a_session_it_is_a_no_op(monkeypatch):
    monkeypatch.delenv(MEMO_ENV, raising=False)
    CALLS.clear()
    assert measure(3) == measure(3) == {"n": 3, "value": 6}
    assert CALLS == [(3, 2), (3, 2)]


def test_second_call_with_the_same_arguments_reuses_the_result(memo):
    assert measure(3) == measure(3) == measure(3, scale=2) == {"n": 3, "value": 6}
    assert CALLS == [(3, 2)]
    assert measure(4) == {"n": 4, "value": 8} and measure(3, 5)["value"] == 15
    assert CALLS == [(3, 2), (4, 2), (3, 5)]
    assert len(list(memo.glob("*.pkl"))) == 3


def test_key_names_the_function_and_its_arguments_with_defaults():
    key = experiment_key(measure.__wrapped__, (3,), {})
    assert key.endswith("test_memo.measure(n=3, scale=2)")
    assert experiment_key(measure.__wrapped__, (), {"n": 3}) == key


def test_ignored_arguments_are_left_out_of_the_key(memo):
    seen = []

    @experiment(ignore=("engine",))
    def run(engine, prompt):
        seen.append(engine)
        return prompt.upper()

    assert run(object(), "hi") == run(object(), "hi") == "HI"
    assert len(seen) == 1


def test_an_exception_is_not_stored(memo):
    attempts = []

    @experiment
    def flaky(x):
        attempts.append(x)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        return x

    with pytest.raises(RuntimeError):
        flaky(1)
    assert flaky(1) == 1 and flaky(1) == 1
    assert attempts == [1, 1]


SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from servelab.runtime.memo import experiment

    @experiment
    def slow_measurement(n):
        with open(sys.argv[1], "a") as log:
            log.write("computed\\n")
        time.sleep(1.5)
        return [n, n * n]

    print(slow_measurement(7))
""")


def test_two_processes_measure_once(memo, tmp_path):
    """A test and a notebook kernel are two processes with the same environment: the second one waits
    for the first one's result (file lock) and reuses it."""
    script = tmp_path / "kernel.py"
    script.write_text(SCRIPT)
    log = tmp_path / "computed.log"
    env = {**os.environ, MEMO_ENV: str(memo)}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script), str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs == ["[7, 49]", "[7, 49]"]
    assert log.read_text().count("computed") == 1
    assert time.monotonic() - start < 10
    # and a third process, later, also reuses it
    third = subprocess.run([sys.executable, str(script), str(log)], env=env, capture_output=True, text=True,
                           timeout=60)
    assert third.stdout.strip() == "[7, 49]" and log.read_text().count("computed") == 1


def test_the_plugin_gives_the_session_a_memo_dir():
    assert os.environ.get(MEMO_ENV), "the servelab timing plugin sets SERVELAB_MEMO_DIR in pytest_configure"
    assert Path(os.environ[MEMO_ENV]).is_dir()


def test_an_endpoint_keys_by_where_it_answers_not_by_its_process_handle():
    from servelab.runtime import VLLMEndpoint

    def probe(endpoint, n=3):
        return n

    in_test = VLLMEndpoint("http://127.0.0.1:8123", process=object())  # the fixture holds the process
    in_kernel = VLLMEndpoint("http://127.0.0.1:8123")                   # a notebook found it via the env
    elsewhere = VLLMEndpoint("http://127.0.0.1:9999")
    assert experiment_key(probe, (in_test,), {}) == experiment_key(probe, (in_kernel,), {})
    assert experiment_key(probe, (in_test,), {}) != experiment_key(probe, (elsewhere,), {})
