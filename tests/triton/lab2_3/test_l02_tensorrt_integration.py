"""02-TensorRT_Integration: ONNX export (dynamo) + ONNX tooling, ONNX Runtime inside Triton's Python backend
against eager torch, and the TensorRT configs and trtexec lines validated (TensorRT itself needs the NGC image:
nothing here runs it).

CPU: one model (``l02trt_ort_cpu``) is loaded into ``triton_shared`` and unloaded; the benchmark and the served
check are ``@experiment``s shared with the notebook. GPU (``-m gpu``): ORT's CUDA execution provider, only
where an onnxruntime-gpu wheel is installed (the book's GPU runner does not carry one: the test says so).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from servelab.runtime.results import results_root
from servelab.triton.lab2_3 import l02_tensorrt_integration as lesson


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return lesson.export_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_export_is_valid_with_a_symbolic_batch(onnx_file):
    info = lesson.check_onnx(onnx_file)
    assert info["inputs"] == {"INPUT": ["batch", 576]} and info["outputs"] == {"LOGITS": ["batch", 4]}
    assert info["opset"] == 18
    assert info["ops"]["Gemm"] == 13  # 4 blocks × (gate, up, down) + the head
    assert info["typed_values"] > 0  # shape inference typed the intermediate values
    assert 42_000_000 < info["initializer_bytes"] < 43_000_000  # 10.6 M fp32 parameters


def test_a_corrupted_graph_fails_the_checker(onnx_file, tmp_path):
    import onnx

    model = onnx.load(str(onnx_file))
    model.graph.node[0].input[0] = "no_such_value"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(onnx.checker.ValidationError, match="no_such_value"):
        lesson.check_onnx(bad)


def test_onnxruntime_imports_in_the_triton_backend_env_with_numpy_1_26():
    from servelab.runtime.triton_server import backend_python_env

    python = backend_python_env() / "bin" / "python3"
    out = subprocess.run([str(python), "-c", "import numpy, onnxruntime; print(numpy.__version__, "
                          "onnxruntime.__version__)"], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "1.26.4"
    assert out[1].split(".")[0] == "1"


def test_ort_model_folder_passes_the_validator(tmp_path):
    from servelab.triton.lab2_1 import l02_model_repository_design as repo_design

    folder = lesson.write_ort_model(tmp_path, lesson.PREFIX + "files")
    assert repo_design.validate_model(folder, backends={"python"}) == []
    assert (folder / "1" / "model.py").read_text().endswith("TritonPythonModel = OrtModel\n")


def test_ort_matches_eager_and_is_measured():
    rows = lesson.ort_vs_eager()  # writes results/…/ort_vs_eager
    assert {r["runtime"] for r in rows} == {"torch eager", "ORT CPUExecutionProvider"}
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)
    saved = json.loads((results_root() / lesson.LESSON / "ort_vs_eager.json").read_text())
    assert saved["onnxruntime"].startswith("1.") and saved["provenance"]["profile"] == "cpu"


@pytest.mark.engine
def test_onnx_runtime_served_by_the_python_backend(triton_shared):
    result = lesson.serve_and_check(triton_shared)
    assert result["device"] == "CPUExecutionProvider"
    assert result["max_abs_diff"] <= 1e-4 and result["exec_rows"] == 8
    for row in result["mixed"]:
        assert row["got_rows"] == row["sent_rows"] and row["max_abs_diff"] <= 1e-4
    assert not triton_shared.http_client().is_model_ready(result["name"])


def test_tensorrt_config_validates_and_only_the_engine_is_missing(tmp_path):
    here, ngc_without_engine, ngc_with_engine = [r["errors"] for r in lesson.validate_tensorrt(tmp_path)]
    assert here == "backend-not-installed, missing-model-file, no-gpu"
    assert ngc_without_engine == "missing-model-file"  # the config itself is fine: only the engine is missing
    assert ngc_with_engine == "（無）"


def test_trtexec_lines_are_tensorrt_10_flags():
    fp16 = lesson.trtexec_argv("fp16")
    assert fp16[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--minShapes=INPUT:1x576" in fp16 and "--maxShapes=INPUT:32x576" in fp16 and "--fp16" in fp16
    assert "--fp8" in lesson.trtexec_argv("fp8") and "--stronglyTyped" in lesson.trtexec_argv("strongly-typed")
    assert not any("explicitBatch" in flag for p in lesson.PRECISION_FLAGS for flag in lesson.trtexec_argv(p))


def test_tensorrt_and_trtexec_are_not_installed_here():
    import shutil

    assert shutil.which("trtexec") is None
    assert subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True).returncode != 0


def test_exercises():
    assert lesson.weight_bytes(10_621_444, "fp16") == 21_242_888
    assert lesson.weight_bytes(8_030_261_248, "fp8") == 8_030_261_248
    profiles = [(1, 4, 8), (9, 16, 32)]
    assert [lesson.profile_for(b, profiles) for b in (1, 8, 9, 32, 33)] == [0, 0, 1, 1, None]


@pytest.mark.gpu
def test_gpu_onnx_runtime_cuda_execution_provider():
    if not lesson.cuda_ep_available():
        pytest.skip("no CUDAExecutionProvider: onnxruntime-gpu is not installed on this GPU runner (no wheel is carried)")
    rows = lesson.run_on_gpu()
    assert all(r["max_abs_diff"] <= 1e-3 for r in rows)
    saved = json.loads((results_root() / lesson.LESSON / "ort_vs_eager_gpu.json").read_text())
    assert saved["provenance"]["gpu"] is not None


def test_onnx_keeps_the_batch_symbolic_but_forgets_its_upper_bound(onnx_file):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"INPUT": np.zeros((33, 576), np.float32)})[0].shape == (33, 4)  # export said ≤ 32
    with pytest.raises(Exception, match="Got invalid dimensions for input: INPUT"):
        session.run(None, {"INPUT": np.zeros((2, 575), np.float32)})
