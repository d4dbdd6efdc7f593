"""03-Advanced_Features：結構化輸出、LoRA、前綴快取、工具呼叫、平行化。

One extra engine for the whole file: a ``vllm serve`` with ``--enable-lora --lora-modules`` and
``--enable-auto-tool-choice --tool-call-parser hermes`` (module-scoped). Everything else reuses the session's
``vllm_shared`` / ``llm_shared``. The offline ``LoRARequest`` path runs in the lesson's notebook (executed in CI).
"""

from __future__ import annotations

import json
import re

import pytest

from servelab.vllm.lab2_1 import l03_advanced_features as lesson


@pytest.fixture(scope="module")
def adapter():
    return lesson.train_adapter(log=lambda _: None)  # cached after the first run


@pytest.fixture(scope="module")
def lora_tool_server(adapter, bundled_model):
    with lesson.lora_tool_server(adapter) as endpoint:
        yield endpoint


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
    for tp in (1, 3, 4):  # the exercise's rule agrees with vLLM's own validation
        assert lesson.vllm_accepts_tp(bundled_model.path, tp)[0] == (tp in lesson.valid_tp_sizes(
            lesson.bundled_config(), [tp]))
    assert lesson.valid_tp_sizes(lesson.bundled_config()) == [1, 3]
    assert lesson.valid_tp_sizes(lesson.llama_8b_config()) == [1, 2, 4, 8]


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
def test_tensor_parallel_two_gpus_halves_weights_per_gpu():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for tensor_parallel_size=2; this machine has {torch.cuda.device_count()}")
    rows = lesson.tp_benchmark((1, 2))
    lesson.write_tp_results(rows)  # results/vllm/lab2_1/l03_advanced_features/tp_gpu.{json,md}
    tp1, tp2 = rows
    assert all(r["weights_gib"] and r["kv_tokens"] for r in rows), rows  # parsed from the INFO startup log
    assert tp1["weights_gib"] == pytest.approx(tp1["formula_gib"], rel=0.05)
    assert tp2["weights_gib"] / tp1["weights_gib"] == pytest.approx(0.5, abs=0.05)
    assert tp2["kv_tokens"] > 1.8 * tp1["kv_tokens"]  # half the KV per token and more free memory per GPU
    assert tp1["throughput"] > 0 and tp2["throughput"] > 0
