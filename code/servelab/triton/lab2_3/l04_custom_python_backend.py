"""04-Custom_Python_Backend — the ``pb_utils`` surface a production Python-backend model uses, on the real server.

Five small numpy model classes (six loaded models), each rendered from a class of this module into a ``model.py``:

* :class:`ScalerModel` — ``auto_complete_config`` (the config file names only the backend), model
  parameters, request parameters, batched ``execute``, a ``TritonError`` per request, custom metrics
  (``MetricFamily`` counter and histogram), and ``finalize`` writing a marker file.
* :class:`StreamerModel` — decoupled: a thread per request sends N responses through the response sender,
  checks ``is_cancelled()`` between them, and always ends with the final flag.
* :class:`BlsModel` — Business Logic Scripting: the same four calls to the scaler with ``exec`` (one after
  another) and ``async_exec`` + ``asyncio.gather``, and a call to the decoupled streamer with
  ``exec(decoupled=True)``. :class:`DecoupledBlsModel` tries async BLS inside a decoupled model.
* :class:`EnvModel` — reports the interpreter and numpy it runs with; loaded twice, once in the book's backend
  environment and once with ``EXECUTION_ENV_PATH`` pointing at a second environment (:func:`pinned_env`).

Everything loads into a running Triton with explicit model control (the test suite's ``triton_shared``) under
names starting with :data:`PREFIX`, and is unloaded again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from servelab.runtime.memo import experiment

try:  # inside Triton's stub; in this process the classes below are only rendered into model.py files
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

LESSON = "triton/lab2_3/l04_custom_python_backend"
PREFIX = "l04py_"  # every model this lesson loads into a shared Triton starts with it
SCALER, STREAMER, BLS, DBLS = PREFIX + "scaler", PREFIX + "streamer", PREFIX + "bls", PREFIX + "dbls"
ENV_DEFAULT, ENV_PINNED = PREFIX + "env_default", PREFIX + "env_pinned"
# the second environment's pin (the book's backend environment has 1.26.4); 1.24.4 has no wheel past Python 3.11
PINNED_NUMPY = "numpy==1.24.4" if sys.version_info[:2] <= (3, 11) else "numpy==1.26.0"
LOAD_TIMEOUT_S = 120.0


# --8<-- [start:scaler]
class ScalerModel:
    """Y = X × SCALE for a batch of requests. A request with a NaN gets its own INVALID_ARG error."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):  # (1)!
        config = auto_complete_model_config
        config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [-1]})
        config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [-1]})
        config.add_output({"name": "BATCH", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config

    def initialize(self, args):
        config = json.loads(args["model_config"])  # (2)!
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.scale = float(params.get("SCALE", "1.0"))
        self.marker = params.get("FINALIZE_MARKER", "")
        self.rows = 0
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.families = [  # (3)!
            pb_utils.MetricFamily(name="servelab_scaler_rows_total", description="Rows scaled by this model",
                                  kind=pb_utils.MetricFamily.COUNTER),
            pb_utils.MetricFamily(name="servelab_scaler_batch_requests", description="Requests per execute() call",
                                  kind=pb_utils.MetricFamily.HISTOGRAM)]
        self.rows_total = self.families[0].Metric(labels=labels)
        self.batch_size = self.families[1].Metric(labels=labels, buckets=[1, 2, 4, 8])

    def execute(self, requests):
        params = [json.loads(r.parameters()) for r in requests]  # (4)!
        self.batch_size.observe(len(requests))
        time.sleep(max(p.get("sleep_ms", 0) for p in params) / 1000)  # a stand-in for real work
        if any(p.get("raise") for p in params):
            raise pb_utils.TritonModelException("asked to raise")  # (5)!
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if np.isnan(x).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(  # (6)!
                    "X contains NaN", pb_utils.TritonError.INVALID_ARG)))
                continue
            self.rows += x.shape[0]
            self.rows_total.increment(x.shape[0])
            batch = np.full((x.shape[0], 1), len(requests), np.int32)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", (x * self.scale).astype(np.float32)), pb_utils.Tensor("BATCH", batch)]))
        return responses

    def finalize(self):
        if self.marker:  # (7)!
            with open(self.marker, "w") as f:
                json.dump({"rows": self.rows}, f)
# --8<-- [end:scaler]


