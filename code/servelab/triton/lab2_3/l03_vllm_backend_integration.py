"""03-vLLM_Backend_Integration — vLLM inside Triton, with the protocol of Triton's official vLLM backend.

This file has two roles (as in Lab 2.1 lesson 03):

1. Triton's ``model.py``: :func:`write_backend_model` copies the part of this file above
   ``END_OF_MODEL_PY`` to ``<repo>/<name>/1/model.py``. That part imports only the standard library and
   numpy at the top; vLLM and ``triton_python_backend_utils`` are imported inside the methods.
2. The lesson module (``servelab.triton.lab2_3.l03_vllm_backend_integration``): it writes the model folder
   (``model.json`` + ``config.pbtxt``), sends the same request to Triton and to ``vllm serve``, and
   measures both on the same engine arguments and the same load.
"""

import json
import locale
import os
import queue
import threading
import time

# The stub embeds Python without the environment's locale, and vLLM inside the stub needs an in-process
# engine core (see servelab/runtime/triton_models/vllm_model.py, which this model extends).
locale.setlocale(locale.LC_ALL, "C.UTF-8")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np  # noqa: E402

# --8<-- [start:protocol]
INPUTS = [  # the official vllm_backend's inputs that this model implements (all but text_input optional)
    {"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]},
    {"name": "stream", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
    {"name": "sampling_parameters", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
    {"name": "exclude_input_in_output", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
    {"name": "return_finish_reason", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
    {"name": "return_num_output_tokens", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
]
OUTPUTS = [
    {"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]},
    {"name": "finish_reason", "data_type": "TYPE_STRING", "dims": [-1]},
    {"name": "num_output_tokens", "data_type": "TYPE_UINT32", "dims": [-1]},
]
SAMPLING_KEYS = {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "min_tokens",
                 "n", "presence_penalty", "frequency_penalty", "repetition_penalty"}
# --8<-- [end:protocol]


class TritonPythonModel:
    """vLLM's ``LLMEngine`` in the Python backend, decoupled: one response per new text chunk."""

    # --8<-- [start:auto_complete]
    @classmethod
    def auto_complete_config(cls, config):
        present = {t["name"] for t in config.as_dict()["input"] + config.as_dict()["output"]}
        for spec in INPUTS:
            if spec["name"] not in present:
                config.add_input(spec)
        for spec in OUTPUTS:
            if spec["name"] not in present:
                config.add_output(spec)
        config.set_model_transaction_policy(dict(decoupled=True))  # (1)!
        config.set_max_batch_size(0)  # (2)!
        return config
    # --8<-- [end:auto_complete]

    # --8<-- [start:initialize]
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(config), "this model must be decoupled"
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "model.json")) as file:  # (1)!
            engine_args = json.load(file)
        for key, value in engine_args.pop("env", {}).items():
            os.environ.setdefault(key, str(value))
        gpu_ids = config.get("parameters", {}).get("GPU_DEVICE_IDS", {}).get("string_value")
        if args["model_instance_kind"] == "MODEL" and gpu_ids:  # as the official backend: KIND_MODEL
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids  # picks its GPUs before CUDA starts
        from vllm import EngineArgs, LLMEngine

        self.engine = LLMEngine.from_engine_args(EngineArgs(**engine_args))  # (2)!
        self.metrics = self.custom_metrics(pb_utils, config, args)
        self.incoming = queue.Queue()  # execute() → engine thread
        self.live = {}  # request id → (response sender, request state)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.engine_loop, daemon=True)  # (3)!
        self.thread.start()
    # --8<-- [end:initialize]

    # --8<-- [start:metrics]
    @staticmethod
    def custom_metrics(pb_utils, config, args):
        """Counters named as the official backend names them, when REPORT_CUSTOM_METRICS is "true"."""
        params = config.get("parameters", {})
        if params.get("REPORT_CUSTOM_METRICS", {}).get("string_value", "").lower() != "true":
            return None
        labels = {"model": args["model_name"], "version": args["model_version"]}
        families = {
            "prompt": pb_utils.MetricFamily("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
                                            pb_utils.MetricFamily.COUNTER),
            "generation": pb_utils.MetricFamily("vllm:generation_tokens_total",
                                                "Number of generation tokens processed.",
                                                pb_utils.MetricFamily.COUNTER),
            "running": pb_utils.MetricFamily("vllm:num_requests_running",
                                             "Number of requests currently running.", pb_utils.MetricFamily.GAUGE),
        }
        return {"families": families, **{k: f.Metric(labels=labels) for k, f in families.items()}}
    # --8<-- [end:metrics]

    # --8<-- [start:execute]
    def execute(self, requests):
        for request in requests:  # (1)!
            self.incoming.put(request)
        return None  # (2)!
    # --8<-- [end:execute]

    # --8<-- [start:parse]
    def parse(self, request):
        """A Triton request → (prompt, SamplingParams, state); raises ValueError on a bad request."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        pb = self.pb

        def flag(name, default=False):
            tensor = pb.get_input_tensor_by_name(request, name)
            return bool(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else default

        prompt = pb.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        tensor = pb.get_input_tensor_by_name(request, "sampling_parameters")
        if tensor is not None:
            raw = tensor.as_numpy().reshape(-1)[0]
            params = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        else:  # the generate endpoint's "parameters" object arrives as request parameters
            params = json.loads(request.parameters() or "{}")
        stream = flag("stream", bool(params.pop("stream", False)))
        unknown = set(params) - SAMPLING_KEYS - {"lora_name"}
        if unknown:
            raise ValueError(f"unknown sampling parameters: {sorted(unknown)}")
        if params.pop("lora_name", None) is not None:
            raise ValueError("LoRA feature is not enabled.")  # the official backend's message
        kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY  # (1)!
        sampling = SamplingParams(**params, output_kind=kind)
        state = {"stream": stream, "prompt": prompt, "started": time.monotonic(),
                 "prepend": not stream and not flag("exclude_input_in_output"),  # (2)!
                 "finish_reason": flag("return_finish_reason"),
                 "num_output_tokens": flag("return_num_output_tokens")}
        return prompt, sampling, state
    # --8<-- [end:parse]

    # --8<-- [start:engine_loop]
    def engine_loop(self):
        count = 0
        while not self.stopping.is_set():
            idle = not self.engine.has_unfinished_requests()
            try:  # block briefly only when the engine has nothing to do
                request = self.incoming.get(timeout=0.05) if idle else self.incoming.get_nowait()
            except queue.Empty:
                request = None
            while request is not None:
                count += 1
                self.admit(request, f"triton-{count}")
                try:
                    request = self.incoming.get_nowait()
                except queue.Empty:
                    request = None
            self.drop_cancelled()  # (1)!
            if self.engine.has_unfinished_requests():
                for output in self.engine.step():  # (2)!
                    self.send(output)

    def admit(self, request, request_id):
        sender = request.get_response_sender()
        try:
            prompt, sampling, state = self.parse(request)
            self.engine.add_request(request_id, prompt, sampling)
        except Exception as error:  # a bad request fails alone, the others go on  # (3)!
            response = self.pb.InferenceResponse(error=self.pb.TritonError(f"Error generating stream: {error}"))
            sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        self.live[request_id] = (sender, state)
        if self.metrics:
            self.metrics["running"].set(len(self.live))

    def drop_cancelled(self):
        for request_id, (sender, state) in list(self.live.items()):
            if sender.is_cancelled():  # (4)!
                self.engine.abort_request([request_id])
                del self.live[request_id]
                if self.metrics:
                    self.metrics["running"].set(len(self.live))
                error = self.pb.TritonError("Request was cancelled", self.pb.TritonError.CANCELLED)
                sender.send(self.pb.InferenceResponse(error=error),
                            flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    # --8<-- [end:engine_loop]

    # --8<-- [start:send]
    def send(self, output):
        if output.request_id not in self.live:
            return
        sender, state = self.live[output.request_id]
        completion = output.outputs[0]
        text = completion.text
        if state["prepend"]:
            text = state["prompt"] + text
        tensors = [self.pb.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))]
        if state["finish_reason"] and output.finished:
            tensors.append(self.pb.Tensor("finish_reason", np.array([str(completion.finish_reason).encode()],
                                                                    dtype=np.object_)))
        if state["num_output_tokens"]:
            tensors.append(self.pb.Tensor("num_output_tokens", np.array([len(completion.token_ids)], np.uint32)))
        flags = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if output.finished else 0
        if self.metrics:  # 指標先更新、再送回應：用戶端收到最後一個回應時，指標已經算進這個請求
            self.metrics["generation"].increment(len(completion.token_ids))
        if output.finished:
            del self.live[output.request_id]
            if self.metrics:
                self.metrics["prompt"].increment(len(output.prompt_token_ids or ()))
                self.metrics["running"].set(len(self.live))
        sender.send(self.pb.InferenceResponse(output_tensors=tensors), flags=flags)  # (1)!
    # --8<-- [end:send]

    def finalize(self):
        self.stopping.set()
        self.thread.join(timeout=30)
        self.metrics = None
        del self.engine
# ---- end of model.py ----


# --8<-- [start:context]
import json  # noqa: E402,F811
import os  # noqa: E402
import time  # noqa: E402,F811
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from importlib.resources import files  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402,F811

from servelab.runtime.memo import experiment  # noqa: E402
from servelab.runtime.model import SERVED_NAME  # noqa: E402

LESSON = "triton/lab2_3/l03_vllm_backend_integration"
END_OF_MODEL_PY = "# ---- end of model.py ----"
MODEL_NAME = "vllm_backend"  # the model folder's name in Triton's repository
PROMPT = "The capital of France is"
LOAD_TIMEOUT_S = 600.0


def triton_url() -> str:
    return os.environ.get("SERVELAB_TRITON_URL", "http://127.0.0.1:8100").rstrip("/")


def vllm_url() -> str:
    return os.environ.get("SERVELAB_VLLM_URL", "http://127.0.0.1:8000").rstrip("/")


def triton_grpc() -> str:
    return os.environ.get("SERVELAB_TRITON_GRPC", "127.0.0.1:8101")


def triton_metrics_url() -> str:
    return os.environ.get("SERVELAB_TRITON_METRICS_URL", "http://127.0.0.1:8102").rstrip("/")


def metric_value(text: str, name: str, model: str = MODEL_NAME) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} for model {model} not in /metrics")
# --8<-- [end:context]


# --8<-- [start:write_model]
def model_source() -> str:
    """The model.py part of this lesson's module (the file, cut at END_OF_MODEL_PY)."""
    text = (files("servelab.triton.lab2_3") / "l03_vllm_backend_integration.py").read_text()
    return text[: text.index(END_OF_MODEL_PY) + len(END_OF_MODEL_PY)] + "\n"


def model_json(settings=None, **overrides) -> dict:
    """The engine arguments, as the official backend reads them from ``1/model.json``."""
    from servelab.runtime.vllm_engine import engine_env, engine_kwargs

    args = {**engine_kwargs(settings), **overrides}
    args.pop("served_model_name", None)  # Triton names the model: the folder name
    return {**args, "env": engine_env(settings)}


def config_pbtxt(name: str = MODEL_NAME, metrics: bool = True, gpu_ids: str = "") -> str:
    """As short as the official sample: auto_complete_config fills in inputs, outputs and decoupled."""
    report = "true" if metrics else "false"
    gpus = f'\nparameters {{ key: "GPU_DEVICE_IDS" value: {{ string_value: "{gpu_ids}" }} }}' if gpu_ids else ""
    return f'''
name: "{name}"
backend: "python"
instance_group [ {{ count: 1 kind: KIND_MODEL }} ]
parameters {{ key: "REPORT_CUSTOM_METRICS" value: {{ string_value: "{report}" }} }}{gpus}
'''


def write_backend_model(repository: Path, name: str = MODEL_NAME, settings=None, gpu_ids: str = "",
                        **overrides) -> Path:
    from servelab.runtime.triton_repo import write_model

    return write_model(repository, name, config_pbtxt(name, gpu_ids=gpu_ids), {
        "model.py": model_source(),
        "model.json": json.dumps(model_json(settings, **overrides), indent=2),
    })
# --8<-- [end:write_model]


def gpu_placement() -> dict:
    """On a GPU box ``vllm serve`` (the session's) holds GPU 0 at its gpu_memory_utilization: Triton's
    engine goes to GPU 1 when there is one, else shares GPU 0 with a smaller memory fraction."""
    import torch

    if not torch.cuda.is_available():
        return {}
    if torch.cuda.device_count() >= 2:
        return {"gpu_ids": "1"}
    return {"gpu_memory_utilization": 0.1}


def deploy(endpoint, name: str = MODEL_NAME) -> str:
    """Write and load the model into ``endpoint`` unless it is already ready there (idempotent)."""
    from servelab.runtime.triton_server import wait_model_ready

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S, connection_timeout=LOAD_TIMEOUT_S)
    if client.is_model_ready(name):
        return name
    write_backend_model(endpoint.repository, name, **gpu_placement())
    client.load_model(name)
    wait_model_ready(endpoint, name, LOAD_TIMEOUT_S)
    return name


# --8<-- [start:same_request]
def generate_triton(prompt: str = PROMPT, max_tokens: int = 8, name: str = MODEL_NAME, **extra) -> dict:
    """POST /v2/models/<name>/generate: one JSON answer (a decoupled model may send exactly one here)."""
    body = {"text_input": prompt, "exclude_input_in_output": True,
            "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0}), **extra}
    r = httpx.post(f"{triton_url()}/v2/models/{name}/generate", json=body, timeout=120)
    return {"status": r.status_code, **r.json()}


def generate_vllm(prompt: str = PROMPT, max_tokens: int = 8) -> dict:
    """POST /v1/completions on ``vllm serve``: the same prompt (no chat template), the same sampling."""
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    r = httpx.post(f"{vllm_url()}/v1/completions", json=body, timeout=120)
    return {"status": r.status_code, **r.json()}
# --8<-- [end:same_request]


# --8<-- [start:stream]
def stream_triton(prompt: str = PROMPT, max_tokens: int = 16, name: str = MODEL_NAME) -> dict:
    """generate_stream (SSE): one event per response the model sends; times of arrival in seconds."""
    body = {"text_input": prompt, "stream": True,
            "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})}
    return _sse(f"{triton_url()}/v2/models/{name}/generate_stream", body,
                lambda event: event.get("text_output", ""))


def stream_vllm(prompt: str = PROMPT, max_tokens: int = 16) -> dict:
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    return _sse(f"{vllm_url()}/v1/completions", body,
                lambda event: event["choices"][0]["text"] if event.get("choices") else "")


def _sse(url: str, body: dict, text_of) -> dict:
    start, times, pieces = time.perf_counter(), [], []
    with httpx.stream("POST", url, json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            piece = text_of(event)
            if piece:
                times.append(time.perf_counter() - start)
                pieces.append(piece)
    return {"text": "".join(pieces), "chunks": len(pieces), "times": times}
# --8<-- [end:stream]


# --8<-- [start:benchmark]
def one_side(send, clients: int, per_client: int, max_tokens: int) -> dict:
    """``clients`` threads, each sending ``per_client`` streaming requests back to back."""
    def client(index: int) -> list[dict]:
        return [send(f"{PROMPT} (request {index}.{k})", max_tokens) for k in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = [run for batch in pool.map(client, range(clients)) for run in batch]
    wall = time.perf_counter() - start
    ttft = [run["times"][0] * 1000 for run in runs]
    itl = [(b - a) * 1000 for run in runs for a, b in zip(run["times"], run["times"][1:])]
    return {"requests": len(runs), "chunks_per_request": float(np.mean([r["chunks"] for r in runs])),
            "ttft_ms_p50": float(np.median(ttft)), "itl_ms_p50": float(np.median(itl)),
            "itl_ms_p90": float(np.percentile(itl, 90)),
            "tokens_per_s": len(runs) * max_tokens / wall, "wall_s": wall}


@experiment
def side_by_side(clients: int = 4, per_client: int = 2, max_tokens: int = 10, write: bool = True) -> list[dict]:
    """The same load against Triton (this model) and ``vllm serve``, both on the profile's engine args."""
    from servelab.triton.lab2_3.l03_vllm_backend_integration import (gpu_placement, model_json, stream_triton,
                                                                       stream_vllm)  # defined above
    stream_triton(max_tokens=2), stream_vllm(max_tokens=2)  # warm both paths once
    rows = []
    for server, send in (("Triton + vLLM（本書的 vllm_backend 相容模型）", lambda p, n: stream_triton(p, n)),
                         ("vllm serve", lambda p, n: stream_vllm(p, n))):
        rows.append({"server": server, "clients": clients, "max_tokens": max_tokens,
                     **one_side(send, clients, per_client, max_tokens)})
    if write:
        from servelab.runtime.results import write_results
        from servelab.runtime.settings import get_settings

        name = "side_by_side_gpu" if get_settings().profile == "gpu" else "side_by_side"
        write_results(LESSON, name, rows, {
            "server": "伺服器", "clients": "並行用戶端", "requests": "請求數", "max_tokens": "每請求 token",
            "ttft_ms_p50": "TTFT p50 (ms)", "itl_ms_p50": "ITL p50 (ms)", "itl_ms_p90": "ITL p90 (ms)",
            "tokens_per_s": "輸出 tokens/s"}, extra={"engine_args": model_json(), "placement": gpu_placement()})
    return rows
# --8<-- [end:benchmark]


# --8<-- [start:cancel]
def running_and_generated(name: str = MODEL_NAME) -> tuple[float, float]:
    text = httpx.get(f"{triton_metrics_url()}/metrics", timeout=10).text
    return (metric_value(text, "vllm:num_requests_running", name),
            metric_value(text, "vllm:generation_tokens_total", name))


def settle(name: str = MODEL_NAME, timeout_s: float = 120.0) -> float:
    """Wait until the model runs no request; the generated-token counter then."""
    deadline = time.monotonic() + timeout_s
    while True:
        running, generated = running_and_generated(name)
        if running == 0 or time.monotonic() > deadline:
            return generated
        time.sleep(0.2)


def stop_after(transport: str, after_chunks: int = 2, max_tokens: int = 48, name: str = MODEL_NAME) -> dict:
    """Stop reading a stream after ``after_chunks`` responses: HTTP closes the connection, gRPC calls
    ``stop_stream(cancel_requests=True)``. How many tokens did the engine still generate?"""
    before = settle(name)
    params = json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
    if transport == "http":
        body = {"text_input": PROMPT, "stream": True, "sampling_parameters": params}
        with httpx.stream("POST", f"{triton_url()}/v2/models/{name}/generate_stream", json=body,
                          timeout=120) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data:")
                if seen >= after_chunks:
                    break  # (1)!
    else:
        import queue as queues

        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(triton_grpc())
        results = queues.Queue()
        client.start_stream(callback=lambda result, error: results.put(error))
        inputs = []
        for key, value, dtype in (("text_input", PROMPT.encode(), "BYTES"), ("stream", True, "BOOL"),
                                  ("sampling_parameters", params.encode(), "BYTES")):
            tensor = grpcclient.InferInput(key, [1], dtype)
            tensor.set_data_from_numpy(np.array([value], dtype=np.object_ if dtype == "BYTES" else bool))
            inputs.append(tensor)
        client.async_stream_infer(name, inputs)
        seen = sum(results.get(timeout=120) is None for _ in range(after_chunks))
        client.stop_stream(cancel_requests=True)  # (2)!
        client.close()
    return {"transport": transport, "chunks_read": seen, "max_tokens": max_tokens,
            "tokens_generated": int(settle(name) - before)}
# --8<-- [end:cancel]


@experiment
def cancellation(max_tokens: int = 48, write: bool = True) -> list[dict]:
    rows = [stop_after(transport, after_chunks=2, max_tokens=max_tokens) for transport in ("grpc", "http")]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "cancellation", rows, {
            "transport": "協定", "chunks_read": "讀到的回應數", "max_tokens": "max_tokens",
            "tokens_generated": "引擎實際生成的 token"})
    return rows


# --8<-- [start:exercise_parameters]
def generate_with_parameters(prompt: str = PROMPT, max_tokens: int = 4, name: str = MODEL_NAME) -> dict:
    """The official README's form: sampling settings in the generate extension's "parameters" object."""
    body = {"text_input": prompt, "exclude_input_in_output": True,
            "parameters": {"max_tokens": max_tokens, "temperature": 0}}
    r = httpx.post(f"{triton_url()}/v2/models/{name}/generate", json=body, timeout=120)
    return {"status": r.status_code, **r.json()}
# --8<-- [end:exercise_parameters]


# --8<-- [start:exercise_tokens]
def tokens_per_response(max_tokens: int = 6, name: str = MODEL_NAME) -> list[int]:
    """Stream with return_num_output_tokens: how many tokens does each response carry?"""
    body = {"text_input": PROMPT, "stream": True, "return_num_output_tokens": True,
            "sampling_parameters": json.dumps({"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})}
    counts = []
    with httpx.stream("POST", f"{triton_url()}/v2/models/{name}/generate_stream", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                counts.append(json.loads(line[5:])["num_output_tokens"])
    return counts
# --8<-- [end:exercise_tokens]


def loaded_config(name: str = MODEL_NAME) -> dict:
    return httpx.get(f"{triton_url()}/v2/models/{name}/config", timeout=30).json()


def serve_repository() -> Path:
    """The folder ``servelab serve triton`` serves when started without --repo."""
    from servelab.runtime.settings import get_settings

    repo = get_settings().cache_dir / "triton" / "repository"
    repo.mkdir(parents=True, exist_ok=True)
    return repo


def main() -> None:
    from servelab.runtime import triton_endpoint, vllm_endpoint

    repo = serve_repository()
    with vllm_endpoint() as vllm, triton_endpoint(repo) as triton:
        os.environ.setdefault("SERVELAB_VLLM_URL", vllm.base_url)
        os.environ.setdefault("SERVELAB_TRITON_URL", f"http://{triton.http}")
        deploy(triton)
        print(json.dumps(generate_triton(), ensure_ascii=False))
        print(json.dumps(generate_vllm()["choices"][0]["text"], ensure_ascii=False))
        for row in side_by_side():
            print(row)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["deploy"]:
        from servelab.runtime import triton_endpoint

        with triton_endpoint(serve_repository()) as ep:  # the server `servelab serve triton` started
            print(deploy(ep))
    else:
        main()
