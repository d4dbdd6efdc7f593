"""02-Basic_Inference：基礎推論。

離線 ``LLM.generate`` / ``LLM.chat``（聊天範本）、``SamplingParams`` 的每個參數、一次送出多個提示、
OpenAI 相容伺服器（completions、chat、串流）、決定性與種子，以及 vLLM 對 Hugging Face ``generate``
的吞吐量比較與 batch 1 解碼對記憶體頻寬 roofline 的比較。

    servelab run vllm/lab2_1/l02_basic_inference                              # 課程導覽（CPU）
    python -m servelab.vllm.lab2_1.l02_basic_inference --cpu-results           # 重寫 CPU 結果檔
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_1.l02_basic_inference --gpu-benchmark   # *_gpu.*
"""

from __future__ import annotations

# --8<-- [start:context]
import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from servelab.runtime import VLLMEndpoint, get_settings, offline_llm, prepare_model, vllm_endpoint
from servelab.runtime.vllm_engine import cpu_threads, vllm_bound_cpus  # torch threads = CPUs vLLM binds
from servelab.runtime.memo import experiment
from servelab.runtime.results import results_dir, write_results

LESSON = "vllm/lab2_1/l02_basic_inference"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "The capital of France is",
    "The three primary colors are",
    "Water boils at a temperature of",
    "The largest planet in our solar system is",
]
FILLERS = ["Tell me a story about a {}.".format(w) for w in (
    "cat", "dog", "ship", "tree", "lamp", "river", "cloud", "robot", "violin", "bridge", "kite",
    "stone", "bee", "moon", "train", "garden", "mountain", "letter", "clock", "island", "forest",
    "window", "candle", "engine", "piano", "desert", "harbor", "castle", "comet", "lantern", "meadow")]


def _sync(device) -> None:
    """Wait for the GPU to finish (timings of CUDA work); nothing to do on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
# --8<-- [end:context]


# ---------------------------------------------------------------------------------------------------
# 1. 離線推論：LLM.generate 與 RequestOutput
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:first_generate]
def first_generate(llm, prompts: Sequence[str] = PROMPTS, max_tokens: int = 16) -> list[dict]:
    """One ``generate`` call for all prompts; one ``RequestOutput`` per prompt, in the same order."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)  # (1)!
    outputs = llm.generate(list(prompts), params, use_tqdm=False)  # (2)!
    return [{
        "prompt": out.prompt,
        "prompt_tokens": len(out.prompt_token_ids),
        "text": out.outputs[0].text,  # (3)!
        "output_tokens": len(out.outputs[0].token_ids),
        "finish_reason": out.outputs[0].finish_reason,  # (4)!
    } for out in outputs]
# --8<-- [end:first_generate]


# ---------------------------------------------------------------------------------------------------
# 2. 聊天範本：LLM.chat
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:render_chat]
def render_chat(llm, messages: list[dict]) -> tuple[str, list[int]]:
    """The exact text (and token ids) the model sees for ``messages``: the chat template, rendered."""
    tokenizer = llm.get_tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=True)  # (1)!
    ids = tokenizer.encode(text, add_special_tokens=False)  # (2)!
    return text, ids


def chat(llm, messages: list[dict], max_tokens: int = 32) -> dict:
    """``LLM.chat`` = render the template + ``generate``; it returns the rendered prompt as well."""
    from vllm import SamplingParams

    out = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)[0]
    return {"prompt": out.prompt, "prompt_token_ids": list(out.prompt_token_ids),
            "text": out.outputs[0].text, "finish_reason": out.outputs[0].finish_reason}
# --8<-- [end:render_chat]


def chat_template_rows(llm, messages: list[dict] = QUESTION) -> list[dict]:
    """The rendered template line by line, with each line's token count (for a results table)."""
    text, ids = render_chat(llm, messages)
    tokenizer = llm.get_tokenizer()
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        piece = line + "\n" if number < text.count("\n") + 1 else line
        if not piece:
            continue
        shown = piece.replace("\n", "⏎")
        rows.append({"line": number, "text": f"`{shown}`",
                     "tokens": len(tokenizer.encode(piece, add_special_tokens=False))})
    rows.append({"line": "合計", "text": f"{len(text)} 個字元", "tokens": len(ids)})
    return rows


