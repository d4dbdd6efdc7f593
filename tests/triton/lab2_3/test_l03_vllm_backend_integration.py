"""03-vLLM_Backend_Integration: the book's vllm_backend-compatible model in the session's Triton, against
the session's ``vllm serve`` on the same engine arguments.

The model (``vllm_backend``) is loaded into ``triton_shared`` once (about 30 s on this CPU) and stays loaded
for the session, so the page's curl blocks find it; ``deploy`` is idempotent.
"""

from __future__ import annotations

import json

import pytest

from servelab.runtime.results import results_root
from servelab.triton.lab2_3 import l03_vllm_backend_integration as lesson


@pytest.fixture(scope="module")
def served(triton_shared, vllm_shared):
    return lesson.deploy(triton_shared)


# --- files (no engine) --------------------------------------------------------------------------

def test_model_folder_has_model_json_and_a_minimal_config(tmp_path):
    folder = lesson.write_backend_model(tmp_path, "m")
    engine_args = json.loads((folder / "1" / "model.json").read_text())
    from servelab.runtime.vllm_engine import engine_kwargs

    expected = engine_kwargs()
    assert {k: engine_args[k] for k in ("model", "dtype", "max_model_len")} == \
        {k: expected[k] for k in ("model", "dtype", "max_model_len")}
    assert "served_model_name" not in engine_args
    config = (folder / "config.pbtxt").read_text()
    assert "input" not in config and "decoupled" not in config and "KIND_MODEL" in config
    shipped = (folder / "1" / "model.py").read_text()
    assert shipped.rstrip().endswith(lesson.END_OF_MODEL_PY) and "import httpx" not in shipped


def test_vllm_inputs_data_is_gone_in_this_vllm():
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vllm.inputs.data")
    from vllm.inputs import TextPrompt, TokensPrompt  # where they live now

    assert TokensPrompt(prompt_token_ids=[1, 2])["prompt_token_ids"] == [1, 2]
    assert TextPrompt(prompt="hi")["prompt"] == "hi"


# --- the real server ---------------------------------------------------------------------------

@pytest.mark.engine
def test_auto_complete_fills_inputs_outputs_and_decoupled(served):
    config = lesson.loaded_config()
    inputs = {i["name"]: i for i in config["input"]}
    assert set(inputs) == {s["name"] for s in lesson.INPUTS}
    assert inputs["text_input"]["data_type"] == "TYPE_STRING" and not inputs["text_input"].get("optional")
    assert inputs["stream"]["optional"] is True
    assert {o["name"] for o in config["output"]} == {"text_output", "finish_reason", "num_output_tokens"}
    assert config["model_transaction_policy"]["decoupled"] is True
    assert config["max_batch_size"] == 0
    assert config["instance_group"][0]["kind"] == "KIND_MODEL"


@pytest.mark.engine
def test_same_request_same_text_through_both_servers(served):
    triton = lesson.generate_triton(max_tokens=8)
    vllm = lesson.generate_vllm(max_tokens=8)
    assert triton["status"] == 200 and vllm["status"] == 200
    assert triton["text_output"] == vllm["choices"][0]["text"]  # greedy, same engine args, no template
    assert triton["text_output"].strip()


@pytest.mark.engine
def test_prompt_is_prepended_unless_excluded(served):
    full = lesson.generate_triton(max_tokens=4, exclude_input_in_output=False, return_finish_reason=True,
                                  return_num_output_tokens=True)
    short = lesson.generate_triton(max_tokens=4)
    assert full["text_output"] == lesson.PROMPT + short["text_output"]
    assert full["finish_reason"] == "length" and full["num_output_tokens"] == 4


@pytest.mark.engine
def test_stream_sends_one_response_per_token(served):
    run = lesson.stream_triton(max_tokens=6)
    assert run["chunks"] == 6 and len(run["times"]) == 6
    assert run["times"] == sorted(run["times"])
    assert run["text"] == lesson.stream_vllm(max_tokens=6)["text"]


@pytest.mark.engine
def test_a_bad_request_fails_alone_with_the_backend_message(served):
    bad = lesson.generate_triton(max_tokens=4, sampling_parameters=json.dumps({"max_tokens": 4, "bogus": 1}))
    assert bad["status"] == 400 and "unknown sampling parameters: ['bogus']" in bad["error"]
    lora = lesson.generate_triton(sampling_parameters=json.dumps({"max_tokens": 2, "lora_name": "sql"}))
    assert "LoRA feature is not enabled." in lora["error"]
    assert lesson.generate_triton(max_tokens=2)["status"] == 200


@pytest.mark.engine
def test_custom_metrics_count_tokens(served, triton_shared):
    before = lesson.metric_value(triton_shared.metrics_text(), "vllm:generation_tokens_total")
    lesson.generate_triton(max_tokens=5)
    text = triton_shared.metrics_text()
    assert lesson.metric_value(text, "vllm:generation_tokens_total") - before == 5
    assert lesson.metric_value(text, "vllm:prompt_tokens_total") > 0
    assert lesson.metric_value(text, "vllm:num_requests_running") == 0


@pytest.mark.engine
def test_grpc_cancel_and_a_closed_http_stream_both_abort_the_request(served):
    rows = {r["transport"]: r for r in lesson.cancellation(max_tokens=48)}
    assert rows["grpc"]["chunks_read"] == rows["http"]["chunks_read"] == 2
    for row in rows.values():  # is_cancelled() seen, request aborted in vLLM long before 48 tokens
        assert 2 <= row["tokens_generated"] < 24
    assert lesson.running_and_generated()[0] == 0
    assert lesson.generate_triton(max_tokens=2)["status"] == 200


@pytest.mark.engine
def test_exercise_parameters_object_equals_sampling_parameters_input(served):
    assert lesson.generate_with_parameters(max_tokens=4)["text_output"] == \
        lesson.generate_triton(max_tokens=4)["text_output"]


@pytest.mark.engine
def test_exercise_each_stream_response_carries_one_token(served):
    assert lesson.tokens_per_response(max_tokens=6) == [1] * 6


@pytest.mark.engine
def test_side_by_side_benchmark(served):
    rows = {r["server"]: r for r in lesson.side_by_side()}
    assert len(rows) == 2
    for row in rows.values():
        assert row["requests"] == 8 and 5 <= row["chunks_per_request"] <= 10  # a chunk may hold 2 tokens
        assert row["ttft_ms_p50"] > 0 and row["itl_ms_p50"] > 0 and row["tokens_per_s"] > 0
    saved = json.loads((results_root() / lesson.LESSON / "side_by_side.json").read_text())
    assert saved["engine_args"]["max_model_len"] == lesson.model_json()["max_model_len"]


@pytest.mark.gpu
def test_side_by_side_on_gpu(triton_shared, vllm_shared):
    lesson.deploy(triton_shared)
    rows = lesson.side_by_side(clients=16, per_client=4, max_tokens=64)
    triton, vllm = rows
    assert 32 <= triton["chunks_per_request"] <= 64 and 32 <= vllm["chunks_per_request"] <= 64
    assert vllm["tokens_per_s"] > 0 and triton["tokens_per_s"] > 0
    assert (results_root() / lesson.LESSON / "side_by_side_gpu.json").exists()
