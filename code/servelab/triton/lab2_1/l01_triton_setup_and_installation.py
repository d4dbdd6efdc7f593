"""01-Triton_Setup_and_Installation — Triton Inference Server 2.51: what is installed, how it starts,
how to check it, and a first model over HTTP, gRPC and raw KServe v2 JSON.

This file has two roles:

1. The lesson module (``servelab.triton.lab2_1.l01_triton_setup_and_installation``): it inspects the
   installation, starts Triton through ``servelab.runtime``, loads the first model, sends requests and
   measures.
2. Triton's ``model.py`` for the first model: :func:`write_first_model` copies this very file, unchanged,
   to ``<repo>/<name>/1/model.py`` and the Python backend runs its :class:`TritonPythonModel`. Inside
   Triton's stub only the standard library and numpy are importable, so the lesson-side imports below are
   guarded.
"""

from __future__ import annotations

import json
import locale
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import numpy as np

try:  # the lesson side; Triton's stub runs this file as model.py without servelab, httpx or tritonclient
    import httpx

    from servelab.runtime import ServerStartError, TritonEndpoint, get_settings, model_info, triton_server
    from servelab.runtime.process import ensure_port_free
    from servelab.runtime.results import write_results
    from servelab.runtime.triton_repo import write_model
    from servelab.runtime.triton_server import backend_python_env, backends_dir, server_env, triton_home
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE
except ModuleNotFoundError:
    pass

LESSON = "triton/lab2_1/l01_triton_setup_and_installation"
MODEL = "l01_hello"
TEXTS = ("Triton", "推論伺服器")
END_OF_MODEL_PY = "# ---- end of model.py ----"  # model_source() cuts the file at the last such line


# --8<-- [start:first_model]
class TritonPythonModel:
    """TEXT (strings) → UPPER (upper case) and LENGTH (characters); RUNTIME says where the model runs."""

    def initialize(self, args):
        start_encoding = locale.getpreferredencoding(False)
        locale.setlocale(locale.LC_CTYPE, "")  # (1)!
        self.runtime = json.dumps({
            "kind": args["model_instance_kind"],  # (2)!
            "device_id": int(args["model_instance_device_id"]),
            "python": platform.python_version(),
            "numpy": np.__version__,  # (3)!
            "prefix": sys.prefix,
            "start_encoding": start_encoding,
            "encoding": locale.getpreferredencoding(False),
            "stdout_encoding": sys.stdout.encoding,
        })

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils  # (4)!

        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()  # object array of bytes
            texts = [item.decode("utf-8") for item in raw.reshape(-1)]  # (5)!
            debug = json.loads(request.parameters()).get("debug")  # (6)!
            if debug == "print":
                print("TEXT:", texts)  # stdout is ASCII here: non-ASCII text fails the request
            elif debug == "logger":
                pb_utils.Logger.log_info(f"TEXT: {texts}")  # Triton's own log: UTF-8 is fine
            upper = np.array([text.upper().encode("utf-8") for text in texts], dtype=np.object_)
            length = np.array([len(text) for text in texts], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("UPPER", upper.reshape(raw.shape)),
                pb_utils.Tensor("LENGTH", length.reshape(raw.shape)),
                pb_utils.Tensor("RUNTIME", np.array([self.runtime.encode("utf-8")], dtype=np.object_)),
            ]))
        return responses
# --8<-- [end:first_model]


# --8<-- [start:first_model_config]
def first_model_config(name: str = MODEL, kind: str | None = None) -> str:
    """config.pbtxt of the first model: one string input, three outputs, one instance."""
    kind = kind or ("KIND_GPU" if get_settings().profile == "gpu" else "KIND_CPU")  # (1)!
    return f'''
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [
  {{ name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "RUNTIME" data_type: TYPE_STRING dims: [ 1 ] }}
]
instance_group [ {{ kind: {kind} count: 1 }} ]
'''


def model_source() -> str:
    """The model.py Triton runs: this lesson's module as installed (package ``servelab.triton.lab2_1``), cut
    before the reader context at its end, which imports servelab (absent inside Triton's stub)."""
    module = files("servelab.triton.lab2_1") / "l01_triton_setup_and_installation.py"
    return module.read_text(encoding="utf-8").rsplit(END_OF_MODEL_PY, 1)[0]


