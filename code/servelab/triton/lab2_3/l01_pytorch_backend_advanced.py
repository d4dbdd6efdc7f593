"""01-PyTorch_Backend_Advanced — PyTorch 2 inside Triton: export, compile, CUDA graphs, threads, configs.

Builds on Triton Lab 2.1 l03 (``servelab.triton.lab2_1.l03_pytorch_backend_deployment``): the same
SmolLM2-shaped ``MLPClassifier``, its Python-backend ``TritonPythonModel`` (DLPack zero-copy, batching in
``execute``, KIND_CPU/KIND_GPU) and its model folders for the PyTorch backend. This lesson adds:

* :class:`Pt2Model` — a subclass of l03's model whose ``initialize`` swaps the eager module for a
  ``torch.export`` program (``model.pt2``), a ``torch.compile``-d module, and on a GPU for CUDA graphs
  (:class:`GraphedForward`). Its ``model.py`` is l03's file plus these two classes (see :func:`model_source`).
* :func:`forward_benchmark` — eager vs compile vs export (vs CUDA graphs on a GPU), measured in-process.
* :func:`validate_layouts` — the PyTorch backend's configs, checked by Lab 2.1 l02's validator.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from servelab.runtime.memo import experiment
from servelab.triton.lab2_1 import l02_model_repository_design as repo_design
from servelab.triton.lab2_1 import l03_pytorch_backend_deployment as l03
from servelab.triton.lab2_1.l03_pytorch_backend_deployment import (
    HIDDEN, MAX_BATCH, TritonPythonModel, build_model
)

LESSON = "triton/lab2_3/l01_pytorch_backend_advanced"
PREFIX = "l01adv_"  # every model this lesson loads into a shared Triton starts with it
GRAPH_SIZES = (1, 2, 4, 8, 16, 32)  # batch sizes captured as CUDA graphs (a request is padded up)


# --8<-- [start:libtorch_config]
def libtorch_config(name: str, kind: str = "KIND_CPU", threads: int = 1) -> str:
    """A LibTorch-backend config (TorchScript ``model.pt``) with the backend's own parameters."""
    gpus = " gpus: [ 0 ]" if kind == "KIND_GPU" else ""
    params = {"INFERENCE_MODE": "true",          # (1)!
              "DISABLE_OPTIMIZED_EXECUTION": "false",
              "INTRA_OP_THREAD_COUNT": str(threads),  # (2)!
              "INTER_OP_THREAD_COUNT": "1",
              "ENABLE_CACHE_CLEANING": "false"}  # (3)!
    return f"""name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: {kind}{gpus} }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
""" + "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items())
# --8<-- [end:libtorch_config]


# --8<-- [start:validate_layouts]
def write_layouts(root: Path) -> dict[str, Path]:
    """Four model folders: this lesson's Python-backend model, and l03's two PyTorch-backend layouts."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated: the legacy path says so itself
        legacy = l03.write_libtorch_model(root, PREFIX + "libtorch")
        gpu = l03.write_libtorch_model(root, PREFIX + "libtorch_gpu")
    (legacy / "config.pbtxt").write_text(libtorch_config(legacy.name))
    (gpu / "config.pbtxt").write_text(libtorch_config(gpu.name, kind="KIND_GPU"))
    return {"python + torch.export": write_pt2_python_model(root, PREFIX + "export", mode="export"),
            "pytorch_libtorch (TorchScript)": legacy,
            "pytorch_libtorch, KIND_GPU": gpu,
            'backend "pytorch", runtime "model.py"': l03.write_pt2_model(root, PREFIX + "pt2_runtime")}


def validate_layouts(root: Path, write: bool = True) -> list[dict]:
    """Each folder through Lab 2.1 l02's validator, against this server and against an NGC image."""
    servers = {"pytriton 2.51（本書）": ({"python"}, 0), "NGC tritonserver（1 GPU）": ({"python", "pytorch"}, 1)}
    rows = []
    for layout, folder in write_layouts(root).items():
        for server, (backends, gpus) in servers.items():
            found = repo_design.validate_model(folder, gpus=gpus, backends=backends)
            errors = [f.rule for f in found if f.severity == "error"]
            rows.append({"layout": layout, "server": server, "errors": ", ".join(errors) or "（無）",
                         "loadable": not errors})
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "validation", rows, {"layout": "模型資料夾", "server": "伺服器",
                                                   "errors": "驗證器的錯誤", "loadable": "可以載入"})
    return rows