# ---------------------------------------------------------------------------------------------------
# 3. SamplingParams：每個參數一個可驗證的行為
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:greedy]
def greedy_twice(llm, prompt: str, max_tokens: int = 16) -> tuple[str, str]:
    """temperature=0 is greedy decoding: always the most probable token, so two runs agree."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    first = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text
    second = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text
    return first, second
# --8<-- [end:greedy]


# --8<-- [start:top_k_top_p]
def truncated_sampling(llm, prompt: str, n: int = 8, max_tokens: int = 8, seed: int = 0) -> dict:
    """Sample n completions at temperature 1 with no truncation, with top_k=1, and with a tiny top_p."""
    from vllm import SamplingParams

    def texts(**kw) -> list[str]:
        params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=seed, **kw)
        return [c.text for c in llm.generate([prompt], params, use_tqdm=False)[0].outputs]

    return {
        "free": texts(),  # (1)!
        "top_k=1": texts(top_k=1),  # (2)!
        "top_p=0.01": texts(top_p=0.01),  # (3)!
        "greedy": llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens),
                               use_tqdm=False)[0].outputs[0].text,
    }
# --8<-- [end:top_k_top_p]


# --8<-- [start:length_and_stop]
def length_and_stop(llm, prompt: str, max_tokens: int = 24) -> dict:
    """max_tokens bounds the length (finish_reason "length"); stop cuts at a string (finish_reason "stop")."""
    from vllm import SamplingParams

    full = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    cut = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, stop=["."]),
                       use_tqdm=False)[0].outputs[0]
    return {
        "full_text": full.text, "full_tokens": len(full.token_ids), "full_finish": full.finish_reason,
        "stopped_text": cut.text, "stopped_finish": cut.finish_reason,
        "stop_reason": cut.stop_reason,  # (1)!
    }
# --8<-- [end:length_and_stop]


# --8<-- [start:seed_n]
def seeded_samples(llm, prompt: str, seed: int | None, n: int = 3, max_tokens: int = 12) -> list[str]:
    """n completions of one prompt at temperature 0.9; a per-request seed makes the draw repeatable."""
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=0.9, top_p=0.95, seed=seed, max_tokens=max_tokens)
    return [c.text for c in llm.generate([prompt], params, use_tqdm=False)[0].outputs]
# --8<-- [end:seed_n]


# --8<-- [start:n_sharing]
def n_sharing(llm, prompt_len: int, n: int = 4, seed: int = 1) -> dict:
    """How much of the prompt do the n samples of one request share? Measured by prefix-cache hits."""
    from vllm import SamplingParams

    block = llm.llm_engine.vllm_config.cache_config.block_size  # (1)!
    rng = random.Random(seed * 100_003 + prompt_len)  # a prompt this engine has never seen
    prompt = {"prompt_token_ids": [rng.randrange(1000, 40000) for _ in range(prompt_len)]}
    copies = llm.generate([prompt] * n, SamplingParams(temperature=0.8, seed=0, max_tokens=1),
                          use_tqdm=False)  # (2)!
    fresh = {"prompt_token_ids": [rng.randrange(1000, 40000) for _ in range(prompt_len)]}
    one = llm.generate([fresh], SamplingParams(n=n, temperature=0.8, seed=0, max_tokens=1),
                       use_tqdm=False)[0]  # (3)!
    return {"prompt_tokens": prompt_len, "block_size": block, "n": n,
            "full_blocks": (prompt_len - 1) // block,  # (4)!
            "cached_per_request": [o.num_cached_tokens for o in copies],
            "prefill_tokens": sum(prompt_len - o.num_cached_tokens for o in copies),
            "n_request_cached": one.num_cached_tokens, "n_request_samples": len(one.outputs)}
# --8<-- [end:n_sharing]

N_SHARING_COLUMNS = {"prompt_tokens": "提示 tokens", "block_size": "區塊大小", "n": "樣本數 n",
                     "full_blocks": "可共用的完整區塊", "cached_per_request": "各子請求命中的 tokens",
                     "prefill_tokens": "實際 prefill 的 tokens", "n_request_cached": "n>1 請求回報的命中"}


# --8<-- [start:logprobs]
def token_logprobs(llm, prompt: str, k: int = 3, max_tokens: int = 6) -> dict:
    """Per generated token: the chosen token's log-probability and the k most likely alternatives."""
    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=k),
                       use_tqdm=False)[0].outputs[0]
    steps = []
    for token_id, candidates in zip(out.token_ids, out.logprobs):  # (1)!
        steps.append({
            "token": candidates[token_id].decoded_token,
            "logprob": candidates[token_id].logprob,
            "top": [(c.decoded_token, c.logprob, c.rank)
                    for c in sorted(candidates.values(), key=lambda c: c.rank)][:k],
            "candidates": len(candidates),  # (2)!
        })
    return {"text": out.text, "cumulative_logprob": out.cumulative_logprob, "steps": steps}
# --8<-- [end:logprobs]


# --8<-- [start:first_token]
def first_token_table(llm, prompt: str, k: int = 8, top_k: int = 3, top_p: float = 0.8) -> list[dict]:
    """The next-token distribution after ``prompt`` and what top_k / top_p keep of it."""
    import math

    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=1, logprobs=k),
                       use_tqdm=False)[0].outputs[0]
    ranked = sorted(out.logprobs[0].values(), key=lambda c: c.rank)[:k]
    best = math.exp(ranked[0].logprob)
    rows, cumulative = [], 0.0
    for c in ranked:
        p = math.exp(c.logprob)
        kept_by_top_p = cumulative < top_p  # (1)!
        cumulative += p
        rows.append({
            "rank": c.rank, "token": f"`{c.decoded_token!r}`", "p": p, "cumulative": cumulative,
            "top_k": "✓" if c.rank <= top_k else "", "top_p": "✓" if kept_by_top_p else "",
            "odds_t05": (p / best) ** (1 / 0.5), "odds_t2": (p / best) ** (1 / 2.0),  # (2)!
        })
    return rows