def write_first_model(repository: Path, name: str = MODEL, kind: str | None = None,
                      extra_config: str = "") -> Path:
    """``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/1/model.py`` (from model_source())."""
    return write_model(repository, name, first_model_config(name, kind) + extra_config,
                       {"model.py": model_source()})
# --8<-- [end:first_model_config]


# --8<-- [start:load_first_model]
def load_first_model(endpoint: TritonEndpoint, name: str = MODEL) -> float:
    """Copy the model folder into the server's repository, load it, return the seconds the load took."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_first_model(Path(tmp), name)
        start = time.perf_counter()
        endpoint.add_model(folder)  # (1)!
        return time.perf_counter() - start
# --8<-- [end:load_first_model]


# --8<-- [start:describe_install]
def bundled_backends() -> list[str]:
    """The backends the wheel ships: the folders under ``pytriton/tritonserver/backends``."""
    return sorted(p.name for p in (triton_home() / "backends").iterdir() if p.is_dir())


def stub_pythons() -> list[str]:
    """The Python versions the wheel has a Python-backend stub for."""
    stubs = triton_home() / "python_backend_stubs"
    found = [p.name for p in stubs.iterdir() if (p / "triton_python_backend_stub").is_file()]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


def backend_env_numpy() -> str:
    """numpy's version in the environment the stub runs models in."""
    python = backend_python_env() / "bin" / "python3"
    out = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def server_metadata(endpoint: TritonEndpoint) -> dict:
    """``GET /v2``: the server's name, version and protocol extensions."""
    return httpx.get(f"http://{endpoint.http}/v2", timeout=10).json()


def describe_install(endpoint: TritonEndpoint) -> dict:
    """What this installation is: binary, version (asked from the running server), backends, stub."""
    import importlib.metadata

    this_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    metadata = server_metadata(endpoint)
    wheel = importlib.metadata.distribution("nvidia-pytriton")
    return {
        "wheel": f"nvidia-pytriton {wheel.version}",
        "wheel_tag": wheel.read_text("WHEEL").split("Tag: ")[1].split()[0],  # (1)!
        "binary": str(triton_home() / "bin" / "tritonserver"),
        "server_version": metadata["version"],  # (2)!
        "backends": bundled_backends(),  # (3)!
        "stub_pythons": stub_pythons(),
        "this_python": this_python,
        "stub": str(backends_dir() / "python" / "triton_python_backend_stub"),  # (4)!
        "backend_env": str(backend_python_env()),
        "backend_numpy": backend_env_numpy(),
        "client_numpy": np.__version__,
        "extensions": metadata["extensions"],
    }
# --8<-- [end:describe_install]


