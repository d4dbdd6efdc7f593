"""02-TensorRT_Integration — the honest path: ONNX export, ONNX tooling, ONNX Runtime inside Triton, and
TensorRT taught precisely (trtexec, precisions, optimization profiles, tensorrt_plan configs) without
pretending to run it: TensorRT needs NVIDIA's NGC image (its wheels are not on the package index).

Builds on Triton Lab 2.1 l03 (the SmolLM2-shaped ``MLPClassifier`` and its config/infer helpers) and
l02 (``render_model_py`` and the validator). :class:`OrtModel` is a Python-backend model: rendered into
``model.py`` by Lab 2.1 l02's :func:`render_model_py`, so its source may only use what that header imports
(json, os, time, numpy as np, pb_utils) and what it imports itself.
"""

from __future__ import annotations

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
from servelab.triton.lab2_1.l03_pytorch_backend_deployment import HIDDEN, MAX_BATCH, N_CLASSES, build_model

try:  # only inside Triton's Python backend stub (OrtModel's execute uses it there)
    import triton_python_backend_utils as pb_utils
except ImportError:  # the normal case outside Triton
    pb_utils = None

LESSON = "triton/lab2_3/l02_tensorrt_integration"
PREFIX = "l02trt_"
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"  # TensorRT backend + trtexec live here, not on PyPI


# --8<-- [start:export]
def export_onnx(path: Path, seed: int = 0, opset: int = 18) -> Path:
    """The l03 model → ONNX with the dynamo exporter; the batch dimension stays symbolic (1..32)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.zeros(2, HIDDEN)  # (1)!
    program = torch.onnx.export(build_model(seed), (example,), dynamo=True, opset_version=opset, verbose=False,
                                dynamic_shapes={"x": {0: batch}},  # (2)!
                                input_names=["INPUT"], output_names=["LOGITS"])
    program.save(str(path))  # (3)!
    return Path(path)
# --8<-- [end:export]


# --8<-- [start:check]
def check_onnx(path: Path) -> dict:
    """onnx.checker (full_check runs shape inference too) and the inferred shapes of every value."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # (1)!
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # (2)!

    def shape(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    ops: dict[str, int] = {}
    for node in inferred.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"ir_version": model.ir_version, "opset": model.opset_import[0].version,
            "inputs": {v.name: shape(v) for v in inferred.graph.input},
            "outputs": {v.name: shape(v) for v in inferred.graph.output},
            "typed_values": len(inferred.graph.value_info), "ops": dict(sorted(ops.items())),
            "initializer_bytes": sum(t.ByteSize() for t in model.graph.initializer)}


def onnx_report(root: Path, write: bool = True) -> dict:
    """Export + check, saved as ``onnx_check`` (one row per fact) for the page."""
    info = check_onnx(export_onnx(Path(root) / "model.onnx"))
    if write:
        from servelab.runtime.results import write_results

        rows = [{"item": k, "value": f"`{json.dumps(v, ensure_ascii=False)}`"} for k, v in info.items()]
        write_results(LESSON, "onnx_check", rows, {"item": "項目", "value": "onnx.checker／shape inference 的結果"})
    return info
# --8<-- [end:check]


# --8<-- [start:ort_model]
class OrtModel:
    """A Python-backend model that runs ``model.onnx`` with ONNX Runtime, one session per instance."""

    def initialize(self, args):
        import onnxruntime as ort  # (1)!

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("NUM_THREADS", "1"))  # (2)!
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        provider = params.get("PROVIDER", "CPUExecutionProvider")
        if args["model_instance_kind"] == "GPU":  # (3)!
            provider = ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])})
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=[provider])
        self.provider = self.session.get_providers()[0]  # (4)!

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        batch = np.concatenate(arrays)  # (5)!
        (logits,) = self.session.run(["LOGITS"], {"INPUT": batch})
        responses, start = [], 0
        for rows in arrays:
            n = rows.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LOGITS", np.ascontiguousarray(logits[start:start + n])),
                pb_utils.Tensor("EXEC_ROWS", np.full((n, 1), batch.shape[0], dtype=np.int32)),
                pb_utils.Tensor("DEVICE", np.full((n, 1), self.provider.encode(), dtype=np.object_)),
                pb_utils.Tensor("ZERO_COPY", np.zeros((n, 1), dtype=np.bool_))]))  # (6)!
            start += n
        return responses
# --8<-- [end:ort_model]


# --8<-- [start:deploy]
def ort_config(name: str, kind: str = "KIND_CPU", threads: int = 1) -> str:
    """l03's config (same inputs, outputs, dynamic batching) with the ORT provider as a parameter."""
    return l03.model_config(name, "concat", kind, threads) + \
        'parameters { key: "PROVIDER" value: { string_value: "CPUExecutionProvider" } }\n'


def write_ort_model(root: Path, name: str, kind: str = "KIND_CPU", seed: int = 0) -> Path:
    from servelab.runtime.triton_repo import write_model

    with tempfile.TemporaryDirectory() as tmp:
        onnx_bytes = export_onnx(Path(tmp) / "model.onnx", seed).read_bytes()
    return write_model(root, name, ort_config(name, kind),
                       files={"model.py": repo_design.render_model_py(OrtModel), "model.onnx": onnx_bytes})