# --8<-- [start:streamer]
class StreamerModel:
    """Decoupled: N → N responses (0, 1, …, N−1), one every DELAY_MS, sent from a thread per request."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(config), "needs decoupled: true"
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.delay = float(params.get("DELAY_MS", "20")) / 1000
        self.family = pb_utils.MetricFamily(name="servelab_streamer_responses_total",
                                            description="Responses sent, by how the stream ended",
                                            kind=pb_utils.MetricFamily.COUNTER)
        self.sent = {end: self.family.Metric(labels={"model": args["model_name"], "end": end})
                     for end in ("done", "cancelled")}
        self.threads = []

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy().reshape(-1)[0])  # (1)!
            sender = request.get_response_sender()
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "N must be >= 0", pb_utils.TritonError.INVALID_ARG)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            thread = threading.Thread(target=self.stream, args=(sender, n), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.threads = [t for t in self.threads if t.is_alive()]
        return None  # (2)!

    def stream(self, sender, n):
        sent, end = 0, "done"
        try:
            for i in range(n):
                if sender.is_cancelled():  # (3)!
                    end = "cancelled"
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("I", np.array([i], np.int32))]))
                sent += 1
                time.sleep(self.delay)
        finally:
            try:
                self.sent[end].increment(sent)
            finally:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)  # (4)!

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
# --8<-- [end:streamer]


# --8<-- [start:bls]
class BlsModel:
    """Calls the scaler four times (one after another, or all at once) and the decoupled streamer once."""

    def initialize(self, args):
        params = {k: v["string_value"] for k, v in
                  json.loads(args["model_config"]).get("parameters", {}).items()}
        self.scaler, self.streamer = params["SCALER"], params["STREAMER"]

    def call(self, part, sleep_ms):
        return pb_utils.InferenceRequest(  # (1)!
            model_name=self.scaler, requested_output_names=["Y", "BATCH"],
            inputs=[pb_utils.Tensor("X", part.reshape(1, -1))], parameters={"sleep_ms": sleep_ms})

    async def execute(self, requests):  # (2)!
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().astype(np.float32)
            options = json.loads(request.parameters())
            calls = [self.call(part, options.get("sleep_ms", 50)) for part in np.array_split(x, 4)]
            start = time.perf_counter()
            if options.get("mode") == "sync":
                answers = [c.exec() for c in calls]  # (3)!
            else:
                answers = await asyncio.gather(*(c.async_exec() for c in calls))  # (4)!
            ms = (time.perf_counter() - start) * 1e3
            failed = next((a for a in answers if a.has_error()), None)
            if failed is not None:
                responses.append(pb_utils.InferenceResponse(error=failed.error()))  # (5)!
                continue
            y = np.concatenate([pb_utils.get_output_tensor_by_name(a, "Y").as_numpy()[0] for a in answers])
            batches = [int(pb_utils.get_output_tensor_by_name(a, "BATCH").as_numpy()[0, 0]) for a in answers]
            stream = pb_utils.InferenceRequest(
                model_name=self.streamer, requested_output_names=["I"],
                inputs=[pb_utils.Tensor("N", np.array([3], np.int32))])
            streamed = [int(pb_utils.get_output_tensor_by_name(r, "I").as_numpy()[0])
                        for r in stream.exec(decoupled=True) if r.output_tensors()]  # (6)!
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", y), pb_utils.Tensor("BATCHES", np.array(batches, np.int32)),
                pb_utils.Tensor("MS", np.array([ms], np.float32)),
                pb_utils.Tensor("STREAMED", np.array(streamed, np.int32))]))
        return responses
# --8<-- [end:bls]


# --8<-- [start:dbls]
class DecoupledBlsModel:
    """A decoupled model whose async execute awaits an async BLS call, then streams its answer back."""

    def initialize(self, args):
        params = {k: v["string_value"] for k, v in
                  json.loads(args["model_config"]).get("parameters", {}).items()}
        self.scaler = params["SCALER"]

    async def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().astype(np.float32)
            try:
                answer = await pb_utils.InferenceRequest(
                    model_name=self.scaler, requested_output_names=["Y"],
                    inputs=[pb_utils.Tensor("X", x.reshape(1, -1))]).async_exec()
                if answer.has_error():
                    raise RuntimeError(answer.error().message())
                y = pb_utils.get_output_tensor_by_name(answer, "Y").as_numpy()[0]
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # report whatever the stub raised, as this request's error
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
# --8<-- [end:dbls]


# --8<-- [start:env_model]
class EnvModel:
    """Answers with the interpreter, prefix and numpy that this model's stub runs."""

    def execute(self, requests):
        import importlib.util

        info = {"python": platform.python_version(), "prefix": sys.prefix, "numpy": np.__version__,
                "torch_importable": importlib.util.find_spec("torch") is not None}
        out = np.array([json.dumps(info).encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("INFO", out)]) for _ in requests]
