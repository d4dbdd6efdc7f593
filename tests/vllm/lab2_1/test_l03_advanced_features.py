"""03-Advanced_Features：結構化輸出、LoRA、前綴快取、工具呼叫、平行化。

One extra engine for the whole file: a ``vllm serve`` with ``--enable-lora --lora-modules`` and
``--enable-auto-tool-choice --tool-call-parser hermes`` (module-scoped, started in the background with the file's first test). Everything else reuses the session's
``vllm_shared`` / ``llm_shared``. The offline ``LoRARequest`` path runs in the lesson's notebook (executed in CI).
"""

from __future__ import annotations

import json
import re

import pytest

from servelab.testing.plugin import started_with_the_file
from servelab.vllm.lab2_1 import l03_advanced_features as lesson


@pytest.fixture(scope="module")
def adapter():
    return lesson.train_adapter(log=lambda _: None)  # cached after the first run


@pytest.fixture(scope="module", autouse=True)
def lora_tool_server_starting(request, adapter, bundled_model):
    """The LoRA/tool server starts with the file's first test, beside the tests that use the shared engines."""
    with started_with_the_file(request, "lora_tool_server", lambda: lesson.lora_tool_server(adapter),
                               "lora_tool_server") as starting:
        yield starting


@pytest.fixture(scope="module")
def lora_tool_server(lora_tool_server_starting):
    return lora_tool_server_starting.result()


# --- 結構化輸出 ----------------------------------------------------------------------------------

@pytest.mark.engine
def test_offline_structured_outputs_satisfy_their_constraints(llm_shared):
    answers = lesson.structured_offline(llm_shared)
    city = lesson.City.model_validate_json(answers["json"])  # raises if the schema is violated
    assert city.name and city.country and isinstance(city.is_capital, bool)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answers["regex"])
    assert answers["choice"] in {"positive", "negative", "neutral"}
    assert all(lesson.check_structured(kind, text) for kind, text in answers.items())


@pytest.mark.engine
def test_server_response_format_and_structured_outputs_field(vllm_shared):
    answers = lesson.structured_server(vllm_shared)
    assert json.loads(answers["json"]).keys() == {"name", "country", "is_capital"}
    assert re.fullmatch(lesson.DATE_REGEX, answers["regex"])
    assert answers["choice"] in lesson.SENTIMENTS
    assert all(lesson.check_structured(kind, text) for kind, text in answers.items())


def test_check_structured_rejects_what_the_constraint_forbids():
    assert not lesson.check_structured("json", '{"name": "Paris"}')  # missing fields
    assert not lesson.check_structured("json", '{"name": "P", "country": "F", "is_capital": true, "x": 1}')
    assert not lesson.check_structured("regex", "1889-03-31 (Sunday)")
    assert not lesson.check_structured("choice", "Positive")


@pytest.mark.engine
def test_max_tokens_cuts_a_json_object_short(vllm_shared):
    result = lesson.truncated_json(vllm_shared, max_tokens=8)
    assert result["finish_reason"] == "length"
    assert result["text"].startswith("{")
    assert "EOF while parsing" in result["error"]


@pytest.mark.engine
def test_removed_request_field_is_silently_ignored(vllm_shared):
    result = lesson.removed_field_is_ignored(vllm_shared)
    assert result["constrained"] is False  # HTTP 200, yet the output is free text
    assert len(result["text"].split()) > 1


# --- LoRA ----------------------------------------------------------------------------------------

def test_adapter_is_a_real_rank8_lora_trained_to_a_low_loss(adapter):
    info = lesson.adapter_info(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["layers_to_transform"] == list(range(24, 30))
    cfg = lesson.bundled_config()
    h, kv = cfg["hidden_size"], cfg["num_key_value_heads"] * cfg["head_dim"]
    assert info["trainable_parameters"] == 6 * 8 * ((h + h) + (h + kv))  # A and B of q_proj and v_proj
    assert info["losses"][0] > 1.0 and info["losses"][-1] < 0.1
    assert info["adapter_bytes"] < 1_000_000
    assert lesson.training_rows(info)[0]["trainable"] == info["trainable_parameters"]


@pytest.mark.engine
def test_server_serves_base_and_adapter_side_by_side(lora_tool_server):
    assert lesson.served_models(lora_tool_server) == {"smollm2": None, "ahoy": "smollm2"}
    rows = lesson.lora_server(lora_tool_server)
    assert all(row["adapter"] == lesson.ADAPTER_PHRASE for row in rows)
    assert all("Ahoy" not in row["base"] for row in rows)
    assert "Paris" in rows[1]["base"]  # the base model still answers the question
    assert lesson.adapter_took_effect(rows)


@pytest.mark.engine
def test_an_engine_started_without_enable_lora_rejects_a_lora_request(llm_shared, adapter):
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match="but LoRA is not enabled!"):
        lesson.lora_offline(llm_shared, adapter, questions=lesson.HELD_OUT_QUESTIONS[:1])


