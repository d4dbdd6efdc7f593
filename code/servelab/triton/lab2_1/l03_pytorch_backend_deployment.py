"""03-PyTorch_Backend_Deployment — serving a PyTorch model with Triton.

This file has two roles:

1. The lesson module (``servelab.triton.lab2_1.l03_pytorch_backend_deployment``): it builds the model,
   writes the model folders, talks to Triton over HTTP and measures.
2. Triton's ``model.py``: :func:`write_torch_model` copies this very file, unchanged, to
   ``<repo>/<name>/1/model.py``; the Python backend runs its :class:`TritonPythonModel`.
   So the top level imports only the standard library, numpy and torch; ``servelab`` and
   ``triton_python_backend_utils`` are imported inside the functions that need them.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import nn

LESSON = "triton/lab2_1/l03_pytorch_backend_deployment"
END_OF_MODEL_PY = "# ---- end of model.py ----"  # model_source() cuts the file at the last such line
HIDDEN, INTERMEDIATE, N_BLOCKS, N_CLASSES = 576, 1536, 4, 4  # SmolLM2-135M: hidden 576, MLP 1536
MAX_BATCH = 32
OUTPUTS = ("LOGITS", "EXEC_ROWS", "DEVICE", "ZERO_COPY")
LOAD_TIMEOUT_S = 600.0  # the stub imports torch: tens of seconds on a busy CPU


# --8<-- [start:model]
class SwiGLUBlock(nn.Module):
    """One block shaped like a SmolLM2-135M layer's MLP: RMSNorm → SwiGLU 576→1536→576 → residual."""

    def __init__(self, hidden: int = HIDDEN, intermediate: int = INTERMEDIATE):
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=1e-5)
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class MLPClassifier(nn.Module):
    """Four SwiGLU blocks and a 4-class head: [batch, 576] → [batch, 4] logits."""

    def __init__(self, blocks: int = N_BLOCKS):
        super().__init__()
        self.blocks = nn.Sequential(*[SwiGLUBlock() for _ in range(blocks)])
        self.head = nn.Linear(HIDDEN, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def build_model(seed: int = 0) -> MLPClassifier:
    torch.manual_seed(seed)  # (1)!
    return MLPClassifier().eval()
# --8<-- [end:model]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --8<-- [start:dlpack]
def memory_region(address: int) -> str:
    """Which mapping of this process holds ``address`` (Linux ``/proc/self/maps``)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return rest[4].strip() if len(rest) > 4 else "[anonymous]"
    return "?"


def triton_to_torch(tensor) -> tuple[torch.Tensor, bool]:
    """A pb_utils.Tensor as a torch tensor through DLPack, and whether torch reads Triton's own bytes."""
    view = torch.from_dlpack(tensor.to_dlpack())  # (1)!
    zero_copy = tensor.is_cpu() and memory_region(view.data_ptr()).startswith("/dev/shm/")  # (2)!
    return view, zero_copy


def torch_to_triton(pb_utils, name: str, value: torch.Tensor):
    """A torch tensor as an output pb_utils.Tensor through DLPack (C-contiguous only)."""
    return pb_utils.Tensor.from_dlpack(name, value)  # (3)!
# --8<-- [end:dlpack]


# --8<-- [start:initialize]
class TritonPythonModel:
    """What the Python backend runs: one instance per entry of ``instance_group``."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.batch_mode = params.get("BATCH_MODE", "concat")  # "concat" or "loop"
        torch.set_num_threads(int(params.get("NUM_THREADS", "1")))  # (1)!
        if args["model_instance_kind"] == "GPU":  # (2)!
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        weights = Path(args["model_repository"]) / args["model_version"] / "weights.pt"
        self.model = MLPClassifier()
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.to(self.device).eval()  # (3)!
# --8<-- [end:initialize]

    # --8<-- [start:execute]
    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        inputs, copies = zip(*[triton_to_torch(pb_utils.get_input_tensor_by_name(r, "INPUT"))
                               for r in requests])
        if self.batch_mode == "concat":
            results = self.forward_concat(list(inputs))
        else:
            results = [(self.forward(x), x.shape[0]) for x in inputs]  # (1)!
        return [self.response(pb_utils, logits, rows, zero_copy)
                for (logits, rows), zero_copy in zip(results, copies)]

    @torch.inference_mode()
    def forward_concat(self, inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
        sizes = [x.shape[0] for x in inputs]  # rows of each request
        batch = torch.cat(inputs).to(self.device)  # (2)!
        logits = self.model(batch)  # (3)!
        return [(part, batch.shape[0]) for part in logits.split(sizes)]  # (4)!

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device))
    # --8<-- [end:execute]

    # --8<-- [start:response]
    def response(self, pb_utils, logits: torch.Tensor, rows: int, zero_copy: bool):
        n = logits.shape[0]
        return pb_utils.InferenceResponse(output_tensors=[
            torch_to_triton(pb_utils, "LOGITS", logits.cpu()),  # (1)!
            pb_utils.Tensor("EXEC_ROWS", np.full((n, 1), rows, dtype=np.int32)),
            pb_utils.Tensor("DEVICE", np.full((n, 1), str(self.device).encode(), dtype=np.object_)),
            pb_utils.Tensor("ZERO_COPY", np.full((n, 1), zero_copy, dtype=np.bool_)),
        ])
    # --8<-- [end:response]


# --8<-- [start:config]
def model_config(name: str, batch_mode: str = "concat", kind: str = "KIND_CPU", threads: int = 1) -> str:
    gpus = " gpus: [ 0 ]" if kind == "KIND_GPU" else ""
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [
  {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ {N_CLASSES} ] }},
  {{ name: "EXEC_ROWS" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "DEVICE" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "ZERO_COPY" data_type: TYPE_BOOL dims: [ 1 ] }}
]
instance_group [ {{ count: 1 kind: {kind}{gpus} }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
parameters {{ key: "BATCH_MODE" value: {{ string_value: "{batch_mode}" }} }}
parameters {{ key: "NUM_THREADS" value: {{ string_value: "{threads}" }} }}
"""
# --8<-- [end:config]


# --8<-- [start:write_model]
def model_source() -> str:
    """The model.py Triton runs: this lesson's module as installed (package ``servelab.triton.lab2_1``), cut
    before the reader context at its end, which imports servelab (absent inside Triton's stub)."""
    module = files("servelab.triton.lab2_1") / "l03_pytorch_backend_deployment.py"
    return module.read_text(encoding="utf-8").rsplit(END_OF_MODEL_PY, 1)[0]


def write_torch_model(root: Path, name: str, batch_mode: str = "concat", kind: str = "KIND_CPU",
                      seed: int = 0) -> Path:
    """``<root>/<name>/config.pbtxt`` and ``1/{model.py, weights.pt}``: this module and a state_dict."""
    from servelab.runtime.triton_repo import write_model

    weights = io.BytesIO()
    torch.save(build_model(seed).state_dict(), weights)  # (1)!
    return write_model(root, name, model_config(name, batch_mode, kind),
                       files={"model.py": model_source(), "weights.pt": weights.getvalue()})


def deploy(endpoint, name: str, batch_mode: str = "concat", kind: str = "KIND_CPU") -> str:
    """Write the model folder, copy it into the repository and load it (explicit model control)."""
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_torch_model(Path(tmp), name, batch_mode, kind), load=False)
    endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).load_model(name)  # (2)!
    return name