# --8<-- [end:env_model]


MODEL_PY_HEADER = '''"""Written by servelab.triton.lab2_3.l04_custom_python_backend.render_model_py."""
import asyncio
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

'''


def render_model_py(model_class: type) -> str:
    """model.py = the imports above + the class's source + ``TritonPythonModel = <class>``."""
    return MODEL_PY_HEADER + inspect.getsource(model_class) + f"\n\nTritonPythonModel = {model_class.__name__}\n"


# --8<-- [start:configs]
def parameters(**values: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items())


def scaler_config(name: str = SCALER, scale: float = 2.0, marker: str = "") -> str:
    """No inputs, outputs, batch size or batcher: auto_complete_config fills them in."""
    return (f'name: "{name}"\nbackend: "python"\ninstance_group [ {{ kind: KIND_CPU count: 1 }} ]\n'
            + parameters(SCALE=str(scale), FINALIZE_MARKER=marker))


def streamer_config(name: str = STREAMER, delay_ms: int = 20) -> str:
    return f'''name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "N" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "I" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
''' + parameters(DELAY_MS=str(delay_ms))


def bls_config(name: str = BLS, decoupled: bool = False) -> str:
    outputs = ('{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }' if decoupled else
               '{ name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "BATCHES" data_type: TYPE_INT32 dims: [ 4 ] },'
               ' { name: "MS" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "STREAMED" data_type: TYPE_INT32 dims: [ -1 ] }')
    policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
    return f'''name: "{name}"
backend: "python"
max_batch_size: 0
{policy}input [ {{ name: "X" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {outputs} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
''' + parameters(SCALER=SCALER, STREAMER=STREAMER)


def env_config(name: str, env_path: str = "") -> str:
    text = f'''name: "{name}"
backend: "python"
max_batch_size: 0
output [ {{ name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
'''
    return text + (parameters(EXECUTION_ENV_PATH=env_path) if env_path else "")  # (1)!
# --8<-- [end:configs]


# --8<-- [start:pinned_env]
def pinned_env(requirement: str = PINNED_NUMPY) -> Path:
    """A second environment for the stub, with only ``requirement`` installed: a venv (it has
    ``bin/activate``, which EXECUTION_ENV_PATH needs), made once in the book's cache. ``stub_env`` is the
    helper that also makes the server-wide backend environment; what it runs is shown below."""
    from servelab.runtime.settings import get_settings
    from servelab.runtime.triton_server import stub_env

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = get_settings().cache_dir / "triton" / f"execenv-{requirement.replace('==', '-')}-py{version}"
    return stub_env(env, [requirement])  # no parents: the model sees numpy and nothing of the book's
# --8<-- [end:pinned_env]


# --8<-- [start:write]
def write_models(repository: Path, marker: str = "", env_path: str = "") -> list[str]:
    """The lesson's six model folders; returns their names in load order (the scaler and streamer first:
    BLS models call them)."""
    from servelab.runtime.triton_repo import write_model

    write_model(repository, SCALER, scaler_config(marker=marker), {"model.py": render_model_py(ScalerModel)})
    write_model(repository, STREAMER, streamer_config(), {"model.py": render_model_py(StreamerModel)})
    write_model(repository, BLS, bls_config(), {"model.py": render_model_py(BlsModel)})
    write_model(repository, DBLS, bls_config(DBLS, decoupled=True), {"model.py": render_model_py(DecoupledBlsModel)})
    write_model(repository, ENV_DEFAULT, env_config(ENV_DEFAULT), {"model.py": render_model_py(EnvModel)})
    names = [SCALER, STREAMER, BLS, DBLS, ENV_DEFAULT]
    if env_path:
        write_model(repository, ENV_PINNED, env_config(ENV_PINNED, env_path), {"model.py": render_model_py(EnvModel)})
        names.append(ENV_PINNED)
    return names


