"""04-Monitoring_and_Performance — Triton's metrics, a real Prometheus, perf_analyzer, dynamic batching.

This file has two roles:

1. The lesson module (``servelab.triton.lab2_1.l04_monitoring_and_performance``): it writes the model
   folders, reads Triton's ``/metrics``, starts Prometheus, runs ``perf_analyzer`` and measures.
2. Triton's ``model.py``: :func:`write_mlp_model` copies this very file to ``<repo>/<name>/1/model.py``;
   the Python backend runs its :class:`TritonPythonModel`. So the top level imports only the standard
   library, numpy and torch; everything else is imported inside the functions that need it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

LESSON = "triton/lab2_1/l04_monitoring_and_performance"
END_OF_MODEL_PY = "# ---- end of model.py ----"  # model_source() cuts the file at the last such line
PLAIN, BATCHED = "l04_mlp_plain", "l04_mlp_batched"
# The toy model's shape per profile: LAYERS square fp32 matrices streamed from memory on every execute().
SHAPES = {"cpu": {"hidden": 1024, "layers": 8}, "gpu": {"hidden": 4096, "layers": 8}}
MAX_BATCH = 16
QUEUE_DELAY_US = 1000
# How hard each profile's measurements push: requests per perf_analyzer run, concurrency of the comparison.
# rates: perf_analyzer's request-rate mode (requests/s), around the plain model's capacity on each profile.
LOAD = {"cpu": {"sweep_requests": 300, "compare_requests": 400, "concurrency": 8,
                "rates": (200, 300, 400, 500), "rate_requests": 300},
        "gpu": {"sweep_requests": 600, "compare_requests": 1500, "concurrency": 16,
                "rates": (1000, 2000, 3000, 4000, 5000), "rate_requests": 1500}}


# --8<-- [start:model_py]
class TritonPythonModel:
    """LAYERS fp32 matrices [HIDDEN, HIDDEN]: every execute() reads all of them once, whatever the batch."""

    def initialize(self, args: dict) -> None:
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        hidden, layers = int(params["HIDDEN"]), int(params["LAYERS"])
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)  # (1)!
        self.weights = [w.to(self.device) for w in mlp_weights(hidden, layers)]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        sizes = [x.shape[0] for x in inputs]  # (2)!
        out = self.forward(np.concatenate(inputs))  # (3)!
        parts = np.split(out, np.cumsum(sizes)[:-1])
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("INPUT0 contains NaN"))  # (4)!
                if np.isnan(x).any() else pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", part)])
                for x, part in zip(inputs, parts)]

    @torch.inference_mode()
    def forward(self, x: np.ndarray) -> np.ndarray:
        h = torch.from_numpy(x).to(self.device)
        for w in self.weights:
            h = torch.tanh(h @ w)
        return h.cpu().numpy()


def mlp_weights(hidden: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(hidden, hidden, generator=generator) / hidden ** 0.5 for _ in range(layers)]
# --8<-- [end:model_py]


def reference_forward(x: np.ndarray, hidden: int, layers: int) -> np.ndarray:
    """The same computation in this process, for checking Triton's answers."""
    h = torch.from_numpy(x)
    for w in mlp_weights(hidden, layers):
        h = torch.tanh(h @ w)
    return h.numpy()