# --8<-- [end:write_model]


# --8<-- [start:infer]
def infer(endpoint, name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """One HTTP request carrying ``rows`` ([n, 576] float32); every output as a numpy array."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("INPUT", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=True)
    wanted = [httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS]
    result = endpoint.http_client().infer(name, [tensor], outputs=wanted)
    return {o: result.as_numpy(o) for o in OUTPUTS}


def reference_logits(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same model run directly in torch, in this process."""
    with torch.inference_mode():
        return build_model(seed)(torch.from_numpy(rows)).numpy()


def check_against_torch(endpoint, name: str, n_rows: int = 8, seed: int = 0) -> dict:
    rows = np.random.default_rng(seed).standard_normal((n_rows, HIDDEN), dtype=np.float32)
    out = infer(endpoint, name, rows)
    diff = float(np.abs(out["LOGITS"] - reference_logits(rows, seed)).max())
    return {"max_abs_diff": diff, "device": out["DEVICE"][0, 0].decode(),
            "zero_copy": bool(out["ZERO_COPY"].all()), "exec_rows": int(out["EXEC_ROWS"][0, 0])}
# --8<-- [end:infer]


# --8<-- [start:load_test]
def load_test(endpoint, name: str, clients: int = 16, requests_per_client: int = 20) -> dict:
    """``clients`` threads, each sending ``requests_per_client`` one-row requests back to back."""

    def one_client(index: int, count: int = requests_per_client) -> list[int]:
        rng = np.random.default_rng(index)
        exec_rows = []
        for _ in range(count):
            out = infer(endpoint, name, rng.standard_normal((1, HIDDEN), dtype=np.float32))
            exec_rows.append(int(out["EXEC_ROWS"][0, 0]))  # rows in the forward pass that served it
        return exec_rows

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, range(clients), [2] * clients))  # warm-up, not timed
        start = time.perf_counter()
        seen = [r for rows in pool.map(one_client, range(clients)) for r in rows]
        elapsed = time.perf_counter() - start
    return {"requests": len(seen), "seconds": elapsed, "req_per_s": len(seen) / elapsed,
            "mean_exec_rows": float(np.mean(seen)), "max_exec_rows": max(seen),
            "load_avg": os.getloadavg()[0]}  # a busy shared machine shows here