@pytest.mark.engine
def test_unknown_adapter_name_is_a_404(lora_tool_server):
    import openai

    with pytest.raises(openai.NotFoundError) as error:
        lora_tool_server.client().chat.completions.create(
            model="pirate", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "The model `pirate` does not exist." in str(error.value)


@pytest.mark.engine
def test_runtime_lora_load_use_unload(lora_tool_server, adapter, tmp_path):
    steps = {f"{i}:{step['step']}": step for i, step in enumerate(lesson.runtime_lora(lora_tool_server, adapter))}
    load, again, models, used, unload, gone, after = steps.values()
    assert load["status"] == 200 and load["result"] == "Success: LoRA adapter 'ahoy-live' added successfully."
    assert again["status"] == 400 and "has already been loaded" in again["result"]
    assert "ahoy-live" in models["result"].split(", ")
    assert used["status"] == 200 and used["result"] == lesson.ADAPTER_PHRASE  # the same weights, a new name
    assert unload["status"] == 200 and "removed successfully" in unload["result"]
    assert gone["status"] == 404 and gone["result"].startswith("The model `ahoy-live` does not exist.")
    assert "ahoy-live" not in after["result"].split(", ")
    assert lesson.served_models(lora_tool_server) == {"smollm2": None, "ahoy": "smollm2"}
    table = lesson.write_runtime_lora_results(list(steps.values()), root=tmp_path).with_suffix(".md").read_text()
    assert "load_lora_adapter" in table
    missing = lesson.unload_adapter(lora_tool_server, "x")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "The lora adapter 'x' cannot be found."


@pytest.mark.engine
def test_runtime_lora_endpoints_need_the_environment_variable(vllm_shared, adapter):
    reply = lesson.load_adapter(vllm_shared, "ahoy-live", adapter)  # the shared server runs without it
    assert reply.status_code == 404 and reply.json() == {"detail": "Not Found"}


# --- 工具呼叫 ------------------------------------------------------------------------------------

def test_smollm2_chat_template_ignores_tools():
    assert lesson.template_sees_tools() is False


@pytest.mark.engine
def test_tool_choice_without_a_parser_is_rejected(vllm_shared):
    answers = {name: lesson.tool_call(vllm_shared, choice) for name, choice in lesson.TOOL_CHOICES.items()}
    assert {a["status"] for a in answers.values()} == {400}
    assert answers["auto"]["error"] == (
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    assert answers["required"]["error"] == 'tool_choice="required" requires --tool-call-parser to be set'
    assert answers["named"]["error"] == 'tool_choice=function "get_weather" requires --tool-call-parser to be set'


@pytest.mark.engine
def test_hermes_parser_auto_gets_prose_forced_choice_gets_a_valid_call(lora_tool_server):
    auto = lesson.tool_call(lora_tool_server, "auto", max_tokens=24)
    assert auto["status"] == 200 and auto["tool_calls"] == [] and auto["content"]
    for choice in ("required", "named"):
        answer = lesson.tool_call(lora_tool_server, lesson.TOOL_CHOICES[choice])
        assert answer["status"] == 200, answer
        [call] = answer["tool_calls"]
        assert call["name"] == "get_weather"
        assert set(call["arguments"]) == {"city", "unit"}
        assert call["arguments"]["unit"] in {"celsius", "fahrenheit"}
    cut = lesson.tool_call(lora_tool_server, lesson.TOOL_CHOICES["named"], max_tokens=12)
    assert cut["finish_reason"] == "length" and cut["tool_calls"] == []  # an unfinished call is not parsed
    assert cut["content"].startswith("<tool_call>")


# --- 前綴快取 ------------------------------------------------------------------------------------

@pytest.mark.engine
def test_prefix_cache_hits_full_blocks_and_cuts_ttft(vllm_shared, tmp_path):
    probe = lesson.prefix_cache_probe(vllm_shared, n=3)
    metrics = lesson.scrape(vllm_shared)
    assert metrics["enable_prefix_caching"] == 1.0
    shared = lesson.shared_prefix_tokens(vllm_shared, lesson.long_system_prompt(),
                                         lesson.USER_QUESTIONS[0], lesson.USER_QUESTIONS[1])
    per_request = lesson.expected_prefix_hits(shared, probe["block_size"])
    assert per_request >= 4 * probe["block_size"]  # the system prompt spans several full blocks
    assert probe["cold"]["hits"] < per_request  # a fresh cache_salt shares nothing
    assert probe["warm"]["hits"] >= 3 * per_request  # counters only grow: other clients can add, never take
    assert probe["warm"]["queries"] >= 3 * probe["warm"]["prompt_tokens"]
    assert probe["speedup"] > 2.0, probe  # measured ~10x+ on the bundled model
    table = lesson.write_prefix_results(probe, root=tmp_path).with_suffix(".md").read_text()
    assert "cache_salt" in table and "prefix_cache_hits" in table


# --- 排程預算與 vllm serve --config ---------------------------------------------------------------

@pytest.mark.engine
def test_budget_sweep_trades_ttft_against_itl(vllm_shared, tmp_path):
    rows = lesson.budget_sweep()
    small, medium, default = rows
    assert [r["budget"] for r in rows] == [*lesson.BUDGETS, 2048]  # vLLM's CPU default for vllm serve
    assert default["max_num_seqs"] == 128
    for row in (small, medium):  # --config took effect: vLLM logs the values it parsed from the YAML
        assert row["flags"] == {"max_num_batched_tokens": row["budget"], "max_num_seqs": lesson.BUDGET_MAX_NUM_SEQS,
                                "chunked_prefill_budget": row["budget"]}, row
    assert small["chunks"] > medium["chunks"] > default["chunks"] == 1
    # a small budget splits the long prefill: the running stream never stalls long, the long prompt waits
    assert small["max_gap_ms"] < 0.5 * default["max_gap_ms"], rows
    assert small["ttft_ms"] > default["ttft_ms"], rows
    table = lesson.write_budget_results(rows, root=tmp_path).with_suffix(".md").read_text()
    assert "max_num_batched_tokens" in table and "budget-32.yaml" in table


def test_budget_config_is_a_flat_yaml_of_long_flags(tmp_path):
    import yaml

    path = lesson.write_budget_config(tmp_path, 64)
    assert yaml.safe_load(path.read_text()) == {"max-num-batched-tokens": 64, "max-num-seqs": 16,
                                                "enable-chunked-prefill": True}
    command = lesson.serve_command("cpu")
    assert command[command.index("--config") + 1] == "budget-32.yaml"


def test_config_file_must_be_yaml(tmp_path):
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    (tmp_path / "budget.json").write_text('{"max-num-seqs": 4}')
    with pytest.raises(ValueError, match="Config file must be of a yaml/yml type. json supplied"):
        FlexibleArgumentParser().load_config_file(str(tmp_path / "budget.json"))


def test_vllm_rejects_a_budget_below_max_num_seqs_or_without_chunked_prefill(bundled_model):
    assert lesson.scheduler_config_error(max_num_batched_tokens=32, max_num_seqs=16) is None
    assert lesson.scheduler_config_error(max_num_batched_tokens=8, max_num_seqs=16) == (
        "max_num_batched_tokens (8) must be greater than or equal to max_num_seqs (16).")
    assert lesson.scheduler_config_error(max_num_batched_tokens=32, max_num_seqs=16,
                                         enable_chunked_prefill=False) == (
        "max_num_batched_tokens (32) is smaller than max_model_len (2048).")


def test_production_gpu_flags_are_the_dockerfile_and_manifest_flags():
    from servelab.book.tree import ROOT

    dockerfile = (ROOT / "docker/vllm/Dockerfile").read_text()
    manifest = (ROOT / "docker/vllm/k8s/deployment.yaml").read_text()
    flags = lesson.PRODUCTION_GPU_FLAGS
    for text in (dockerfile, manifest):
        for key in ("max_model_len", "max_num_seqs", "gpu_memory_utilization"):
            option = "--" + key.replace("_", "-")
            value = re.search(rf'{option}"?,?\s*(?:-\s*)?"?([\d.]+)"?', text)
            assert value and float(value[1]) == flags[key], (option, value)
        assert "--enforce-eager" not in text  # CUDA graphs: vLLM's default
    assert flags["enforce_eager"] is False


# --- 平行化 --------------------------------------------------------------------------------------

def test_parameter_formula_matches_the_bundled_model_and_llama_8b(bundled_model):
    counts = lesson.param_counts(lesson.bundled_config())
    assert sum(counts.values()) == bundled_model.parameters
    assert sum(lesson.param_counts(lesson.llama_8b_config()).values()) == 8_030_261_248


def test_per_gpu_memory_formulas():
    cfg8b = lesson.llama_8b_config()
    tp1, tp2, tp4 = (lesson.weight_gib_per_gpu(cfg8b, tp) for tp in (1, 2, 4))
    assert tp1 == pytest.approx(8_030_261_248 * 2 / 2**30)
    assert tp2 == pytest.approx(tp1 / 2, rel=1e-4) and tp4 == pytest.approx(tp1 / 4, rel=1e-4)
    assert lesson.kv_bytes_per_token_per_gpu(cfg8b, 1) == 2 * 32 * 8 * 128 * 2 == 131072
    assert lesson.kv_bytes_per_token_per_gpu(cfg8b, 2) == 65536
    assert lesson.kv_bytes_per_token_per_gpu(lesson.bundled_config(), 1, dtype_bytes=4) == 46080
    rows = lesson.parallel_memory_rows()
    assert [r["tp"] for r in rows] == [1, 3, 1, 2, 4, 8]


def test_vllm_rejects_a_tp_size_that_does_not_split_the_heads(bundled_model):
    ok, message = lesson.vllm_accepts_tp(bundled_model.path, 2)
    assert not ok
    assert message == "Total number of attention heads (9) must be divisible by tensor parallel size (2)."
    for tp in (1, 3, 4, 9):  # the exercise's rule agrees with vLLM's own validation (9: one head per GPU)
        assert lesson.vllm_accepts_tp(bundled_model.path, tp)[0] == (tp in lesson.valid_tp_sizes(
            lesson.bundled_config(), [tp]))
    assert lesson.valid_tp_sizes(lesson.bundled_config()) == [1, 3, 9]
    assert lesson.valid_tp_sizes(lesson.llama_8b_config()) == [1, 2, 4, 8, 16]


# --- 練習題 --------------------------------------------------------------------------------------

@pytest.mark.engine
def test_exercise_triage_returns_a_validated_ticket(vllm_shared):
    ticket = lesson.triage(vllm_shared, "My order #1234 arrived broken and I need a replacement before Friday!")
    assert isinstance(ticket, lesson.Ticket)
    assert ticket.priority in set(lesson.Priority) and isinstance(ticket.needs_human, bool)
    assert 0 < len(ticket.summary) <= 60


def test_exercise_expected_prefix_hits_counts_full_blocks_only():
    assert lesson.expected_prefix_hits(641, 128) == 640
    assert lesson.expected_prefix_hits(127, 128) == 0
    assert lesson.expected_prefix_hits(256, 16) == 256


# --- GPU：雙卡 tensor parallel -------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.engine
def test_tensor_parallel_two_gpus_with_production_flags():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for tensor_parallel_size=2; this machine has {torch.cuda.device_count()}")
    rows = lesson.tp_benchmark((1, 2))
    lesson.write_tp_results(rows)  # results/vllm/lab2_1/l03_advanced_features/tp_gpu.{json,md}
    tp1, tp2 = rows
    assert all(r["weights_gib"] and r["kv_tokens"] for r in rows), rows  # parsed from the INFO startup log
    assert tp1["weights_gib"] == pytest.approx(tp1["formula_gib"], rel=0.05)
    assert tp2["weights_gib"] / tp1["weights_gib"] == pytest.approx(0.5, abs=0.05)
    for row in rows:  # vLLM's block count (/metrics) and its KV size line (log) agree
        if row["kv_blocks"] == row["kv_blocks"]:  # not NaN: the label exists in this vLLM
            assert row["kv_blocks"] * row["block_size"] == pytest.approx(row["kv_tokens"], rel=0.01), row
    assert tp2["kv_tokens"] > 1.8 * tp1["kv_tokens"]  # half the KV per token and more free memory per GPU
    assert tp1["itl_ms"] < 12, tp1  # CUDA graphs on (the eager run measured 16.5 ms/token on an H100)
    assert tp1["throughput"] > 0 and tp2["throughput"] > 0
