"""Servers started side by side: ``InBackground`` and ``started_together`` (``servelab.runtime.process``).

The servers the suite starts spend their half minute of start-up mostly on one core; these helpers let
that time overlap other work. What they must keep: the launcher is entered *and left* in one thread that
lives as long as the server (a child started with ``PR_SET_PDEATHSIG`` dies with the thread that started
it), errors reach the caller, and every started server is stopped.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

import pytest

from servelab.runtime.process import InBackground, ManagedProcess, started_together


@contextmanager
def slow_server(name: str, log: list, delay: float = 0.6, fail: bool = False):
    time.sleep(delay)  # a start-up that waits, as a server launcher waits for /health
    if fail:
        raise RuntimeError(f"{name} died while starting")
    log.append(("enter", name, threading.get_ident()))
    try:
        yield name
    finally:
        log.append(("exit", name, threading.get_ident()))


def test_started_together_starts_side_by_side_and_leaves_in_the_starting_thread():
    log: list = []
    start = time.monotonic()
    with started_together(lambda: slow_server("a", log), lambda: slow_server("b", log)) as values:
        elapsed = time.monotonic() - start
        assert values == ["a", "b"]
    assert elapsed < 1.1  # two 0.6 s starts overlapped, not 1.2 s in a row
    threads = {name: {tid for kind, n, tid in log if n == name} for name in ("a", "b")}
    assert all(len(t) == 1 for t in threads.values())  # entered and left in the same thread
    assert threads["a"] != threads["b"] and threading.get_ident() not in threads["a"] | threads["b"]
    assert sorted(kind for kind, _, _ in log) == ["enter", "enter", "exit", "exit"]


def test_a_failed_start_reaches_the_caller_and_the_other_server_is_stopped():
    log: list = []
    with pytest.raises(RuntimeError, match="b died while starting"):
        with started_together(lambda: slow_server("a", log), lambda: slow_server("b", log, fail=True)):
            pass
    assert [kind for kind, name, _ in log if name == "a"] == ["enter", "exit"]


def test_a_child_of_the_background_thread_lives_until_close(tmp_path):
    """The reason the thread waits: a server started with PR_SET_PDEATHSIG outlives its start-up."""
    @contextmanager
    def sleeper():
        proc = ManagedProcess("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
        proc.start()
        try:
            yield proc
        finally:
            proc.stop(timeout_s=5)

    started = InBackground(sleeper, "sleeper")
    proc = started.result()
    time.sleep(0.5)  # were the child tied to a finished thread, it would have had its SIGTERM by now
    assert proc.proc.poll() is None
    started.close()
    assert proc.proc.poll() is not None