# --8<-- [start:config]
def model_config(name: str, batching: bool, kind: str = "KIND_CPU", hidden: int = 1024,
                 layers: int = 8) -> str:
    gpus = " gpus: [ 0 ]" if kind == "KIND_GPU" else ""
    batcher = f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}" if batching else ""
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {hidden} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {hidden} ] }} ]
instance_group [ {{ count: 1 kind: {kind}{gpus} }} ]
{batcher}
parameters [
  {{ key: "HIDDEN" value: {{ string_value: "{hidden}" }} }},
  {{ key: "LAYERS" value: {{ string_value: "{layers}" }} }}
]
"""
# --8<-- [end:config]


def profile_shape(profile: str | None = None) -> tuple[str, dict]:
    """(instance kind, model shape) of the active profile."""
    from servelab.runtime import get_settings

    profile = profile or get_settings().profile
    return ("KIND_GPU" if profile == "gpu" else "KIND_CPU"), SHAPES[profile]


def model_source() -> str:
    """The model.py Triton runs: this lesson's module as installed (package ``servelab.triton.lab2_1``), cut
    before the reader context at its end, which imports servelab (absent inside Triton's stub)."""
    module = files("servelab.triton.lab2_1") / "l04_monitoring_and_performance.py"
    return module.read_text(encoding="utf-8").rsplit(END_OF_MODEL_PY, 1)[0]


def write_mlp_model(root: Path, name: str, batching: bool, kind: str = "KIND_CPU", hidden: int = 1024,
                    layers: int = 8) -> Path:
    from servelab.runtime.triton_repo import write_model

    return write_model(root, name, model_config(name, batching, kind, hidden, layers),
                       files={"model.py": model_source()})


def deploy_pair(endpoint, profile: str | None = None) -> dict[str, str]:
    """Load the two copies of the model (dynamic batching off / on); return {'plain': name, 'batched': name}."""
    kind, shape = profile_shape(profile)
    suffix = "_gpu" if kind == "KIND_GPU" else ""
    names = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, base, batching in (("plain", PLAIN, False), ("batched", BATCHED, True)):
            names[key] = endpoint.add_model(write_mlp_model(Path(tmp), base + suffix, batching, kind, **shape))
    return names


def input_width(endpoint, name: str) -> int:
    """HIDDEN of a loaded model, from its metadata (INPUT0 is [-1, HIDDEN])."""
    return int(endpoint.http_client().get_model_metadata(name)["inputs"][0]["shape"][1])


def infer(endpoint, name: str, rows: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("INPUT0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = endpoint.http_client().infer(name, [tensor])
    return result.as_numpy("OUTPUT0")


# --8<-- [start:scrape]
REQUEST_METRICS = (
    "nv_inference_request_success", "nv_inference_request_failure",  # requests (failures: per reason)
    "nv_inference_count", "nv_inference_exec_count",  # inferences (batch rows) and model executions
    "nv_inference_request_duration_us", "nv_inference_queue_duration_us",  # cumulative microseconds
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",  # a gauge: requests waiting right now
)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')  # name{labels} value
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Prometheus text format → (name, labels, value), names exactly as the server wrote them."""
    for line in text.splitlines():
        match = SAMPLE.match(line)  # (1)!
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            yield name, dict(LABEL.findall(labels or "")), float(value)


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text → {metric: {model: value}}, summed over the other labels (e.g. ``reason``)."""
    table: dict[str, dict[str, float]] = {}
    for name, labels, value in parse_samples(text):
        per_model = table.setdefault(name, {})
        model = labels.get("model", "")
        per_model[model] = per_model.get(model, 0.0) + value
    return table


def model_snapshot(endpoint, model: str) -> dict[str, float]:
    """One scrape of Triton's metrics port, the request metrics of one model."""
    table = parse_metrics(endpoint.metrics_text())  # GET http://<metrics>/metrics
    return {name: table.get(name, {}).get(model, 0.0) for name in REQUEST_METRICS}
def settled_snapshot(endpoint, model: str, successes: float, timeout_s: float = 10.0) -> dict[str, float]:
    """Scrape until the model has counted ``successes`` requests: statistics land just after the reply."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = model_snapshot(endpoint, model)
        if snap["nv_inference_request_success"] >= successes or time.monotonic() > deadline:
            return snap
# --8<-- [end:scrape]


# --8<-- [start:statistics]
def statistics_success(endpoint, model: str) -> int:
    """The statistics extension, GET /v2/models/<model>/stats: counts since the model was (re)loaded."""
    stats = endpoint.http_client().get_inference_statistics(model)
    return int(sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"]))
# --8<-- [end:statistics]


# --8<-- [start:derive]
def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What happened between two scrapes (counters only grow while the model stays loaded)."""
    return {k: after[k] - before[k] for k in before}


def average_batch_size(d: dict[str, float]) -> float:
    return d["nv_inference_count"] / d["nv_inference_exec_count"]  # (1)!


def latency_breakdown(d: dict[str, float]) -> dict[str, float]:
    """Mean microseconds per successful request: end to end, and its parts inside the server."""
    n = d["nv_inference_request_success"]
    parts = {"request": "nv_inference_request_duration_us", "queue": "nv_inference_queue_duration_us",
             "input": "nv_inference_compute_input_duration_us",
             "infer": "nv_inference_compute_infer_duration_us",
             "output": "nv_inference_compute_output_duration_us"}
    return {key: d[name] / n for key, name in parts.items()}  # (2)!
# --8<-- [end:derive]


# --8<-- [start:one_request]
def one_request(endpoint, model: str, rows: int = 3, write: str | None = None) -> dict[str, float]:
    """One request carrying ``rows`` rows; what each request metric counted for it."""
    x = np.random.default_rng(0).standard_normal((rows, input_width(endpoint, model)), dtype=np.float32)
    done = model_snapshot(endpoint, model)["nv_inference_request_success"]
    infer(endpoint, model, x)  # warm-up: the first execute() after a load pays one-time costs
    before = settled_snapshot(endpoint, model, done + 1)
    infer(endpoint, model, x)
    d = delta(before, settled_snapshot(endpoint, model, before["nv_inference_request_success"] + 1))
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, write, [{"metric": f"`{k}`", "delta": v} for k, v in d.items()],
                      {"metric": "指標", "delta": f"一個 {rows} 列的請求之後的增量"},
                      extra={"model": model})
    return d
# --8<-- [end:one_request]


# --8<-- [start:prometheus]
def docker_file(name: str) -> Path:
    """A file of docker/triton/ (the Prometheus config, the Grafana dashboard) in the book's repository."""
    from servelab.book.tree import ROOT

    return ROOT / "docker" / "triton" / name


def prometheus_config(targets: dict[str, str], interval: str = "1s") -> str:
    """docker/triton/prometheus.yml with this machine's targets ({job: 'host:port'}) and a short interval."""
    import yaml

    config = yaml.safe_load(docker_file("prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval  # (1)!
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return yaml.safe_dump(config, sort_keys=False)


@contextmanager
def prometheus_server(config_text: str, settings=None) -> Iterator[str]:
    """The real ``prometheus`` binary on 127.0.0.1 with a throw-away TSDB; yields its base URL."""
    from servelab.runtime import get_settings
    from servelab.runtime.process import ManagedProcess, ServerStartError, free_port

    binary = shutil.which("prometheus")
    if binary is None:
        raise ServerStartError("prometheus is not installed: apt-get install -y prometheus")
    settings = settings or get_settings()
    port = free_port(settings.host)
    with tempfile.TemporaryDirectory(prefix="l04-prometheus-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(config_text)
        argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address={settings.host}:{port}"]  # (2)!
        proc = ManagedProcess("prometheus", argv, Path(tmp) / "prometheus.log")
        proc.start()
        try:
            base = f"http://{settings.host}:{port}"
            proc.wait_ready(f"{base}/-/ready", timeout_s=60)
            yield base
        finally:
            proc.stop()


def prom_query(base: str, expr: str) -> list[dict]:
    """GET /api/v1/query; the result vector, or a ValueError with Prometheus's own message."""
    import httpx

    body = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    if body["status"] != "success":
        raise ValueError(f"{body['errorType']}: {body['error']}")  # (3)!
    return body["data"]["result"]


def wait_for(base: str, expr: str, predicate, timeout_s: float = 30.0) -> list[dict]:
    """Query until ``predicate(result)`` holds: Prometheus sees data only after its next scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = prom_query(base, expr)
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.5)
# --8<-- [end:prometheus]


def prom_targets(base: str) -> dict[str, dict]:
    """{job: {health, lastError}} from /api/v1/targets: why a target is down."""
    import httpx

    active = httpx.get(f"{base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["job"]: {"health": t["health"], "lastError": t["lastError"]} for t in active}


def scalar(result: list[dict]) -> float | None:
    """The value of a one-series result (None when there is no series)."""
    return float(result[0]["value"][1]) if result else None


# --8<-- [start:perf_analyzer]
TRITONCLIENT_WHEEL = "tritonclient==2.51.0"  # ships bin/perf_analyzer 2.51.0, the server's own release


def perf_analyzer_binary(settings=None) -> tuple[str, dict[str, str]]:
    """(path, extra environment) of perf_analyzer 2.51.0, or else of a ``perf_analyzer`` on PATH that runs."""
    from servelab.runtime import get_settings

    settings = settings or get_settings()
    tool = settings.cache_dir / "tools" / "perf_analyzer-2.51.0"
    try:
        if not (tool / "perf_analyzer").exists():
            _extract_perf_analyzer(settings.cache_dir / "wheels", tool)
        _link_libraries(tool / "lib")
        return str(tool / "perf_analyzer"), {"LD_LIBRARY_PATH": str(tool / "lib")}  # (1)!
    except (subprocess.CalledProcessError, IndexError, StopIteration) as exc:
        on_path = shutil.which("perf_analyzer")  # e.g. `pip install perf-analyzer` where glibc >= 2.38
        if on_path and subprocess.run([on_path, "--version"], capture_output=True).returncode == 0:
            return on_path, {}
        raise RuntimeError(f"no perf_analyzer: cannot get {TRITONCLIENT_WHEEL} ({exc!r}) and none on PATH") from exc


def _extract_perf_analyzer(wheels: Path, tool: Path) -> None:
    import sys
    import zipfile

    found = sorted(wheels.glob("tritonclient-2.51.0-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "--timeout", "30", "--retries", "1", "-d", str(wheels), TRITONCLIENT_WHEEL],
                       check=True)
        found = sorted(wheels.glob("tritonclient-2.51.0-*.whl"))
    tool.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[0]) as wheel:
        (tool / "perf_analyzer.part").write_bytes(wheel.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
    (tool / "perf_analyzer.part").chmod(0o755)
    (tool / "perf_analyzer.part").rename(tool / "perf_analyzer")  # complete, or not there at all


def _link_libraries(lib: Path) -> None:
    """libb64.so.0d and libcudart.so.12 → the copies nvidia-pytriton ships (renamed there by auditwheel)."""
    from servelab.runtime.triton_server import triton_home

    libs = triton_home().parents[1] / "nvidia_pytriton.libs"
    lib.mkdir(parents=True, exist_ok=True)
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        target, link = next(libs.glob(pattern)), lib / soname
        if not link.is_symlink() or link.resolve() != target.resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(target)


def perf_analyzer_argv(binary: str, endpoint, model: str, concurrency: str, out: Path,
                       request_count: int | None = 300, interval_ms: int = 1000,
                       stability: int = 10, input_data: str = "zero", mode: str = "concurrency") -> list[str]:
    argv = [binary, "-m", model, "-u", endpoint.http, "-i", "http",
            "--input-data", input_data,  # (2)!
            f"--{mode.replace('_', '-')}-range", concurrency]  # (3)!
    if request_count:  # (4)!
        argv += ["--request-count", str(request_count)]
    else:
        argv += ["--measurement-interval", str(interval_ms), "--stability-percentage", str(stability)]
    return argv + ["-f", str(out / "perf.csv"), "--profile-export-file", str(out / "export.json")]  # (5)!


def run_perf_analyzer(endpoint, model: str, concurrency: str, request_count: int | None = 300,
                      timeout_s: float | None = None, **options) -> list[dict]:
    """Run perf_analyzer over HTTP; one row per concurrency level (latencies in ms)."""
    binary, env = perf_analyzer_binary()
    if timeout_s is None:  # a few times the run's expected length: a stuck run costs seconds, not minutes
        rate = float(concurrency.split(":")[0]) if options.get("mode") == "request_rate" else 50.0
        timeout_s = max(20.0, 4 * request_count / rate) if request_count else 120.0
    with tempfile.TemporaryDirectory() as tmp:
        argv = perf_analyzer_argv(binary, endpoint, model, concurrency, Path(tmp), request_count, **options)
        for attempt in (1, 2):  # (7)!
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                      env={**os.environ, **env})
                break
            except subprocess.TimeoutExpired:
                if attempt == 2:
                    raise RuntimeError(f"perf_analyzer did not finish in {timeout_s:.0f} s, twice") from None
                for leftover in Path(tmp).iterdir():
                    leftover.unlink()  # --profile-export-file refuses a path that already exists
        if proc.returncode != 0 or not (Path(tmp) / "perf.csv").exists():
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            last = lines[-1].strip() if lines else ""
            first = next((line.strip() for line in lines if "rror" in line or "can not" in line), last)
            raise RuntimeError(f"perf_analyzer exited with {proc.returncode}: "
                               + (last if first == last else f"{first} … {last}"))
        timing = parse_profile_export(json.loads((Path(tmp) / "export.json").read_text()))
        rows = parse_perf_csv((Path(tmp) / "perf.csv").read_text())
        return [{**row, **timing[row.get("concurrency", row.get("request_rate"))]} for row in rows]


def parse_perf_csv(text: str) -> list[dict]:
    """The -f CSV: client percentiles (µs) and the server's averages, converted to ms."""
    rows = []
    for row in csv.DictReader(text.splitlines()):
        level = ({"concurrency": int(row["Concurrency"])} if "Concurrency" in row
                 else {"request_rate": float(row["Request Rate"])})  # request-rate mode names its column so
        rows.append({**level,
                     "pa_throughput": float(row["Inferences/Second"]),
                     **{f"p{p}_ms": int(row[f"p{p} latency"]) / 1000 for p in (50, 90, 95, 99)},  # (6)!
                     "server_queue_ms": int(row["Server Queue"]) / 1000,
                     "server_infer_ms": int(row["Server Compute Infer"]) / 1000})
    return rows


def parse_profile_export(data: dict) -> dict[int, dict]:
    """Per concurrency level: the timestamps of every request → throughput over the busy time."""
    levels = {}
    for experiment in data["experiments"]:
        requests = experiment["requests"]
        first = min(r["timestamp"] for r in requests)
        last = max(r["response_timestamps"][-1] for r in requests)
        start, end = experiment["window_boundaries"][0], experiment["window_boundaries"][-1]
        levels[float(experiment["experiment"]["value"]) if experiment["experiment"]["mode"] == "request_rate"
               else experiment["experiment"]["value"]] = {
            "sent": len(requests), "busy_s": (last - first) / 1e9, "window_s": (end - start) / 1e9,
            "throughput": len(requests) / ((last - first) / 1e9)}  # (8)!
    return levels
# --8<-- [end:perf_analyzer]


def perf_analyzer_version() -> str:
    binary, env = perf_analyzer_binary()
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, env={**os.environ, **env})
    return (proc.stdout or proc.stderr).strip().splitlines()[-1]


# --8<-- [start:measure]
def measure(endpoint, model: str, concurrency: int, request_count: int) -> dict:
    """One perf_analyzer run at one concurrency level, and what Triton's counters saw meanwhile."""
    before = model_snapshot(endpoint, model)
    row = run_perf_analyzer(endpoint, model, f"{concurrency}:{concurrency}", request_count)[0]
    after = settled_snapshot(endpoint, model, before["nv_inference_request_success"] + request_count)
    d = delta(before, after)
    return {**row, "requests": int(d["nv_inference_request_success"]),
            "executions": int(d["nv_inference_exec_count"]),
            "avg_batch": average_batch_size(d),  # (1)!
            "queue_us": latency_breakdown(d)["queue"], "infer_us": latency_breakdown(d)["infer"]}
# --8<-- [end:measure]


# --8<-- [start:sweep]
def latency_vs_concurrency(endpoint, model: str, levels=(1, 2, 3, 4), request_count: int = 300,
                           write: str | None = None) -> list[dict]:
    """perf_analyzer's percentiles at each concurrency level, a fixed number of requests per level."""
    rows = [measure(endpoint, model, level, request_count) for level in levels]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, write, rows, {
            "concurrency": "並行數", "throughput": "吞吐量（請求/秒）",
            "pa_throughput": "perf_analyzer 印出的吞吐量", "p50_ms": "p50 (ms)",
            "p90_ms": "p90 (ms)", "p95_ms": "p95 (ms)", "p99_ms": "p99 (ms)",
            "server_queue_ms": "伺服器排隊 (ms)", "server_infer_ms": "伺服器計算 (ms)",
            "avg_batch": "平均批次大小"},
            extra={"model": model, "request_count": request_count, "perf_analyzer": perf_analyzer_version(),
                   "loadavg_1_5_15": os.getloadavg()})
    return rows
# --8<-- [end:sweep]


# --8<-- [start:compare]
def compare_batching(endpoint, names: dict[str, str], concurrency: int = 8, request_count: int = 400,
                     rounds: int = 3, write: str | None = None) -> list[dict]:
    """The same model and load, dynamic batching off vs on, in alternating rounds."""
    runs = {key: [] for key in ("plain", "batched")}
    for _ in range(rounds):  # (1)!
        for key in runs:
            runs[key].append(measure(endpoint, names[key], concurrency, request_count))
    rows = []
    for key, found in runs.items():
        median = sorted(found, key=lambda r: r["throughput"])[len(found) // 2]  # (2)!
        rows.append({"model": names[key], "dynamic_batching": "開" if key == "batched" else "關",
                     **median, "throughputs": [r["throughput"] for r in found]})
    for row in rows:
        row["speedup"] = row["throughput"] / rows[0]["throughput"]  # (3)!
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, write, rows, {
            "dynamic_batching": "dynamic_batching", "concurrency": "並行數",
            "throughput": "吞吐量（請求/秒，中位數）", "p50_ms": "p50 (ms)", "p99_ms": "p99 (ms)",
            "avg_batch": "平均批次大小", "executions": "execute 次數", "queue_us": "平均排隊 (µs)",
            "infer_us": "平均 compute_infer (µs)", "speedup": "吞吐量倍數"},
            extra={"perf_analyzer": perf_analyzer_version(), "max_queue_delay_us": QUEUE_DELAY_US,
                   "request_count": request_count, "rounds": rounds, "loadavg_1_5_15": os.getloadavg()})
    return rows
# --8<-- [end:compare]


# --8<-- [start:request_rate]
def request_rate_sweep(endpoint, names: dict[str, str], rates=(100, 200, 300, 400, 500),
                       request_count: int = 300) -> list[dict]:
    """Open loop: perf_analyzer sends at a fixed rate whether or not answers came back (--request-rate-range)."""
    rows = []
    for key, model in names.items():  # (1)!
        for rate in rates:
            before = model_snapshot(endpoint, model)
            count = max(request_count, int(rate))  # perf_analyzer: "request-count can not be less than request-rate"
            row = run_perf_analyzer(endpoint, model, f"{rate}:{rate}", count, mode="request_rate")[0]
            after = settled_snapshot(endpoint, model, before["nv_inference_request_success"] + row["sent"])
            d = delta(before, after)
            rows.append({"dynamic_batching": "開" if key == "batched" else "關", **row,  # (2)!
                         "achieved": row["sent"] / row["busy_s"], "avg_batch": average_batch_size(d),
                         "queue_us": latency_breakdown(d)["queue"]})
    return rows


def latency_vs_request_rate(endpoint, names: dict[str, str], rates=(100, 200, 300, 400, 500),
                            request_count: int = 300, write: str | None = None) -> list[dict]:
    """The sweep once per test session (test and notebook share it), then the results file."""
    from servelab.runtime.memo import experiment

    rows = experiment(request_rate_sweep, ignore=("endpoint",))(endpoint, names, rates, request_count)  # (3)!
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, write, rows, {
            "dynamic_batching": "dynamic_batching", "request_rate": "目標速率（請求/秒）",
            "achieved": "實際完成（請求/秒）", "p50_ms": "p50 (ms)", "p90_ms": "p90 (ms)", "p99_ms": "p99 (ms)",
            "avg_batch": "平均批次大小", "queue_us": "平均排隊 (µs)"},
            extra={"perf_analyzer": perf_analyzer_version(), "request_count": request_count,
                   "max_queue_delay_us": QUEUE_DELAY_US, "loadavg_1_5_15": os.getloadavg()})
    return rows
# --8<-- [end:request_rate]


# --8<-- [start:dashboard]
def load_dashboard() -> dict:
    return json.loads(docker_file("grafana/triton-dashboard.json").read_text())


def dashboard_targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in a Grafana dashboard."""
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def dashboard_problems(dashboard: dict) -> list[str]:
    """What Grafana would refuse or show wrong: missing fields, duplicate ids, overlapping panels."""
    problems = [f"missing top-level '{key}'" for key in ("title", "uid", "schemaVersion", "panels")
                if key not in dashboard]
    ids = [panel.get("id") for panel in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate panel ids: {ids}")
    cells = set()
    for panel in dashboard.get("panels", []):
        for key in ("id", "type", "title", "gridPos", "targets", "datasource"):
            if key not in panel:
                problems.append(f"panel {panel.get('title')!r}: missing '{key}'")
        grid = panel.get("gridPos", {})
        area = {(x, y) for x in range(grid.get("x", 0), grid.get("x", 0) + grid.get("w", 0))
                for y in range(grid.get("y", 0), grid.get("y", 0) + grid.get("h", 0))}
        if cells & area or any(x >= 24 for x, _ in area):
            problems.append(f"panel {panel.get('title')!r}: overlaps another panel or leaves the 24-column grid")
        cells |= area
        for target in panel.get("targets", []):
            if not target.get("expr") or not target.get("refId"):
                problems.append(f"panel {panel.get('title')!r}: a target without expr/refId")
    return problems


def render_expr(expr: str, model_regex: str = ".+", rate_interval: str = "30s") -> str:
    """Replace Grafana's variables the way Grafana does before it sends the query to Prometheus."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", model_regex)
# --8<-- [end:dashboard]


# --8<-- [start:vllm_metrics]
VLLM_METRICS = {  # the vLLM counterparts a dashboard for an LLM server needs
    "vllm:num_requests_running": "gauge",  # requests in the running batch right now
    "vllm:num_requests_waiting": "gauge",  # ≈ nv_inference_pending_request_count
    "vllm:kv_cache_usage_perc": "gauge",  # share of KV-cache blocks in use (0–1)
    "vllm:time_to_first_token_seconds": "histogram",  # TTFT
    "vllm:inter_token_latency_seconds": "histogram",  # gap between two output tokens
    "vllm:e2e_request_latency_seconds": "histogram",  # ≈ nv_inference_request_duration_us / requests
}


def metric_types(text: str) -> dict[str, str]:
    """{metric family: type} from the ``# TYPE`` lines of a /metrics page."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def vllm_metrics_text(endpoint) -> str:
    import httpx

    return httpx.get(f"{endpoint.base_url}/metrics", timeout=10).text  # the API port serves /metrics
# --8<-- [end:vllm_metrics]


# --8<-- [start:weights_per_step]
def llama_parameters(config: dict) -> int:
    """Parameters of a Llama-style decoder from its config.json (embeddings, layers, final norm, head)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q_dim, kv_dim = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * inter + 2 * h  # attention, MLP, 2 norms
    embed = config["vocab_size"] * h
    head = 0 if config.get("tie_word_embeddings") else embed
    return embed + layers * per_layer + h + head


def decode_read_parameters(config: dict) -> int:
    """Parameters one decode step reads: all of them but the input embedding, which is looked up (one row
    per token), not read; a tied model reads that matrix anyway, as its output head."""
    embed = config["vocab_size"] * config["hidden_size"]
    return llama_parameters(config) - (0 if config.get("tie_word_embeddings") else embed)


def mlp_weight_bytes(hidden: int, layers: int) -> int:
    """This lesson's toy model: LAYERS fp32 matrices of HIDDEN × HIDDEN, all read on every execute()."""
    return layers * hidden * hidden * 4


def weight_read_ms(parameters: int, bytes_per_param: int, bandwidth_gb_s: float) -> float:
    """Lower bound of one forward pass that must read every weight once: bytes / bandwidth."""
    return parameters * bytes_per_param / (bandwidth_gb_s * 1e9) * 1e3
# --8<-- [end:weights_per_step]


# --8<-- [start:ex_queue_share]
def queue_share(d: dict[str, float]) -> float:
    """Exercise 1: the share of the end-to-end server time a request spent waiting in the queue."""
    return d["nv_inference_queue_duration_us"] / d["nv_inference_request_duration_us"]
# --8<-- [end:ex_queue_share]


# --8<-- [start:ex_avg_batch_promql]
AVG_BATCH_PROMQL = (  # Exercise 2: average batch size over the last minute, per model
    'sum by (model) (increase(nv_inference_count{model="%(model)s"}[1m]))'
    ' / sum by (model) (increase(nv_inference_exec_count{model="%(model)s"}[1m]))'
)
# --8<-- [end:ex_avg_batch_promql]


# --8<-- [start:ex_failure_reason]
def failure_reasons(endpoint, model: str) -> dict[str, float]:
    """{reason: failed requests} of one model: the ``reason`` label of nv_inference_request_failure."""
    return {labels["reason"]: value for name, labels, value in parse_samples(endpoint.metrics_text())
            if name == "nv_inference_request_failure" and labels.get("model") == model}


RAISING_MODEL_PY = """
class TritonPythonModel:
    def execute(self, requests):
        raise RuntimeError("execute() failed on purpose")
"""


def deploy_raising_model(endpoint, name: str = "l04_raises") -> str:
    from servelab.runtime.triton_repo import write_model

    config = model_config(name, batching=False, hidden=4, layers=1)
    with tempfile.TemporaryDirectory() as tmp:
        return endpoint.add_model(write_model(Path(tmp), name, config, files={"model.py": RAISING_MODEL_PY}))


def bad_requests(endpoint, model: str, raising_model: str) -> dict[str, dict]:
    """Exercise 3: three bad requests; the HTTP error each gets and what the counters saw."""
    from tritonclient.utils import InferenceServerException

    hidden = input_width(endpoint, model)
    cases = {"wrong_width": (model, np.zeros((1, hidden + 1), dtype=np.float32)),  # Triton's core refuses it
             "nan_input": (model, np.full((1, hidden), np.nan, dtype=np.float32)),  # model.py answers an error
             "execute_raises": (raising_model, np.zeros((1, 4), dtype=np.float32))}  # execute() raises
    seen = {}
    for case, (name, rows) in cases.items():
        before, reasons = model_snapshot(endpoint, name), failure_reasons(endpoint, name)
        try:
            infer(endpoint, name, rows)
            error = ""
        except InferenceServerException as exc:
            error = str(exc).splitlines()[0]
        d = delta(before, model_snapshot(endpoint, name))
        seen[case] = {"error": error, "success": d["nv_inference_request_success"],
                      "failure": {r: v - reasons.get(r, 0) for r, v in failure_reasons(endpoint, name).items()}}
    return seen
# --8<-- [end:ex_failure_reason]


# --8<-- [start:ex_histogram_mean]
def histogram_mean(text: str, name: str) -> float:
    """Exercise 4: the mean of a Prometheus histogram since start, ``_sum / _count`` (all label sets)."""
    table = parse_metrics(text)
    total = sum(table[f"{name}_sum"].values())
    count = sum(table[f"{name}_count"].values())
    return total / count
# --8<-- [end:ex_histogram_mean]


def run_all(endpoint, profile: str, write: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """The lesson's measurements for a profile: latency vs concurrency, batching off vs on, request rates."""
    suffix = "_gpu" if profile == "gpu" else ""
    load = LOAD[profile]
    names = deploy_pair(endpoint, profile)
    sweep = latency_vs_concurrency(endpoint, names["batched"], request_count=load["sweep_requests"],
                                   write="perf_concurrency" + suffix if write else None)
    compare = compare_batching(endpoint, names, load["concurrency"], load["compare_requests"],
                               write="batching" + suffix if write else None)
    rates = latency_vs_request_rate(endpoint, names, load["rates"], load["rate_requests"],
                                    write="request_rate" + suffix if write else None)
    return sweep, compare, rates


def main() -> int:
    from servelab.runtime import get_settings, triton_endpoint

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        profile = get_settings().profile
        if profile == "cpu":
            one_request(endpoint, deploy_pair(endpoint, "cpu")["batched"], write="one_request")
        sweep, compare, rates = run_all(endpoint, profile)
        for row in [*sweep, *compare, *rates]:
            print(json.dumps(row, ensure_ascii=False))
    return 0


# ---- end of model.py ----
# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import csv
import json
import numpy as np
import os
import re
import shutil
import subprocess
import tempfile
import time
import torch
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from servelab.triton.lab2_1.l04_monitoring_and_performance import (
    LESSON, MAX_BATCH, QUEUE_DELAY_US, average_batch_size, delta, docker_file, infer, input_width,
    latency_breakdown, measure, model_config, model_snapshot, parse_metrics, parse_samples,
    perf_analyzer_version, run_perf_analyzer, settled_snapshot
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