def deploy(endpoint, name: str, kind: str = "KIND_CPU") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_ort_model(Path(tmp), name, kind)
        errors = [f for f in repo_design.validate_model(folder, backends={"python"}) if f.severity == "error"]
        assert not errors, errors  # (1)!
        endpoint.add_model(folder, load=False)
    endpoint.http_client(network_timeout=l03.LOAD_TIMEOUT_S).load_model(name)
    return name
# --8<-- [end:deploy]


# --8<-- [start:serve]
@experiment(ignore=("endpoint",))
def serve_and_check(endpoint, kind: str = "KIND_CPU", write: bool = True) -> dict:
    """Load the ORT model, compare with eager torch over HTTP (8 rows, then 1+3+5 rows at once), unload."""
    suffix = "gpu" if kind == "KIND_GPU" else "cpu"
    name = f"{PREFIX}ort_{suffix}"
    start = time.perf_counter()
    deploy(endpoint, name, kind)
    load_s = time.perf_counter() - start
    try:
        check = l03.check_against_torch(endpoint, name, n_rows=8)
        mixed = l03.mixed_rows_check(endpoint, name, sizes=(1, 3, 5))
    finally:
        l03.unload(endpoint, name)
    result = {"name": name, "load_s": load_s, **check, "mixed": mixed}
    if write:
        from servelab.runtime.results import write_results

        row = {k: result[k] for k in ("name", "device", "load_s", "max_abs_diff", "exec_rows")}
        write_results(LESSON, f"served_ort_{suffix}", [row], {
            "name": "模型", "device": "ORT 執行提供者", "load_s": "載入（秒）",
            "max_abs_diff": "與 eager torch 的最大差", "exec_rows": "EXEC_ROWS（8 列請求）"})
    return result
# --8<-- [end:serve]


# --8<-- [start:benchmark]
@experiment
def ort_vs_eager(batch_sizes=(1, 8, 32), threads: int = 1, repeats: int = 30, provider: str = "CPUExecutionProvider",
                 write: bool = True) -> list[dict]:
    """Same weights, same inputs: torch eager vs an ONNX Runtime session, median ms per forward."""
    import onnxruntime as ort

    torch.set_num_threads(threads)
    device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    model = build_model().to(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1  # (1)!
    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(str(export_onnx(Path(tmp) / "m.onnx")), options, providers=[provider])
    if session.get_providers()[0] != provider:  # ORT falls back to the CPU with only a warning (e.g. no libcublas)
        raise RuntimeError(f"{provider} did not load; the session runs on {session.get_providers()}")
    rows = []
    for batch in batch_sizes:
        x = np.random.default_rng(batch).standard_normal((batch, HIDDEN), dtype=np.float32)
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(device)
            reference = model(xt).cpu().numpy()
            eager_ms = timed_ms(lambda: model(xt), device, repeats)
        ort_ms = timed_ms(lambda: session.run(["LOGITS"], {"INPUT": x}), "cpu", repeats)  # (2)!
        diff = float(np.abs(session.run(["LOGITS"], {"INPUT": x})[0] - reference).max())
        rows += [{"batch": batch, "runtime": "torch eager", "ms": eager_ms, "max_abs_diff": 0.0},
                 {"batch": batch, "runtime": f"ORT {provider}", "ms": ort_ms, "max_abs_diff": diff}]
    for row in rows:
        row["speedup_vs_eager"] = next(r["ms"] for r in rows if r["batch"] == row["batch"]) / row["ms"]
        row["load_avg"] = os.getloadavg()[0]
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "ort_vs_eager_gpu" if device == "cuda" else "ort_vs_eager", rows, {
            "batch": "批次列數", "runtime": "執行環境", "ms": "每次 forward（ms，中位數）",
            "speedup_vs_eager": "相對 eager", "max_abs_diff": "與 eager 的最大差", "load_avg": "系統負載（1 分鐘）"},
            extra={"threads": threads, "onnxruntime": ort.__version__, "providers": session.get_providers()})
    return rows


def timed_ms(fn, device: str, repeats: int = 30) -> float:
    """Median ms of ``fn()`` after one warm-up call (device sync on CUDA)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    timings = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2] * 1e3
# --8<-- [end:benchmark]


# --8<-- [start:trtexec]
PRECISION_FLAGS = {  # what trtexec is allowed to use besides FP32
    "fp32": [],
    "fp16": ["--fp16"],
    "bf16": ["--bf16"],
    "int8": ["--int8"],  # (1)!
    "fp8": ["--fp8"],    # (2)!
    "strongly-typed": ["--stronglyTyped"],  # (3)!
}


def trtexec_argv(precision: str = "fp16", onnx: str = "model.onnx", plan: str = "model.plan",
                 opt_batch: int = 8) -> list[str]:
    """[NEEDS THE NGC IMAGE] build a TensorRT engine from the ONNX file with one optimization profile."""
    shape = lambda n: f"INPUT:{n}x{HIDDEN}"  # noqa: E731  (the profile: min / opt / max shapes)
    return ["trtexec", f"--onnx={onnx}", f"--saveEngine={plan}",
            f"--minShapes={shape(1)}", f"--optShapes={shape(opt_batch)}", f"--maxShapes={shape(MAX_BATCH)}",
            *PRECISION_FLAGS[precision],
            "--timingCacheFile=timing.cache",  # (4)!
            "--builderOptimizationLevel=3"]


def trtexec_command(precision: str) -> list[str]:
    """The page's command line (``<!-- servelab:command … -->``)."""
    return trtexec_argv(precision)
