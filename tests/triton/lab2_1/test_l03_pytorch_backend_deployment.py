"""03-PyTorch_Backend_Deployment: a torch model served by Triton's Python backend, checked against torch.

The CPU tests share one Triton (``triton_shared``) and deploy two models once for the whole file:
``l03_pt_concat_cpu`` (one forward per ``execute``) and ``l03_pt_loop_cpu`` (one forward per request).
The GPU test (``-m gpu``, SERVELAB_PROFILE=gpu) serves the same model with ``kind: KIND_GPU``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from servelab.runtime.results import RESULTS
from servelab.triton.lab2_1 import l03_pytorch_backend_deployment as lesson

TOLERANCE = 1e-4  # float32, batched GEMM vs one-row GEMM may differ in the last bits


@pytest.fixture(scope="module")
def served(triton_shared):
    """Both CPU models, freshly written and loaded; unloaded (and their folders removed) at the end."""
    names = {mode: lesson.deploy(triton_shared, f"l03_pt_{mode}_cpu", batch_mode=mode)
             for mode in ("concat", "loop")}
    yield triton_shared, names
    lesson.unload(triton_shared, *names.values())


# --- the model and its files (no engine) -------------------------------------------------------

def test_model_is_deterministic_and_sized_like_smollm2_mlp():
    a, b = lesson.build_model(seed=0), lesson.build_model(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.head.weight, lesson.build_model(seed=1).head.weight)
    assert lesson.parameter_count(a) == 4 * 3 * 576 * 1536 + 4 * 576 + 576 * 4 + 4


def test_config_enables_dynamic_batching_and_picks_the_instance_kind():
    cpu = lesson.model_config("m", batch_mode="loop")
    gpu = lesson.model_config("m", kind="KIND_GPU")
    assert 'backend: "python"' in cpu and "max_batch_size: 32" in cpu
    assert "dynamic_batching" in cpu and 'string_value: "loop"' in cpu
    assert "kind: KIND_CPU" in cpu and "gpus" not in cpu
    assert "kind: KIND_GPU gpus: [ 0 ]" in gpu


def test_model_folder_holds_this_module_and_a_state_dict(tmp_path):
    folder = lesson.write_torch_model(tmp_path, "l03_pt_files")
    shipped = (folder / "1" / "model.py").read_text()
    assert shipped == lesson.model_source() and Path(lesson.__file__).read_text().startswith(shipped)
    assert "class TritonPythonModel" in shipped
    state = torch.load(folder / "1" / "weights.pt", weights_only=True)
    model = lesson.MLPClassifier()
    model.load_state_dict(state)
    rows = np.random.default_rng(3).standard_normal((2, 576), dtype=np.float32)
    with torch.inference_mode():
        np.testing.assert_array_equal(model(torch.from_numpy(rows)).numpy(), lesson.reference_logits(rows))


def test_this_triton_build_ships_only_the_python_backend():
    from servelab.runtime.triton_server import triton_home

    assert sorted(p.name for p in (triton_home() / "backends").iterdir()) == ["python"]


# --- served on CPU, compared with torch over HTTP ----------------------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("mode", ["concat", "loop"])
def test_triton_output_matches_torch(served, mode):
    endpoint, names = served
    check = lesson.check_against_torch(endpoint, names[mode], n_rows=8)
    assert check["max_abs_diff"] <= TOLERANCE
    assert check["device"] == "cpu"
    assert check["exec_rows"] == 8  # one request of 8 rows, nothing else in flight
    assert check["zero_copy"] is True  # torch read the input bytes in Triton's shared memory


@pytest.mark.engine
def test_batched_execute_beats_per_request_loop(served):
    endpoint, _ = served
    rows = lesson.compare_batching(endpoint)  # writes results/…/batching.{json,md}
    loop, concat = rows
    assert (loop["mode"], concat["mode"]) == ("loop", "concat")
    assert loop["mean_exec_rows"] == 1.0  # the loop runs one forward per request
    assert concat["mean_exec_rows"] > 1.5  # the dynamic batcher handed several requests to execute
    assert concat["speedup"] > 1.2  # same model, same load: fewer, larger forward passes win
    saved = json.loads((RESULTS / lesson.LESSON / "batching.json").read_text())
    assert [r["mode"] for r in saved["rows"]] == ["loop", "concat"]
    assert saved["provenance"]["profile"] == "cpu"


@pytest.mark.engine
def test_exercise_mixed_row_counts_come_back_split_correctly(served):
    endpoint, names = served
    for row in lesson.mixed_rows_check(endpoint, names["concat"], sizes=(1, 3, 5)):
        assert row["got_rows"] == row["sent_rows"]
        assert row["exec_rows"] >= row["sent_rows"]
        assert row["max_abs_diff"] <= TOLERANCE


@pytest.mark.engine
def test_dlpack_probe_shows_zero_copy_and_the_contiguity_rule(triton_shared):
    name = lesson.deploy_probe(triton_shared)
    try:
        report = lesson.probe_dlpack(triton_shared, name, n_rows=2)  # writes results/…/dlpack_probe
    finally:
        lesson.unload(triton_shared, name)
    assert report["dlpack_view"].startswith("/dev/shm/triton_python_backend_shm_region")
    assert not report["as_numpy"].startswith("/dev/shm/")  # as_numpy() hands out other memory
    assert "DLPack tensor is not contiguous" in report["transposed"]
    assert report["transposed_contiguous"] == ""


# --- the PyTorch backend's layouts: written and checked here, refused by this Triton build -------

@pytest.mark.engine
def test_legacy_libtorch_layout(triton_scratch, tmp_path):
    with pytest.warns(match="torch.jit.trace` is deprecated"):
        folder = lesson.write_libtorch_model(tmp_path)
    assert 'platform: "pytorch_libtorch"' in (folder / "config.pbtxt").read_text()
    scripted = torch.jit.load(str(folder / "1" / "model.pt"))
    rows = np.random.default_rng(5).standard_normal((3, 576), dtype=np.float32)
    with torch.inference_mode():
        diff = np.abs(scripted(torch.from_numpy(rows)).numpy() - lesson.reference_logits(rows)).max()
    assert diff <= TOLERANCE
    error = lesson.try_load(triton_scratch, folder)
    assert "unable to find backend library for backend 'pytorch'" in error
    assert not (triton_scratch.repository / folder.name).exists()


@pytest.mark.engine
def test_pytorch2_model_py_layout(triton_scratch, tmp_path):
    folder = lesson.write_pt2_model(tmp_path)
    config = (folder / "config.pbtxt").read_text()
    assert 'backend: "pytorch"' in config and 'runtime: "model.py"' in config
    model = lesson.load_pt2_layout(folder)
    assert type(model).__name__ == "MLPClassifier"
    rows = np.random.default_rng(6).standard_normal((3, 576), dtype=np.float32)
    with torch.inference_mode():
        np.testing.assert_allclose(model(torch.from_numpy(rows)).numpy(), lesson.reference_logits(rows),
                                   atol=TOLERANCE)
    error = lesson.try_load(triton_scratch, folder)
    assert "unable to find Python backend based backend library 'model.py'" in error
    assert "pytorch/model.py" in error


@pytest.mark.engine
@pytest.mark.skipif(torch.cuda.is_available(), reason="this reproduces the error of a machine without a GPU")
def test_kind_gpu_without_a_gpu_is_refused(triton_scratch):
    with tempfile.TemporaryDirectory() as tmp:
        folder = lesson.write_torch_model(Path(tmp), "l03_pt_kind_gpu", kind="KIND_GPU")
        error = lesson.try_load(triton_scratch, folder)
    assert "specifies invalid or unsupported gpu id 0" in error


# --- exercises without an engine --------------------------------------------------------------

def test_exercise_forward_cost_per_row_drops_with_batch():
    rows = {r["batch"]: r for r in lesson.per_row_forward_ms((1, 32), threads=1, repeats=10)}
    assert rows[32]["ms_per_row"] < 0.5 * rows[1]["ms_per_row"]
    assert rows[32]["ms_per_forward"] < 32 * rows[1]["ms_per_forward"]


def test_exercise_toy_block_has_the_bundled_models_mlp_shapes(bundled_model):
    result = lesson.mlp_shapes_match(bundled_model.path)
    assert result["match"] is True
    assert result["bundled"]["gate"] == [1536, 576] and result["bundled"]["down"] == [576, 1536]


# --- GPU profile --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_instance_runs_on_cuda_and_matches_torch(triton_shared):
    try:
        result = lesson.serve_on_gpu(triton_shared)  # writes results/…/batching_gpu.{json,md}
    finally:
        lesson.unload(triton_shared, "l03_pt_concat_gpu", "l03_pt_loop_gpu")
    check = result["check"]
    assert check["device"] == "cuda:0"
    assert check["max_abs_diff"] <= 1e-3
    assert check["exec_rows"] == 8
    loop, concat = result["batching"]
    assert {loop["instance"], concat["instance"]} == {"KIND_GPU"}
    assert loop["mean_exec_rows"] == 1.0 and concat["mean_exec_rows"] > 1.0
    assert concat["speedup"] > 0.9
    saved = json.loads((RESULTS / lesson.LESSON / "batching_gpu.json").read_text())
    assert saved["provenance"]["gpu"] is not None
