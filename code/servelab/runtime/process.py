"""Start a server as a child process, wait until it is ready, and always tear it down.

Shared by the vLLM and Triton launchers. Failures name their cause: a port already taken, a server that
exited (with its exit code and the last lines of its log), a server that never became ready.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class ServerStartError(RuntimeError):
    """A server did not come up; the message says why and ends with its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerStartError(f"port {host}:{port} is already in use ({exc.strerror})") from exc


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
                raise ServerStartError(
                    f"{self.name} exited with code {code} before it was ready; last log lines "
                    f"({self.log_path}):\n{log_tail(self.log_path)}")
            try:
                response = httpx.get(url, timeout=2.0)
                if (ok or (lambda r: r.status_code == 200))(response):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(
            f"{self.name} was not ready at {url} after {timeout_s:.0f} s; last log lines "
            f"({self.log_path}):\n{log_tail(self.log_path)}")

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM the whole process group (graceful), SIGKILL what is left after ``timeout_s``."""
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
        return self.proc.returncode