# --8<-- [end:load_test]


# --8<-- [start:compare_batching]
def compare_batching(endpoint, kind: str = "KIND_CPU", clients: int = 16,
                     requests_per_client: int = 20, write: bool = True) -> list[dict]:
    """The same model, the same load: ``execute`` with one forward per call vs one per request."""
    suffix = "gpu" if kind == "KIND_GPU" else "cpu"
    rows = []
    for mode in ("loop", "concat"):
        name = f"l03_pt_{mode}_{suffix}"
        if not endpoint.http_client().is_model_ready(name):
            deploy(endpoint, name, batch_mode=mode, kind=kind)
        stats = load_test(endpoint, name, clients, requests_per_client)
        rows.append({"mode": mode, "instance": kind, "clients": clients, **stats})
    for row in rows:
        row["speedup"] = row["req_per_s"] / rows[0]["req_per_s"]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "batching_gpu" if kind == "KIND_GPU" else "batching", rows, {
            "mode": "execute 寫法", "instance": "instance_group", "clients": "並行用戶端",
            "requests": "請求數", "req_per_s": "吞吐量（請求/秒）",
            "mean_exec_rows": "每次 forward 平均列數", "max_exec_rows": "最大列數",
            "speedup": "相對 loop", "load_avg": "系統負載（1 分鐘）"})
    return rows
# --8<-- [end:compare_batching]


# --8<-- [start:legacy_libtorch]
def write_libtorch_model(root: Path, name: str = "l03_pt_libtorch", seed: int = 0) -> Path:
    """LEGACY LibTorch-backend layout: a TorchScript ``model.pt`` + ``platform: "pytorch_libtorch"``."""
    from servelab.runtime.triton_repo import write_model

    # Legacy path: TorchScript is deprecated (torch 2.13 warns when you trace).
    scripted = torch.jit.trace(build_model(seed), torch.zeros(1, HIDDEN))  # (1)!
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    config = f"""
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {N_CLASSES} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
    return write_model(root, name, config, files={"model.pt": buffer.getvalue()})
# --8<-- [end:legacy_libtorch]


# --8<-- [start:pt2_layout]
def write_pt2_model(root: Path, name: str = "l03_pt_compile", seed: int = 0) -> Path:
    """The PyTorch backend's PyTorch 2 layout (``runtime: "model.py"``): an nn.Module file + a state_dict."""
    import inspect

    from servelab.runtime.triton_repo import write_model

    source = "\n".join(["import torch", "from torch import nn", "",
                        f"HIDDEN, INTERMEDIATE, N_BLOCKS, N_CLASSES = {HIDDEN}, {INTERMEDIATE}, "
                        f"{N_BLOCKS}, {N_CLASSES}", "", "",
                        inspect.getsource(SwiGLUBlock), "", inspect.getsource(MLPClassifier)])
    weights = io.BytesIO()
    torch.save(build_model(seed).state_dict(), weights)
    config = f"""
name: "{name}"
backend: "pytorch"
runtime: "model.py"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {N_CLASSES} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "TORCH_COMPILE_OPTIONAL_PARAMETERS" value: {{ string_value: "{{\\"disable\\": true}}" }} }}
"""
    return write_model(root, name, config, files={"model.py": source, "model.pt": weights.getvalue()})
# --8<-- [end:pt2_layout]