def deploy(endpoint, marker: str = "", with_pinned_env: bool = True, only: tuple[str, ...] = ()) -> list[str]:
    """Write the folders into the server's repository and load them, in order (``only``: a subset)."""
    env_path = str(pinned_env()) if with_pinned_env and (not only or ENV_PINNED in only) else ""
    with tempfile.TemporaryDirectory() as tmp:
        names = [n for n in write_models(Path(tmp), marker, env_path) if not only or n in only]
        for name in names:
            endpoint.add_model(Path(tmp) / name, load=False)
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        for name in names:
            client.load_model(name)
    finally:
        client.close()
    return names
# --8<-- [end:write]


# --8<-- [start:call]
def scale(endpoint, x, sleep_ms: int = 0, raise_: bool = False) -> dict:
    """One request to the scaler over HTTP; returns Y and the batch it was executed in, or the error."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    x = np.asarray(x, np.float32).reshape(1, -1)
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    options = {"sleep_ms": sleep_ms, **({"raise": True} if raise_ else {})}
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        result = client.infer(SCALER, [tensor], parameters=options)  # (1)!
    except InferenceServerException as exc:
        return {"status": int(exc.status() or 0), "error": exc.message()}
    finally:
        client.close()
    return {"status": 200, "y": result.as_numpy("Y")[0].tolist(), "batch": int(result.as_numpy("BATCH")[0, 0])}
# --8<-- [end:call]


def auto_completed(endpoint, name: str = SCALER, write: bool = True) -> dict:
    """The configuration Triton holds for a model after auto-complete, next to what the file said."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    client = endpoint.http_client()
    try:
        loaded = client.get_model_config(name)
    finally:
        client.close()
    in_file = json_format.MessageToDict(text_format.Parse(scaler_config(name), model_config_pb2.ModelConfig()),
                                      preserving_proto_field_name=True)

    def show(config: dict, key: str) -> str:
        value = config.get(key)
        if value in (None, [], 0, "0"):
            return "（沒有）"
        if key in ("input", "output"):
            return ", ".join(f'{t["name"]} {t["data_type"]} {[int(d) for d in t["dims"]]}' for t in value)
        if key == "dynamic_batching":
            return f'有（max_queue_delay_microseconds = {value.get("max_queue_delay_microseconds", 0)}）'
        return str(value)

    rows = [{"field": key, "in_file": show(in_file, key), "loaded": show(loaded, key)}
            for key in ("max_batch_size", "input", "output", "dynamic_batching")]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "auto_complete", rows, {"field": "欄位", "in_file": "config.pbtxt 寫的",
                                                      "loaded": "載入後（GET /v2/models/…/config）"})
    return loaded


# --8<-- [start:errors]
def in_one_batch(endpoint, rows: list[list[float]], raise_: bool = False, block_ms: int = 600) -> list[dict]:
    """Send ``rows`` as separate requests that queue behind a ``block_ms`` request, so the dynamic batcher
    puts them into one execute() call; ``raise_`` makes the first of them ask the model to raise."""
    executes = batch_histogram(endpoint)[0]
    with ThreadPoolExecutor(len(rows) + 1) as pool:
        blocker = pool.submit(scale, endpoint, [0.0], block_ms)
        deadline = time.monotonic() + 10
        while batch_histogram(endpoint)[0] == executes and time.monotonic() < deadline:
            time.sleep(0.01)  # (1)!
        futures = [pool.submit(scale, endpoint, row, 0, raise_ and i == 0) for i, row in enumerate(rows)]
        blocker.result()
        return [f.result() for f in futures]


def batch_histogram(endpoint) -> tuple[float, float]:
    """(execute() calls, requests) so far, from the scaler's own histogram."""
    samples = custom_metrics(endpoint)
    count = sum(v for k, v in samples.items() if k.startswith("servelab_scaler_batch_requests_count"))
    total = sum(v for k, v in samples.items() if k.startswith("servelab_scaler_batch_requests_sum"))
    return count, total