# --8<-- [end:trtexec]


# --8<-- [start:trt_config]
def tensorrt_config(name: str, profiles: tuple[str, ...] = ("0",), cuda_graphs: bool = True) -> str:
    """[NEEDS THE NGC IMAGE] a ``tensorrt_plan`` model: the engine built by trtexec, served by Triton."""
    graphs = "optimization { cuda { graphs: true } }\n" if cuda_graphs else ""
    listed = ", ".join(f'"{p}"' for p in profiles)
    return f"""name: "{name}"
platform: "tensorrt_plan"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }} ]
output [ {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ {N_CLASSES} ] }} ]
instance_group [ {{ count: 1 kind: KIND_GPU gpus: [ 0 ] profile: [ {listed} ] }} ]
dynamic_batching {{ preferred_batch_size: [ 8, 16, 32 ] max_queue_delay_microseconds: 500 }}
{graphs}"""


def validate_tensorrt(root: Path, write: bool = True) -> list[dict]:
    """The tensorrt_plan folder through the validator: without a model.plan (we cannot build one here),
    and with a placeholder file standing for the engine an NGC machine would build."""
    from servelab.runtime.triton_repo import write_model

    folder = write_model(root, PREFIX + "plan", tensorrt_config(PREFIX + "plan"), files={})
    rows = []
    for case, backends, gpus in (("本書（python 後端、無 GPU）", {"python"}, 0),
                                 ("NGC 映像、1 GPU、尚未建構引擎", {"python", "tensorrt"}, 1),
                                 ("NGC 映像、1 GPU、已有 model.plan", {"python", "tensorrt"}, 1)):
        if "已有" in case:
            (folder / "1" / "model.plan").write_bytes(b"placeholder: trtexec --saveEngine writes the engine")
        found = repo_design.validate_model(folder, gpus=gpus, backends=backends, requests={"INPUT": (8, HIDDEN)})
        rows.append({"case": case, "errors": ", ".join(f.rule for f in found if f.severity == "error") or "（無）"})
    if write:
        from servelab.runtime.results import write_results

        write_results(LESSON, "tensorrt_validation", rows, {"case": "情況", "errors": "驗證器的錯誤"})
    return rows
# --8<-- [end:trt_config]


# --8<-- [start:exercise_engine_bytes]
def weight_bytes(parameters: int, precision: str) -> int:
    """Exercise 1: weight bytes of an engine at a precision (weights only; activations and workspace extra)."""
    return parameters * {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}[precision]
# --8<-- [end:exercise_engine_bytes]


# --8<-- [start:exercise_profiles]
def profile_for(batch: int, profiles: list[tuple[int, int, int]]) -> int | None:
    """Exercise 2: the first optimization profile (min, opt, max) whose range holds ``batch``; None if none."""
    return next((i for i, (low, _, high) in enumerate(profiles) if low <= batch <= high), None)
# --8<-- [end:exercise_profiles]


# --8<-- [start:gpu]
def cuda_ep_available() -> bool:
    """True only where onnxruntime-gpu (with a CUDA it can load) is installed."""
    try:
        import onnxruntime as ort
    except ImportError:  # e.g. a GPU runner without any onnxruntime wheel
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def run_on_gpu() -> list[dict]:
    """GPU profile: ORT's CUDA execution provider vs torch eager on CUDA (needs the onnxruntime-gpu wheel)."""
    return ort_vs_eager(provider="CUDAExecutionProvider", repeats=50)
# --8<-- [end:gpu]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_3/l02_tensorrt_integration``."""
    from servelab.runtime import triton_endpoint

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(onnx_report(Path(tmp)), ensure_ascii=False))
        print(json.dumps(validate_tensorrt(Path(tmp)), ensure_ascii=False))
    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        print(json.dumps(serve_and_check(endpoint), ensure_ascii=False))
    for row in ort_vs_eager() + (run_on_gpu() if cuda_ep_available() else []):
        print(json.dumps(row, ensure_ascii=False))
    return 0
# --8<-- [end:main]


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the package.
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
from servelab.triton.lab2_1.l03_pytorch_backend_deployment import HIDDEN, MAX_BATCH, N_CLASSES, build_model
from servelab.triton.lab2_3.l02_tensorrt_integration import (
    LESSON, pb_utils, PREFIX, PRECISION_FLAGS, OrtModel, check_onnx, onnx_report, cuda_ep_available, deploy, export_onnx,
    timed_ms, ort_config, ort_vs_eager, run_on_gpu, serve_and_check, tensorrt_config, trtexec_argv, validate_tensorrt,
    write_ort_model
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