# --8<-- [start:pt2_check]
def load_pt2_layout(folder: Path) -> nn.Module:
    """Load a ``runtime: "model.py"`` folder as that runtime (pytorch_backend ``src/model.py``) does:
    the first nn.Module subclass of ``1/model.py`` in ``dir()`` order, built without arguments,
    with the state_dict of ``1/model.pt`` loaded."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("l03_pt2_model", Path(folder) / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [getattr(module, name) for name in dir(module)]
    model_class = next(c for c in classes if isinstance(c, type) and issubclass(c, nn.Module))
    model = model_class()
    model.load_state_dict(torch.load(Path(folder) / "1" / "model.pt", weights_only=True))
    return model.eval()
# --8<-- [end:pt2_check]


# --8<-- [start:try_load]
def try_load(endpoint, folder: Path) -> str:
    """Copy a model folder into the repository and try to load it; Triton's error text ('' if it loaded)."""
    import shutil

    from tritonclient.utils import InferenceServerException

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        endpoint.add_model(folder, load=False)
        client.load_model(folder.name)
        client.unload_model(folder.name)
        return ""
    except InferenceServerException as exc:
        return str(exc)
    finally:
        shutil.rmtree(endpoint.repository / folder.name, ignore_errors=True)
# --8<-- [end:try_load]


# --8<-- [start:dlpack_probe]
class DLPackProbe:
    """A diagnostic Python model: where do the input bytes live, what does from_dlpack accept?"""

    def initialize(self, args: dict) -> None:
        torch.set_num_threads(1)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT")
            view, _ = triton_to_torch(tensor)
            report = {"dlpack_view": memory_region(view.data_ptr()),  # (1)!
                      "as_numpy": memory_region(tensor.as_numpy().ctypes.data),  # (2)!
                      "transposed": output_error(pb_utils, view.t()),  # (3)!
                      "transposed_contiguous": output_error(pb_utils, view.t().contiguous())}
            text = np.full((view.shape[0], 1), json.dumps(report).encode(), dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("REPORT", text)]))
        return responses


def output_error(pb_utils, value: torch.Tensor) -> str:
    """'' when from_dlpack accepts ``value``, else the exception it raised."""
    try:
        torch_to_triton(pb_utils, "PROBE", value)
        return ""
    except Exception as exc:  # pb_utils.TritonModelException
        return f"{type(exc).__name__}: {exc}"
# --8<-- [end:dlpack_probe]


def deploy_probe(endpoint, name: str = "l03_pt_dlpack_probe") -> str:
    """The probe: this file as model.py, with ``TritonPythonModel`` bound to :class:`DLPackProbe`."""
    from servelab.runtime.triton_repo import write_model

    config = f"""
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [ {{ name: "REPORT" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""
    source = model_source() + "\nTritonPythonModel = DLPackProbe\n"
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_model(Path(tmp), name, config, files={"model.py": source}), load=False)
    endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).load_model(name)
    return name


# --8<-- [start:probe_client]
def probe_dlpack(endpoint, name: str, n_rows: int = 2, write: bool = True) -> dict:
    """Ask the probe model about one [n_rows, 576] request; saved as ``dlpack_probe``."""
    import tritonclient.http as httpclient

    rows = np.ones((n_rows, HIDDEN), dtype=np.float32)
    tensor = httpclient.InferInput("INPUT", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    report = json.loads(endpoint.http_client().infer(name, [tensor]).as_numpy("REPORT")[0, 0])
    if write:
        from servelab.runtime.results import write_results

        labels = {"dlpack_view": "torch.from_dlpack(t.to_dlpack()) 的位元組所在",
                  "as_numpy": "t.as_numpy() 的位元組所在",
                  "transposed": "from_dlpack(view.t())",
                  "transposed_contiguous": "from_dlpack(view.t().contiguous())"}
        write_results(LESSON, "dlpack_probe",
                      [{"check": labels[k], "result": f"`{v}`" if v else "（成功，無錯誤）"}
                       for k, v in report.items()], {"check": "檢查", "result": "Triton 內的結果"})
    return report
# --8<-- [end:probe_client]


def unload(endpoint, *names: str) -> None:
    """Unload models and remove their folders from the repository."""
    import shutil

    from tritonclient.utils import InferenceServerException

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    for name in names:
        try:
            client.unload_model(name)
        except InferenceServerException:
            pass  # not loaded (a failed load, or someone unloaded it already)
        shutil.rmtree(endpoint.repository / name, ignore_errors=True)


# --8<-- [start:exercise_forward_cost]
def per_row_forward_ms(batch_sizes=(1, 8, 32), threads: int = 1, repeats: int = 21) -> list[dict]:
    """Exercise 1: the model's forward time per row in this process, no Triton in between (median of repeats)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model, rows = build_model(), []
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                x = torch.randn(batch, HIDDEN)
                model(x)  # warm-up
                timings = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(x)
                    timings.append(time.perf_counter() - start)
                ms = sorted(timings)[len(timings) // 2] * 1e3  # the median: a busy core slows some calls, not all
                rows.append({"batch": batch, "threads": threads, "ms_per_forward": ms,
                             "ms_per_row": ms / batch})
    finally:
        torch.set_num_threads(previous)
    return rows
# --8<-- [end:exercise_forward_cost]


def forward_cost_table(batch_sizes=(1, 8, 32), threads=(1, 2), write: bool = True) -> list[dict]:
    """Exercise 1's measurement for 1 and 2 intra-op threads, saved as ``forward_cost``."""
    rows = [dict(row, load_avg=os.getloadavg()[0])
            for n in threads for row in per_row_forward_ms(batch_sizes, threads=n)]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "forward_cost", rows, {
            "threads": "torch 執行緒", "batch": "批次列數", "ms_per_forward": "每次 forward（ms）",
            "ms_per_row": "每列（ms）", "load_avg": "系統負載（1 分鐘）"})
    return rows