# --8<-- [end:first_token]

FIRST_TOKEN_COLUMNS = {"rank": "名次", "token": "token", "p": "機率 p", "cumulative": "累積機率",
                       "top_k": "top_k=3 保留", "top_p": "top_p=0.8 保留",
                       "odds_t05": "相對第 1 名（T=0.5）", "odds_t2": "相對第 1 名（T=2）"}


# --8<-- [start:temperature_sweep]
def temperature_sweep(llm, prompt: str, temperatures: Sequence[float] = (0.0, 0.5, 1.0, 1.5),
                      n: int = 16, max_tokens: int = 8, seed: int = 0) -> list[dict]:
    """For each temperature: n seeded samples; how many differ, and how often the greedy token comes first."""
    from vllm import SamplingParams

    greedy = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens),
                          use_tqdm=False)[0].outputs[0]
    rows = []
    for t in temperatures:
        if t == 0:  # (1)!
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)
            samples = [o.outputs[0] for o in llm.generate([prompt] * n, params, use_tqdm=False)]
        else:
            params = SamplingParams(n=n, temperature=t, max_tokens=max_tokens, seed=seed, logprobs=0)  # (2)!
            samples = llm.generate([prompt], params, use_tqdm=False)[0].outputs
        rows.append({
            "temperature": t, "n": n,
            "distinct": len({tuple(s.token_ids) for s in samples}),
            "first_is_greedy": sum(s.token_ids[0] == greedy.token_ids[0] for s in samples) / n,
            "mean_logprob": statistics.mean(s.cumulative_logprob / len(s.token_ids) for s in samples),
        })
    return rows
# --8<-- [end:temperature_sweep]

TEMPERATURE_COLUMNS = {"temperature": "temperature", "n": "樣本數 n", "distinct": "不同的輸出",
                       "first_is_greedy": "第一個 token 與 greedy 相同的比例",
                       "mean_logprob": "每 token 平均 logprob（原始分布）"}


# ---------------------------------------------------------------------------------------------------
# 4. 一次送出多個提示
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:batching]
@experiment(ignore=("llm",))  # a test and the notebook call it alike: measured once per test session
def batch_vs_loop(llm, prompts: Sequence[str], max_tokens: int = 16) -> dict:
    """The same prompts: one generate() call with all of them, then one call per prompt."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    together = llm.generate(list(prompts), params, use_tqdm=False)  # (1)!
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    alone = [llm.generate([p], params, use_tqdm=False)[0] for p in prompts]  # (2)!
    loop_s = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in together)
    return {"prompts": len(prompts), "max_tokens": max_tokens, "tokens": tokens,
            "batched_s": batched_s, "loop_s": loop_s, "speedup": loop_s / batched_s,
            "same_text": "✓" if all(a.outputs[0].text == b.outputs[0].text
                                    for a, b in zip(together, alone)) else "✗"}
# --8<-- [end:batching]

BATCHING_COLUMNS = {"prompts": "提示數", "max_tokens": "max_tokens", "tokens": "輸出 tokens",
                    "batched_s": "一次送出 (s)", "loop_s": "逐一送出 (s)", "speedup": "加速倍數",
                    "same_text": "文字相同"}


# ---------------------------------------------------------------------------------------------------
# 5. OpenAI 相容伺服器
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:openai_completion]
def openai_completion(endpoint: VLLMEndpoint, prompt: str, max_tokens: int = 16) -> dict:
    """POST /v1/completions: raw text in, raw continuation out (no chat template)."""
    reply = endpoint.client().completions.create(
        model=endpoint.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0)
    choice = reply.choices[0]
    return {"text": choice.text, "finish_reason": choice.finish_reason,
            "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}
# --8<-- [end:openai_completion]


# --8<-- [start:openai_chat]
def openai_chat(endpoint: VLLMEndpoint, messages: list[dict], max_tokens: int = 32, **sampling) -> dict:
    """POST /v1/chat/completions: the server applies the model's chat template, then generates."""
    reply = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=messages, max_tokens=max_tokens,
        temperature=sampling.pop("temperature", 0.0),
        seed=sampling.pop("seed", None),  # (1)!
        extra_body=sampling or None,  # (2)!
    )
    return {"text": reply.choices[0].message.content, "finish_reason": reply.choices[0].finish_reason,
            "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens}
# --8<-- [end:openai_chat]


# --8<-- [start:openai_stream]
def openai_stream(endpoint: VLLMEndpoint, messages: list[dict], max_tokens: int = 32) -> dict:
    """stream=True: Server-Sent Events, one chunk per step; the last chunk carries the usage."""
    stream = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=messages, max_tokens=max_tokens, temperature=0.0,
        stream=True, stream_options={"include_usage": True})  # (1)!
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:  # (2)!
            usage = chunk.usage
    return {"text": "".join(pieces), "chunks": len([p for p in pieces if p]), "finish_reason": finish,
            "completion_tokens": usage.completion_tokens if usage else None}
# --8<-- [end:openai_stream]


