"""01-PyTorch_Backend_Advanced: PyTorch 2 (torch.export / torch.compile / CUDA graphs) inside Triton's
Python backend, measured against eager; the PyTorch backend's configs checked by Lab 2.1 l02's validator.

CPU: one model (``l01adv_export_cpu``) is loaded into ``triton_shared`` and unloaded again; the
in-process benchmark and the served check are ``@experiment``s shared with the notebook.
GPU (``-m gpu``): the same functions with ``device="cuda"`` and ``kind: KIND_GPU`` + CUDA graphs.
"""

from __future__ import annotations

import json

import pytest
import torch

from servelab.runtime.results import results_root
from servelab.triton.lab2_1 import l02_model_repository_design as repo_design
from servelab.triton.lab2_3 import l01_pytorch_backend_advanced as lesson


def test_validator_accepts_the_python_layout_and_flags_what_this_triton_lacks(tmp_path):
    rows = {(r["layout"], r["server"][:7]): r for r in lesson.validate_layouts(tmp_path)}
    assert rows[("python + torch.export", "pytrito")]["loadable"] is True
    assert rows[("pytorch_libtorch (TorchScript)", "pytrito")]["errors"] == "backend-not-installed"
    assert rows[("pytorch_libtorch, KIND_GPU", "pytrito")]["errors"] == "backend-not-installed, no-gpu"
    assert rows[('backend "pytorch", runtime "model.py"', "pytrito")]["loadable"] is False
    assert all(r["loadable"] for (layout, server), r in rows.items() if server == "NGC tri")
    saved = json.loads((results_root() / lesson.LESSON / "validation.json").read_text())
    assert len(saved["rows"]) == 8


def test_libtorch_config_parses_and_carries_the_backend_parameters(tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(lesson.libtorch_config("m", kind="KIND_GPU", threads=2),
                               model_config_pb2.ModelConfig())
    assert config.platform == "pytorch_libtorch"
    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == "2"
    assert config.parameters["INFERENCE_MODE"].string_value == "true"
    assert list(config.instance_group[0].gpus) == [0]


def test_a_broken_parameter_block_is_caught_before_the_server_sees_it(tmp_path):
    folder = lesson.write_pt2_python_model(tmp_path, lesson.PREFIX + "broken", mode="eager")
    text = (folder / "config.pbtxt").read_text().replace("string_value", "string_valu", 1)
    (folder / "config.pbtxt").write_text(text)
    found = repo_design.validate_model(folder, backends={"python"})
    assert [f.rule for f in found] == ["config-parse"]
    assert "string_valu" in found[0].detail


def test_model_py_is_l03s_file_plus_this_lessons_classes(tmp_path):
    from servelab.triton.lab2_1 import l03_pytorch_backend_deployment as l03

    source = lesson.model_source()
    assert source.startswith(l03.model_source())  # imported, not copied
    assert "class Pt2Model(TritonPythonModel)" in source and source.endswith("TritonPythonModel = Pt2Model\n")
    compile(source, "model.py", "exec")
    folder = lesson.write_pt2_python_model(tmp_path, "x", mode="export")
    program = torch.export.load(str(folder / "1" / "model.pt2"))
    rows = torch.randn(5, 576)
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(rows), lesson.build_model()(rows))  # dynamic batch: 5 ≠ 2


def test_export_with_a_batch_above_the_declared_maximum_fails():
    program = torch.export.load(__import__("io").BytesIO(lesson.exported_program()))
    with pytest.raises(Exception, match=r"Guard failed: x.size\(\)\[0\] <= 32"):
        program.module()(torch.zeros(33, 576))


def test_pt2_forwards_match_eager_and_compile_is_measured():
    rows = lesson.forward_benchmark()  # writes results/…/eager_vs_pt2.{json,md}
    assert {r["mode"] for r in rows} == {"eager", "export", "compile"}
    assert {r["batch"] for r in rows} == {1, 8, 32}
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)
    assert all(r["ms"] > 0 for r in rows)
    saved = json.loads((results_root() / lesson.LESSON / "eager_vs_pt2.json").read_text())
    assert saved["compile_s"] > 0.5  # compiling is real work, paid once at load
    assert saved["provenance"]["profile"] == "cpu"


@pytest.mark.engine
def test_exported_program_served_by_the_python_backend(triton_shared):
    result = lesson.serve_and_check(triton_shared, mode="export")
    assert result["device"] == "cpu"
    assert result["max_abs_diff"] <= 1e-4
    assert result["zero_copy"] is True  # l03's DLPack path, inherited
    assert result["exec_rows"] == 8
    for row in result["mixed"]:
        assert row["got_rows"] == row["sent_rows"] and row["max_abs_diff"] <= 1e-4
    assert not triton_shared.http_client().is_model_ready(result["name"])  # unloaded again


def test_exercise_graph_padding_waste():
    pow2 = lesson.graph_padding_waste()
    every = lesson.graph_padding_waste(sizes=tuple(range(1, 33)))
    assert every["mean_waste"] == 0.0
    assert 0.1 < pow2["mean_waste"] < 0.3 and pow2["worst_waste"] < 0.5


def test_exercise_thread_settings():
    assert lesson.thread_settings_in_stub({"NUM_THREADS": "4"})["instances_times_threads_fits_2_cores"] is False
    assert lesson.thread_settings_in_stub({}) == {"intra_op": 1, "inter_op": 1,
                                                  "instances_times_threads_fits_2_cores": True}


@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_cuda_graphs_and_kind_gpu(triton_shared):
    assert torch.cuda.is_available()
    result = lesson.run_on_gpu(triton_shared)  # writes results/…/eager_vs_pt2_gpu
    bench = {(r["mode"], r["batch"]): r for r in result["benchmark"]}
    assert all(r["max_abs_diff"] <= 1e-3 for r in result["benchmark"])
    assert bench[("cuda_graphs", 1)]["ms"] < bench[("eager", 1)]["ms"]  # launch-bound: one replay wins
    served = result["served"]
    assert served["device"] == "cuda:0" and served["max_abs_diff"] <= 1e-3
    assert all(row["got_rows"] == row["sent_rows"] for row in served["mixed"])
    saved = json.loads((results_root() / lesson.LESSON / "eager_vs_pt2_gpu.json").read_text())
    assert saved["provenance"]["gpu"] is not None
