"""02-Model_Repository_Design: the builder, the validator, and what the real Triton does with each repository."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from servelab.runtime.model import model_info
from servelab.runtime.results import read_results
from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE
from servelab.triton.lab2_1 import l02_model_repository_design as lesson

GIB = 1024**3


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tmp_path_factory.mktemp("l02repo-src")


@pytest.fixture(scope="module")
def shared(triton_shared):
    """The session's Triton; every model this file loaded is unloaded afterwards."""
    yield triton_shared
    names = [p.name for p in triton_shared.repository.iterdir() if p.name.startswith(lesson.PREFIX)]
    lesson.unload(triton_shared, *names)


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """The one extra server of this file: the lesson teaches its start-time flag."""
    with lesson.strict_triton(tmp_path_factory.mktemp("l02repo-strict")) as endpoint:
        yield endpoint


# --- builder and validator: no server -------------------------------------------------------------------

def test_builder_writes_protobuf_text_format_triton_parses():
    config = lesson.scale_config(
        "l02repo_x", version_policy=lesson.VersionPolicy.specific(1, 3), dynamic_batching=True,
        inputs=[lesson.Tensor("X", "TYPE_FP32", (1,), reshape=())],
        instance_groups=[lesson.InstanceGroup(2, "KIND_GPU", gpus=(0, 1))], parameters={"K": "v"})
    parsed = json_format.MessageToDict(text_format.Parse(config.to_pbtxt(), model_config_pb2.ModelConfig()),
                                       preserving_proto_field_name=True)
    assert parsed["version_policy"] == {"specific": {"versions": ["1", "3"]}}
    assert parsed["input"][0] == {"name": "X", "data_type": "TYPE_FP32", "dims": ["1"], "reshape": {}}
    assert parsed["instance_group"] == [{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}]
    assert parsed["parameters"] == {"K": {"string_value": "v"}}
    assert "dynamic_batching" in parsed and parsed["max_batch_size"] == 8


def test_version_folder_rules(tmp_path):
    for name in ("1", "2", "10", "0", "01", "v3"):
        (tmp_path / name).mkdir()
    assert lesson.version_folders(tmp_path) == ([1, 2, 10], ["0", "01", "v3"])