# --8<-- [start:check_stub]
def check_stub(with_runtime_env: bool, python: str | None = None) -> tuple[int, str]:
    """Run a Python-backend stub with no arguments, as the backend does before each launch.

    A stub that can start exits with code 1 ("Expected 9 arguments"); one that cannot find its shared
    libraries exits with 127 and the dynamic loader's message.
    """
    if python is None:
        stub = backends_dir() / "python" / "triton_python_backend_stub"  # the one for this Python
    else:
        stub = triton_home() / "python_backend_stubs" / python / "triton_python_backend_stub"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if with_runtime_env:
        env.update(server_env())  # (1)!
    proc = subprocess.run([str(stub)], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode, (proc.stderr + proc.stdout).strip().splitlines()[-1]
# --8<-- [end:check_stub]


def library_path_parts() -> list[str]:
    """The folders servelab puts on the server's ``LD_LIBRARY_PATH`` (without an inherited one)."""
    parts = server_env()["LD_LIBRARY_PATH"].split(":")
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return parts[:-1] if inherited and parts[-1] == inherited else parts


# --8<-- [start:health]
def health(endpoint: TritonEndpoint, model: str = MODEL) -> dict[str, int]:
    """HTTP status of the KServe v2 health endpoints: 200 means yes, anything else means no."""
    base = f"http://{endpoint.http}"
    return {
        "live": httpx.get(f"{base}/v2/health/live", timeout=10).status_code,  # (1)!
        "ready": httpx.get(f"{base}/v2/health/ready", timeout=10).status_code,  # (2)!
        "model_ready": httpx.get(f"{base}/v2/models/{model}/ready", timeout=10).status_code,  # (3)!
    }
# --8<-- [end:health]


# --8<-- [start:clients]
def infer_http(client, texts=TEXTS, model: str = MODEL, parameters: dict | None = None) -> dict:
    """tritonclient over HTTP (``endpoint.http_client()``): binary tensors behind a JSON header."""
    import tritonclient.http as httpclient

    data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    text = httpclient.InferInput("TEXT", list(data.shape), "BYTES")  # (1)!
    text.set_data_from_numpy(data)
    return _decode(client.infer(model, [text], parameters=parameters))  # (2)!


def infer_grpc(client, texts=TEXTS, model: str = MODEL) -> dict:
    """tritonclient over gRPC (``endpoint.grpc_client()``): the same tensors in protobuf messages."""
    import tritonclient.grpc as grpcclient

    data = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    text = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    text.set_data_from_numpy(data)
    return _decode(client.infer(model, [text]))


def _decode(result) -> dict:
    return {
        "upper": [b.decode("utf-8") for b in result.as_numpy("UPPER")],  # (3)!
        "length": result.as_numpy("LENGTH").tolist(),
        "runtime": json.loads(result.as_numpy("RUNTIME")[0]),
    }
# --8<-- [end:clients]


# --8<-- [start:raw_json]
def kserve_request(texts=TEXTS) -> dict:
    """The KServe v2 inference request, as plain JSON: no client library needed."""
    return {"inputs": [{"name": "TEXT", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}],
            "outputs": [{"name": "UPPER"}, {"name": "LENGTH"}]}  # (1)!


def infer_raw_json(base_url: str, texts=TEXTS, model: str = MODEL,
                   session: httpx.Client | None = None) -> tuple[int, dict]:
    """POST the request to ``{base_url}/v2/models/{model}/infer``; return (HTTP status, JSON body)."""
    post = session.post if session else httpx.post  # (2)!
    response = post(f"{base_url}/v2/models/{model}/infer", json=kserve_request(texts), timeout=30)
    return response.status_code, response.json()  # (3)!
# --8<-- [end:raw_json]


# --8<-- [start:vllm_first_steps]
def vllm_first_steps(endpoint) -> dict:
    """The same first checks on a vLLM server: liveness, version, served models, one short answer."""
    base = endpoint.base_url
    chat = endpoint.client().chat.completions.create(
        model=endpoint.model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    return {
        "health": httpx.get(f"{base}/health", timeout=10).status_code,  # (1)!
        "version": httpx.get(f"{base}/version", timeout=10).json()["version"],
        "models": [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]],
        "answer": chat.choices[0].message.content,
    }
# --8<-- [end:vllm_first_steps]


# --8<-- [start:measure_startup]
@contextmanager
def start_and_load(repository: Path, name: str = MODEL):
    """Start a fresh Triton on ``repository`` and load the first model; yield (endpoint, timings)."""
    write_first_model(repository, name)
    start = time.perf_counter()
    with triton_server(repository) as endpoint:  # explicit mode: no model is loaded yet
        ready_s = time.perf_counter() - start  # (1)!
        start = time.perf_counter()
        endpoint.http_client().load_model(name)  # (2)!
        load_s = time.perf_counter() - start
        yield endpoint, {"ready_s": ready_s, "load_s": load_s}


def measure_startup(runs: int = 3) -> list[dict]:
    rows = []
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as tmp, start_and_load(Path(tmp)) as (_endpoint, timings):
            rows.append({"run": run, **timings})
    return rows
# --8<-- [end:measure_startup]


# --8<-- [start:measure_latency]
def _timed(call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def server_side_ms(endpoint: TritonEndpoint, model: str = MODEL) -> tuple[int, float]:
    """(successful requests, total server-side milliseconds) from the statistics extension."""
    stats = httpx.get(f"http://{endpoint.http}/v2/models/{model}/stats", timeout=10).json()
    success = stats["model_stats"][0]["inference_stats"]["success"]
    return int(success["count"]), int(success["ns"]) / 1e6


def measure_latency(endpoint: TritonEndpoint, n: int = 200, model: str = MODEL) -> list[dict]:
    """Client-observed latency of the same request over four paths, with the server's share."""
    http, grpc, session = endpoint.http_client(), endpoint.grpc_client(), httpx.Client()  # (1)!
    base = f"http://{endpoint.http}"
    calls = {
        ("http", "HTTP（tritonclient，二進位張量）", n): lambda: infer_http(http, model=model),
        ("grpc", "gRPC（tritonclient）", n): lambda: infer_grpc(grpc, model=model),
        ("json", "HTTP（純 JSON，沿用 httpx.Client）", n): lambda: infer_raw_json(base, model=model,
                                                                            session=session),
        ("json_new", "HTTP（純 JSON，每次 httpx.post）", max(10, n // 10)):
            lambda: infer_raw_json(base, model=model),  # (2)!
    }
    rows = []
    for (key, path, count), call in calls.items():
        for _ in range(max(3, count // 10)):  # warm-up: connections, first-call allocations
            call()
        count0, ms0 = server_side_ms(endpoint, model)
        samples = _timed(call, count)
        count1, ms1 = server_side_ms(endpoint, model)
        rows.append({
            "key": key, "path": path, "n": count,
            "median_ms": statistics.median(samples),
            "p90_ms": statistics.quantiles(samples, n=10)[-1],
            "mean_ms": statistics.fmean(samples),
            "server_mean_ms": (ms1 - ms0) / (count1 - count0),  # (3)!
        })
    for client in (http, grpc, session):
        client.close()
    return rows
# --8<-- [end:measure_latency]


# --8<-- [start:memory_budget]
def llama_parameters(cfg: dict) -> int:
    """Parameters of a Llama-style decoder from its config.json shape."""
    h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                               cfg["vocab_size"])
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = h * cfg["num_attention_heads"] * head_dim
    kv = 2 * h * cfg["num_key_value_heads"] * head_dim
    per_layer = 2 * q + kv + 3 * h * inter + 2 * h  # q and o, k and v, gate/up/down, two RMSNorms
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def kv_bytes_per_token(cfg: dict, dtype_bytes: int) -> int:
    """K and V, for every layer and KV head: 2 × layers × kv_heads × head_dim × bytes."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * dtype_bytes


def memory_budget(context_tokens: int = 2048, sequences: int = 8) -> list[dict]:
    """Weights + KV cache for ``sequences`` full contexts: the bundled model (float32, CPU) and 8B (bf16)."""
    bundled = json.loads((model_info().path / "config.json").read_text())
    rows = []
    for label, cfg, dtype, nbytes in (("SmolLM2-135M（內附，CPU）", bundled, "float32", 4),
                                      ("Llama-3.1-8B 形狀（GPU）", LLAMA_8B_SHAPE, "bfloat16", 2)):
        params = llama_parameters(cfg)
        kv = kv_bytes_per_token(cfg, nbytes)
        rows.append({
            "model": label, "dtype": dtype, "params_m": params / 1e6,
            "weights_gib": params * nbytes / 2**30,
            "kv_kib_per_token": kv / 2**10,
            "kv_gib": kv * context_tokens * sequences / 2**30,
            "total_gib": (params * nbytes + kv * context_tokens * sequences) / 2**30,
        })
    return rows
# --8<-- [end:memory_budget]


# --8<-- [start:troubleshooting]
def numpy2_env(folder: Path) -> Path:
    """A venv that sees this environment's packages (numpy 2.x) and nothing else: the wrong backend env."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(folder)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = folder / "lib" / version / "site-packages"
    (site / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder


def load_with_numpy2(endpoint: TritonEndpoint, name: str = "l01_numpy2") -> Path:
    """The first model again, but its stub runs in a numpy-2 environment (EXECUTION_ENV_PATH)."""
    env = numpy2_env(Path(tempfile.mkdtemp(prefix="l01-numpy2-")))
    extra = f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}\n'  # (1)!
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_first_model(Path(tmp), name, extra_config=extra))
    return env


def load_with_wrong_stub(endpoint: TritonEndpoint, name: str = "l01_wrong_stub",
                         python: str = "3.8", wait_s: float = 3.0) -> str:
    """A model folder carrying a stub built for another Python; the load never finishes."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_first_model(Path(tmp), name)
        stub = triton_home() / "python_backend_stubs" / python / "triton_python_backend_stub"
        shutil.copy2(stub, folder / "triton_python_backend_stub")  # (2)!
        endpoint.add_model(folder, load=False)
    try:
        httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/load", timeout=wait_s)
    except httpx.TimeoutException:
        return "timeout"  # (3)!
    return "returned"


# --8<-- [end:troubleshooting]


# --8<-- [start:failed_load]
def failed_load_readiness(endpoint: TritonEndpoint, name: str = "l01_failed_load") -> dict:
    """A load that fails (KIND_GPU on a host without GPU): the error, then /v2/health/ready after the
    failure, after unloading the model, and after a corrected folder loads under the same name."""
    ready = lambda: httpx.get(f"http://{endpoint.http}/v2/health/ready", timeout=10).status_code  # noqa: E731
    load = lambda: httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/load", timeout=120)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_first_model(Path(tmp), name, kind="KIND_GPU"), load=False)
    answer = load()
    result = {"status": answer.status_code, "error": answer.json().get("error", "").strip(),
              "ready_after_failure": ready()}  # (1)!
    httpx.post(f"http://{endpoint.http}/v2/repository/models/{name}/unload", timeout=60)
    result["ready_after_unload"] = ready()
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_first_model(Path(tmp), name, kind="KIND_CPU"), load=False)
    result["fixed_status"] = load().status_code  # (2)!
    result["model_ready_after_fix"] = httpx.get(f"http://{endpoint.http}/v2/models/{name}/ready", timeout=10).status_code
    result["ready_after_fix"] = ready()
    return result
# --8<-- [end:failed_load]


# --8<-- [start:troubleshooting_state]
def repository_state(endpoint: TritonEndpoint) -> dict[str, str]:
    """``POST /v2/repository/index``: every model in the repository and its state."""
    index = httpx.post(f"http://{endpoint.http}/v2/repository/index", timeout=10).json()
    return {entry["name"]: entry.get("state", "") for entry in index}
# --8<-- [end:troubleshooting_state]


def port_in_use_errors(endpoint: TritonEndpoint) -> tuple[str, str]:
    """The two messages for a taken port: servelab's check, and Triton's own when it is told to use it."""
    host, port = endpoint.http.rsplit(":", 1)
    try:
        ensure_port_free(host, int(port))
        ours = ""
    except ServerStartError as exc:
        ours = str(exc)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with triton_server(Path(tmp), extra_args=[f"--http-port={port}"]):
                theirs = ""
        except ServerStartError as exc:
            theirs = str(exc)
    return ours, theirs


# --8<-- [start:exercise_index]
def loaded_models(endpoint: TritonEndpoint) -> list[str]:
    """Exercise 1: the models that are READY, from the repository index."""
    return sorted(name for name, state in repository_state(endpoint).items() if state == "READY")
# --8<-- [end:exercise_index]


# --8<-- [start:exercise_metrics]
def success_count(endpoint: TritonEndpoint, model: str = MODEL) -> int:
    """Exercise 2: ``nv_inference_request_success`` of one model, read from the Prometheus endpoint."""
    pattern = rf'^nv_inference_request_success{{model="{re.escape(model)}",version="1"}} (\d+)'
    match = re.search(pattern, endpoint.metrics_text(), re.MULTILINE)
    return int(match.group(1)) if match else 0
# --8<-- [end:exercise_metrics]


# --8<-- [start:exercise_overhead]
def overhead_share(row: dict) -> float:
    """Exercise 3: the share of the client's mean latency spent outside the model's execution."""
    return 1 - row["server_mean_ms"] / row["mean_ms"]
# --8<-- [end:exercise_overhead]


def gpu_metric_names(endpoint: TritonEndpoint) -> list[str]:
    """The GPU metric families Triton exports (DCGM): empty on a CPU-only machine."""
    names = {line.split("{")[0].split(" ")[0] for line in endpoint.metrics_text().splitlines()
             if line.startswith("nv_gpu_") or line.startswith("nv_energy_")}
    return sorted(names)


# ---------------------------------------------------------------------------------------------------------
# Result files: the tables the page includes.

def _suffix() -> str:
    return "_gpu" if get_settings().profile == "gpu" else ""


def _short(path: str) -> str:
    return path.replace(str(Path.home()), "~").replace(sys.prefix, "<venv>")


def record_install(info: dict, parts: list[str], gpu_metrics: list[str]) -> Path:
    rows = [
        {"item": "安裝來源", "value": info["wheel"]},
        {"item": "wheel 平台標籤", "value": f"`{info['wheel_tag']}`"},
        {"item": "伺服器版本（GET /v2）", "value": info["server_version"]},
        {"item": "內附 backend", "value": ", ".join(info["backends"])},
        {"item": "有 stub 的 Python 版本", "value": ", ".join(info["stub_pythons"])},
        {"item": "本機 Python（使用的 stub）", "value": info["this_python"]},
        {"item": "backend 環境的 numpy", "value": info["backend_numpy"]},
        {"item": "用戶端環境的 numpy", "value": info["client_numpy"]},
        {"item": "LD_LIBRARY_PATH 加入的資料夾", "value": ", ".join(f"`{_short(p)}`" for p in parts)},
        {"item": "GPU 指標（nv_gpu_*）", "value": ", ".join(gpu_metrics) or "無（這台機器沒有 GPU）"},
    ]
    return write_results(LESSON, "install" + _suffix(), rows, {"item": "項目", "value": "值"},
                         extra={"describe_install": info})


def record_startup(rows: list[dict]) -> Path:
    return write_results(LESSON, "startup" + _suffix(), rows,
                         {"run": "第幾次", "ready_s": "啟動到 /v2/health/ready（秒）",
                          "load_s": f"載入 {MODEL}（秒）"})


def record_latency(rows: list[dict]) -> Path:
    return write_results(LESSON, "latency" + _suffix(), rows,
                         {"path": "路徑", "n": "請求數", "median_ms": "中位數（ms）", "p90_ms": "p90（ms）",
                          "mean_ms": "平均（ms）", "server_mean_ms": "伺服器端平均（ms）"})


def record_exchange(status: int, request: dict, response: dict) -> Path:
    rows = [
        {"step": "POST /v2/models/l01_hello/infer",
         "json": f"`{json.dumps(request, ensure_ascii=False)}`"},
        {"step": f"HTTP {status}", "json": f"`{json.dumps(response, ensure_ascii=False)}`"},
    ]
    return write_results(LESSON, "kserve_exchange", rows, {"step": "步驟", "json": "本文（JSON）"})


def record_memory(rows: list[dict]) -> Path:
    return write_results(LESSON, "memory_budget", rows,
                         {"model": "模型", "dtype": "dtype", "params_m": "參數（百萬）",
                          "weights_gib": "權重（GiB）", "kv_kib_per_token": "KV／token（KiB）",
                          "kv_gib": "KV：8 × 2048 token（GiB）", "total_gib": "合計（GiB）"})


def run_all(runs: int = 3, n: int = 200) -> dict:
    """Everything the page shows, on fresh servers of our own: the numbers are this machine's."""
    startup = []
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as tmp, start_and_load(Path(tmp)) as (endpoint, timings):
            startup.append({"run": run, **timings})
            if run == runs:  # measure on the last one, after its start was timed
                info = describe_install(endpoint)
                latency = measure_latency(endpoint, n=n)
                status, response = infer_raw_json(f"http://{endpoint.http}")
                answer = infer_http(endpoint.http_client())
                gpu = gpu_metric_names(endpoint)
    record_install(info, library_path_parts(), gpu)
    record_startup(startup)
    record_latency(latency)
    if not _suffix():
        record_exchange(status, kserve_request(), response)
        record_memory(memory_budget())
    return {"install": info, "startup": startup, "latency": latency, "gpu_metrics": gpu, "answer": answer}


def main() -> int:
    result = run_all()
    print(json.dumps({k: v for k, v in result.items() if k != "install"}, indent=2, ensure_ascii=False))
    print(f"results: results/{LESSON}/")
    return 0


# ---- end of model.py ----
# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import httpx
import json
import locale
import numpy as np
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from servelab.runtime import TritonEndpoint, get_settings, model_info, triton_server
from servelab.runtime.triton_repo import write_model
from servelab.runtime.triton_server import backend_python_env, backends_dir, server_env, triton_home
from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE
from servelab.triton.lab2_1.l01_triton_setup_and_installation import (
    END_OF_MODEL_PY, MODEL, TEXTS, infer_grpc, infer_http, infer_raw_json, repository_state,
    write_first_model
)
# --8<-- [end:context]


if __name__ == "__main__":
    sys.exit(main())