# --8<-- [start:exercise_mixed_rows]
def mixed_rows_check(endpoint, name: str, sizes=(1, 3, 5), seed: int = 0) -> list[dict]:
    """Exercise 2: concurrent requests of different row counts; each gets back exactly its rows."""
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((n, HIDDEN), dtype=np.float32) for n in sizes]
    with ThreadPoolExecutor(len(batches)) as pool:
        outputs = list(pool.map(lambda rows: infer(endpoint, name, rows), batches))
    return [{"sent_rows": rows.shape[0], "got_rows": out["LOGITS"].shape[0],
             "exec_rows": int(out["EXEC_ROWS"][0, 0]),
             "max_abs_diff": float(np.abs(out["LOGITS"] - reference_logits(rows, seed=0)).max())}
            for rows, out in zip(batches, outputs)]
# --8<-- [end:exercise_mixed_rows]


# --8<-- [start:exercise_shapes]
def mlp_shapes_match(model_dir: Path) -> dict:
    """Exercise 3: SwiGLUBlock's weights have the shapes of the bundled model's layer-0 MLP."""
    from safetensors import safe_open

    names = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        bundled = {ours: f.get_slice(f"model.layers.0.mlp.{theirs}.weight").get_shape()
                   for ours, theirs in names.items()}
    toy = {ours: list(getattr(SwiGLUBlock(), ours).weight.shape) for ours in names}
    return {"bundled": bundled, "toy": toy, "match": bundled == toy}
# --8<-- [end:exercise_shapes]


# --8<-- [start:gpu]
def serve_on_gpu(endpoint) -> dict:
    """GPU profile: the same model with ``kind: KIND_GPU``; outputs vs torch, then the batching table."""
    name = deploy(endpoint, "l03_pt_concat_gpu", kind="KIND_GPU")
    check = check_against_torch(endpoint, name)  # DEVICE must read cuda:0
    rows = compare_batching(endpoint, kind="KIND_GPU")  # writes batching_gpu.json/.md
    return {"check": check, "batching": rows}
# --8<-- [end:gpu]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_1/l03_pytorch_backend_deployment`` (SERVELAB_PROFILE=gpu: KIND_GPU)."""
    from servelab.runtime import get_settings, triton_endpoint

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        if get_settings().profile == "gpu":
            print(json.dumps(serve_on_gpu(endpoint), ensure_ascii=False, indent=1))
            return 0
        name = deploy(endpoint, "l03_pt_concat_cpu")
        print(json.dumps(check_against_torch(endpoint, name), ensure_ascii=False))
        for row in compare_batching(endpoint) + forward_cost_table():
            print(json.dumps(row, ensure_ascii=False))
    return 0
# --8<-- [end:main]


# ---- end of model.py ----
# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import io
import json
import numpy as np
import os
import tempfile
import time
import torch
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from torch import nn
from servelab.triton.lab2_1.l03_pytorch_backend_deployment import (
    END_OF_MODEL_PY, HIDDEN, INTERMEDIATE, LESSON, LOAD_TIMEOUT_S, MAX_BATCH, MLPClassifier, N_BLOCKS,
    N_CLASSES, OUTPUTS, SwiGLUBlock, build_model, check_against_torch, compare_batching, deploy,
    forward_cost_table, infer, load_test, memory_region, model_config, reference_logits, serve_on_gpu,
    torch_to_triton, triton_to_torch
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