# --8<-- [start:openai_logprobs]
def openai_logprobs(endpoint: VLLMEndpoint, messages: list[dict], top: int = 3, max_tokens: int = 4) -> list:
    """The chat API's logprobs: the chosen token and its ``top`` alternatives at every position."""
    reply = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=messages, max_tokens=max_tokens, temperature=0.0,
        logprobs=True, top_logprobs=top)
    return [(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
            for t in reply.choices[0].logprobs.content]
# --8<-- [end:openai_logprobs]


# --8<-- [start:triton_requests]
def triton_generate_request(prompt: str, max_tokens: int = 16, temperature: float = 0.0) -> dict:
    """Triton's generate extension: POST /v2/models/<model>/generate with one flat JSON object.

    Top-level keys are the model's input tensors (Triton's vLLM backend: ``text_input``, ``stream``,
    ``exclude_input_in_output``); ``parameters`` carries the sampling settings. The answer is
    ``{"model_name": ..., "model_version": ..., "text_output": ...}``.
    """
    return {"text_input": prompt, "exclude_input_in_output": True,  # (1)!
            "parameters": {"stream": False, "max_tokens": max_tokens, "temperature": temperature}}


def kserve_infer_request(prompt: str, max_tokens: int = 16, temperature: float = 0.0) -> dict:
    """The KServe v2 protocol: POST /v2/models/<model>/infer with typed tensors (strings are BYTES)."""
    sampling = json.dumps({"max_tokens": max_tokens, "temperature": temperature})  # (2)!
    return {"inputs": [
        {"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [prompt]},
        {"name": "stream", "datatype": "BOOL", "shape": [1], "data": [False]},
        {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1], "data": [True]},
        {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1], "data": [sampling]},
    ], "outputs": [{"name": "text_output"}]}
# --8<-- [end:triton_requests]


# ---------------------------------------------------------------------------------------------------
# 6. 決定性：什麼有保證，什麼沒有
# ---------------------------------------------------------------------------------------------------



# --8<-- [start:batch_invariance]
def batch_invariance_probe(llm, prompt, sizes: Sequence[int] = (1, 4, 16), max_tokens: int = 16,
                           fillers: Sequence = FILLERS, detokenize: bool = True) -> list[dict]:
    """Greedy-decode ``prompt`` alone and inside batches of other prompts; compare tokens and logprobs."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, ignore_eos=True,
                            detokenize=detokenize)  # (1)!

    def run(batch_size: int):
        batch = [prompt, *list(fillers)[:batch_size - 1]]
        out = llm.generate(batch, params, use_tqdm=False)[0].outputs[0]
        return list(out.token_ids), [step[t].logprob for t, step in zip(out.token_ids, out.logprobs)]

    ref_tokens, ref_logprobs = run(1)
    rows = []
    for size in sizes:
        tokens, logprobs = run(size)
        same = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), len(tokens))
        upto = min(same + 1, len(tokens))  # (2)!
        rows.append({"batch": size, "same_tokens": f"{same}/{len(tokens)}",
                     "max_logprob_diff": max(abs(a - b) for a, b in zip(logprobs[:upto], ref_logprobs[:upto]))})
    return rows
# --8<-- [end:batch_invariance]
batch_invariance_probe = experiment(batch_invariance_probe, ignore=("llm",))  # the test and the notebook share one run

def many_fillers(count: int) -> list[str]:
    """``count`` different prompts for the batch-invariance probe (the 31 stories, then numbered parts)."""
    n = len(FILLERS)
    return [FILLERS[i] if i < n else f"{FILLERS[i % n][:-1]}, part {i // n + 1}." for i in range(count)]


INVARIANCE_COLUMNS = {"batch": "批次大小", "same_tokens": "與單獨執行相同的前綴 tokens",
                      "max_logprob_diff": "logprob 最大差異（絕對值）"}


# ---------------------------------------------------------------------------------------------------
# 7. 量測：vLLM 對 Hugging Face generate；batch 1 解碼對 roofline
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:bench_prompts]
def make_prompts(count: int, input_len: int, seed: int = 0, low: int = 1000, high: int = 40000) -> list[list[int]]:
    """``count`` prompts of exactly ``input_len`` random token ids: no padding, no shared prefix."""
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(input_len)] for _ in range(count)]
# --8<-- [end:bench_prompts]


# --8<-- [start:bench_lengths]
def output_lengths(count: int, mean: int, varied: bool, seed: int = 0) -> list[int]:
    """Each request's output length: all equal to ``mean``, or drawn uniformly from mean/8 to 15·mean/8."""
    if not varied:
        return [mean] * count
    rng = random.Random(seed)
    return [rng.randint(max(1, mean // 8), max(1, mean * 15 // 8)) for _ in range(count)]  # (1)!


WORKLOADS = (("固定", False), ("長度不一", True))  # (name, varied output lengths?)
# --8<-- [end:bench_lengths]


# --8<-- [start:bench_vllm]
def run_vllm(llm, prompts: list[list[int]], output_len: int | list[int], batch_size: int | None = None) -> dict:
    """All prompts in one generate() call (continuous batching), or in fixed batches (static batching)."""
    from vllm import SamplingParams

    lengths = output_len if isinstance(output_len, list) else [output_len] * len(prompts)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True,  # (1)!
                             detokenize=False) for n in lengths]  # (2)!
    step = batch_size or len(prompts)
    tokens: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(prompts), step):  # (3)!
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts[i:i + step]], params[i:i + step],
                            use_tqdm=False)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "output_tokens": sum(map(len, tokens)), "tokens": tokens,
            "computed_tokens": sum(map(len, tokens))}