@experiment(ignore=("endpoint",))
def error_isolation(endpoint, write: bool = True) -> list[dict]:
    """TritonError for one request vs an exception from execute(): what happens to the rest of the batch."""
    cases = {"回應裡放 TritonError（INVALID_ARG）": ([[1.0, 2.0], [float("nan"), 1.0], [3.0, 4.0]], False),
             "execute() 拋出例外": ([[5.0, 6.0], [1.0, 2.0], [3.0, 4.0]], True)}
    out = []
    for case, (rows, raise_) in cases.items():
        calls_before, requests_before = batch_histogram(endpoint)
        results = in_one_batch(endpoint, rows, raise_)
        calls, requests = (a - b for a, b in zip(batch_histogram(endpoint), (calls_before, requests_before)))
        out.append({"case": case, "executes": int(calls), "requests": int(requests),
                    "statuses": " / ".join(str(r["status"]) for r in results),
                    "failed": sum(r["status"] != 200 for r in results),
                    "error": next((r["error"].splitlines()[0] for r in results if r["status"] != 200), "")})
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "error_isolation", out, {
            "case": "錯誤的寫法", "executes": "execute() 次數", "requests": "請求數（含佔位的請求）",
            "statuses": "三個請求的 HTTP 狀態", "failed": "失敗的請求", "error": "用戶端收到的錯誤"})
    return out
# --8<-- [end:errors]


# --8<-- [start:metrics]
def custom_metrics(endpoint) -> dict[str, float]:
    """This lesson's custom metric samples from Triton's /metrics (their names start with servelab_)."""
    samples = {}
    for line in endpoint.metrics_text().splitlines():
        if line.startswith("servelab_") and PREFIX in line:
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples
# --8<-- [end:metrics]


def write_metrics(samples: dict[str, float]) -> list[dict]:
    """The scaler's samples after the error experiment, as a results table (buckets left out)."""
    from servelab.runtime.results import write_results

    rows = [{"sample": k, "value": v} for k, v in sorted(samples.items())
            if k.startswith("servelab_scaler") and "_bucket" not in k]
    write_results(LESSON, "custom_metrics", rows, {"sample": "樣本（名稱與標籤）", "value": "值"})
    return rows


# --8<-- [start:stream]
def stream(endpoint, n: int, cancel_after: int | None = None, name: str = STREAMER) -> dict:
    """Stream N responses over gRPC; with ``cancel_after``, stop the stream (cancelling the request)
    after that many responses."""
    import queue

    import tritonclient.grpc as grpcclient

    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(endpoint.grpc)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    tensor = grpcclient.InferInput("N", [1], "INT32")
    tensor.set_data_from_numpy(np.array([n], np.int32))
    client.async_stream_infer(name, [tensor], enable_empty_final_response=True)  # (1)!
    values, error, final = [], None, False
    start = time.perf_counter()
    while not final and time.perf_counter() - start < 60:
        result, err = received.get(timeout=60)
        if err is not None:
            error, final = str(err), True
            break
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        if result.as_numpy("I") is not None:
            values.append(int(result.as_numpy("I")[0]))
        if cancel_after is not None and len(values) >= cancel_after:
            client.stop_stream(cancel_requests=True)  # (2)!
            break
    client.stop_stream()
    client.close()
    return {"values": values, "final_seen": final, "error": error}
# --8<-- [end:stream]


def wait_for_metric(endpoint, key_part: str, at_least: float, timeout_s: float = 10.0) -> float:
    """A metric sample (by a substring of its name and labels) once it reaches ``at_least``."""
    deadline = time.monotonic() + timeout_s
    value = 0.0
    while time.monotonic() < deadline:
        value = sum(v for k, v in custom_metrics(endpoint).items() if key_part in k)
        if value >= at_least:
            break
        time.sleep(0.1)
    return value


@experiment(ignore=("endpoint",))
def cancellation(endpoint, n: int = 100, cancel_after: int = 3, write: bool = True) -> dict:
    """The streamer's own counters before and after a stream cancelled after ``cancel_after`` responses."""
    before = wait_for_metric(endpoint, 'end="cancelled"', 0.0)
    run = stream(endpoint, n, cancel_after=cancel_after)
    after = wait_for_metric(endpoint, 'end="cancelled"', before + 1)
    row = {"requested": n, "cancel_after": cancel_after, "received": len(run["values"]),
           "sent_by_model": after - before}
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "cancellation", [row], {
            "requested": "要求的回應數 N", "cancel_after": "用戶端讀幾個就取消", "received": "用戶端收到",
            "sent_by_model": "模型實際送出（自訂指標）"})
    return row


# --8<-- [start:bls_call]
def bls(endpoint, x, mode: str = "async", sleep_ms: int = 50, name: str = BLS) -> dict:
    """One request to the BLS model: ``mode`` = "sync" (exec, one after another) or "async" (gather)."""
    import tritonclient.http as httpclient

    x = np.asarray(x, np.float32)
    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        result = client.infer(name, [tensor], parameters={"mode": mode, "sleep_ms": sleep_ms})
    finally:
        client.close()
    return {"y": result.as_numpy("Y").tolist(), "batches": result.as_numpy("BATCHES").tolist(),
            "ms": float(result.as_numpy("MS")[0]), "streamed": result.as_numpy("STREAMED").tolist()}
