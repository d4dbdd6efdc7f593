"""01-Triton_Setup_and_Installation: the installation Triton 2.51 comes from, its health endpoints, a first
Python-backend model over HTTP, gRPC and raw JSON, the start-up and latency it measures, and the errors
a reader meets (missing libraries, a numpy-2 backend environment, a stub for the wrong Python, a taken port,
an unknown model) reproduced for real.

Engines: the session's Triton (``triton_shared``) and vLLM (``vllm_shared``), plus one Triton of this file's
own (``own_triton``): fresh, so its start and first load can be timed, and breakable, so the last test can
wedge it and shut it down.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import statistics
import sys
import time

import httpx
import numpy as np
import pytest

from servelab.runtime import get_settings, model_info
from servelab.runtime.results import RESULTS
from servelab.triton.lab2_1 import l01_triton_setup_and_installation as lesson

CPU = get_settings().profile == "cpu"
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def first_model(triton_shared):
    lesson.load_first_model(triton_shared)
    return triton_shared


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory):
    with lesson.start_and_load(tmp_path_factory.mktemp("l01-repository")) as (endpoint, timings):
        yield endpoint, timings


def _log(endpoint) -> str:
    return endpoint.process.log_path.read_text(errors="replace")


# --- the installation (no server needed) -------------------------------------------------------------

def test_the_wheel_ships_only_the_python_backend_and_stubs_for_six_pythons():
    assert lesson.bundled_backends() == ["python"]
    assert lesson.stub_pythons() == ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
    assert THIS_PYTHON in lesson.stub_pythons()


def test_the_stub_starts_only_with_the_runtime_library_path():
    code, message = lesson.check_stub(with_runtime_env=False)
    assert code == 127
    assert "error while loading shared libraries: libcudart-" in message
    assert message.endswith("cannot open shared object file: No such file or directory")
    code, message = lesson.check_stub(with_runtime_env=True)
    assert code == 1 and message.endswith("Expected 9 arguments, found 1 arguments.")
    assert any(part.endswith("nvidia_pytriton.libs") for part in lesson.library_path_parts())


def test_a_stub_built_for_another_python_cannot_find_its_libpython():
    other = "3.8" if THIS_PYTHON != "3.8" else "3.9"
    code, message = lesson.check_stub(with_runtime_env=True, python=other)
    assert code == 127
    assert f"libpython{other}.so.1.0: cannot open shared object file" in message


def test_memory_budget_formulas_on_the_bundled_model_and_8b():
    bundled, big = lesson.memory_budget(context_tokens=2048, sequences=8)
    assert round(bundled["params_m"] * 1e6) == model_info().parameters == 134_515_008
    assert round(big["params_m"] * 1e6) == 8_030_261_248
    assert bundled["kv_kib_per_token"] * 1024 == 2 * 30 * 3 * 64 * 4 == 46_080
    assert big["kv_kib_per_token"] * 1024 == 2 * 32 * 8 * 128 * 2 == 131_072
    assert big["kv_gib"] == pytest.approx(131_072 * 2048 * 8 / 2**30) == 2.0
    assert big["total_gib"] < 80 * 1e9 / 2**30  # fits one 80 GB card with room to spare


# --- the session's Triton: the first model ------------------------------------------------------------

@pytest.mark.engine
def test_describe_install_asks_the_running_server(first_model):
    info = lesson.describe_install(first_model)
    assert info["server_version"] == "2.51.0"
    assert info["wheel"] == "nvidia-pytriton 0.7.0"
    assert info["wheel_tag"] == "py3-none-manylinux_2_35_x86_64"  # glibc 2.35+, x86-64 only
    assert info["backends"] == ["python"]
    assert info["backend_numpy"].startswith("1.26.")
    assert int(info["client_numpy"].split(".")[0]) >= 2  # the client side runs numpy 2; the backend cannot
    assert {"model_repository", "statistics", "binary_tensor_data"} <= set(info["extensions"])


@pytest.mark.engine
def test_health_endpoints_say_live_and_model_ready(first_model):
    status = lesson.health(first_model)
    assert status["live"] == 200
    assert status["model_ready"] == 200
    assert lesson.health(first_model, model="l01_no_such_model")["model_ready"] == 400


@pytest.mark.engine
def test_http_and_grpc_give_the_same_answer(first_model):
    via_http = lesson.infer_http(first_model.http_client())
    via_grpc = lesson.infer_grpc(first_model.grpc_client())
    assert via_http == via_grpc
    assert via_http["upper"] == ["TRITON", "推論伺服器"]
    assert via_http["length"] == [6, 5]  # characters, not UTF-8 bytes (15 for 推論伺服器)


@pytest.mark.engine
def test_the_model_reports_its_backend_environment(first_model):
    runtime = lesson.infer_http(first_model.http_client())["runtime"]
    assert runtime["kind"] == ("CPU" if CPU else "GPU")
    assert runtime["numpy"].startswith("1.26.")  # numpy<2 inside the stub
    assert runtime["python"].startswith(THIS_PYTHON)
    assert runtime["prefix"].endswith(f"pyenv-py{THIS_PYTHON}")  # the venv first on PATH
    # The stub's embedded Python starts in the C locale, whatever LC_ALL says ...
    assert runtime["start_encoding"] == "ANSI_X3.4-1968"
    assert runtime["stdout_encoding"] == "ascii"
    # ... setlocale(LC_CTYPE, "") picks up the server's LC_ALL=C.UTF-8 for open() ...
    assert runtime["encoding"] == "UTF-8"
    # ... but stdout stays ASCII: print("推論") in a model fails like this.
    with pytest.raises(UnicodeEncodeError, match="'ascii' codec can't encode characters in position 0-1"):
        "推論".encode(runtime["stdout_encoding"])


@pytest.mark.engine
def test_a_debug_print_of_chinese_text_fails_the_request_and_the_logger_does_not(first_model):
    from tritonclient.utils import InferenceServerException

    client = first_model.http_client()
    assert lesson.infer_http(client, texts=["ascii only"], parameters={"debug": "print"})["upper"] == ["ASCII ONLY"]
    with pytest.raises(InferenceServerException) as error:
        lesson.infer_http(client, parameters={"debug": "print"})
    message = str(error.value)
    assert message.startswith("[500] Failed to process the request(s) for model 'l01_hello_0_0', message: "
                              "UnicodeEncodeError: 'ascii' codec can't encode characters in position ")
    assert message.rstrip().endswith("execute")
    assert lesson.infer_http(client, parameters={"debug": "logger"})["upper"] == ["TRITON", "推論伺服器"]


@pytest.mark.engine
def test_raw_kserve_json_returns_only_the_requested_outputs(first_model):
    status, body = lesson.infer_raw_json(f"http://{first_model.http}")
    assert status == 200
    assert body["model_name"] == "l01_hello" and body["model_version"] == "1"
    outputs = {out["name"]: out for out in body["outputs"]}
    assert set(outputs) == {"UPPER", "LENGTH"}  # RUNTIME was not asked for
    assert outputs["UPPER"] == {"name": "UPPER", "datatype": "BYTES", "shape": [2],
                                "data": ["TRITON", "推論伺服器"]}
    assert outputs["LENGTH"]["data"] == [6, 5]


@pytest.mark.engine
def test_an_unknown_model_gets_the_same_error_on_every_path(first_model):
    from tritonclient.utils import InferenceServerException

    text = "Request for unknown model: 'l01_no_such_model' is not found"
    with pytest.raises(InferenceServerException) as http_error:
        lesson.infer_http(first_model.http_client(), model="l01_no_such_model")
    assert str(http_error.value) == f"[404] {text}"
    with pytest.raises(InferenceServerException) as grpc_error:
        lesson.infer_grpc(first_model.grpc_client(), model="l01_no_such_model")
    assert str(grpc_error.value) == f"[StatusCode.NOT_FOUND] {text}"
    assert lesson.infer_raw_json(f"http://{first_model.http}", model="l01_no_such_model") == (404, {"error": text})


@pytest.mark.engine
def test_exercises_index_metrics_and_overhead(first_model):
    assert "l01_hello" in lesson.loaded_models(first_model)
    before = lesson.success_count(first_model)
    client = first_model.grpc_client()
    for _ in range(5):
        lesson.infer_grpc(client)
    assert lesson.success_count(first_model) - before == 5
    row = lesson.measure_latency(first_model, n=20)[0]
    assert 0 < lesson.overhead_share(row) < 1


@pytest.mark.engine
def test_vllm_first_steps(vllm_shared):
    steps = lesson.vllm_first_steps(vllm_shared)
    assert steps["health"] == 200
    installed = importlib.metadata.version("vllm").split("+")[0]
    assert steps["version"].split("+")[0] == installed
    assert steps["models"] == ["smollm2"]
    assert steps["answer"].strip()


# --- this file's own Triton: start-up, latency, and the failures -----------------------------------------

@pytest.mark.engine
def test_a_fresh_server_is_ready_before_its_first_model_is(own_triton):
    endpoint, timings = own_triton
    assert lesson.health(endpoint) == {"live": 200, "ready": 200, "model_ready": 200}
    assert 0 < timings["ready_s"] < 60 and 0 < timings["load_s"] < 120
    log = _log(endpoint)
    assert '"successfully loaded \'l01_hello\'"' in log
    lesson.infer_http(endpoint.http_client(), parameters={"debug": "logger"})
    assert "\"TEXT: ['Triton', '推論伺服器']\"" in _log(endpoint)  # pb_utils.Logger writes UTF-8 to Triton's log
    if CPU:
        # No model loads at start (explicit mode); the first load pays for the stub's Python start-up.
        assert timings["load_s"] > timings["ready_s"]
        assert '"TRITONBACKEND_ModelInstanceInitialize: l01_hello_0_0 (CPU device 0)"' in log
        assert "Failed to initialize NVML" in log and '"Collecting CPU metrics"' in log
        assert lesson.gpu_metric_names(endpoint) == []


@pytest.mark.engine
def test_latency_of_http_grpc_and_json_is_sane(own_triton):
    endpoint, _ = own_triton
    rows = {row["key"]: row for row in lesson.measure_latency(endpoint, n=100)}
    http, grpc, raw, fresh = rows["http"], rows["grpc"], rows["json"], rows["json_new"]
    for row in (http, grpc, raw, fresh):
        assert row["median_ms"] < 100
        assert row["median_ms"] <= row["p90_ms"]
        assert 0 < row["server_mean_ms"] < row["mean_ms"]  # the server's share is part of what we wait for
    assert 0.2 < grpc["median_ms"] / http["median_ms"] < 5
    assert 0.3 < raw["median_ms"] / http["median_ms"] < 10
    # A new httpx client per request (httpx.post) builds an SSL context every time: the client, not
    # Triton, dominates (the server's share stays the same).
    assert fresh["median_ms"] > 10 * raw["median_ms"]
    construction = []
    for _ in range(5):
        start = time.perf_counter()
        httpx.Client().close()
        construction.append((time.perf_counter() - start) * 1000)
    assert statistics.median(construction) > 5 * raw["median_ms"]  # building the client is the cost
    assert fresh["server_mean_ms"] < 5 * raw["server_mean_ms"]


@pytest.mark.engine
def test_a_taken_port_fails_fast_with_a_clear_message(own_triton):
    endpoint, _ = own_triton
    host, port = endpoint.http.rsplit(":", 1)
    ours, theirs = lesson.port_in_use_errors(endpoint)
    assert ours.startswith(f"port {host}:{port} is already in use (Address already in use): stop the server")
    assert f"ss -ltnp 'sport = :{port}'" in ours  # the one line the page quotes says how to find the holder
    assert theirs.startswith("tritonserver exited with code 1 before it was ready")
    assert f"failed to start HTTP service: Unavailable - Socket '{host}:{port}' already in use" in theirs


@pytest.mark.engine
def test_numpy2_backend_env_crashes_the_stub_while_health_says_ready(own_triton):
    from tritonclient.utils import InferenceServerException

    endpoint, _ = own_triton
    assert int(np.__version__.split(".")[0]) >= 2
    env = lesson.load_with_numpy2(endpoint)
    try:
        assert lesson.health(endpoint, model="l01_numpy2")["model_ready"] == 200
        with pytest.raises(InferenceServerException) as error:
            lesson.infer_http(endpoint.http_client(), model="l01_numpy2")
        assert str(error.value) == "[500] Stub process 'l01_numpy2_0_0' is not healthy."
        log = _log(endpoint)
        assert f'"Using Python execution env {env}"' in log
        assert "error: unpack_from requires a buffer of at least" in log
        assert "deserialize_bytes_tensor" in log
        assert lesson.health(endpoint, model="l01_numpy2")["model_ready"] == 200  # still "ready"
        assert lesson.infer_http(endpoint.http_client())["upper"] == ["TRITON", "推論伺服器"]  # the numpy-1 model is fine
    finally:
        endpoint.http_client().unload_model("l01_numpy2")
        shutil.rmtree(env, ignore_errors=True)


@pytest.mark.engine
@pytest.mark.skipif(get_settings().profile == "gpu", reason="KIND_GPU loads fine where there is a GPU")
def test_zy_a_failed_load_keeps_ready_at_400_until_a_restart(own_triton):
    """Near the end: a failed load leaves this file's server not ready for good."""
    endpoint, _ = own_triton
    result = lesson.failed_load_readiness(endpoint)
    assert result["status"] == 400
    assert result["error"] == ("load failed for model 'l01_failed_load': version 1 is at UNAVAILABLE state: "
                               "Invalid argument: instance group l01_failed_load_0 of model l01_failed_load "
                               "has kind KIND_GPU but no GPUs are available;")
    assert result["ready_after_failure"] == 400 and result["ready_after_unload"] == 400  # unload is not enough
    assert result["fixed_status"] == 200 and result["model_ready_after_fix"] == 200  # the model itself serves
    assert result["ready_after_fix"] == 400  # the server stays not ready: only a restart clears it