# --8<-- [end:bench_vllm]


# --8<-- [start:bench_hf]
def run_hf(model, prompts: list[list[int]], output_len: int | list[int], batch_size: int, pad_id: int,
           eos_id: int) -> dict:
    """``model.generate`` in fixed batches of ``batch_size`` (static batching), greedy."""
    import torch
    from transformers import GenerationConfig

    lengths = output_len if isinstance(output_len, list) else [output_len] * len(prompts)
    device = next(model.parameters()).device
    tokens: list[list[int]] = []
    computed = 0
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            ids = torch.tensor(prompts[i:i + batch_size], device=device)  # (1)!
            wanted = lengths[i:i + batch_size]
            config = GenerationConfig(max_new_tokens=max(wanted), min_new_tokens=max(wanted),  # (2)!
                                      do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            computed += out.shape[0] * max(wanted)
            tokens += [row[:n] for row, n in zip(out[:, ids.shape[1]:].tolist(), wanted)]  # (3)!
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "output_tokens": sum(map(len, tokens)), "tokens": tokens,
            "computed_tokens": computed}
# --8<-- [end:bench_hf]


# --8<-- [start:bench_compare]
def bench_row(workload: str, engine: str, batching: str, run: dict, prompts: int) -> dict:
    """One table row; throughput = requested output tokens / wall seconds."""
    return {"workload": workload, "setup": f"{engine} · {batching}", "engine": engine, "batching": batching,
            "prompts": prompts, "output_tokens": run["output_tokens"],
            "wasted": 1 - run["output_tokens"] / run["computed_tokens"],  # (1)!
            "seconds": run["seconds"], "tokens_per_s": run["output_tokens"] / run["seconds"]}


def add_ratios(rows: list[dict]) -> list[dict]:
    """Per workload: throughput relative to HF at its smallest batch and at its best measured batch."""
    for workload in {r["workload"] for r in rows}:
        mine = [r for r in rows if r["workload"] == workload]
        hf = [r for r in mine if r["engine"].startswith("HF")]
        best = max(r["tokens_per_s"] for r in hf)
        small = min(hf, key=lambda r: int(r["batching"].split()[0]))["tokens_per_s"]
        for r in mine:
            r["vs_hf_small"] = f"{r['tokens_per_s'] / small:.1f}×"
            r["vs_hf_best"] = f"{r['tokens_per_s'] / best:.1f}×"  # (2)!
    return rows
# --8<-- [end:bench_compare]

THROUGHPUT_COLUMNS = {"workload": "輸出長度", "engine": "引擎", "batching": "批次", "prompts": "提示數",
                      "output_tokens": "輸出 tokens", "wasted": "白算的 token 比例", "seconds": "時間 (s)",
                      "tokens_per_s": "輸出 tokens/s", "vs_hf_small": "相對 HF 最小批次",
                      "vs_hf_best": "相對 HF 最佳批次"}


# --8<-- [start:bench_sweep]
@experiment(ignore=("hf_model",))
def hf_sweep(hf_model, prompts: int, input_len: int, output_len: int, hf_batches: Sequence[int]) -> list[dict]:
    """HF ``generate`` at each batch size, on both workloads (fixed and varied output lengths)."""
    batch, rows = make_prompts(prompts, input_len), []
    for workload, varied in WORKLOADS:
        lengths = output_lengths(prompts, output_len, varied)
        for size in hf_batches:
            count = min(prompts, 2 * size)  # (1)!
            run = run_hf(hf_model, batch[:count], lengths[:count], size, pad_id=2, eos_id=2)
            rows.append(bench_row(workload, "HF transformers", f"{size} （靜態）", run, count))
    return rows


@experiment(ignore=("llm",))
def vllm_sweep(llm, prompts: int, input_len: int, output_len: int, static_batch: int | None,
               engine: str = "vLLM") -> list[dict]:
    """vLLM on both workloads: in fixed batches like HF (static), then all at once (continuous)."""
    batch, rows = make_prompts(prompts, input_len), []
    for workload, varied in WORKLOADS:
        lengths = output_lengths(prompts, output_len, varied)
        if static_batch:
            run = run_vllm(llm, batch, lengths, batch_size=static_batch)  # (2)!
            rows.append(bench_row(workload, engine, f"{static_batch} （靜態）", run, prompts))
        run = run_vllm(llm, batch, lengths)  # (3)!
        rows.append(bench_row(workload, engine, f"全部 {prompts} （連續）", run, prompts))
    return rows
# --8<-- [end:bench_sweep]