def test_a_good_folder_has_no_findings(tmp_path):
    folder = lesson.scale_folder("l02repo_ok", versions=(1, 2)).write(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.pbtxt"]
    assert lesson.validate_model(folder, gpus=0, backends={"python"}, requests={"X": (2, 4)}) == []


EXPECTED_RULES = {
    "dtype": {"config-parse"}, "name": {"name-mismatch"}, "policy": {"policy-version-missing"},
    "nodims": {"dims-empty"}, "reshape": {"reshape-size"}, "batchdim": {"batch-dim-in-dims", "request-shape"},
    "output": {"output-not-produced"}, "outdtype": set(), "kindgpu": {"no-gpu"},
    "backend": {"backend-not-installed"}, "noversion": {"ignored-folder", "no-version"},
}


@pytest.mark.parametrize("key", sorted(EXPECTED_RULES))
def test_validator_flags_each_broken_folder(key, tmp_path):
    folder = lesson.broken_cases()[key].write(tmp_path)
    findings = lesson.validate_model(folder, gpus=0, backends={"python"}, requests={"X": (2, 4)})
    assert {f.rule for f in findings} == EXPECTED_RULES[key]


def test_validator_reports_the_protobuf_parse_position(tmp_path):
    folder = lesson.broken_cases()["dtype"].write(tmp_path)
    [finding] = lesson.validate_model(folder)
    assert "TYPE_FLOAT32" in finding.detail and finding.severity == "error"


def test_formulas_on_the_bundled_model_and_an_8b_shape():
    info = model_info()
    assert info is not None, "bundled model not prepared: servelab model prepare"
    config = json.loads((info.path / "config.json").read_text())
    assert lesson.llama_parameters(config) == info.parameters == 134_515_008
    assert lesson.llama_parameters(LLAMA_8B_SHAPE) == 8_030_261_248
    # logits for every position of a 512-token prompt: [batch, seq, vocab] FP32
    assert lesson.tensor_bytes((-1, 49152), "TYPE_FP32", batch=1, max_batch_size=8, seq=512) == 100_663_296
    assert lesson.tensor_bytes((-1, 128256), "TYPE_FP32", batch=1, max_batch_size=8, seq=512) == 262_668_288
    assert lesson.tensor_bytes((49152,), "TYPE_FP32", batch=8, max_batch_size=8) == 1_572_864
    assert lesson.instance_weight_bytes(134_515_008, 4, 4) == 2_152_240_128
    assert lesson.instance_weight_bytes(8_030_261_248, 2, 2) / GIB == pytest.approx(29.92, abs=0.01)


def test_exercise_instances_that_fit():
    assert lesson.max_instances(8_030_261_248, 2, 78 * GIB) == 5
    assert lesson.max_instances(134_515_008, 4, 2 * GIB) == 3


# --- the real server --------------------------------------------------------------------------------------

@pytest.mark.engine
def test_generated_repository_loads_and_infers(shared, repo):
    result = lesson.first_model(shared, repo)
    assert result["metadata"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert result["server_config"]["instance_group"][0]["count"] == 1
    assert result["server_config"]["instance_group"][0]["kind"] == "KIND_CPU"
    assert result["server_config"]["version_policy"] == {"latest": {"num_versions": 1}}
    assert result["answer"]["status"] == 200
    np.testing.assert_array_equal(result["answer"]["outputs"]["Y"], np.ones((2, 4), np.float32))
    no_batch = lesson.call(shared, lesson.PREFIX + "scale", {"X": np.ones(4, np.float32)})
    assert no_batch["status"] == 400 and "Expected [-1,4], got [4]" in no_batch["error"]
    too_big = lesson.call(shared, lesson.PREFIX + "scale", {"X": np.ones((9, 4), np.float32)})
    assert "batch-size must be <= 8" in too_big["error"]


@pytest.mark.engine
def test_version_policy_changes_what_is_served(shared, repo):
    rows = {r["policy"]: r for r in lesson.version_policy_demo(shared, repo)}
    assert rows["latest { num_versions: 1 }"]["ready"] == [3]
    assert rows["latest { num_versions: 2 }"]["ready"] == [2, 3]
    assert rows["all { }"]["ready"] == [1, 2, 3]
    assert rows["specific { versions: [1, 3] }"]["ready"] == [1, 3]
    assert all(r["v_"] == "v3 → 3" for r in rows.values())  # no version asked: the highest READY one
    assert rows["all { }"]["v1"] == "v1 → 1" and rows["all { }"]["v2"] == "v2 → 2"
    # "is not found" if this server never loaded that version, "is not at ready state" if it was unloaded
    assert "version 1 is not" in rows["latest { num_versions: 1 }"]["v1"]
    assert "version 2 is not at ready state" in rows["specific { versions: [1, 3] }"]["v2"]


@pytest.mark.engine
def test_exercise_policy_override_without_editing_files(shared, repo):
    name = lesson.PREFIX + "versions"
    shared.add_model(lesson.scale_folder(name, versions=(1, 2, 3)).write(repo))
    assert lesson.ready_versions(shared, name) == [3]
    assert lesson.load_with_policy(shared, name, {"all": {}}) == [1, 2, 3]
    assert "version_policy" not in (shared.repository / name / "config.pbtxt").read_text()
    assert lesson.call(shared, name, {"X": np.ones((1, 4), np.float32)}, version="1")["model_version"] == "1"


@pytest.mark.engine
def test_instance_count_is_parallel_processes(shared, repo):
    rows = lesson.measure_instance_groups(shared, repo, counts=(1, 2), requests=16, rounds=1)
    by_count = {r["count"]: r for r in rows}
    assert by_count[1]["processes"] == 1 and by_count[1]["parallel"] == 1
    # two instances are two stub processes, always; how many executions overlap depends on free cores
    # (a busy 2-core CI machine may serialize them), so the bound is "at most count"
    assert by_count[2]["processes"] == 2 and 1 <= by_count[2]["parallel"] <= 2
    assert all(r["load_s"] > 0 and r["rps"] > 0 for r in rows)


@pytest.mark.engine
def test_auto_complete_fills_the_config(shared, repo):
    result = lesson.completed_config(shared, repo)
    config = result["config"]
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("X", "TYPE_FP32", [4])]
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert config["default_model_filename"] == "model.py"
    assert result["answer"]["status"] == 200 and result["answer"]["shapes"]["Y"] == [2, 4]


@pytest.mark.engine
def test_disable_auto_complete_config_leaves_it_empty(strict, shared, repo):
    result = lesson.completed_config(strict, strict.repository)
    assert result["config"]["input"] == [] and result["config"]["max_batch_size"] == 0
    assert "expected 0 inputs but got 1 inputs" in result["answer"]["error"]
    default = lesson.completed_config(shared, repo)
    rows = {r["field"]: r for r in lesson.compare_auto_complete(default, result, 'backend: "python"\n')}
    assert rows["max_batch_size"]["default"] == "8" and rows["max_batch_size"]["strict"] == "0"
    assert rows["instance_group"]["strict"] == "1 × KIND_CPU"  # filled in even in strict mode


SERVER_SAYS = {  # key phrases of what Triton 2.51 answered (message) and logged (log)
    "dtype": ("failed to poll from model repository", 'Unknown enumeration value of "TYPE_FLOAT32"'),
    "name": ("failed to poll from model repository", "directory name must equal model name"),
    "policy": ("at least one version must be available under the version policy",
               "version 2 is specified for model 'l02repo_bad_policy', but the version directory is not present"),
    "nodims": ("model input 'X' must specify 'dims'", "must specify 'dims'"),
    "reshape": ("has different size for dims and reshape", "has different size for dims and reshape"),
    "backend": ("unable to find backend library for backend 'onnxruntime'", "unable to find backend library"),
    "noversion": ("at least one version must be available", "at least one version must be available"),
    "batchdim": ("Expected [-1,8,4], got [2,4]", None),
    "output": ("200，outputs = []", None),
    "outdtype": ("200，outputs = ['Y FP32']", None),
}


@pytest.mark.engine
def test_broken_repositories_show_the_real_server_errors(triton_scratch, repo):
    rows = {r["case"]: r for r in lesson.capture_broken(triton_scratch, repo)}
    has_log = lesson.server_log(triton_scratch) is not None
    for key, (message, log) in SERVER_SAYS.items():
        assert message in rows[key]["message"], (key, rows[key])
        if log and has_log:
            assert log in rows[key]["log"], (key, rows[key])
    assert rows["dtype"]["status"] == "500" and rows["reshape"]["status"] == "400"
    assert {rows[k]["stage"] for k in ("batchdim", "output", "outdtype")} == {"推論"}
    if lesson.visible_gpus():  # the same folder on a GPU machine loads
        assert rows["kindgpu"]["stage"] == "推論" and rows["kindgpu"]["status"] == "200"
    else:
        assert "has kind KIND_GPU but no GPUs are available" in rows["kindgpu"]["message"]
    client = triton_scratch.http_client()
    index = client.get_model_repository_index()
    client.close()
    assert not [m for m in index if m["name"].startswith(lesson.PREFIX + "bad_")]  # all unloaded, folders gone


@pytest.mark.engine
def test_missing_model_py_never_finishes_loading(strict):
    row = lesson.capture_missing_file(strict, strict.repository, timeout_s=6)
    assert row["validator"] == "missing-model-file"
    assert row["status"] == "timeout" and row["state"] == "LOADING"
    assert "Python model file not found" in row["log"]


@pytest.mark.engine
def test_exercise_reshape_hides_a_dimension(shared, repo):
    folder = lesson.reshape_folder().write(repo)
    assert lesson.validate_model(folder, requests={"X": (3, 1)}) == []
    shared.add_model(folder)
    answer = lesson.call(shared, folder.name, {"X": np.ones((3, 1), np.float32)})
    assert answer["shapes"]["RANK"] == [3, 1]  # the client sees [batch, 1] ...
    assert answer["outputs"]["RANK"].ravel().tolist() == [1, 1, 1]  # ... the model saw rank 1: [batch]


@pytest.mark.engine
def test_vllm_has_a_model_folder_not_a_repository(vllm_shared, settings):
    card = lesson.vllm_served_model(vllm_shared.base_url)
    assert card["served_name"] == "smollm2"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(card["files"])
    assert card["max_model_len"] == settings.max_model_len


@pytest.mark.gpu
@pytest.mark.engine
def test_kind_gpu_instances_on_the_gpu(triton_shared, tmp_path):
    """KIND_GPU accepted: instances run torch on cuda:0 and say so; writes instance_groups_gpu.json/.md."""
    path = lesson.write_gpu(triton_shared, tmp_path)
    rows = json.loads(path.read_text())["rows"]
    assert [r["count"] for r in rows] == [1, 2]
    for row in rows:
        assert row["kind"] == "KIND_GPU" and row["gpus"] == [0]
        assert row["device"].startswith("cuda:0 NVIDIA")
        assert row["instances"] == row["count"] and row["y0"] == 2.0
    cpu_rows = read_results(lesson.LESSON, "instance_groups_gpu")["rows"]  # KIND_CPU on the GPU host's cores
    assert [r["processes"] for r in cpu_rows] == [1, 2, 4]  # every instance is its own stub process
    # requests really overlap across instances; how many at once depends on the client's timing (an H100
    # host once showed 3 of 4), so the bound is "more than one, at most count"
    assert cpu_rows[0]["parallel"] == 1
    assert all(1 < r["parallel"] <= r["count"] for r in cpu_rows[1:])
