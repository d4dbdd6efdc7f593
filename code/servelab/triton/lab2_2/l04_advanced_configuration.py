"""04-Advanced_Configuration — instance groups, the dynamic batcher's queue, the rate limiter, the response
cache and the sequence batcher, each knob measured on the real Triton 2.51.

As in lesson 3, this file is also Triton's ``model.py`` (cut at ``# ---- end of model.py ----``): the top level
imports only the standard library and numpy. The model sleeps ``DELAY_MS`` per ``execute`` (a stand-in for a
forward pass whose cost does not grow with the batch, like a small model on an accelerator) and reports how
many requests that ``execute`` served and which stub process ran it. :class:`Accumulator` is the stateful model
for the sequence batcher.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

LESSON = "triton/lab2_2/l04_advanced_configuration"
END_OF_MODEL_PY = "# ---- end of model.py ----"
WIDTH = 4
LOAD_TIMEOUT_S = 120.0


def experiment(func):
    """servelab's ``@experiment``, imported at the first call (Triton's stub never imports servelab)."""
    import functools

    @functools.wraps(func)
    def call(*args, **kwargs):
        from servelab.runtime.memo import experiment as memo

        return memo(func)(*args, **kwargs)
    return call


# --8<-- [start:model]
class TritonPythonModel:
    """Y = 2·X; sleeps DELAY_MS per execute; BATCH = requests in this execute, PID = this instance's stub."""

    def initialize(self, args: dict) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay_s = float(params.get("DELAY_MS", {}).get("string_value", "0")) / 1000

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        time.sleep(self.delay_s)  # (1)!
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            n = x.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (2 * x).astype(np.float32)),
                pb_utils.Tensor("BATCH", np.full((n, 1), len(requests), dtype=np.int32)),
                pb_utils.Tensor("PID", np.full((n, 1), os.getpid(), dtype=np.int32))]))
        return responses
# --8<-- [end:model]


