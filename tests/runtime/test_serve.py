"""`servelab serve vllm|triton` as a reader runs it: prints the exports, answers curl with them, stops on
Ctrl-C (SIGINT) and leaves no process behind; a server that dies while starting is one line."""

from __future__ import annotations

import contextlib
import os
import re
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from servelab.book.tree import ROOT
from servelab.runtime.process import free_port
from servelab.runtime.triton_repo import write_model
from servelab.testing.plugin import started_with_the_file

pytestmark = pytest.mark.engine
SERVELAB = [sys.executable, "-m", "servelab.cli"]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _start(args: list[str], wanted: set[str], timeout_s: float = 600) -> tuple[subprocess.Popen, dict[str, str]]:
    """Start ``servelab serve …``; return it once it printed every ``export`` line in ``wanted``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVELAB_VLLM", "SERVELAB_TRITON"))}
    proc = subprocess.Popen([*SERVELAB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while not wanted <= exports.keys():
        assert time.monotonic() < deadline, "no exports printed in time"
        assert proc.poll() is None, f"servelab serve exited: {proc.stderr.read()}"
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        match = re.match(r"export (\w+)=(.*)$", line.strip())
        if match:
            exports[match[1]] = shlex.split(match[2])[0]
    return proc, exports


def _alive(pid: int) -> bool:
    """Still running: /proc/<pid> exists and is not a zombie (an exited process whose reaper is not us)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _stop(proc: subprocess.Popen) -> str:
    tree = _descendants(proc.pid)
    assert tree, "the server runs as a child of servelab serve"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    deadline = time.monotonic() + 15
    while (left := [pid for pid in tree if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)  # a worker may take a moment to exit after its parent
    assert not left, f"processes left behind: {left}"
    assert "Traceback" not in stderr
    return stderr


def _curl(command: str, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_serve_triton_loads_the_repo_and_stops_clean(tmp_path):
    write_model(tmp_path, "echo", '''
name: "echo"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
''', {"model.py": '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''})
    ports = [free_port() for _ in range(3)]
    names = {"SERVELAB_TRITON_URL", "SERVELAB_TRITON_GRPC", "SERVELAB_TRITON_METRICS_URL", "SERVELAB_TRITON_ENDPOINT"}
    proc, exports = _start(["serve", "triton", "--repo", str(tmp_path), "--http-port", str(ports[0]),
                            "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])], names)
    try:
        assert exports["SERVELAB_TRITON_URL"] == f"http://127.0.0.1:{ports[0]}"
        assert exports["SERVELAB_TRITON_GRPC"] == f"127.0.0.1:{ports[1]}"
        reply = _curl('curl -sf -X POST "${SERVELAB_TRITON_URL:-http://127.0.0.1:8100}/v2/models/echo/infer" '
                      '-d \'{"inputs":[{"name":"X","shape":[2],"datatype":"FP32","data":[1,2]}]}\'', exports)
        assert '"data":[1.0,2.0]' in reply
        metrics = _curl('curl -sf "${SERVELAB_TRITON_METRICS_URL:-http://127.0.0.1:8102}/metrics"', exports)
        assert 'nv_inference_request_success{model="echo",version="1"} 1' in metrics
    finally:
        if proc.poll() is None:
            stderr = _stop(proc)
    assert "沒有留下任何伺服器行程" in stderr


def test_a_server_that_dies_while_starting_is_one_line(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    out = subprocess.run([*SERVELAB, "serve", "vllm", "--port", str(free_port()), "--model", str(broken)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("servelab: error:")]
    assert len(errors) == 1, out.stderr
    assert re.search(r"vllm serve exited with code \d+ before it was ready: .+ — read .+\.log", errors[0])


@pytest.fixture(scope="module", autouse=True)
def vllm_serving_starting(request, bundled_model):
    """``servelab serve vllm`` starts with the file's first test: its half minute of start-up overlaps the
    Triton and the dying-server tests, and the vLLM test (the last one) only waits for the exports."""
    port = free_port()

    @contextlib.contextmanager
    def serving():
        proc, exports = _start(["serve", "vllm", "--port", str(port), "--api-key", "book-key"],
                               {"SERVELAB_VLLM_URL", "SERVELAB_API_KEY"})
        try:
            yield port, proc, exports
        finally:
            if proc.poll() is None:
                proc.kill()

    with started_with_the_file(request, "vllm_serving", serving, "servelab-serve-vllm") as starting:
        yield starting


@pytest.fixture(scope="module")
def vllm_serving(vllm_serving_starting):
    return vllm_serving_starting.result()


def test_serve_vllm_prints_exports_answers_curl_and_stops_clean(vllm_serving):
    port, proc, exports = vllm_serving
    try:
        assert exports == {"SERVELAB_VLLM_URL": f"http://127.0.0.1:{port}", "SERVELAB_API_KEY": "book-key"}
        models = _curl('curl -sf -H "Authorization: Bearer ${SERVELAB_API_KEY}" '
                       '"${SERVELAB_VLLM_URL:-http://127.0.0.1:8000}/v1/models"', exports)
        assert '"smollm2"' in models
        unauthorized = _curl('curl -s -o /dev/null -w "%{http_code}" "$SERVELAB_VLLM_URL/v1/models"', exports)
        assert unauthorized == "401"
    finally:
        if proc.poll() is None:
            stderr = _stop(proc)
    assert "沒有留下任何伺服器行程" in stderr
    assert "nanobind" not in stderr  # stop-time noise stays in the log