# --8<-- [end:validate_layouts]


# --8<-- [start:graphed]
class GraphedForward:
    """CUDA graphs for a fixed set of batch sizes: pad a batch up to the next captured size, replay."""

    def __init__(self, model, sizes, hidden: int, device) -> None:
        self.model, self.sizes, self.graphs = model, sorted(sizes), {}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # (1)!
            for n in self.sizes:
                for _ in range(3):
                    model(torch.zeros(n, hidden, device=device))
        torch.cuda.current_stream(device).wait_stream(side)
        pool = None
        for n in reversed(self.sizes):  # largest first, the smaller graphs reuse its memory pool
            graph, static_in = torch.cuda.CUDAGraph(), torch.zeros(n, hidden, device=device)
            with torch.cuda.graph(graph, pool=pool):  # (2)!
                static_out = model(static_in)
            pool = graph.pool()
            self.graphs[n] = (graph, static_in, static_out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = next((s for s in self.sizes if s >= n), None)
        if size is None:
            return self.model(x)  # larger than any captured graph: plain eager
        graph, static_in, static_out = self.graphs[size]
        static_in[:n].copy_(x)  # (3)!
        static_in[n:].zero_()
        graph.replay()
        return static_out[:n].clone()  # (4)!
# --8<-- [end:graphed]


# --8<-- [start:pt2_model]
class Pt2Model(TritonPythonModel):
    """l03's Python-backend model with a PyTorch 2 forward: MODE = eager | export | compile."""

    def initialize(self, args: dict) -> None:
        super().initialize(args)  # (1)!
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.mode = params.get("MODE", "eager")
        torch.set_num_interop_threads(int(params.get("INTEROP_THREADS", "1")))  # (2)!
        folder = Path(args["model_repository"]) / args["model_version"]
        if self.mode == "export":
            program = torch.export.load(str(folder / "model.pt2"))  # (3)!
            self.model = program.module().to(self.device)
        elif self.mode == "compile":
            self.model = torch.compile(self.model, dynamic=True)  # (4)!
        with torch.inference_mode():
            if params.get("CUDA_GRAPHS") == "on" and self.device.type == "cuda":
                self.model = GraphedForward(self.model, (1, 2, 4, 8, 16, 32), HIDDEN, self.device)  # (5)!
            for n in (1, 8):
                self.model(torch.zeros(n, HIDDEN, device=self.device))  # (6)!
# --8<-- [end:pt2_model]


# --8<-- [start:write_model]
def model_source() -> str:
    """model.py = Lab 2.1 l03's file (MLPClassifier, DLPack helpers, TritonPythonModel) + this lesson's classes."""
    return "\n\n".join([l03.model_source(), inspect.getsource(GraphedForward), inspect.getsource(Pt2Model),
                        "TritonPythonModel = Pt2Model\n"])


def exported_program(seed: int = 0) -> bytes:
    """``torch.export`` of the eager model with a dynamic batch dimension, serialized as a .pt2 archive."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.zeros(2, HIDDEN)  # (1)!
    program = torch.export.export(build_model(seed), (example,), dynamic_shapes={"x": {0: batch}})
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def pt2_config(name: str, mode: str, kind: str = "KIND_CPU", threads: int = 1, cuda_graphs: bool = False) -> str:
    extra = {"MODE": mode, "INTEROP_THREADS": "1", "CUDA_GRAPHS": "on" if cuda_graphs else "off"}
    return l03.model_config(name, "concat", kind, threads) + "".join(  # (2)!
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in extra.items())


def write_pt2_python_model(root: Path, name: str, mode: str = "export", kind: str = "KIND_CPU",
                           cuda_graphs: bool = False, seed: int = 0) -> Path:
    from servelab.runtime.triton_repo import write_model

    weights = io.BytesIO()
    torch.save(build_model(seed).state_dict(), weights)
    files = {"model.py": model_source(), "weights.pt": weights.getvalue()}
    if mode == "export":
        files["model.pt2"] = exported_program(seed)
    return write_model(root, name, pt2_config(name, mode, kind, cuda_graphs=cuda_graphs), files=files)


def deploy(endpoint, name: str, mode: str = "export", kind: str = "KIND_CPU", cuda_graphs: bool = False) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint.add_model(write_pt2_python_model(Path(tmp), name, mode, kind, cuda_graphs), load=False)
    endpoint.http_client(network_timeout=l03.LOAD_TIMEOUT_S).load_model(name)
    return name
# --8<-- [end:write_model]


# --8<-- [start:serve]
@experiment(ignore=("endpoint",))
def serve_and_check(endpoint, mode: str = "export", kind: str = "KIND_CPU", cuda_graphs: bool = False,
                    write: bool = True) -> dict:
    """Load a Pt2Model, compare its logits with eager torch over HTTP, send mixed row counts, unload."""
    suffix = "gpu" if kind == "KIND_GPU" else "cpu"
    name = PREFIX + f"{mode}{'_graphs' if cuda_graphs else ''}_{suffix}"
    start = time.perf_counter()
    deploy(endpoint, name, mode, kind, cuda_graphs)
    load_s = time.perf_counter() - start  # (1)!
    try:
        check = l03.check_against_torch(endpoint, name, n_rows=8)  # (2)!
        mixed = l03.mixed_rows_check(endpoint, name, sizes=(1, 3, 5))
    finally:
        l03.unload(endpoint, name)
    result = {"name": name, "load_s": load_s, **check, "mixed": mixed}
    if write:
        from servelab.runtime.results import write_results

        row = {k: result[k] for k in ("name", "device", "load_s", "max_abs_diff", "zero_copy", "exec_rows")}
        write_results(LESSON, f"served_{suffix}", [row], {
            "name": "模型", "device": "DEVICE", "load_s": "載入（秒）", "max_abs_diff": "與 eager torch 的最大差",
            "zero_copy": "DLPack 零拷貝", "exec_rows": "EXEC_ROWS（8 列請求）"})
    return result
# --8<-- [end:serve]


# --8<-- [start:benchmark]
def timed_ms(fn, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of ``fn(x)`` in ms (with a device sync on CUDA)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    timings = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn(x)
        sync()
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2] * 1e3


@experiment
def forward_benchmark(device: str = "cpu", batch_sizes=(1, 8, 32), threads: int = 1, repeats: int = 30,
                      write: bool = True) -> list[dict]:
    """Eager vs torch.export vs torch.compile (vs CUDA graphs on a GPU), same weights, same inputs."""
    torch.set_num_threads(threads)  # (1)!
    eager = build_model().to(device)
    variants = {"eager": eager}
    program = torch.export.load(io.BytesIO(exported_program()))
    variants["export"] = program.module().to(device)
    variants["compile"] = torch.compile(eager, dynamic=True)  # (2)!
    rows, compile_s = [], {}
    with torch.inference_mode():
        start = time.perf_counter()
        variants["compile"](torch.zeros(2, HIDDEN, device=device))
        compile_s["compile"] = time.perf_counter() - start
        if device.startswith("cuda"):
            variants["cuda_graphs"] = GraphedForward(eager, batch_sizes, HIDDEN, device)
        for batch in batch_sizes:
            x = torch.randn(batch, HIDDEN, generator=torch.Generator().manual_seed(batch)).to(device)
            reference = eager(x)
            for mode, fn in variants.items():
                fn(x)  # warm-up (a new batch size may recompile)
                ms = timed_ms(fn, x, repeats)
                rows.append({"device": device, "batch": batch, "mode": mode, "ms": ms,
                             "max_abs_diff": float((fn(x) - reference).abs().max())})
    for row in rows:
        base = next(r["ms"] for r in rows if r["batch"] == row["batch"] and r["mode"] == "eager")
        row["speedup_vs_eager"] = base / row["ms"]
        row["load_avg"] = os.getloadavg()[0]
    if write:
        from servelab.runtime.results import write_results

        name = "eager_vs_pt2_gpu" if device.startswith("cuda") else "eager_vs_pt2"
        write_results(LESSON, name, rows, {
            "batch": "批次列數", "mode": "執行方式", "ms": "每次 forward（ms，中位數）",
            "speedup_vs_eager": "相對 eager", "max_abs_diff": "與 eager 的最大差", "load_avg": "系統負載（1 分鐘）"},
            extra={"threads": threads, "compile_s": compile_s["compile"]})
    return rows
# --8<-- [end:benchmark]


# --8<-- [start:exercise_graph_padding]
def graph_padding_waste(sizes=GRAPH_SIZES, max_rows: int = MAX_BATCH) -> dict:
    """Exercise 1: with graphs captured for ``sizes``, the mean share of padded rows over batches 1..max_rows."""
    padded = [next(s for s in sizes if s >= n) for n in range(1, max_rows + 1)]
    waste = [(p - n) / p for n, p in zip(range(1, max_rows + 1), padded)]
    return {"sizes": list(sizes), "mean_waste": float(np.mean(waste)), "worst_waste": float(max(waste))}
# --8<-- [end:exercise_graph_padding]


# --8<-- [start:exercise_threads]
def thread_settings_in_stub(params: dict[str, str]) -> dict:
    """Exercise 2: what Pt2Model would set for given config parameters (no Triton needed)."""
    return {"intra_op": int(params.get("NUM_THREADS", "1")),
            "inter_op": int(params.get("INTEROP_THREADS", "1")),
            "instances_times_threads_fits_2_cores": int(params.get("NUM_THREADS", "1")) <= 2}
# --8<-- [end:exercise_threads]


# --8<-- [start:gpu]
def run_on_gpu(endpoint) -> dict:
    """GPU profile: eager vs export vs compile vs CUDA graphs in-process, and a KIND_GPU model with graphs."""
    bench = forward_benchmark(device="cuda", batch_sizes=(1, 8, 32), repeats=50)
    served = serve_and_check(endpoint, mode="export", kind="KIND_GPU", cuda_graphs=True)
    return {"benchmark": bench, "served": served}
# --8<-- [end:gpu]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_3/l01_pytorch_backend_advanced`` (SERVELAB_PROFILE=gpu: CUDA too)."""
    from servelab.runtime import get_settings, triton_endpoint

    with tempfile.TemporaryDirectory() as tmp:
        for row in validate_layouts(Path(tmp)):
            print(json.dumps(row, ensure_ascii=False))
    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        if get_settings().profile == "gpu":
            print(json.dumps(run_on_gpu(endpoint), ensure_ascii=False, indent=1))
            return 0
        print(json.dumps(serve_and_check(endpoint, mode="export"), ensure_ascii=False))
    for row in forward_benchmark():
        print(json.dumps(row, ensure_ascii=False))
    return 0
# --8<-- [end:main]


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the package.
import inspect
import io
import json
import numpy as np
import os
import tempfile
import time
import torch
from pathlib import Path
from servelab.runtime.memo import experiment
from servelab.triton.lab2_1 import l02_model_repository_design as repo_design
from servelab.triton.lab2_1 import l03_pytorch_backend_deployment as l03
from servelab.triton.lab2_1.l03_pytorch_backend_deployment import (
    HIDDEN, MAX_BATCH, TritonPythonModel, build_model
)
from servelab.triton.lab2_3.l01_pytorch_backend_advanced import (
    GRAPH_SIZES, LESSON, PREFIX, GraphedForward, Pt2Model, deploy, exported_program, forward_benchmark,
    libtorch_config, model_source, pt2_config, run_on_gpu, serve_and_check, timed_ms, validate_layouts,
    write_layouts, write_pt2_python_model
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