def test_model_source_is_the_module_without_its_reader_context():
    source = lesson.model_source()
    assert "class TritonPythonModel" in source and "[start:context]" not in source
    assert "from servelab" not in source.split("except ModuleNotFoundError")[-1]  # only the guarded import
    compile(source, "model.py", "exec")


@pytest.mark.engine
def test_zz_a_stub_for_the_wrong_python_wedges_the_load_until_a_restart(own_triton):
    """Last in the file: it leaves this file's server unusable and shuts it down (the only fix)."""
    endpoint, _ = own_triton
    assert lesson.load_with_wrong_stub(endpoint, python="3.8", wait_s=3.0) == "timeout"
    assert lesson.repository_state(endpoint)["l01_wrong_stub"] == "LOADING"
    status = lesson.health(endpoint)
    assert status == {"live": 200, "ready": 400, "model_ready": 200}  # strict readiness: one model is stuck
    assert "/l01_wrong_stub/triton_python_backend_stub: error while loading shared libraries: " \
           "libpython3.8.so.1.0: cannot open shared object file: No such file or directory" in _log(endpoint)
    assert endpoint.process.stop(timeout_s=2) is not None  # restart is the way out; here we just stop it


# --- GPU -------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_triton_reports_the_gpu_and_writes_gpu_results():
    result = lesson.run_all(runs=3, n=200)
    assert result["install"]["server_version"] == "2.51.0"
    assert {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"} \
        <= set(result["gpu_metrics"])
    assert result["answer"]["runtime"]["kind"] == "GPU"
    assert result["answer"]["upper"] == ["TRITON", "推論伺服器"]
    for name in ("install_gpu", "startup_gpu", "latency_gpu"):
        assert (RESULTS / lesson.LESSON / f"{name}.md").exists()
    rows = {row["key"]: row for row in result["latency"]}
    for row in rows.values():
        assert 0 < row["server_mean_ms"] < row["mean_ms"]
    assert max(rows[key]["median_ms"] for key in ("http", "grpc", "json")) < 100
    assert all(0 < run["ready_s"] < 300 and 0 < run["load_s"] < 300 for run in result["startup"])