# --8<-- [end:bls_call]


@experiment(ignore=("endpoint",))
def bls_sync_vs_async(endpoint, rounds: int = 5, sleep_ms: int = 50, write: bool = True) -> list[dict]:
    """The same four scaler calls, sequential (exec) and concurrent (async_exec + gather), ``rounds`` each."""
    x = np.arange(8, dtype=np.float32)
    rows = []
    for mode in ("sync", "async"):
        runs = [bls(endpoint, x, mode, sleep_ms) for _ in range(rounds)]
        ms = sorted(r["ms"] for r in runs)
        rows.append({"mode": mode, "calls": 4, "sleep_ms": sleep_ms, "rounds": rounds,
                     "median_ms": ms[len(ms) // 2], "max_ms": ms[-1],
                     "executes": float(np.mean([len(set_of_batches(r["batches"])) for r in runs])),
                     "y_ok": all(r["y"] == (x * 2).tolist() for r in runs),
                     "streamed": runs[0]["streamed"]})
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "bls_sync_vs_async", rows, {
            "mode": "BLS 呼叫方式", "calls": "呼叫次數", "sleep_ms": "每次 execute 的工作（ms）",
            "rounds": "重複", "median_ms": "中位數（ms）", "max_ms": "最大（ms）",
            "executes": "scaler 的 execute 次數（平均）", "y_ok": "結果正確", "streamed": "串流模型的回應"})
    return rows


def set_of_batches(batches: list[int]) -> list[int]:
    """Calls' batch sizes → the executes they imply: the b calls of one execute each report b, so a size
    seen c times stands for c / b executes (in any order: gathered calls come back in no fixed order).
    [1, 3, 3, 3] is two executes [1, 3]; [1, 1, 1, 1] four; [2, 1, 2, 1] three [1, 1, 2]."""
    from collections import Counter

    return sorted(b for b, count in Counter(batches).items() for _ in range(round(count / b)))


def decoupled_async_bls(endpoint, x=(1.0, 2.0)) -> dict:
    """Async BLS inside a decoupled model: the README's Limitation list says it is unsupported."""
    import queue

    import tritonclient.grpc as grpcclient

    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(endpoint.grpc)
    client.start_stream(callback=lambda result, error: received.put((result, error)))
    tensor = grpcclient.InferInput("X", [len(x)], "FP32")
    tensor.set_data_from_numpy(np.asarray(x, np.float32))
    client.async_stream_infer(DBLS, [tensor])
    result, error = received.get(timeout=60)
    client.stop_stream()
    client.close()
    if error is not None:
        return {"ok": False, "error": error.message() if hasattr(error, "message") else str(error)}
    return {"ok": True, "y": result.as_numpy("Y").tolist()}


# --8<-- [start:envs]
def env_info(endpoint, name: str) -> dict:
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        result = client.infer(name, [])
    finally:
        client.close()
    return json.loads(result.as_numpy("INFO")[0])


def environments(endpoint, write: bool = True) -> list[dict]:
    """The same EnvModel in the book's backend environment and in the pinned one."""
    from servelab.runtime.settings import get_settings

    cache = str(get_settings().cache_dir)
    rows = []
    for name, how in ((ENV_DEFAULT, "本書的後端環境（PATH 上的 venv）"), (ENV_PINNED, "EXECUTION_ENV_PATH")):
        info = env_info(endpoint, name)
        rows.append({"model": name, "how": how, "python": info["python"], "numpy": info["numpy"],
                     "prefix": os.path.relpath(info["prefix"], cache),
                     "torch_importable": info["torch_importable"]})
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "environments", rows, {
            "model": "模型", "how": "環境從哪裡來", "python": "Python", "numpy": "numpy",
            "prefix": "sys.prefix（本書快取資料夾之下）", "torch_importable": "找得到 torch"})
    return rows
# --8<-- [end:envs]


