"""03-Model_Lifecycle_Management — load, swap, warm up, fail, retry, roll back and shut down under traffic.

This file has two roles (as in Lab 2.1 lesson 3):

1. The lesson module (``servelab.triton.lab2_2.l03_model_lifecycle_management``): writes model folders,
   drives Triton's repository API while a load test runs, measures, and holds the lifecycle runbook.
2. Triton's ``model.py``: :func:`write_version` copies this file (cut before the reader context at its end)
   to ``<repo>/<name>/<version>/model.py``. So the top level imports only the standard library and numpy.

The model is deliberately small and numpy-only (its stub starts in about a second): what this lesson
measures is Triton's lifecycle, not a forward pass. Each version folder carries a ``behaviour.json`` that
says how that version behaves — how long ``initialize`` takes, whether it fails (always, or its first N
attempts), how long each ``execute`` takes, and a one-time cost on the first ``execute`` (the lazy
initialisation that ``model_warmup`` exists for).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def experiment(func):
    """servelab's ``@experiment`` (one measurement per test session), imported at the first call:
    Triton's stub, which runs this file too, never pays for importing servelab."""
    import functools

    @functools.wraps(func)
    def call(*args, **kwargs):
        from servelab.runtime.memo import experiment as memo

        return memo(func)(*args, **kwargs)
    return call

LESSON = "triton/lab2_2/l03_model_lifecycle_management"
END_OF_MODEL_PY = "# ---- end of model.py ----"  # model_source() cuts the file at the last such line
WIDTH = 4  # the model's input and output: [batch, 4] float32
LOAD_TIMEOUT_S = 120.0


class LoadError(RuntimeError):
    """Triton refused to load a model; the message is Triton's own."""


# --8<-- [start:model]
class TritonPythonModel:
    """Y = 2·X + version. ``behaviour.json`` beside this file sets the version's timings and failures."""

    def initialize(self, args: dict) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        self.version = int(args["model_version"])
        b = json.loads((folder / "behaviour.json").read_text())
        attempts = folder / "attempts.txt"  # (1)!
        attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
        attempts.write_text(str(attempt))
        if b.get("fail") or attempt <= b.get("fail_first", 0):
            raise RuntimeError(f"version {self.version}: initialize failed (attempt {attempt})")
        time.sleep(b.get("init_s", 0.0))  # (2)!
        self.delay_s = b.get("delay_ms", 0) / 1000
        self.cold_s = b.get("cold_ms", 0) / 1000  # paid once, by the first execute
        self.bias = b.get("bias", 0.0)  # a release that loads fine but answers wrong
        self.warm = False

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        if not self.warm:
            time.sleep(self.cold_s)  # (3)!
            self.warm = True
        time.sleep(self.delay_s)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            version = np.full((x.shape[0], 1), self.version, dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (2 * x + self.version + self.bias).astype(np.float32)),
                pb_utils.Tensor("VERSION", version)]))
        return responses
# --8<-- [end:model]