# --8<-- [start:accumulator]
class Accumulator:
    """A stateful model for the sequence batcher: the running sum of X per sequence (CORRID)."""

    def initialize(self, args: dict) -> None:
        self.totals: dict[int, np.ndarray] = {}

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()  # noqa: E731
            sequence, start, end = int(get("CORRID")[0, 0]), bool(get("START")[0, 0]), bool(get("END")[0, 0])
            if start:
                self.totals[sequence] = np.zeros(WIDTH, dtype=np.float32)  # (1)!
            if sequence not in self.totals:  # (3)!
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.zeros((1, WIDTH), np.float32))]))
                continue
            self.totals[sequence] = self.totals[sequence] + get("X")[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", self.totals[sequence][None, :])]))
            if end:
                del self.totals[sequence]  # (2)!
        return responses
# --8<-- [end:accumulator]


# --8<-- [start:gpu_model]
class GpuLoad(TritonPythonModel):
    """GPU profile: the same outputs, but each execute runs REPEATS half-precision SIZE×SIZE matmuls on the
    instance's device (``kind: KIND_GPU`` → ``cuda:<device id>``), so instances really compete for the GPU."""

    def initialize(self, args: dict) -> None:
        import torch

        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.delay_s, self.torch = 0.0, torch
        gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        size, self.repeats = int(params.get("SIZE", "4096")), int(params.get("REPEATS", "20"))
        self.w = torch.randn(size, size, device=self.device, dtype=torch.float16 if gpu else torch.float32) / size ** 0.5

    def execute(self, requests: list) -> list:
        a = self.w
        for _ in range(self.repeats):
            a = self.torch.tanh(a @ self.w)  # (1)!
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
        return super().execute(requests)
# --8<-- [end:gpu_model]


# --8<-- [start:config]
def model_config(name: str, count: int = 1, delay_ms: int = 20, max_batch: int = 8, scheduling: str = "",
                 extra: str = "", kind: str = "KIND_CPU") -> str:
    """One model of this lesson: ``scheduling`` is a ``dynamic_batching {…}`` block (or ''), ``extra`` any
    other top-level block (``response_cache``, …)."""
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [
  {{ name: "Y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }},
  {{ name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "PID" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: {count} kind: {kind}{" gpus: [ 0 ]" if kind == "KIND_GPU" else ""} }} ]
parameters {{ key: "DELAY_MS" value: {{ string_value: "{delay_ms}" }} }}
{scheduling}
{extra}
"""
# --8<-- [end:config]


def model_source(entry: str = "") -> str:
    """This module as installed, cut before the reader context; ``entry`` rebinds ``TritonPythonModel``."""
    from importlib.resources import files

    source = (files("servelab.triton.lab2_2") / "l04_advanced_configuration.py").read_text(encoding="utf-8")
    source = source.rsplit(END_OF_MODEL_PY, 1)[0]
    return source + (f"\nTritonPythonModel = {entry}\n" if entry else "")


# --8<-- [start:deploy]
def deploy(endpoint, name: str, config: str, entry: str = "") -> str:
    """Write ``<repository>/<name>/1/model.py`` and load it; Triton's error text if the load fails."""
    import httpx

    from servelab.runtime.triton_repo import write_model

    write_model(Path(endpoint.repository), name, config, files={"model.py": model_source(entry)})
    response = httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/load", timeout=LOAD_TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(response.json().get("error", response.text))
    return name


def infer(endpoint, name: str, x: np.ndarray | None = None, priority: int = 0, timeout_us: int = 0,
          client=None) -> dict:
    """One request; the outputs and the latency in ms."""
    import tritonclient.http as httpclient

    x = np.ones((1, WIDTH), dtype=np.float32) if x is None else x
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    start = time.perf_counter()
    result = (client or endpoint.http_client()).infer(name, [tensor], priority=priority, timeout=timeout_us)
    return {"ms": (time.perf_counter() - start) * 1e3, "Y": result.as_numpy("Y"),
            "batch": int(result.as_numpy("BATCH")[0, 0]), "pid": int(result.as_numpy("PID")[0, 0])}
# --8<-- [end:deploy]


def unload(endpoint, *names: str) -> None:
    """Unload models, wait while any is UNLOADING (a strict server is not ready meanwhile), remove folders."""
    import shutil

    import httpx

    for name in names:
        httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/unload", timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(
            e.get("name") in names and e.get("state") == "UNLOADING"
            for e in endpoint.http_client().get_model_repository_index()):
        time.sleep(0.1)
    for name in names:
        shutil.rmtree(Path(endpoint.repository) / name, ignore_errors=True)


# --8<-- [start:load]
def closed_loop(endpoint, name: str, clients: int = 8, per_client: int = 12, priority: int = 0) -> dict:
    """``clients`` threads, each sending ``per_client`` requests back to back; throughput and what ran them."""

    def one_client(_):
        client, out = endpoint.http_client(), []
        for _ in range(per_client):
            try:
                out.append(infer(endpoint, name, priority=priority, client=client))
            except Exception as exc:  # a rejected or timed-out request
                out.append({"error": str(exc).splitlines()[0][:120]})
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rows in pool.map(one_client, range(clients)) for r in rows]
    seconds = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    return {"requests": len(results), "ok": len(ok), "req_per_s": len(ok) / seconds,
            "mean_batch": float(np.mean([r["batch"] for r in ok])) if ok else 0.0,
            "p50_ms": float(np.median([r["ms"] for r in ok])) if ok else 0.0,
            "instances": len({r["pid"] for r in ok}), "pids": sorted({r["pid"] for r in ok}),
            "errors": sorted({r["error"] for r in results if "error" in r})}
# --8<-- [end:load]


# --8<-- [start:instance_cost]
def stub_memory_mib(pid: int) -> dict:
    """A stub process's resident and proportional memory (Linux /proc), in MiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    field = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", rollup, re.M).group(1)) / 1024  # noqa: E731
    return {"rss_mib": field("Rss"), "pss_mib": field("Pss")}


@experiment
def instance_groups(endpoint, counts: tuple = (1, 2), delay_ms: int = 40) -> list[dict]:
    """The same model with ``count`` instances and no batcher: throughput under 8 clients, memory per stub."""
    rows = []
    for count in counts:
        name = f"l04_instances_{count}"
        deploy(endpoint, name, model_config(name, count=count, delay_ms=delay_ms))
        try:
            stats = closed_loop(endpoint, name)
            memory = [stub_memory_mib(pid) for pid in stats["pids"]]
        finally:
            unload(endpoint, name)
        rows.append({"count": count, "req_per_s": stats["req_per_s"], "instances": stats["instances"],
                     "p50_ms": stats["p50_ms"], "rss_mib": float(np.mean([m["rss_mib"] for m in memory])),
                     "pss_mib": float(np.mean([m["pss_mib"] for m in memory])), "load_avg": os.getloadavg()[0]})
    return rows
# --8<-- [end:instance_cost]


# --8<-- [start:batcher]
BATCHERS = {
    "none": "",
    "dynamic": "dynamic_batching { }",
    "preferred_4": "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 20000 }",
    "delay_20ms": "dynamic_batching { max_queue_delay_microseconds: 20000 }",
}


@experiment
def dynamic_batcher(endpoint, delay_ms: int = 20, clients: int = 8) -> list[dict]:
    """One instance; the four scheduling blocks of BATCHERS under the same closed loop."""
    rows = []
    for label, block in BATCHERS.items():
        name = f"l04_batch_{label}"
        deploy(endpoint, name, model_config(name, delay_ms=delay_ms, scheduling=block))
        try:
            stats = closed_loop(endpoint, name, clients=clients)
        finally:
            unload(endpoint, name)
        rows.append({"batcher": label, "config": block or "（沒有 dynamic_batching）",
                     **{k: stats[k] for k in ("req_per_s", "mean_batch", "p50_ms")}, "load_avg": os.getloadavg()[0]})
    return rows
# --8<-- [end:batcher]


# --8<-- [start:ordering]
class SlowByInput(TritonPythonModel):
    """preserve_ordering's model: each request first sleeps X[0, 0] milliseconds."""

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        for request in requests:
            time.sleep(float(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0, 0]) / 1000)
        return super().execute(requests)