def unload_all(endpoint) -> None:
    """Unload the lesson's models, callers first: the BLS models have left (none of them UNLOADING) before
    the scaler and streamer they call are asked to unload. Lab 2.2's ``unload_quietly`` waits for that."""
    from servelab.triton.lab2_2.l03_model_lifecycle_management import unload_quietly

    unload_quietly(endpoint, DBLS, BLS)
    unload_quietly(endpoint, ENV_PINNED, ENV_DEFAULT, STREAMER, SCALER)


def wait_for_file(path: Path, timeout_s: float = 20.0) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.1)
    return None


# --8<-- [start:exercises]
def exercise_scale_config(scale_value: float) -> str:
    """Exercise 1: a config that makes the scaler triple its input (the rest is auto-completed)."""
    return scaler_config(name=PREFIX + "triple", scale=scale_value)


def exercise_executes(batches: list[int]) -> int:
    """Exercise 2: how many execute() calls served four BLS calls with these BATCH values?"""
    from collections import Counter

    return round(sum(count / b for b, count in Counter(batches).items()))
# --8<-- [end:exercises]


@experiment(ignore=("endpoint",))
def tour(endpoint=None) -> dict:
    """Everything the page shows, in one pass over one set of loaded models (test and notebook share it).
    Without ``endpoint`` it starts a Triton of its own: a model whose unload hangs would otherwise leave a
    shared server not ready (``/v2/health/ready`` 400) for the rest of its life (seen once in CI)."""
    if endpoint is None:
        from servelab.runtime import triton_server

        with tempfile.TemporaryDirectory() as tmp, triton_server(Path(tmp)) as own:
            return _tour(own)
    return _tour(endpoint)


def _tour(endpoint) -> dict:
    marker = Path(tempfile.mkdtemp(prefix="servelab-l04py-")) / "finalized.json"
    unload_all(endpoint)  # a scaler left by the page's shell block would carry its counters over
    deploy(endpoint, marker=str(marker))
    try:
        out = {"config": auto_completed(endpoint), "first": scale(endpoint, [1.0, 2.0, 3.0]),
               "errors": error_isolation(endpoint), "metrics_after_errors": custom_metrics(endpoint),
               "stream": stream(endpoint, 5), "stream_error": stream(endpoint, -1),
               "cancel": cancellation(endpoint), "bls": bls_sync_vs_async(endpoint),
               "decoupled_async_bls": decoupled_async_bls(endpoint), "envs": environments(endpoint)}
        write_metrics(out["metrics_after_errors"])
    finally:
        unload_all(endpoint)
    out["finalized"] = wait_for_file(marker)
    client = endpoint.http_client()
    try:
        out["left_loaded"] = sorted(m["name"] for m in client.get_model_repository_index()
                                    if m["name"].startswith(PREFIX) and m.get("state") == "READY")
    finally:
        client.close()
    return out


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_3/l04_custom_python_backend``."""
    out = tour()  # on a Triton of its own
    print(json.dumps(out, ensure_ascii=False, indent=1, default=str))
    return 0
# --8<-- [end:main]


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import asyncio
import inspect
import json
import numpy as np
import os
import platform
import sys
import tempfile
import threading
import time
try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None
from servelab.runtime.memo import experiment
from servelab.triton.lab2_3.l04_custom_python_backend import (
    auto_completed, batch_histogram, bls, BLS, bls_config, bls_sync_vs_async, BlsModel, cancellation, custom_metrics,
    DBLS, decoupled_async_bls, DecoupledBlsModel, deploy, env_config, ENV_DEFAULT, env_info, ENV_PINNED,
    environments, EnvModel, error_isolation, write_metrics, exercise_executes, exercise_scale_config, in_one_batch,
    LESSON, LOAD_TIMEOUT_S, main, MODEL_PY_HEADER, parameters, pinned_env, PINNED_NUMPY, PREFIX,
    render_model_py, scale, SCALER, scaler_config, ScalerModel, set_of_batches, stream, STREAMER,
    streamer_config, StreamerModel, tour, unload_all, wait_for_file, wait_for_metric, write_models
)
# --8<-- [end:context]


if __name__ == "__main__":
    if sys.argv[1:2] in (["deploy"], ["unload"]):  # the page's shell block, against `servelab serve triton`
        from servelab.runtime import triton_endpoint
        from servelab.triton.lab2_3.l03_vllm_backend_integration import serve_repository

        with triton_endpoint(serve_repository()) as ep:
            if sys.argv[1] == "deploy":
                print(deploy(ep, only=(SCALER, STREAMER)))
            else:
                unload_all(ep)
    else:
        raise SystemExit(main())