def load_hf_bundled(dtype: str = "float32"):
    """The bundled model's safetensors in transformers (the same weights vLLM loads)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = prepare_model(log=lambda _: None).path
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()


def greedy_agreement(llm, hf_model, prompts: int, input_len: int, output_len: int) -> str:
    """Same weights on both sides (CPU): how many greedy outputs agree token for token."""
    batch = make_prompts(prompts, input_len)
    ours = run_vllm(llm, batch, output_len)["tokens"]
    theirs = run_hf(hf_model, batch, output_len, len(batch), pad_id=2, eos_id=2)["tokens"]
    return f"{sum(a == b for a, b in zip(ours, theirs))}/{prompts}"


def cpu_benchmark(llm=None, prompts: int = 8, input_len: int = 16, output_len: int = 8,
                  hf_batches: Sequence[int] = (4, 8), static_batch: int = 4, write: bool = False,
                  root: Path | None = None) -> dict:
    """vLLM vs HF on the bundled model (CPU): both workloads, HF batch sweep, static vs continuous."""
    result = cpu_benchmark_measure(llm, prompts, input_len, output_len, tuple(hf_batches), static_batch)
    if write:
        extra = {key: value for key, value in result.items() if key != "rows"}
        write_results(LESSON, "throughput_cpu", result["rows"], THROUGHPUT_COLUMNS, root=root, extra=extra)
    return result


@experiment(ignore=("llm",))  # the test and the notebook call cpu_benchmark alike: measured once per test session
def cpu_benchmark_measure(llm, prompts: int, input_len: int, output_len: int, hf_batches: tuple[int, ...],
                          static_batch: int) -> dict:
    """What :func:`cpu_benchmark` measures (``llm`` None: an offline engine of its own), without writing."""
    context = offline_llm() if llm is None else nullcontext(llm)
    load_before = os.getloadavg()
    with context as engine, cpu_threads() as threads:
        run_vllm(engine, make_prompts(1, input_len), 2)  # warm-up
        model = load_hf_bundled()
        run_hf(model, make_prompts(1, input_len), 2, 1, pad_id=2, eos_id=2)  # warm-up
        rows = hf_sweep(model, prompts, input_len, output_len, tuple(hf_batches))
        rows = add_ratios(rows + vllm_sweep(engine, prompts, input_len, output_len, static_batch))
        match = greedy_agreement(engine, model, min(prompts, 4), input_len, output_len)
        del model
    extra = {"torch_threads": threads, "vllm_bound_cpus": vllm_bound_cpus(), "input_len": input_len, "mean_output_len": output_len,
             "greedy_match": match, "load_average_before": load_before, "load_average_after": os.getloadavg()}
    return {"rows": rows, **extra}


# --8<-- [start:roofline]
def parameter_count(config: dict) -> dict:
    """Parameters of a Llama-style decoder from its config.json, and how many one decode step reads."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config["intermediate_size"] + 2 * h  # (1)!
    embedding = vocab * h
    tied = config.get("tie_word_embeddings", False)
    total = embedding + layers * per_layer + h + (0 if tied else vocab * h)
    read_per_token = total - (0 if tied else embedding)  # (2)!
    return {"total": total, "read_per_token": read_per_token, "embedding": embedding, "tied": tied}


def decode_roofline_ms(config: dict, bytes_per_param: float, bandwidth_bytes_s: float,
                       context_tokens: int = 0, kv_bytes: float | None = None) -> float:
    """Lower bound on one batch-1 decode step: every weight (and the KV cache so far) read once."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_per_token = (2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim
                    * (kv_bytes or bytes_per_param))  # (3)!
    moved = parameter_count(config)["read_per_token"] * bytes_per_param + kv_per_token * context_tokens
    return moved / bandwidth_bytes_s * 1000
# --8<-- [end:roofline]


# --8<-- [start:decode_time]
def decode_ms_per_token(llm, prompt: list[int], tokens: int = 128, repeats: int = 3) -> float:
    """Batch-1 decode time per token: (time for 1+N tokens − time for 1 token) / N, median of repeats."""
    from vllm import SamplingParams

    def timed(max_tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        return time.perf_counter() - start

    prefill = statistics.median(timed(1) for _ in range(repeats))  # (1)!
    full = statistics.median(timed(tokens + 1) for _ in range(repeats))
    return (full - prefill) / tokens * 1000
# --8<-- [end:decode_time]


# HBM bandwidth from NVIDIA's data sheets, by the name torch reports.
HBM_BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12),
                 ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12))


def hbm_bandwidth(device_name: str) -> float:
    for key, value in HBM_BANDWIDTH:
        if key in device_name:
            return value
    raise ValueError(f"no HBM bandwidth on file for {device_name!r}; pass --bandwidth-tbps")


# --8<-- [start:hf_random]
def hf_random_llama(config: dict, device: str = "cuda", dtype: str = "bfloat16"):
    """LlamaForCausalLM from a config.json dict with random weights, created directly on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # (1)!
    try:
        with torch.device(device):  # (2)!
            model = LlamaForCausalLM(LlamaConfig(**fields))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()
# --8<-- [end:hf_random]