# --8<-- [start:config]
def model_config(name: str, warmup: bool = False, policy: str = "latest { num_versions: 1 }") -> str:
    """``config.pbtxt``: one CPU instance, the newest version served; ``warmup`` adds a ``model_warmup``."""
    warm = f"""
model_warmup [ {{
  name: "zeros" batch_size: 1 count: 1
  inputs {{ key: "X" value: {{ data_type: TYPE_FP32 dims: [ {WIDTH} ] zero_data: true }} }}
}} ]""" if warmup else ""
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [
  {{ name: "Y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }},
  {{ name: "VERSION" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
version_policy: {{ {policy} }}{warm}
"""
# --8<-- [end:config]


def model_source() -> str:
    """This module as installed, cut before the reader context (which imports servelab)."""
    from importlib.resources import files

    module = files("servelab.triton.lab2_2") / "l03_model_lifecycle_management.py"
    return module.read_text(encoding="utf-8").rsplit(END_OF_MODEL_PY, 1)[0]


# --8<-- [start:write_version]
def write_version(repository: Path, name: str, version: int, warmup: bool = False, **behaviour) -> Path:
    """``<repository>/<name>/<version>/{model.py, behaviour.json}`` (and the model's config.pbtxt)."""
    from servelab.runtime.triton_repo import write_model

    return write_model(Path(repository), name, model_config(name, warmup),
                       files={"model.py": model_source(), "behaviour.json": json.dumps(behaviour)},
                       version=version)


def load(endpoint, name: str, config: str | None = None) -> float:
    """POST /v2/repository/models/<name>/load (with an optional config override); the seconds it took."""
    import httpx

    body = {"parameters": {"config": config}} if config else {}
    start = time.perf_counter()
    response = httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/load", json=body,
                          timeout=LOAD_TIMEOUT_S)  # (1)!
    if response.status_code != 200:
        raise LoadError(response.json().get("error", response.text))
    return time.perf_counter() - start


def unload(endpoint, name: str) -> None:
    """POST /v2/repository/models/<name>/unload: returns at once; the model leaves when it is idle."""
    import httpx

    httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/unload", timeout=30).raise_for_status()


def infer(endpoint, name: str, version: str = "", client=None) -> tuple[np.ndarray, int]:
    """One request of one row; Triton's answer and the version that served it."""
    import tritonclient.http as httpclient

    x = np.arange(WIDTH, dtype=np.float32)[None, :]
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = (client or endpoint.http_client()).infer(name, [tensor], model_version=version)
    return result.as_numpy("Y"), int(result.as_numpy("VERSION")[0, 0])
# --8<-- [end:write_version]


def index_state(endpoint, name: str) -> list[dict]:
    """The repository index's entries for ``name`` (one per version Triton knows): state and reason."""
    return [e for e in endpoint.http_client().get_model_repository_index() if e.get("name") == name]


def unload_quietly(endpoint, *names: str, timeout_s: float = 15.0) -> None:
    """Unload models (if loaded), wait until none of their versions is UNLOADING (a strict server answers
    400 on /v2/health/ready meanwhile), and remove their folders."""
    import shutil

    import httpx

    for name in names:
        try:
            unload(endpoint, name)
        except httpx.HTTPError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
            e.get("state") == "UNLOADING" for name in names for e in index_state(endpoint, name)):
        time.sleep(0.1)
    for name in names:
        shutil.rmtree(Path(endpoint.repository) / name, ignore_errors=True)


# --8<-- [start:traffic]
class TrafficRecorder:
    """``clients`` threads sending requests back to back until the ``with`` block ends; every outcome kept."""

    def __init__(self, endpoint, name: str, clients: int = 4):
        self.endpoint, self.name, self.clients = endpoint, name, clients
        self.records: list[dict] = []  # {"t", "ms", "version", "error"}; t is seconds since start
        self.readiness: list[tuple[float, int]] = []  # (t, status of /v2/health/ready) every 50 ms
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _client(self) -> None:
        client = self.endpoint.http_client()  # one connection per thread
        while not self.stop.is_set():
            start = self.now()
            try:
                version, error = infer(self.endpoint, self.name, client=client)[1], ""
            except Exception as exc:  # an InferenceServerException, a refused connection, …
                version, error = 0, str(exc).splitlines()[0][:160]
            with self.lock:
                self.records.append({"t": start, "ms": (self.now() - start) * 1e3,
                                     "version": version, "error": error})

    def _watch_ready(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                status = http.get(f"http://{self.endpoint.http}/v2/health/ready").status_code
                self.readiness.append((self.now(), status))
                time.sleep(0.05)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self.threads.append(threading.Thread(target=self._watch_ready, daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def summary(self) -> dict:
        failed = [r for r in self.records if r["error"]]
        versions = sorted({r["version"] for r in self.records if not r["error"]})
        not_ready = sum(b[0] - a[0] for a, b in zip(self.readiness, self.readiness[1:]) if a[1] != 200)
        return {"requests": len(self.records), "failed": len(failed), "versions": versions,
                "errors": sorted({r["error"] for r in failed})[:3],
                "max_ms": max(r["ms"] for r in self.records), "not_ready_s": not_ready}
# --8<-- [end:traffic]


# --8<-- [start:swap]
def rollback_config(name: str, version: int) -> str:
    """A config override (JSON) that serves exactly ``version``: the repository's files stay as they are."""
    return json.dumps({
        "name": name, "backend": "python", "max_batch_size": 8,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [WIDTH]}],
        "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [WIDTH]},
                   {"name": "VERSION", "data_type": "TYPE_INT32", "dims": [1]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "version_policy": {"specific": {"versions": [version]}}})


@experiment
def swap_under_load(endpoint, name: str = "l03_swap", clients: int = 4, settle_s: float = 0.5,
                    v2_init_s: float = 0.5) -> dict:
    """One load test through three changes: v1 → v2 by reload, back to v1 by a config override, and
    v1 → v2 the naive way (unload, then load)."""
    repo = Path(endpoint.repository)
    write_version(repo, name, 1)
    load(endpoint, name)
    marks = {}
    try:
        with TrafficRecorder(endpoint, name, clients) as traffic:
            time.sleep(settle_s)
            write_version(repo, name, 2, init_s=v2_init_s)  # (1)!
            marks["swap"] = traffic.now(), load(endpoint, name)  # (2)!
            time.sleep(settle_s)
            marks["rollback"] = traffic.now(), load(endpoint, name, config=rollback_config(name, 1))  # (3)!
            time.sleep(settle_s)
            start = traffic.now()
            unload(endpoint, name)  # (4)!
            marks["naive"] = start, load(endpoint, name)
            time.sleep(settle_s)
    finally:
        unload_quietly(endpoint, name)
    return {"clients": clients, "phases": phases(traffic, marks), "load_avg": os.getloadavg()[0],
            "timeline": timeline(traffic.records, traffic.readiness)}


def phases(traffic: TrafficRecorder, marks: dict) -> list[dict]:
    """The load test cut at each change: requests started from one change to the next, and what they got."""
    starts = [("steady", 0.0, 0.0)] + [(k, t, seconds) for k, (t, seconds) in marks.items()]
    rows = []
    for (phase, begin, seconds), after in zip(starts, starts[1:] + [("", float("inf"), 0)]):
        records = [r for r in traffic.records if begin <= r["t"] < after[1]]
        polls = [ok for t, ok in traffic.readiness if begin <= t < after[1]]
        failed = [r["error"] for r in records if r["error"]]
        rows.append({"phase": phase, "start_s": begin, "change_s": seconds, "requests": len(records),
                     "failed": len(failed), "error": failed[0] if failed else "",
                     "versions": sorted({r["version"] for r in records if not r["error"]}),
                     "max_ms": max(r["ms"] for r in records),
                     "not_ready_polls": sum(ok != 200 for ok in polls), "polls": len(polls)})
    return rows
# --8<-- [end:swap]


def timeline(records: list[dict], readiness: list[tuple[float, int]], bin_s: float = 0.25) -> list[dict]:
    """Per ``bin_s`` window: requests started, by the version that served them; the slowest; and the
    share of /v2/health/ready polls that answered 200."""
    bins: dict[int, dict] = {}
    for r in records:
        b = bins.setdefault(int(r["t"] / bin_s), {"v1": 0, "v2": 0, "failed": 0, "max_ms": 0.0, "polls": []})
        b["failed" if r["error"] else f"v{r['version']}"] += 1
        b["max_ms"] = max(b["max_ms"], r["ms"])
    for t, status in readiness:
        if int(t / bin_s) in bins:
            bins[int(t / bin_s)]["polls"].append(status == 200)
    return [{"t": round(k * bin_s, 2), **{x: y for x, y in v.items() if x != "polls"},
             "ready_pct": 100 * sum(v["polls"]) / max(1, len(v["polls"]))} for k, v in sorted(bins.items())]


def save_swap(result: dict) -> None:
    """Results ``swap`` (one row per phase of the load test) and ``swap_timeline`` (the whole run)."""
    from servelab.runtime.results import write_results

    labels = {"steady": "v1 穩定服務", "swap": "重新載入 → v2", "rollback": "config 覆寫 → 回到 v1",
              "naive": "unload → load（天真換版）"}
    write_results(LESSON, "swap", [
        dict(r, phase=labels[r["phase"]], versions="、".join(f"v{v}" for v in r["versions"]),
             ready=f"{r['polls'] - r['not_ready_polls']}/{r['polls']}", load_avg=result["load_avg"])
        for r in result["phases"]], {
        "phase": "階段", "start_s": "開始（秒）", "change_s": "load 呼叫（秒）", "requests": "請求數",
        "failed": "失敗", "versions": "回應的版本", "max_ms": "最長延遲（ms）",
        "ready": "ready 探測 200 次數", "error": "錯誤訊息", "load_avg": "系統負載（1 分鐘）"})
    write_results(LESSON, "swap_timeline", result["timeline"], {
        "t": "時間（秒）", "v1": "v1 回應", "v2": "v2 回應", "failed": "失敗",
        "max_ms": "最長延遲（ms）", "ready_pct": "ready 探測為 200 的比例（%）"},
        {"changes": {r["phase"]: r["start_s"] for r in result["phases"]}})


# --8<-- [start:in_flight]
@experiment
def unload_in_flight(endpoint, name: str = "l03_inflight", delay_ms: int = 500, in_flight: int = 3) -> dict:
    """Requests already inside ``execute`` when ``unload`` is called; one more sent just after."""
    write_version(Path(endpoint.repository), name, 1, delay_ms=delay_ms)
    load(endpoint, name)
    client = endpoint.http_client()

    def timed(_):
        start = time.perf_counter()
        try:
            infer(endpoint, name)
            return {"ok": True, "ms": (time.perf_counter() - start) * 1e3}
        except Exception as exc:
            return {"ok": False, "ms": (time.perf_counter() - start) * 1e3, "error": str(exc)}

    try:
        with ThreadPoolExecutor(in_flight) as pool:
            running = list(map(pool.submit, [timed] * in_flight, range(in_flight)))
            time.sleep(0.3)  # they are inside execute now
            start = time.perf_counter()
            unload(endpoint, name)  # (1)!
            unload_call_s = time.perf_counter() - start
            late = timed(None)  # (2)!
            ready_after_unload = client.is_model_ready(name)
            done = [f.result() for f in running]
    finally:
        unload_quietly(endpoint, name)
    return {"in_flight": in_flight, "completed": sum(d["ok"] for d in done),
            "in_flight_ms": max(d["ms"] for d in done), "unload_call_s": unload_call_s,
            "late_ok": late["ok"], "late_error": late.get("error", ""),
            "ready_after_unload": ready_after_unload}
# --8<-- [end:in_flight]


def save_in_flight(result: dict) -> None:
    from servelab.runtime.results import write_results

    write_results(LESSON, "unload_in_flight", [{
        "in_flight": result["in_flight"], "completed": result["completed"], "in_flight_ms": result["in_flight_ms"],
        "unload_call_s": result["unload_call_s"], "ready_after_unload": result["ready_after_unload"],
        "late": result["late_error"] or "成功"}], {
        "in_flight": "unload 前送出的請求", "completed": "成功完成", "in_flight_ms": "最慢的一個（ms）",
        "unload_call_s": "unload 呼叫（秒）", "ready_after_unload": "unload 後 is_model_ready",
        "late": "unload 後才送出的請求"})


# --8<-- [start:warmup]
@experiment
def warmup_effect(endpoint, cold_ms: int = 1500, repeats: int = 4) -> list[dict]:
    """The same version with and without ``model_warmup``: load time, first and later request latency."""
    rows = []
    for warm in (False, True):
        name = f"l03_warmup_{'on' if warm else 'off'}"
        write_version(Path(endpoint.repository), name, 1, warmup=warm, cold_ms=cold_ms)
        try:
            load_s = load(endpoint, name)  # (1)!
            client, latencies = endpoint.http_client(), []
            for _ in range(repeats):
                start = time.perf_counter()
                infer(endpoint, name, client=client)
                latencies.append((time.perf_counter() - start) * 1e3)
        finally:
            unload_quietly(endpoint, name)
        rows.append({"warmup": warm, "load_s": load_s, "first_ms": latencies[0],
                     "later_ms": float(np.median(latencies[1:])), "cold_ms": cold_ms,
                     "load_avg": os.getloadavg()[0]})
    return rows
# --8<-- [end:warmup]


def save_warmup(rows: list[dict]) -> None:
    from servelab.runtime.results import write_results

    write_results(LESSON, "warmup", [dict(r, warmup="有" if r["warmup"] else "無") for r in rows], {
        "warmup": "model_warmup", "load_s": "載入（秒）", "first_ms": "第一個請求（ms）",
        "later_ms": "之後的請求（中位數，ms）", "cold_ms": "首次 execute 的延遲初始化（ms）",
        "load_avg": "系統負載（1 分鐘）"})


# --8<-- [start:readiness]
def ready_codes(endpoint) -> dict:
    """HTTP status of the server's liveness and readiness endpoints."""
    import httpx

    base = f"http://{endpoint.http}/v2/health"
    return {"live": httpx.get(f"{base}/live").status_code, "ready": httpx.get(f"{base}/ready").status_code}


def wait_ready(endpoint, timeout_s: float = 30.0) -> float:
    """Poll /v2/health/ready until it answers 200; the seconds waited."""
    start = time.perf_counter()
    while ready_codes(endpoint)["ready"] != 200:
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"{endpoint.http} not ready after {timeout_s:.0f} s")
        time.sleep(0.1)
    return time.perf_counter() - start


def try_load(endpoint, name: str, config: str | None = None) -> str:
    """'' when the load succeeds, else Triton's error text."""
    try:
        load(endpoint, name, config)
        return ""
    except LoadError as exc:
        return str(exc)
# --8<-- [end:readiness]


# --8<-- [start:runbook]
def runbook(endpoint, name: str, version: int, log=print) -> dict:
    """Promote ``<name>/<version>`` (already written into the repository) or leave the old version serving.

    1. record what serves now; 2. reload; 3. smoke-test the new version by number;
    4. on a failed load: check the old version still answers; on a failed smoke test: roll back.
    """
    steps = []

    def step(what: str, ok: bool, detail: str = "") -> bool:
        steps.append({"step": what, "ok": ok, "detail": detail})
        log(f"[{'ok' if ok else 'FAIL'}] {what} {detail}")
        return ok

    _, serving = infer(endpoint, name)
    step("serving before", True, f"v{serving}")
    error = try_load(endpoint, name)
    if not step("load new version", not error, error):
        _, still = infer(endpoint, name)
        step("old version still serves", still == serving, f"v{still}")
        return {"outcome": "kept", "serving": still, "steps": steps}
    y, got = infer(endpoint, name, version=str(version))
    expected = 2 * np.arange(WIDTH, dtype=np.float32) + version
    if not step("smoke test", got == version and np.allclose(y[0], expected), f"Y={y[0].tolist()}"):
        error = try_load(endpoint, name, config=rollback_config(name, serving))  # (1)!
        _, now = infer(endpoint, name)
        step("rolled back", not error and now == serving, f"v{now}")
        return {"outcome": "rolled back", "serving": now, "steps": steps}
    _, now = infer(endpoint, name)
    step("promoted", now == version, f"v{now}")
    return {"outcome": "promoted", "serving": now, "steps": steps}
# --8<-- [end:runbook]


# --8<-- [start:runbook_demo]
@experiment
def runbook_demo(endpoint, name: str = "l03_runbook") -> list[dict]:
    """v1 serves; v2 (good) is promoted; v3 (loads, answers wrong) is rolled back. Every step, logged."""
    repo, rows = Path(endpoint.repository), []
    try:
        write_version(repo, name, 1)
        load(endpoint, name)
        for version, behaviour in ((2, {}), (3, {"bias": 1.0})):
            write_version(repo, name, version, **behaviour)
            result = runbook(endpoint, name, version, log=lambda _: None)
            rows += [{"release": f"v{version}", **step, "outcome": result["outcome"]} for step in result["steps"]]
    finally:
        unload_quietly(endpoint, name)
    return rows
# --8<-- [end:runbook_demo]


def save_runbook(rows: list[dict]) -> None:
    from servelab.runtime.results import write_results

    write_results(LESSON, "runbook", [dict(r, ok="ok" if r["ok"] else "FAIL") for r in rows], {
        "release": "新版本", "step": "步驟", "ok": "結果", "detail": "細節", "outcome": "結論"})


# --8<-- [start:server_flags]
def server_flags(strict_readiness: bool = True, exit_timeout_s: int = 1, retry_count: int = 1,
                 with_runbook: bool = True, drain_ms: int = 2000, ports: dict | None = None) -> dict:
    """A small Triton of its own with these flags: a failed load, a flaky load, a failed reload with the
    runbook, then SIGTERM while a ``drain_ms`` request is in flight."""
    from servelab.runtime import triton_server

    out: dict = {"strict_readiness": strict_readiness, "exit_timeout_s": exit_timeout_s,
                 "retry_count": retry_count}
    flags = [f"--strict-readiness={str(strict_readiness).lower()}", f"--exit-timeout-secs={exit_timeout_s}",
             f"--model-load-retry-count={retry_count}"]  # (1)!
    with tempfile.TemporaryDirectory() as tmp, triton_server(Path(tmp), extra_args=flags, ports=ports) as server:
        repo = Path(tmp)
        write_version(repo, "good", 1)
        write_version(repo, "broken", 1, fail=True)
        write_version(repo, "flaky", 1, fail_first=1)  # (2)!
        write_version(repo, "slow", 1, delay_ms=drain_ms)
        load(server, "good")
        out["before"] = ready_codes(server)
        out["broken_error"] = try_load(server, "broken")
        out["after_failed_load"] = ready_codes(server)
        out["good_still_serves"] = infer(server, "good")[1] == 1
        out["broken_index"] = index_state(server, "broken")
        out["flaky_error"] = try_load(server, "flaky")
        out["flaky_attempts"] = int((repo / "flaky" / "1" / "attempts.txt").read_text())
        if with_runbook:
            write_version(repo, "good", 2, fail=True)  # a bad release of a serving model
            out["runbook"] = runbook(server, "good", 2, log=lambda _: None)
        out["ready_at_end"] = ready_codes(server)
        load(server, "slow")
        out["shutdown"] = sigterm_while_busy(server, "slow")
    return out


@experiment
def compare_server_flags() -> list[dict]:
    """Two small servers side by side: strict, short exit timeout, one retry — and the opposite."""
    from servelab.runtime.process import free_port

    picked: set[int] = set()
    while len(picked) < 6:  # distinct ports picked up front: two servers starting at once could pick the same
        picked.add(free_port())
    a, b = [dict(zip(("http", "grpc", "metrics"), list(picked)[i:i + 3])) for i in (0, 3)]
    with ThreadPoolExecutor(2) as pool:
        strict = pool.submit(server_flags, True, 1, 1, True, ports=a)
        relaxed = pool.submit(server_flags, False, 10, 0, False, ports=b)
        return [strict.result(), relaxed.result()]
# --8<-- [end:server_flags]


# --8<-- [start:sigterm]
def sigterm_while_busy(server, name: str) -> dict:
    """SIGTERM ``tritonserver`` (not its stubs) with one request in flight; what the request and a
    request sent during the drain get, and how long the server takes to exit."""
    pool = ThreadPoolExecutor(2)
    started = time.perf_counter()
    busy = pool.submit(lambda: infer(server, name))
    time.sleep(0.3)
    os.kill(server.process.proc.pid, signal.SIGTERM)  # (1)!
    time.sleep(0.2)
    during = pool.submit(lambda: infer(server, name))
    server.process.proc.wait(timeout=60)
    exit_s = time.perf_counter() - started - 0.3

    def outcome(future) -> str:
        try:
            return f"v{future.result()[1]}"
        except Exception as exc:
            return str(exc).splitlines()[0][:160]

    result = {"exit_s": exit_s, "in_flight": outcome(busy), "during_drain": outcome(during)}
    pool.shutdown()
    return result
# --8<-- [end:sigterm]


def save_flags(rows: list[dict]) -> None:
    """Result ``server_flags``: one row per server."""
    from servelab.runtime.results import write_results

    write_results(LESSON, "server_flags", [{
        "flags": f"--strict-readiness={str(r['strict_readiness']).lower()} "
                 f"--exit-timeout-secs={r['exit_timeout_s']} --model-load-retry-count={r['retry_count']}",
        "ready_after_failed_load": r["after_failed_load"]["ready"],
        "flaky": f"{'載入成功' if not r['flaky_error'] else '失敗'}（initialize 呼叫 {r['flaky_attempts']} 次）",
        "runbook": f"{r['runbook']['outcome']}，仍由 v{r['runbook']['serving']} 服務" if "runbook" in r else "（未測）",
        "ready_at_end": r["ready_at_end"]["ready"],
        "exit_s": r["shutdown"]["exit_s"], "in_flight": r["shutdown"]["in_flight"],
        "during_drain": r["shutdown"]["during_drain"]} for r in rows], {
        "flags": "旗標", "ready_after_failed_load": "載入失敗後 /v2/health/ready",
        "flaky": "第一次 initialize 失敗的模型", "runbook": "壞掉的 v2 交給 runbook", "ready_at_end": "關機前的 ready",
        "exit_s": "SIGTERM 到結束（秒）", "in_flight": "進行中的請求", "during_drain": "排空期間的新請求"})


# --8<-- [start:exercise_probes]
def kubernetes_probes(port: int = 8000) -> dict:
    """Exercise: liveness restarts a hung server; readiness takes it out of the Service while models load."""
    return {
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": port},
                          "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": port},
                           "periodSeconds": 5, "failureThreshold": 3},  # rides out a reload's UNLOADING
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": port},
                         "periodSeconds": 10, "failureThreshold": 60},  # up to 10 min to load the models
    }
# --8<-- [end:exercise_probes]


# ---- end of model.py ----
# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import json
import numpy as np
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from servelab.runtime.memo import experiment
from servelab.triton.lab2_2.l03_model_lifecycle_management import (
    END_OF_MODEL_PY, LESSON, LOAD_TIMEOUT_S, WIDTH, LoadError, TrafficRecorder, compare_server_flags, index_state,
    infer, kubernetes_probes, load, model_config, model_source, phases, ready_codes, rollback_config, runbook,
    runbook_demo, save_flags, save_in_flight, save_runbook, save_swap, save_warmup, server_flags,
    sigterm_while_busy, swap_under_load, timeline, try_load, unload, unload_in_flight, unload_quietly,
    wait_ready, warmup_effect, write_version
)
# --8<-- [end:context]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_2/l03_model_lifecycle_management``: every measurement of the page."""
    from servelab.runtime import triton_endpoint

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        save_swap(swap_under_load(endpoint))
        save_in_flight(unload_in_flight(endpoint))
        save_warmup(warmup_effect(endpoint))
        save_runbook(runbook_demo(endpoint))
    flags = compare_server_flags()
    save_flags(flags)
    for row in flags:
        print(json.dumps(row, ensure_ascii=False, default=str))
    return 0
# --8<-- [end:main]


if __name__ == "__main__":
    raise SystemExit(main())
