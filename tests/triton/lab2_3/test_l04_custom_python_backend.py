"""04-Custom_Python_Backend: every pb_utils feature the page teaches, asserted on the real Triton 2.51.

One ``@experiment`` (:func:`tour`, shared with the notebook) loads the lesson's six numpy models into a
Triton of its own (explicit mode), exercises them and unloads them; the tests assert on what it measured.
Not ``triton_shared``: a model that hung in its unload (once, in CI) left that server not ready for every
later test.
"""

from __future__ import annotations

import json

import pytest

from servelab.runtime.results import results_root
from servelab.triton.lab2_3 import l04_custom_python_backend as lesson


@pytest.fixture(scope="module")
def tour():
    return lesson.tour()


# --- no server ---------------------------------------------------------------------------------

def test_model_py_files_compile_and_name_their_class():
    for cls in (lesson.ScalerModel, lesson.StreamerModel, lesson.BlsModel, lesson.DecoupledBlsModel,
                lesson.EnvModel):
        source = lesson.render_model_py(cls)
        compile(source, "model.py", "exec")
        assert source.endswith(f"TritonPythonModel = {cls.__name__}\n")


def test_configs_parse_with_tritons_own_protobuf():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def parse(text):
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    scaler = parse(lesson.scaler_config(scale=3.0))
    assert not scaler.input and scaler.max_batch_size == 0  # left to auto_complete_config
    assert scaler.parameters["SCALE"].string_value == "3.0"
    assert parse(lesson.streamer_config()).model_transaction_policy.decoupled is True
    assert parse(lesson.bls_config(lesson.DBLS, decoupled=True)).model_transaction_policy.decoupled is True
    assert parse(lesson.env_config("e", "/x")).parameters["EXECUTION_ENV_PATH"].string_value == "/x"


def test_exercises():
    assert 'key: "SCALE" value: { string_value: "3.0" }' in lesson.exercise_scale_config(3.0)
    assert lesson.exercise_executes([1, 3, 3, 3]) == 2
    assert lesson.exercise_executes([1, 1, 1, 1]) == 4
    assert lesson.exercise_executes([4, 4, 4, 4]) == 1
    assert lesson.exercise_executes([2, 1, 2, 1]) == 3  # gathered calls come back in any order
    assert lesson.set_of_batches([2, 1, 2, 1]) == [1, 1, 2]


def test_pinned_env_is_a_venv_with_an_activate_script_and_only_the_pin():
    env = lesson.pinned_env()
    assert (env / "bin" / "activate").exists()  # what EXECUTION_ENV_PATH checks for
    site = next(env.glob("lib/python3.*/site-packages"))
    assert (site / f"numpy-{lesson.PINNED_NUMPY.split('==')[1]}.dist-info").is_dir()
    assert not list(site.glob("*.pth"))  # nothing else leaks in


# --- on the server -----------------------------------------------------------------------------

@pytest.mark.engine
def test_auto_complete_config_filled_in_what_the_file_left_out(tour):
    config = tour["config"]
    assert config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["X"]
    assert {o["name"] for o in config["output"]} == {"Y", "BATCH"}
    assert "dynamic_batching" in config
    assert config["parameters"]["SCALE"]["string_value"] == "2.0"
    assert tour["first"] == {"status": 200, "y": [2.0, 4.0, 6.0], "batch": 1}  # SCALE from the config


@pytest.mark.engine
def test_a_triton_error_fails_one_request_an_exception_fails_the_batch(tour):
    per_request, raised = tour["errors"]
    for case in (per_request, raised):
        assert case["executes"] == 2 and case["requests"] == 4  # the 300 ms request, then the three together
    assert per_request["statuses"] == "200 / 400 / 200" and per_request["failed"] == 1
    assert "X contains NaN" in per_request["error"]
    assert raised["failed"] == 3 and "asked to raise" in raised["error"]
    saved = json.loads((results_root() / lesson.LESSON / "error_isolation.json").read_text())
    assert len(saved["rows"]) == 2


@pytest.mark.engine
def test_custom_metrics_appear_on_tritons_metrics_endpoint(tour):
    samples = tour["metrics_after_errors"]

    def total(prefix):
        return sum(v for k, v in samples.items() if k.startswith(prefix))

    # rows: 1 (first call) + 1 + 2 (the NaN request is not counted) + 1 (the raised batch never gets there)
    assert total("servelab_scaler_rows_total") == 5
    assert total("servelab_scaler_batch_requests_count") == 5  # execute() calls: 1 + 2 + 2
    assert total("servelab_scaler_batch_requests_sum") == 9    # requests in them: 1 + 4 + 4
    buckets = {k: v for k, v in samples.items() if k.startswith("servelab_scaler_batch_requests_bucket")}
    assert any('le="4"' in k for k in buckets) and any('le="+Inf"' in k for k in buckets)


@pytest.mark.engine
def test_decoupled_streaming_and_its_error(tour):
    assert tour["stream"] == {"values": [0, 1, 2, 3, 4], "final_seen": True, "error": None}
    assert "N must be >= 0" in tour["stream_error"]["error"]
    assert tour["stream_error"]["values"] == []


@pytest.mark.engine
def test_cancelling_the_stream_stops_the_model(tour):
    cancel = tour["cancel"]
    assert cancel["received"] == 3
    assert 3 <= cancel["sent_by_model"] < 25  # of 100: the model saw is_cancelled() within a few sends


@pytest.mark.engine
def test_async_bls_runs_the_calls_together(tour):
    sync, async_ = tour["bls"]
    assert sync["mode"] == "sync" and async_["mode"] == "async"
    assert sync["y_ok"] and async_["y_ok"]
    assert sync["executes"] == 4.0  # exec() waits for each answer: four execute() calls
    assert async_["executes"] < 4.0  # gathered calls meet in the scaler's queue and batch
    assert async_["median_ms"] < 0.75 * sync["median_ms"]
    assert sync["median_ms"] >= 4 * 50  # four times the 50 ms of work
    assert sync["streamed"] == [0, 1, 2]  # exec(decoupled=True) on the streamer: every response
    saved = json.loads((results_root() / lesson.LESSON / "bls_sync_vs_async.json").read_text())
    assert saved["provenance"]["profile"] == "cpu"


@pytest.mark.engine
def test_async_bls_inside_a_decoupled_model(tour):
    result = tour["decoupled_async_bls"]
    assert result == {"ok": True, "y": [2.0, 4.0]}  # works on 2.51, despite the README's Limitation line


@pytest.mark.engine
def test_execution_env_path_gives_a_model_its_own_numpy(tour):
    default, pinned = tour["envs"]
    assert default["numpy"] == "1.26.4" and pinned["numpy"] == lesson.PINNED_NUMPY.split("==")[1]
    assert default["python"] == pinned["python"]  # the stub's Python: an environment cannot change it
    assert f"execenv-{lesson.PINNED_NUMPY.replace('==', '-')}" in pinned["prefix"] and "pyenv-py" in default["prefix"]
    assert default["torch_importable"] is True and pinned["torch_importable"] is False


@pytest.mark.engine
def test_finalize_ran_on_unload(tour):
    # 5 rows before the BLS experiments, 2 modes × 5 rounds × 4 calls from the BLS model, 1 from the decoupled one
    assert tour["finalized"] == {"rows": 5 + 40 + 1}
    assert tour["left_loaded"] == []
