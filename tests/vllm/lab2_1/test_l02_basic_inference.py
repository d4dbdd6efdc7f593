"""02-Basic_Inference: generate/chat, every SamplingParams knob, the OpenAI server, determinism, benchmark."""

from __future__ import annotations

import json
import math

import openai
import pytest

from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE
from servelab.vllm.lab2_1 import l02_basic_inference as lesson

QUESTION = lesson.QUESTION
PARIS = lesson.PROMPTS[0]  # "The capital of France is"


@pytest.fixture(scope="module")
def llm(llm_shared):
    """The session's offline engine, with torch using as many threads as vLLM's CPU worker binds."""
    with lesson.cpu_threads():
        yield llm_shared


@pytest.fixture(scope="module")
def bundled_config(bundled_model):
    return json.loads((bundled_model.path / "config.json").read_text())


# ---- offline: generate and chat ---------------------------------------------------------------------

@pytest.mark.engine
def test_generate_returns_one_output_per_prompt_in_order(llm):
    rows = lesson.first_generate(llm, max_tokens=12)
    assert [r["prompt"] for r in rows] == lesson.PROMPTS
    assert "Paris" in rows[0]["text"]
    assert all(0 < r["output_tokens"] <= 12 for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(r["finish_reason"] == "stop" for r in rows if r["output_tokens"] < 12)  # ended by EOS


@pytest.mark.engine
def test_chat_sends_exactly_the_rendered_template(llm):
    text, ids = lesson.render_chat(llm, QUESTION)
    result = lesson.chat(llm, QUESTION)
    assert result["prompt"] == text and result["prompt_token_ids"] == ids
    # SmolLM2's template adds its own system prompt when the conversation has none
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")  # add_generation_prompt=True
    assert "Paris" in result["text"]


@pytest.mark.engine
def test_a_system_message_replaces_the_default_one(llm):
    text, _ = lesson.render_chat(llm, [{"role": "system", "content": "Answer in French."}, *QUESTION])
    assert "SmolLM" not in text and text.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")


@pytest.mark.engine
def test_template_rows_add_up_to_the_servers_prompt_tokens(llm, vllm_shared):
    rows = lesson.chat_template_rows(llm)
    total = rows[-1]["tokens"]
    assert sum(r["tokens"] for r in rows[:-1]) == total
    assert lesson.openai_chat(vllm_shared, QUESTION, max_tokens=1)["prompt_tokens"] == total


# ---- SamplingParams ---------------------------------------------------------------------------------

@pytest.mark.engine
def test_temperature_zero_is_deterministic(llm):
    first, second = lesson.greedy_twice(llm, "Once upon a time", max_tokens=16)
    assert first == second and first


@pytest.mark.engine
def test_top_k_1_and_a_tiny_top_p_collapse_sampling_to_greedy(llm):
    result = lesson.truncated_sampling(llm, "My favourite animal is", n=6)
    assert len(set(result["free"])) > 1  # temperature 1, no truncation: the samples differ
    assert result["top_k=1"] == [result["greedy"]] * 6
    assert result["top_p=0.01"] == [result["greedy"]] * 6


@pytest.mark.engine
def test_max_tokens_bounds_length_and_stop_truncates(llm):
    result = lesson.length_and_stop(llm, PARIS, max_tokens=24)
    assert result["full_tokens"] == 24 and result["full_finish"] == "length"
    assert result["stopped_finish"] == "stop" and result["stop_reason"] == "."
    assert "." not in result["stopped_text"]  # the stop string is not included by default
    assert result["stopped_text"] == result["full_text"].split(".")[0]


@pytest.mark.engine
def test_same_seed_reproduces_and_n_returns_n(llm):
    first = lesson.seeded_samples(llm, "My favourite animal is", seed=7, n=3)
    again = lesson.seeded_samples(llm, "My favourite animal is", seed=7, n=3)
    other = lesson.seeded_samples(llm, "My favourite animal is", seed=8, n=3)
    assert len(first) == 3 and first == again
    assert len(set(first)) > 1  # n samples of one request are different draws
    assert other != first
    assert other[:2] == first[1:]  # child i of a request with seed s samples with seed s + i


@pytest.mark.engine
def test_logprobs_have_one_entry_per_token_and_add_up(llm):
    result = lesson.token_logprobs(llm, PARIS, k=3, max_tokens=6)
    steps = result["steps"]
    assert len(steps) == 6
    assert all(s["candidates"] in (3, 4) for s in steps)  # k alternatives, +1 if the chosen one is not among them
    assert all(len(s["top"]) == 3 and s["top"][0][2] == 1 for s in steps)
    assert all(s["logprob"] == pytest.approx(s["top"][0][1]) for s in steps)  # greedy picks rank 1
    assert result["cumulative_logprob"] == pytest.approx(sum(s["logprob"] for s in steps), abs=1e-4)
    assert steps[0]["token"] == " Paris"


@pytest.mark.engine
def test_first_token_table_marks_what_top_k_and_top_p_keep(llm):
    rows = lesson.first_token_table(llm, PARIS, k=8, top_k=3, top_p=0.8)
    probs = [r["p"] for r in rows]
    assert probs == sorted(probs, reverse=True) and rows[0]["token"] == "`' Paris'`"
    assert [r["top_k"] for r in rows] == ["✓"] * 3 + [""] * 5
    kept = [r for r in rows if r["top_p"]]
    assert kept == rows[:len(kept)]
    assert sum(r["p"] for r in kept[:-1]) < 0.8 <= sum(r["p"] for r in kept)  # smallest set reaching top_p
    for r in rows[1:]:  # T<1 sharpens, T>1 flattens: odds against the leader
        assert r["odds_t05"] < r["p"] / rows[0]["p"] < r["odds_t2"]


@pytest.mark.engine
def test_temperature_sweep_spreads_with_temperature(llm):
    rows = {r["temperature"]: r for r in lesson.temperature_sweep(llm, PARIS, n=8)}
    assert rows[0.0]["distinct"] == 1 and rows[0.0]["first_is_greedy"] == 1.0
    assert rows[1.5]["distinct"] > 1
    assert rows[1.5]["first_is_greedy"] <= rows[0.5]["first_is_greedy"]
    assert rows[1.5]["mean_logprob"] < rows[0.0]["mean_logprob"]


def test_invalid_sampling_params_name_the_parameter():
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    with pytest.raises(VLLMValidationError, match=r"temperature must be non-negative, got -1"):
        SamplingParams(temperature=-1)
    with pytest.raises(VLLMValidationError, match=r"top_p must be in \(0, 1\], got 0"):
        SamplingParams(top_p=0)
    with pytest.raises(VLLMValidationError, match="n must be 1 when using greedy sampling, got 4"):
        SamplingParams(n=4, temperature=0.0)


# ---- batching ---------------------------------------------------------------------------------------

@pytest.mark.engine
def test_one_call_with_many_prompts_beats_a_loop(llm):
    prompts = [f"Write one sentence about the number {i}." for i in range(8)]
    result = lesson.batch_vs_loop(llm, prompts)  # the notebook's call: measured once per session
    assert result["tokens"] == 8 * 16
    assert result["same_text"] == "✓"
    assert result["speedup"] > 2.0, result


# ---- the OpenAI-compatible server -------------------------------------------------------------------

@pytest.mark.engine
def test_completions_match_the_offline_engine(llm, vllm_shared):
    served = lesson.openai_completion(vllm_shared, PARIS, max_tokens=8)
    offline = lesson.first_generate(llm, [PARIS], max_tokens=8)[0]
    assert served["text"] == offline["text"] and "Paris" in served["text"]
    assert served["prompt_tokens"] == offline["prompt_tokens"]
    assert served["completion_tokens"] == offline["output_tokens"]


@pytest.mark.engine
def test_chat_matches_the_offline_chat(llm, vllm_shared):
    served = lesson.openai_chat(vllm_shared, QUESTION, max_tokens=16)
    offline = lesson.chat(llm, QUESTION, max_tokens=16)
    assert served["text"] == offline["text"]
    assert served["prompt_tokens"] == len(offline["prompt_token_ids"])


@pytest.mark.engine
def test_stream_delivers_the_same_text_in_pieces(vllm_shared):
    whole = lesson.openai_chat(vllm_shared, QUESTION, max_tokens=16)
    streamed = lesson.openai_stream(vllm_shared, QUESTION, max_tokens=16)
    assert streamed["text"] == whole["text"]
    assert streamed["chunks"] > 2
    assert streamed["completion_tokens"] == whole["completion_tokens"]
    assert streamed["finish_reason"] == whole["finish_reason"]


@pytest.mark.engine
def test_server_seed_reproduces_and_top_k_goes_through_extra_body(vllm_shared):
    story = [{"role": "user", "content": "Tell me a very short story."}]
    first = lesson.openai_chat(vllm_shared, story, max_tokens=16, temperature=1.0, seed=123)
    again = lesson.openai_chat(vllm_shared, story, max_tokens=16, temperature=1.0, seed=123)
    assert first["text"] == again["text"]
    greedy = lesson.openai_chat(vllm_shared, story, max_tokens=16)
    top1 = lesson.openai_chat(vllm_shared, story, max_tokens=16, temperature=1.0, top_k=1)
    assert top1["text"] == greedy["text"]


@pytest.mark.engine
def test_chat_logprobs(vllm_shared):
    steps = lesson.openai_logprobs(vllm_shared, QUESTION, top=3, max_tokens=4)
    assert len(steps) == 4
    for token, logprob, top in steps:
        assert len(top) == 3 and top[0] == (token, pytest.approx(logprob)) and logprob <= 0


@pytest.mark.engine
def test_server_errors_readers_hit(vllm_shared):
    client = vllm_shared.client()
    with pytest.raises(openai.NotFoundError, match="The model `gpt-4o` does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="cannot be greater than max_model_len=2048"):
        client.chat.completions.create(model=vllm_shared.model, messages=QUESTION, max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="Requested sample logprobs of 30, which is greater than "
                                                     "max allowed: 20"):
        client.completions.create(model=vllm_shared.model, prompt=PARIS, max_tokens=4, logprobs=30)
    with pytest.raises(openai.BadRequestError, match="top_k must be 0 \\(disable\\), or at least 1"):
        client.chat.completions.create(model=vllm_shared.model, messages=QUESTION, max_tokens=4,
                                       extra_body={"top_k": -5})


def test_triton_request_shapes_carry_the_same_request():
    generate = lesson.triton_generate_request(PARIS, max_tokens=16, temperature=0.0)
    assert generate == {"text_input": PARIS, "exclude_input_in_output": True,
                        "parameters": {"stream": False, "max_tokens": 16, "temperature": 0.0}}
    infer = lesson.kserve_infer_request(PARIS, max_tokens=16, temperature=0.0)
    tensors = {t["name"]: t for t in infer["inputs"]}
    assert tensors["text_input"]["datatype"] == "BYTES" and tensors["text_input"]["data"] == [PARIS]
    assert tensors["exclude_input_in_output"]["data"] == [generate["exclude_input_in_output"]]
    assert all(t["shape"] == [len(t["data"])] for t in infer["inputs"])
    assert json.loads(tensors["sampling_parameters"]["data"][0]) == {"max_tokens": 16, "temperature": 0.0}
    assert infer["outputs"] == [{"name": "text_output"}]


# ---- determinism --------------------------------------------------------------------------------------

@pytest.mark.engine
def test_batch_composition_changes_numbers_not_greedy_tokens_here(llm):
    rows = lesson.batch_invariance_probe(llm, PARIS, sizes=(1, 4, 16))  # the notebook's call: measured once per session
    assert [r["batch"] for r in rows] == [1, 4, 16]
    assert rows[0] == {"batch": 1, "same_tokens": "16/16", "max_logprob_diff": 0.0}
    assert all(r["same_tokens"] == "16/16" for r in rows)
    assert all(r["max_logprob_diff"] < 1e-3 for r in rows)


# ---- benchmark, roofline ------------------------------------------------------------------------------

def test_parameter_count_from_config(bundled_config, bundled_model):
    small = lesson.parameter_count(bundled_config)
    assert small["total"] == bundled_model.parameters  # the number the model manifest recorded
    assert small["tied"] and small["read_per_token"] == small["total"]  # tied: the embedding is the LM head
    big = lesson.parameter_count(LLAMA_8B_SHAPE)
    assert big["total"] == 8_030_261_248
    assert big["read_per_token"] == big["total"] - 128256 * 4096  # untied: the input embedding is a lookup


def test_random_llama_has_exactly_the_counted_parameters(bundled_config):
    import torch

    model = lesson.hf_random_llama(bundled_config, device="cpu", dtype="float32")
    assert sum(p.numel() for p in model.parameters()) == lesson.parameter_count(bundled_config)["total"]
    assert next(model.parameters()).dtype == torch.float32
    # the GPU benchmark's HF side, built on the meta device (no memory): Llama-3.1-8B's shapes in bf16
    big = lesson.hf_random_llama(LLAMA_8B_SHAPE, device="meta", dtype="bfloat16")
    assert sum(p.numel() for p in big.parameters()) == lesson.parameter_count(LLAMA_8B_SHAPE)["total"]
    assert next(big.parameters()).dtype == torch.bfloat16


def test_roofline_of_an_8b_model_on_h100():
    bound = lesson.decode_roofline_ms(LLAMA_8B_SHAPE, 2, lesson.hbm_bandwidth("NVIDIA H100 80GB HBM3"))
    assert 4.4 < bound < 4.6  # 7.5 G params read × 2 bytes / 3.35 TB/s
    longer = lesson.decode_roofline_ms(LLAMA_8B_SHAPE, 2, 3.35e12, context_tokens=8192)
    assert longer - bound == pytest.approx(8192 * 131072 / 3.35e12 * 1000)  # 128 KiB of KV per token
    assert lesson.hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    with pytest.raises(ValueError, match="no HBM bandwidth on file"):
        lesson.hbm_bandwidth("Some GPU")


@pytest.mark.engine
def test_cpu_benchmark_small(llm, tmp_path):
    result = lesson.cpu_benchmark(llm, prompts=8, input_len=16, output_len=8, hf_batches=(4, 8), static_batch=4,
                                  write=True, root=tmp_path)
    rows = {(r["workload"], r["engine"], r["batching"]): r for r in result["rows"]}
    fixed, varied = lesson.output_lengths(8, 8, False), lesson.output_lengths(8, 8, True)
    assert len(set(varied)) > 2 and all(1 <= n <= 15 for n in varied)  # varied: 1..15 tokens
    for workload, lengths in (("固定", fixed), ("長度不一", varied)):
        assert rows[(workload, "vLLM", "全部 8 （連續）")]["output_tokens"] == sum(lengths)  # same useful work
        assert rows[(workload, "vLLM", "4 （靜態）")]["output_tokens"] == sum(lengths)
        assert rows[(workload, "HF transformers", "4 （靜態）")]["output_tokens"] == sum(lengths)
        assert rows[(workload, "vLLM", "全部 8 （連續）")]["wasted"] == 0
    # HF pads every request of a batch to the batch's longest one: with varied lengths it computes waste
    assert rows[("固定", "HF transformers", "8 （靜態）")]["wasted"] == 0
    hf8 = rows[("長度不一", "HF transformers", "8 （靜態）")]
    assert hf8["wasted"] == pytest.approx(1 - sum(varied) / (8 * max(varied)))
    best = max(r["tokens_per_s"] for k, r in rows.items() if k[0] == "長度不一" and k[1].startswith("HF"))
    cont = rows[("長度不一", "vLLM", "全部 8 （連續）")]
    assert cont["vs_hf_best"] == f"{cont['tokens_per_s'] / best:.1f}×"
    small = rows[("長度不一", "HF transformers", "4 （靜態）")]["tokens_per_s"]
    assert cont["vs_hf_small"] == f"{cont['tokens_per_s'] / small:.1f}×"
    assert int(result["greedy_match"].split("/")[0]) >= 3  # the same weights: greedy outputs agree
    assert result["torch_threads"] == len(lesson.vllm_bound_cpus())
    data = json.loads((tmp_path / lesson.LESSON / "throughput_cpu.json").read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"])) and data["provenance"]["profile"] == "cpu"
    assert data["load_average_before"] and "| 長度不一 | vLLM |" in (tmp_path / lesson.LESSON / "throughput_cpu.md").read_text()


@pytest.mark.engine
def test_n_samples_share_only_full_prefix_blocks(llm):
    """V1 runs n samples as n child requests; they share the prompt's KV only through prefix caching."""
    short = lesson.n_sharing(llm, 5, n=4)
    assert short["block_size"] == 128 and short["full_blocks"] == 0
    assert short["cached_per_request"] == [0, 0, 0, 0]  # a 5-token prompt fills no block: nothing shared
    assert short["prefill_tokens"] == 4 * 5
    long = lesson.n_sharing(llm, 300, n=4)
    assert long["full_blocks"] == 2
    assert long["cached_per_request"][0] == 0  # the first child computes the prompt
    assert long["cached_per_request"][1:] == [256, 256, 256]  # the others reuse its two full blocks
    assert long["prefill_tokens"] == 300 + 3 * 44


def test_cpu_threads_follow_vllms_own_binding(monkeypatch):
    import os

    bound = lesson.vllm_bound_cpus()
    assert set(bound) <= os.sched_getaffinity(0)
    with lesson.cpu_threads() as threads:
        assert threads == len(bound)
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # nothing reserved: one CPU per physical core
    assert len(lesson.vllm_bound_cpus()) >= len(bound)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert lesson.vllm_bound_cpus() == [0]


@pytest.mark.engine
def test_gpu_code_paths_run_on_the_cpu_engine(llm):
    """What gpu_benchmark calls on the engine, exercised here on the bundled model (token-id prompts)."""
    prompts = lesson.make_prompts(3, 8)
    assert lesson.make_prompts(3, 8) == prompts and all(len(p) == 8 for p in prompts)
    run = lesson.run_vllm(llm, prompts, [2, 4, 3], batch_size=2)
    assert run["output_tokens"] == 9 and [len(t) for t in run["tokens"]] == [2, 4, 3]
    assert lesson.decode_ms_per_token(llm, prompts[0], tokens=4, repeats=1) > 0
    rows = lesson.batch_invariance_probe(llm, {"prompt_token_ids": prompts[0]}, sizes=(1, 3), max_tokens=4,
                                         fillers=[{"prompt_token_ids": p} for p in prompts[1:]],
                                         detokenize=False)
    assert [r["batch"] for r in rows] == [1, 3] and rows[0]["same_tokens"] == "4/4"
    fillers = lesson.many_fillers(255)
    assert len(set(fillers)) == 255 and fillers[:31] == lesson.FILLERS


@pytest.mark.gpu
def test_gpu_benchmark_writes_results():
    result = lesson.gpu_benchmark()
    rows = {(r["workload"], r["engine"], r["batching"]): r for r in result["throughput"]}
    graphs, eager = "vLLM（CUDA graphs）", "vLLM（eager）"
    for workload in ("固定", "長度不一"):
        cont = rows[(workload, graphs, "全部 256 （連續）")]
        assert cont["output_tokens"] == sum(lesson.output_lengths(256, 128, workload != "固定"))
        hf_best = max(r["tokens_per_s"] for k, r in rows.items() if k[0] == workload and k[1].startswith("HF"))
        assert cont["tokens_per_s"] > hf_best, (workload, cont, hf_best)  # faster than HF at its best batch
        assert cont["tokens_per_s"] > rows[(workload, graphs, "64 （靜態）")]["tokens_per_s"]
        assert rows[(workload, eager, "全部 256 （連續）")]["tokens_per_s"] > 0
    # HF's best batch beats its batch 16
    assert max(r["tokens_per_s"] for k, r in rows.items() if k[1].startswith("HF") and k[0] == "固定") > \
        rows[("固定", "HF transformers", "16 （靜態）")]["tokens_per_s"]
    decode = result["decode"][0]
    assert decode["measured_ms"] > 0.9 * decode["bound_ms"]  # nothing beats the memory bandwidth
    assert decode["measured_ms"] < 4 * decode["bound_ms"]
    real = [r for r in result["invariance"] if r["model"].startswith("SmolLM2")]
    assert [r["batch"] for r in real] == [1, 8, 64, 256] and real[0]["same_tokens"] == "32/32"
    for name in ("throughput_gpu", "decode_roofline_gpu", "batch_invariance_gpu"):
        data = json.loads((lesson.results_dir(lesson.LESSON) / f"{name}.json").read_text())
        assert data["provenance"]["gpu"] and data["provenance"]["profile"] == "gpu"


# ---- exercises ---------------------------------------------------------------------------------------

@pytest.mark.engine
def test_exercise_perplexity(llm):
    result = lesson.perplexity(llm, PARIS, max_tokens=8)
    assert result["perplexity"] == pytest.approx(math.exp(-result["cumulative_logprob"] / result["tokens"]),
                                                 rel=1e-4)
    assert result["perplexity"] >= 1.0


@pytest.mark.engine
def test_exercise_best_of_n(llm):
    result = lesson.best_of_n(llm, "My favourite animal is", n=4, seed=0)
    assert len(result["scores"]) == 4 and result["score"] == max(result["scores"])
    assert lesson.best_of_n(llm, "My favourite animal is", n=4, seed=0) == result  # seeded: repeatable


@pytest.mark.engine
def test_exercise_stream_timing(vllm_shared):
    result = lesson.stream_timing(vllm_shared, QUESTION, max_tokens=16)
    assert result["chunks"] > 2
    assert 0 < result["ttft_s"] < result["total_s"]
    assert result["itl_median_s"] > 0
