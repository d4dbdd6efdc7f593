"""Start a server as a child process, wait until it is ready, and always tear it down.

Shared by the vLLM and Triton launchers. Failures name their cause in one line that says what to do
(:attr:`ServerStartError.summary`); the last log lines follow in ``str(error)``:

* :class:`PortInUseError` — a port is already taken;
* :class:`ModelPathError` — the model folder does not exist or is not a model;
* :class:`ServerDiedError` — the server exited before it was ready (exit code, cause, log);
* :class:`ServerTimeoutError` — it never became ready.

:class:`InBackground` and :func:`started_together` start servers side by side (their start-up is mostly
one core's work).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


class ServerStartError(RuntimeError):
    """A server did not come up. ``summary`` is one line that says what to do; ``str()`` adds log lines."""

    def __init__(self, summary: str, details: str = "") -> None:
        self.summary = summary
        self.details = details
        super().__init__(f"{summary}\n{details}" if details else summary)


class PortInUseError(ServerStartError):
    """A port the server needs is taken (by another server, or a reader's earlier run)."""


class ModelPathError(ServerStartError):
    """The model to serve is a path that does not exist or holds no ``config.json``."""


class ServerDiedError(ServerStartError):
    """The server exited before it was ready."""


class ServerTimeoutError(ServerStartError):
    """The server did not become ready in time."""


# log lines that name why a server died; the last such line wins, a busy port wins over everything
_PORT_BUSY = re.compile(r"address already in use", re.I)
_CAUSE = re.compile(r"\b\w*(Error|Exception)\b: .+|\berror: .+|No such file or directory|does not exist", re.I)
_NOT_A_CAUSE = re.compile(r"WARNING|See root cause above|nanobind|leaked|resource_tracker|warnings\.warn")


def log_cause(path: Path) -> str | None:
    """The line of a server log that best names why it died (``None`` when nothing looks like a cause)."""
    if not path.exists():
        return None
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()[-300:] if line.strip()]
    for line in reversed(lines):
        if _PORT_BUSY.search(line) and not _NOT_A_CAUSE.search(line):
            return line[-300:]
    for line in reversed(lines):
        if _CAUSE.search(line) and not _NOT_A_CAUSE.search(line):
            return line[-300:]
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {host}:{port} is already in use ({exc.strerror}): stop the server that holds it "
                f"(`ss -ltnp 'sport = :{port}'` shows which) or choose another port") from exc


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # its own process group, so stop() can signal the server and all its children
    try:  # Linux: if the Python that started the server dies (even by SIGKILL), the server gets SIGTERM
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


@dataclass
class ManagedProcess:
    """A child process in its own process group, with its output in ``log_path``."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env}, cwd=self.cwd, preexec_fn=_die_with_parent,
        )
        log.close()

    def wait_ready(self, url: str, timeout_s: float, ok: Callable[[httpx.Response], bool] | None = None) -> None:
        """Poll ``url`` until it answers 200 (or ``ok``), the process exits, or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.stop()  # its children (engine core, workers) go too
                cause = log_cause(self.log_path)
                raise ServerDiedError(
                    f"{self.name} exited with code {code} before it was ready"
                    + (f": {cause}" if cause else "") + f" — read {self.log_path} for the whole log",
                    f"last log lines ({self.log_path}):\n{log_tail(self.log_path)}")
            try:
                response = httpx.get(url, timeout=2.0)
                if (ok or (lambda r: r.status_code == 200))(response):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerTimeoutError(
            f"{self.name} was not ready at {url} after {timeout_s:.0f} s — read {self.log_path}, or allow more "
            "time with SERVELAB_STARTUP_TIMEOUT_S",
            f"last log lines ({self.log_path}):\n{log_tail(self.log_path)}")

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM the whole process group (graceful), SIGKILL what is left after ``timeout_s``.

        Descendants that left the group keep the server's session: they are killed too, and those that
        became our children (we are a subreaper in ``servelab serve``) are reaped, so no ``<defunct>``
        ``VLLM::Worker`` stays behind.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # nothing of the group survives, even children that ignored SIGTERM
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while True:  # until every member of the server's session is gone (or a zombie we cannot reap)
            alive = session_members(self.proc.pid)
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            reap(session_members(self.proc.pid, include_zombies=True))
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        reap(session_members(self.proc.pid, include_zombies=True))
        return self.proc.returncode


def session_members(sid: int, include_zombies: bool = False) -> list[int]:
    """Processes of session ``sid`` (the server's session: it starts with ``setsid``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and (include_zombies or fields[0] != "Z"):
            found.append(int(entry.name))
    return found


def reap(pids: Sequence[int]) -> None:
    """Collect the exit status of those ``pids`` that are our (possibly adopted) children."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: its own parent (or init) reaps it
            pass


def become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this process (not to a PID 1 that may never reap)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


def for_display(token: str) -> str:
    """An argv token as a page shows it: the venv as ``$VIRTUAL_ENV``, the home folder as ``$HOME``.

    ``servelab.book.commands.shell_join`` leaves these two variables unquoted, so the line still runs when
    copied (in a shell where the book's venv is active).
    """
    import sys

    if sys.prefix != sys.base_prefix:
        token = token.replace(sys.prefix.rstrip("/") + "/", "$VIRTUAL_ENV/")
    home = str(Path.home()).rstrip("/")
    if home and home != "/":
        token = re.sub(rf"(^|[=:]){re.escape(home)}(?=/|$)", r"\1$HOME", token)
    return token


class InBackground:
    """Enter a context manager (e.g. a server launcher) in a thread of its own; :meth:`result` waits for it.

    The thread lives until :meth:`close`, and it is the thread that leaves the context: a server started
    with ``PR_SET_PDEATHSIG`` is tied to the *thread* that started it, not just the process, so the thread
    must outlive the server. Two servers started this way start side by side.
    """

    def __init__(self, factory: Callable[[], Any], name: str = "background") -> None:
        import threading

        self.value: Any = None
        self.error: BaseException | None = None
        self._factory = factory
        self._ready, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"servelab-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._factory() as value:
                self.value = value
                self._ready.set()
                self._done.wait()
        except BaseException as exc:  # noqa: BLE001 — handed to the caller of result()
            self.error = exc
        finally:
            self._ready.set()

    def result(self) -> Any:
        self._ready.wait()
        if self.error is not None:
            raise self.error
        return self.value

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        if self.error is not None and self.value is not None:
            raise self.error  # the context failed while leaving it


@contextmanager
def started_together(*factories: Callable[[], Any]) -> Iterator[list]:
    """Start several servers at once (each launcher in its own thread); stop them all on exit."""
    started = [InBackground(factory, f"together-{i}") for i, factory in enumerate(factories)]
    try:
        yield [item.result() for item in started]
    finally:
        for item in started:
            item.close()