@experiment
def preserve_ordering(endpoint, slow_ms: int = 300, fast_ms: int = 10, rounds: int = 3) -> list[dict]:
    """Two instances. A slow request, and 50 ms later a fast one: when does the fast one come back?"""
    rows = []
    for preserve in (False, True):
        name = f"l04_order_{'on' if preserve else 'off'}"
        block = f"dynamic_batching {{ preserve_ordering: {'true' if preserve else 'false'} }}"
        deploy(endpoint, name, model_config(name, count=2, delay_ms=0, max_batch=1, scheduling=block),
               entry="SlowByInput")
        try:
            fast = []
            for _ in range(rounds):
                with ThreadPoolExecutor(2) as pool:
                    slow = pool.submit(infer, endpoint, name, np.full((1, WIDTH), slow_ms, np.float32))
                    time.sleep(0.05)  # the slow one is executing on one instance; the other is free
                    quick = pool.submit(infer, endpoint, name, np.full((1, WIDTH), fast_ms, np.float32))
                    fast.append(quick.result()["ms"])
                    slow.result()
        finally:
            unload(endpoint, name)
        rows.append({"preserve_ordering": preserve, "slow_ms": slow_ms, "fast_ms": fast_ms, "rounds": rounds,
                     "fast_p50_ms": sorted(fast)[len(fast) // 2], "load_avg": os.getloadavg()[0]})
    return rows
# --8<-- [end:ordering]


def save_ordering(rows: list[dict]) -> None:
    from servelab.runtime.results import write_results

    write_results(LESSON, "preserve_ordering", rows, {
        "preserve_ordering": "preserve_ordering", "slow_ms": "先到的慢請求（ms 的工作）",
        "fast_ms": "50 ms 後到的快請求（ms 的工作）", "rounds": "重複", "fast_p50_ms": "快請求的延遲中位數（ms）",
        "load_avg": "系統負載（1 分鐘）"})


# --8<-- [start:priority]
PRIORITY = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"


@experiment
def priorities(endpoint, delay_ms: int = 30, low_clients: int = 6, high_requests: int = 10) -> dict:
    """One instance, batch 1: six clients flood at the default (low) level; one client sends priority 1."""
    name = "l04_priority"
    deploy(endpoint, name, model_config(name, max_batch=1, delay_ms=delay_ms, scheduling=PRIORITY))
    try:
        with ThreadPoolExecutor(2) as pool:
            low = pool.submit(closed_loop, endpoint, name, low_clients, high_requests * 2)
            time.sleep(0.5)  # the queue is full of low-priority requests now
            high = pool.submit(closed_loop, endpoint, name, 1, high_requests, 1)
            low, high = low.result(), high.result()
    finally:
        unload(endpoint, name)
    return {"low_p50_ms": low["p50_ms"], "high_p50_ms": high["p50_ms"], "delay_ms": delay_ms,
            "low_clients": low_clients, "load_avg": os.getloadavg()[0]}
# --8<-- [end:priority]


# --8<-- [start:queue_policy]
QUEUE_POLICY = """dynamic_batching {
  default_queue_policy { max_queue_size: 2 timeout_action: REJECT
                         default_timeout_microseconds: 250000 allow_timeout_override: true }
}"""


@experiment
def queue_policy(endpoint, delay_ms: int = 100, burst: int = 8) -> dict:
    """One instance, batch 1, a queue of 2: a burst of ``burst`` simultaneous requests; who is served,
    who is refused at the door, who times out in the queue."""
    name = "l04_queue"
    deploy(endpoint, name, model_config(name, max_batch=1, delay_ms=delay_ms, scheduling=QUEUE_POLICY))

    def one(_):
        try:
            return "ok", infer(endpoint, name)["ms"]
        except Exception as exc:
            return str(exc).splitlines()[0][:120], 0.0

    try:
        with ThreadPoolExecutor(burst) as pool:
            outcomes = list(pool.map(one, range(burst)))
        override = one_with_timeout(endpoint, name, timeout_us=1)  # (1)!
    finally:
        unload(endpoint, name)
    kinds = {}
    for what, _ in outcomes:
        kinds[what] = kinds.get(what, 0) + 1
    return {"burst": burst, "outcomes": kinds, "override": override}


def one_with_timeout(endpoint, name: str, timeout_us: int) -> str:
    """A request carrying its own queue timeout (allowed by ``allow_timeout_override``), sent behind a busy one."""
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(infer, endpoint, name)
        time.sleep(0.02)
        try:
            infer(endpoint, name, timeout_us=timeout_us)
            result = "ok"
        except Exception as exc:
            result = str(exc).splitlines()[0][:120]
        busy.result()
    return result
# --8<-- [end:queue_policy]


# --8<-- [start:sequence]
SEQUENCE = """sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}"""


def accumulator_config(name: str, extra: str = "") -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 4
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{SEQUENCE}
{extra}
"""


def send_in_sequence(endpoint, name: str, sequence_id: int, value: float, start: bool, end: bool) -> list:
    import tritonclient.http as httpclient

    x = np.full((1, WIDTH), value, dtype=np.float32)
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = endpoint.http_client().infer(name, [tensor], sequence_id=sequence_id,  # (1)!
                                          sequence_start=start, sequence_end=end)
    return result.as_numpy("Y")[0].tolist()


@experiment
def sequences(endpoint) -> dict:
    """Two sequences interleaved on one instance: each request gets its own sequence's running sum."""
    name = "l04_accumulator"
    deploy(endpoint, name, accumulator_config(name), entry="Accumulator")
    try:
        steps = [(101, 1.0, True, False), (202, 10.0, True, False), (101, 2.0, False, False),
                 (202, 20.0, False, True), (101, 3.0, False, True)]
        answers = [(sid, send_in_sequence(endpoint, name, sid, v, s, e)[0]) for sid, v, s, e in steps]
        try:
            send_in_sequence(endpoint, name, 0, 1.0, False, False)
            no_id = "ok"
        except Exception as exc:
            no_id = str(exc).splitlines()[0][:160]
    finally:
        unload(endpoint, name)
    return {"answers": answers, "without_sequence_id": no_id}
# --8<-- [end:sequence]


# --8<-- [start:server_features]
@experiment
def server_features(cache_bytes: int = 4 << 20, delay_ms: int = 50) -> dict:
    """A Triton of its own with a response cache and the rate limiter: cache hits and latency; two models
    that share one resource; where the cache is refused."""
    from servelab.runtime import triton_server
    from servelab.runtime.triton_server import triton_home

    flags = [f"--cache-config=local,size={cache_bytes}", f"--cache-directory={triton_home() / 'caches'}",
             "--rate-limit=execution_count", "--rate-limit-resource=R:1"]  # (1)!
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, triton_server(Path(tmp), extra_args=flags) as server:
        deploy(server, "cached", model_config("cached", delay_ms=delay_ms, extra="response_cache { enable: true }"))
        client, latencies = server.http_client(), {"miss": [], "hit": []}
        for round_ in range(4):
            for value in range(5):  # five distinct inputs, four times each
                x = np.full((1, WIDTH), value, dtype=np.float32)
                latencies["miss" if round_ == 0 else "hit"].append(infer(server, "cached", x, client=client)["ms"])
        metrics = server.metrics_text()
        out["cache"] = {"hits": metric(metrics, "nv_cache_num_hits_per_model", "cached"),
                        "misses": metric(metrics, "nv_cache_num_misses_per_model", "cached"),
                        "miss_p50_ms": float(np.median(latencies["miss"])),
                        "hit_p50_ms": float(np.median(latencies["hit"]))}
        limited = 'rate_limiter { resources [ { name: "R" count: 1 } ] priority: PRIO }'
        for name, prio in (("shared_a", 1), ("shared_b", 2)):  # (2)!
            config = model_config(name, max_batch=1, delay_ms=delay_ms)
            config = config.replace("kind: KIND_CPU }", "kind: KIND_CPU " + limited.replace("PRIO", str(prio)) + " }")
            deploy(server, name, config)
        for name in ("free_a", "free_b"):
            deploy(server, name, model_config(name, max_batch=1, delay_ms=delay_ms))
        out["rate_limiter"] = [two_models_at_once(server, "shared_a", "shared_b", "R:1（共用）"),
                               two_models_at_once(server, "free_a", "free_b", "沒有 rate_limiter")]
        try:
            deploy(server, "seq_cached", accumulator_config("seq_cached", "response_cache { enable: true }"),
                   entry="Accumulator")
            out["cache_with_sequence"] = "loaded"
        except RuntimeError as exc:
            out["cache_with_sequence"] = " ".join(str(exc).split())[:300]
    return out


def metric(text: str, family: str, model: str) -> float:
    """One Prometheus sample of ``family`` for ``model`` (0 when absent)."""
    match = re.search(rf'^{family}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def two_models_at_once(server, a: str, b: str, label: str, clients: int = 3, per_client: int = 8) -> dict:
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda n: closed_loop(server, n, clients, per_client), (a, b))
    return {"setup": label, "a_req_per_s": first["req_per_s"], "b_req_per_s": second["req_per_s"],
            "total_req_per_s": first["req_per_s"] + second["req_per_s"]}
# --8<-- [end:server_features]


def save_all(groups: list[dict], batcher: list[dict], prio: dict, queue: dict, seq: dict, features: dict) -> None:
    """Every result file of the page but preserve_ordering's (:func:`save_ordering`)."""
    from servelab.runtime.results import write_results

    write_results(LESSON, "instance_groups", groups, {
        "count": "count", "req_per_s": "吞吐量（請求/秒）", "instances": "實際用到的 stub 數",
        "p50_ms": "延遲中位數（ms）", "rss_mib": "每個 stub 的 RSS（MiB）", "pss_mib": "每個 stub 的 PSS（MiB）",
        "load_avg": "系統負載（1 分鐘）"})
    write_results(LESSON, "dynamic_batcher", batcher, {
        "batcher": "設定", "config": "config.pbtxt", "req_per_s": "吞吐量（請求/秒）",
        "mean_batch": "每次 execute 平均請求數", "p50_ms": "延遲中位數（ms）", "load_avg": "系統負載（1 分鐘）"})
    write_results(LESSON, "queue", [
        {"knob": "priority_levels: 2（6 個低優先用戶端灌滿佇列）",
         "result": f"低優先 p50 {prio['low_p50_ms']:.0f} ms；高優先（priority=1）p50 {prio['high_p50_ms']:.0f} ms"},
        *[{"knob": f"max_queue_size: 2，{queue['burst']} 個同時請求", "result": f"{n} 個：{what}"}
          for what, n in sorted(queue["outcomes"].items())],
        {"knob": "請求自帶 timeout=1 µs（allow_timeout_override）", "result": queue["override"]},
        {"knob": "sequence_batching：兩個交錯的序列",
         "result": "；".join(f"序列 {sid} → {y:g}" for sid, y in seq["answers"])},
        {"knob": "sequence_batching：沒有 sequence_id 的請求", "result": seq["without_sequence_id"]},
        {"knob": "response_cache + sequence_batching", "result": features["cache_with_sequence"]},
    ], {"knob": "設定", "result": "量到的結果"})
    cache = features["cache"]
    write_results(LESSON, "response_cache", [
        {"kind": "miss（第一次看到這個輸入）", "count": cache["misses"], "p50_ms": cache["miss_p50_ms"]},
        {"kind": "hit（同一個輸入再來）", "count": cache["hits"], "p50_ms": cache["hit_p50_ms"]}],
        {"kind": "請求", "count": "次數（nv_cache_num_*_per_model）", "p50_ms": "延遲中位數（ms）"})
    write_results(LESSON, "rate_limiter", features["rate_limiter"], {
        "setup": "兩個模型", "a_req_per_s": "模型 A（請求/秒）", "b_req_per_s": "模型 B（請求/秒）",
        "total_req_per_s": "合計（請求/秒）"})


# --8<-- [start:gpu]
def gpu_config(name: str, count: int, max_batch: int = 8, scheduling: str = "", size: int = 4096,
               repeats: int = 20) -> str:
    config = model_config(name, count=count, delay_ms=0, max_batch=max_batch, scheduling=scheduling,
                          kind="KIND_GPU")
    return config + (f'parameters {{ key: "SIZE" value: {{ string_value: "{size}" }} }}\n'
                     f'parameters {{ key: "REPEATS" value: {{ string_value: "{repeats}" }} }}\n')


def gpu_measurements(endpoint, size: int = 4096, repeats: int = 20) -> dict:
    """GPU profile: one vs two KIND_GPU instances of a matmul-bound model, then priorities under GPU load."""
    from servelab.runtime.results import write_results

    groups = []
    for count in (1, 2):
        name = f"l04_gpu_instances_{count}"
        deploy(endpoint, name, gpu_config(name, count, size=size, repeats=repeats), entry="GpuLoad")
        try:
            stats = closed_loop(endpoint, name)
        finally:
            unload(endpoint, name)
        groups.append({"count": count, **{k: stats[k] for k in ("req_per_s", "instances", "p50_ms", "mean_batch")}})
    name = "l04_gpu_priority"
    deploy(endpoint, name, gpu_config(name, 1, max_batch=1, scheduling=PRIORITY, size=size, repeats=repeats),
           entry="GpuLoad")
    try:
        with ThreadPoolExecutor(2) as pool:
            low = pool.submit(closed_loop, endpoint, name, 6, 20)
            time.sleep(0.5)
            high = pool.submit(closed_loop, endpoint, name, 1, 10, 1)
            low, high = low.result(), high.result()
    finally:
        unload(endpoint, name)
    priority = {"low_p50_ms": low["p50_ms"], "high_p50_ms": high["p50_ms"]}
    rows = [{"measure": f"KIND_GPU count {g['count']}", "req_per_s": g["req_per_s"], "p50_ms": g["p50_ms"],
             "instances": g["instances"]} for g in groups]
    rows += [{"measure": "priority 2（6 個用戶端）", "p50_ms": priority["low_p50_ms"]},
             {"measure": "priority 1（1 個用戶端）", "p50_ms": priority["high_p50_ms"]}]
    write_results(LESSON, "instance_groups_gpu", rows, {"measure": "量測", "req_per_s": "吞吐量（請求/秒）",
                                        "p50_ms": "延遲中位數（ms）", "instances": "stub 數"},
                  {"size": size, "repeats": repeats})
    return {"instance_groups": groups, "priority": priority}
# --8<-- [end:gpu]


# --8<-- [start:newer_field]
MODEL_METRICS = ('model_metrics { metric_control [ { metric_identifier { family: '
                 '"nv_inference_first_response_histogram_ms" } histogram_options { buckets: [ 1, 2, 4, 8 ] } } ] }')


def load_with_a_newer_field(endpoint, name: str = "l04_newer_field") -> str:
    """Load a config that uses 24.11's ``model_metrics`` on this server: Triton's answer ('loaded' or its error)."""
    try:
        deploy(endpoint, name, model_config(name, extra=MODEL_METRICS))
        return "loaded"
    except RuntimeError as exc:
        return str(exc)
    finally:
        unload(endpoint, name)
# --8<-- [end:newer_field]


# --8<-- [start:exercise_ceiling]
def throughput_ceiling(count: int, delay_ms: float, mean_batch: float = 1.0) -> float:
    """Exercise 1: requests per second when every instance is always busy with ``mean_batch`` requests."""
    return count * mean_batch * 1000 / delay_ms


def check_ceilings(groups: list[dict], batcher: list[dict], group_delay_ms: int = 40,
                   batch_delay_ms: int = 20) -> list[dict]:
    rows = [{"what": f"count {g['count']}", "measured": g["req_per_s"],
             "ceiling": throughput_ceiling(g["count"], group_delay_ms)} for g in groups]
    rows += [{"what": b["batcher"], "measured": b["req_per_s"],
              "ceiling": throughput_ceiling(1, batch_delay_ms, b["mean_batch"])} for b in batcher]
    return [dict(r, ratio=r["measured"] / r["ceiling"]) for r in rows]
# --8<-- [end:exercise_ceiling]


# ---- end of model.py ----
# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import json
import numpy as np
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from servelab.runtime.memo import experiment
from servelab.triton.lab2_2.l04_advanced_configuration import (
    BATCHERS, GpuLoad, LESSON, LOAD_TIMEOUT_S, PRIORITY, QUEUE_POLICY, SEQUENCE, WIDTH, TritonPythonModel,
    accumulator_config,
    check_ceilings, closed_loop, throughput_ceiling,
    deploy, dynamic_batcher, gpu_config, gpu_measurements, infer, instance_groups, metric, model_config, model_source, one_with_timeout,
    load_with_a_newer_field, MODEL_METRICS, preserve_ordering, priorities, queue_policy, save_all, save_ordering, SlowByInput, send_in_sequence, sequences, server_features, stub_memory_mib,
    two_models_at_once, unload
)
# --8<-- [end:context]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_2/l04_advanced_configuration``: every measurement of the page."""
    from servelab.runtime import triton_endpoint

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        results = (instance_groups(endpoint), dynamic_batcher(endpoint), priorities(endpoint),
                   queue_policy(endpoint), sequences(endpoint))
        save_ordering(preserve_ordering(endpoint))
    save_all(*results, server_features())
    print(json.dumps([*results], ensure_ascii=False, default=str)[:2000])
    return 0
# --8<-- [end:main]


if __name__ == "__main__":
    raise SystemExit(main())