# --8<-- [start:gpu_benchmark]
def gpu_benchmark(prompts: int = 256, input_len: int = 128, output_len: int = 128,
                  hf_batches: Sequence[int] = (16, 64, 256), static_batch: int = 64, decode_tokens: int = 128,
                  bandwidth_tbps: float | None = None, root: Path | None = None) -> dict:
    """The GPU profile: Llama-3.1-8B's shapes with dummy weights; writes the *_gpu results files."""
    import gc

    import torch

    from servelab.runtime import dummy_llama_8b

    settings = get_settings()
    if settings.profile != "gpu" or not torch.cuda.is_available():
        raise RuntimeError("gpu_benchmark needs SERVELAB_PROFILE=gpu and a CUDA device")
    folder = dummy_llama_8b(settings)
    config = json.loads((folder / "config.json").read_text())
    batch = make_prompts(prompts, input_len)

    model = hf_random_llama(config, "cuda", "bfloat16")  # (1)!
    counted = sum(p.numel() for p in model.parameters())
    run_hf(model, batch[:16], 4, 16, pad_id=2, eos_id=2)  # warm-up
    rows = hf_sweep(model, prompts, input_len, output_len, tuple(hf_batches))
    del model
    gc.collect()
    torch.cuda.empty_cache()  # (2)!

    with offline_llm(settings, model=str(folder), load_format="dummy", enforce_eager=False) as llm:  # (3)!
        run_vllm(llm, batch[:8], 4)  # warm-up
        rows += vllm_sweep(llm, prompts, input_len, output_len, static_batch, "vLLM（CUDA graphs）")
        decode_ms = decode_ms_per_token(llm, batch[0], decode_tokens)
        dummy = batch_invariance_probe(llm, {"prompt_token_ids": batch[0]}, sizes=(1, 8, 64, 256),
                                       max_tokens=32, detokenize=False,
                                       fillers=[{"prompt_token_ids": p} for p in batch[1:]])
    with offline_llm(settings, model=str(folder), load_format="dummy", enforce_eager=True) as llm:  # (4)!
        run_vllm(llm, batch[:8], 4)  # warm-up
        rows += vllm_sweep(llm, prompts, input_len, output_len, None, "vLLM（eager）")
    with offline_llm(settings, enforce_eager=True) as llm:  # (5)!
        real = batch_invariance_probe(llm, PROMPTS[0], sizes=(1, 8, 64, 256), max_tokens=32,
                                      fillers=many_fillers(255))

    name = torch.cuda.get_device_name(0)
    bandwidth = bandwidth_tbps * 1e12 if bandwidth_tbps else hbm_bandwidth(name)
    params = parameter_count(config)
    assert params["total"] == counted, (params["total"], counted)  # the formula counts what HF built
    bound = decode_roofline_ms(config, 2, bandwidth, context_tokens=input_len + decode_tokens // 2)
    decode = [{"model": "Llama-3.1-8B 形狀（dummy 權重，bf16）", "params_b": params["total"] / 1e9,
               "read_gb": params["read_per_token"] * 2 / 1e9, "bandwidth": f"{bandwidth / 1e12:.2f} TB/s",
               "bound_ms": bound, "measured_ms": decode_ms, "efficiency": f"{bound / decode_ms:.0%}"}]
    invariance = ([{"model": "Llama-3.1-8B 形狀（dummy 權重）", **r} for r in dummy]
                  + [{"model": "SmolLM2-135M（真實權重，bf16）", **r} for r in real])
    common = {"device_name": name, "input_len": input_len, "mean_output_len": output_len}
    write_results(LESSON, "throughput_gpu", add_ratios(rows), THROUGHPUT_COLUMNS, root=root, extra=common)
    write_results(LESSON, "decode_roofline_gpu", decode, DECODE_COLUMNS, root=root,
                  extra={**common, "enforce_eager": False, "params": params, "decode_tokens": decode_tokens})
    write_results(LESSON, "batch_invariance_gpu", invariance, {"model": "模型", **INVARIANCE_COLUMNS},
                  root=root, extra={**common, "enforce_eager": True})
    return {"throughput": rows, "decode": decode, "invariance": invariance}
# --8<-- [end:gpu_benchmark]

DECODE_COLUMNS = {"model": "模型", "params_b": "參數（十億）", "read_gb": "每步讀取權重 (GB)",
                  "bandwidth": "HBM 頻寬", "bound_ms": "roofline 下限 (ms/token)",
                  "measured_ms": "實測 batch 1 (ms/token)", "efficiency": "達成頻寬比例"}


# ---------------------------------------------------------------------------------------------------
# 練習解答
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:exercise_perplexity]
def perplexity(llm, prompt: str, max_tokens: int = 16) -> dict:
    """exp(−mean log p) of the model's own greedy continuation, from the returned logprobs."""
    import math

    from vllm import SamplingParams

    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0),
                       use_tqdm=False)[0].outputs[0]
    chosen = [step[t].logprob for t, step in zip(out.token_ids, out.logprobs)]
    return {"text": out.text, "tokens": len(chosen), "perplexity": math.exp(-sum(chosen) / len(chosen)),
            "cumulative_logprob": out.cumulative_logprob}
# --8<-- [end:exercise_perplexity]


# --8<-- [start:exercise_best_of_n]
def best_of_n(llm, prompt: str, n: int = 4, seed: int = 0, max_tokens: int = 12) -> dict:
    """Sample n completions and keep the one with the highest mean log-probability per token."""
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=0.8, seed=seed, max_tokens=max_tokens, logprobs=0)
    samples = llm.generate([prompt], params, use_tqdm=False)[0].outputs
    scored = [(s.cumulative_logprob / len(s.token_ids), s.text) for s in samples]
    best = max(scored)
    return {"best": best[1], "score": best[0], "scores": [s for s, _ in scored]}
# --8<-- [end:exercise_best_of_n]


# --8<-- [start:exercise_stream_timing]
def stream_timing(endpoint: VLLMEndpoint, messages: list[dict], max_tokens: int = 24) -> dict:
    """Time to first token (TTFT) and the gaps between later chunks (inter-token latency, ITL)."""
    start = time.perf_counter()
    stamps = []
    stream = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft_s": stamps[0], "chunks": len(stamps), "itl_median_s": statistics.median(gaps),
            "total_s": stamps[-1]}
# --8<-- [end:exercise_stream_timing]


# ---------------------------------------------------------------------------------------------------
# 結果檔與命令列
# ---------------------------------------------------------------------------------------------------

def write_cpu_results(root: Path | None = None, bench: dict | None = None) -> list[Path]:
    """Every CPU results file of the lesson, from one offline engine (the committed files come from here)."""
    bench = bench or {"prompts": 32, "input_len": 64, "output_len": 32, "hf_batches": (8, 32), "static_batch": 8}
    written = []
    with offline_llm() as llm, cpu_threads():
        written.append(write_results(LESSON, "chat_template", chat_template_rows(llm),
                                     {"line": "行", "text": "渲染後的文字（⏎ 為換行）", "tokens": "tokens"},
                                     root=root))
        written.append(write_results(LESSON, "first_token", first_token_table(llm, PROMPTS[0]),
                                     FIRST_TOKEN_COLUMNS, root=root, extra={"prompt": PROMPTS[0]}))
        written.append(write_results(LESSON, "temperature_sweep", temperature_sweep(llm, PROMPTS[0]),
                                     TEMPERATURE_COLUMNS, root=root, extra={"prompt": PROMPTS[0]}))
        load_before, rows = os.getloadavg(), []
        for n in (1, 4, 16):  # three runs per size; keep the one with the median speedup
            runs = sorted((batch_vs_loop(llm, [f"Write one sentence about the number {i}." for i in range(n)], 16)
                           for _ in range(3)), key=lambda r: r["speedup"])
            rows.append(runs[1])
        written.append(write_results(LESSON, "batching_cpu", rows, BATCHING_COLUMNS, root=root,
                                     extra={"runs_per_row": 3, "load_average_before": load_before,
                                            "load_average_after": os.getloadavg()}))
        written.append(write_results(LESSON, "batch_invariance_cpu",
                                     batch_invariance_probe(llm, PROMPTS[0], sizes=(1, 4, 16, 32)),
                                     INVARIANCE_COLUMNS, root=root, extra={"prompt": PROMPTS[0]}))
        written.append(write_results(LESSON, "n_sharing", [n_sharing(llm, 5), n_sharing(llm, 300)],
                                     N_SHARING_COLUMNS, root=root))
        cpu_benchmark(llm, write=True, root=root, **bench)
        written.append((root / LESSON if root else results_dir(LESSON)) / "throughput_cpu.json")
    return written


def tour() -> int:
    """What the page walks through, printed: offline engine first, then the server."""
    with offline_llm() as llm, cpu_threads():
        for row in first_generate(llm):
            print(f"{row['prompt']!r} → {row['text']!r} ({row['finish_reason']})")
        text, ids = render_chat(llm, QUESTION)
        print(f"聊天範本（{len(ids)} tokens）：\n{text}")
        print("LLM.chat →", chat(llm, QUESTION)["text"])
        print("seed=7 兩次：", seeded_samples(llm, PROMPTS[0], 7) == seeded_samples(llm, PROMPTS[0], 7))
    with vllm_endpoint() as endpoint:
        print("/v1/completions →", openai_completion(endpoint, PROMPTS[0])["text"])
        print("/v1/chat/completions →", openai_chat(endpoint, QUESTION)["text"])
        print("串流 →", openai_stream(endpoint, QUESTION))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_1.l02_basic_inference")
    parser.add_argument("--cpu-results", action="store_true", help="rewrite the CPU results files")
    parser.add_argument("--gpu-benchmark", action="store_true", help="write the *_gpu results files (H100)")
    parser.add_argument("--bandwidth-tbps", type=float, default=None, help="GPU: HBM bandwidth to assume")
    args = parser.parse_args([] if argv is None else argv)
    if args.gpu_benchmark:
        result = gpu_benchmark(bandwidth_tbps=args.bandwidth_tbps)
        print(json.dumps(result["throughput"] + result["decode"], indent=2, ensure_ascii=False))
        return 0
    if args.cpu_results:
        for path in write_cpu_results():
            print(path)
        return 0
    return tour()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
