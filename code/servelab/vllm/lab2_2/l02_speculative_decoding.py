"""02-Speculative_Decoding：推測解碼。

接受率 α、每步期望 token 數 E = (1-α^(k+1))/(1-α)、扣掉草稿成本 c 之後的加速上限；vLLM 的
``speculative_config`` 方法（ngram、draft model、EAGLE/EAGLE-3、MTP、suffix）；在 CPU 上真的跑 ngram
（一個離線引擎）並和本書的預設引擎比較；用內附模型自己做出的草稿模型（截掉層數的複本、以及模型自己）；
接受率指標；GPU 上複製型工作負載的 batch-1 加速與它在並行度升高時消失的地方。

    servelab run vllm/lab2_2/l02_speculative_decoding                        # CPU：重寫 CPU 結果檔
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_2.l02_speculative_decoding --gpu   # GPU：*_gpu.*
"""

from __future__ import annotations

import argparse
import sys

# --8<-- [start:context]
import json
import shutil
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import httpx

from servelab.runtime import VLLMEndpoint, get_settings, offline_llm, prepare_model, vllm_endpoint, vllm_server
from servelab.runtime.memo import experiment
from servelab.runtime.results import write_results

LESSON = "vllm/lab2_2/l02_speculative_decoding"
K = 4  # num_speculative_tokens of every setup on this page
# --8<-- [end:context]


# --8<-- [start:math]
def expected_tokens(alpha: float, k: int) -> float:
    """Tokens one verification step yields on average: 1 + α + α² + … + α^k."""
    if alpha >= 1.0:
        return float(k + 1)  # every draft accepted, plus the target's own token
    return (1 - alpha ** (k + 1)) / (1 - alpha)  # (1)!


def speedup_bound(alpha: float, k: int, c: float) -> float:
    """Upper bound on the decode speed-up: tokens per step over the step's cost in target forwards."""
    return expected_tokens(alpha, k) / (k * c + 1)  # (2)!


def alpha_from_mean_length(mean_length: float, k: int) -> float:
    """Invert E(α, k): the per-token acceptance α that explains a measured mean acceptance length."""
    low, high = 0.0, 1.0
    for _ in range(60):  # bisection: E grows with α
        mid = (low + high) / 2
        low, high = (mid, high) if expected_tokens(mid, k) < mean_length else (low, mid)
    return (low + high) / 2
# --8<-- [end:math]


# --8<-- [start:draft_cost]
def param_count(cfg: dict) -> int:
    """Parameters of a Llama-architecture model from its config.json (tied or separate lm_head)."""
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    attention = 2 * h * cfg["num_attention_heads"] * head_dim + 2 * h * cfg["num_key_value_heads"] * head_dim
    layer = attention + 3 * h * inter + 2 * h  # q,o + k,v; gate, up, down; two RMSNorms
    heads = 1 if cfg.get("tie_word_embeddings") else 2  # embedding (+ a separate lm_head)
    return cfg["num_hidden_layers"] * layer + heads * vocab * h + h


def draft_cost(draft_cfg: dict, target_cfg: dict) -> float:
    """c: one draft forward relative to one target forward, when decode is memory-bound (bytes ∝ params)."""
    return param_count(draft_cfg) / param_count(target_cfg)  # (1)!
# --8<-- [end:draft_cost]


def bundled_config() -> dict:
    return json.loads((prepare_model(log=lambda _: None).path / "config.json").read_text())


def llama_8b_config() -> dict:
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE

    return dict(LLAMA_8B_SHAPE)


# Llama-3.2-1B: the usual draft of Llama-3.1-8B (same 128,256-token vocabulary, tied embeddings).
LLAMA_1B_SHAPE = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True}


def truncated_config(cfg: dict, layers: int) -> dict:
    return {**cfg, "num_hidden_layers": layers}


# --8<-- [start:spec_configs]
NGRAM = {"method": "ngram", "num_speculative_tokens": K,
         "prompt_lookup_min": 2, "prompt_lookup_max": 4}  # (1)!


def draft_model_config(path: str | Path, k: int = K) -> dict:
    """A separate, smaller model with the target's vocabulary drafts k tokens per step."""
    return {"method": "draft_model", "model": str(path), "num_speculative_tokens": k}


NEEDS_TRAINED_WEIGHTS = {  # (2)!
    "eagle": {"method": "eagle", "model": "<EAGLE head trained for this target>", "num_speculative_tokens": 3},
    "eagle3": {"method": "eagle3", "model": "<EAGLE-3 head trained for this target>", "num_speculative_tokens": 3},
    "mtp": {"method": "mtp", "num_speculative_tokens": 1},  # the target's own MTP layers (DeepSeek-V3, Qwen3-Next…)
    "suffix": {"method": "suffix"},  # needs the arctic-inference package
}
# --8<-- [end:spec_configs]


# --8<-- [start:methods]
def spec_methods() -> list[str]:
    """Every ``method`` the installed vLLM accepts, read from its ``SpeculativeMethod`` type."""
    from vllm.config.speculative import SpeculativeMethod

    def flatten(tp) -> list[str]:
        args = typing.get_args(tp)
        return [tp] if isinstance(tp, str) else [name for arg in args for name in flatten(arg)]

    return flatten(SpeculativeMethod)


def config_check(spec: dict, **overrides) -> str:
    """Build the engine config (no weights are loaded): 'ok', or the error vLLM raises."""
    from vllm.engine.arg_utils import EngineArgs

    from servelab.runtime.vllm_engine import apply_engine_env, engine_kwargs

    apply_engine_env()
    try:
        config = EngineArgs(**{**engine_kwargs(), **overrides}, speculative_config=spec).create_engine_config()
        config.speculative_config.verify_equal_vocab_size_if_draft_model()  # (1)!
        return "ok"
    except Exception as error:  # pydantic wraps ValueError; show vLLM's own sentence
        text = str(error)
        return f"{type(error).__name__}: " + (text.split("Value error, ", 1)[1].split(" [type=")[0]
                                             if "Value error, " in text else text)
# --8<-- [end:methods]


METHOD_NOTES = {
    "ngram": "提示與已生成文字裡的 n-gram 查表；不需要模型",
    "ngram_gpu": "ngram 的 GPU 版本",
    "suffix": "後綴樹（提示＋過去的回答）；需要 arctic-inference 套件",
    "draft_model": "另一個同詞彙表的小模型",
    "eagle": "EAGLE 草稿頭（讀目標模型的隱藏狀態）；需要為該目標模型訓練的權重",
    "eagle3": "EAGLE-3 草稿頭（讀多層隱藏狀態）；需要訓練好的權重",
    "mtp": "模型自帶的 MTP 層（DeepSeek-V3、Qwen3-Next 等）",
    "medusa": "Medusa 多頭；需要訓練好的權重",
    "mlp_speculator": "MLP speculator；需要訓練好的權重",
}


def methods_rows(methods: list[str] | None = None) -> list[dict]:
    methods = methods or spec_methods()
    main = [m for m in methods if not m.endswith("_mtp")]
    rows = [{"method": m, "what": METHOD_NOTES.get(m, "")} for m in main]
    aliases = [m for m in methods if m.endswith("_mtp")]
    if aliases:
        rows.append({"method": f"{len(aliases)} 個 *_mtp 舊名（如 {aliases[0]}）", "what": '改用 "mtp"'})
    return rows


# --8<-- [start:make_draft]
def make_truncated_draft(layers: int, settings=None) -> Path:
    """A draft made from the bundled model itself: its first ``layers`` decoder layers, same vocabulary."""
    from safetensors.torch import load_file, save_file

    settings = settings or get_settings()
    source = prepare_model(settings, log=lambda _: None).path
    target = settings.cache_dir / "models" / f"smollm2-draft-{layers}l"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target  # cached
    target.mkdir(parents=True, exist_ok=True)
    weights = load_file(source / "model.safetensors")
    keep = {name: tensor for name, tensor in weights.items()  # (1)!
            if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers}
    save_file(keep, target / "model.safetensors", metadata={"format": "pt"})
    config = {**json.loads((source / "config.json").read_text()), "num_hidden_layers": layers}
    for item in source.iterdir():  # tokenizer, chat template, generation config
        if item.name not in ("model.safetensors", "config.json", "servelab-manifest.json"):
            shutil.copy2(item, target / item.name)
    (target / "config.json").write_text(json.dumps(config, indent=2))  # (2)!
    return target
# --8<-- [end:make_draft]


# --8<-- [start:workload]
PASSAGES = [
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to "
    "five books at a time, and each loan lasts two weeks. Late returns cost ten cents per day per book.",
    "Our team meets every Monday at ten. Please send your weekly report to Maria before the meeting, "
    "and add any blocked tasks to the shared board so that we can discuss them first.",
    "To reset the router, unplug it for thirty seconds, plug it back in, and wait until the green light "
    "stops blinking. If the light stays red, call the support line printed on the back of the router.",
    "The museum's new exhibition shows maps drawn between 1500 and 1800. Guided tours start every hour, "
    "last forty minutes, and are free for students who bring a valid student card.",
]


def copy_task(passage: str) -> list[dict]:
    """A copy-heavy request: most of the answer is already in the prompt (what ngram drafts from)."""
    return [{"role": "user", "content": "Copy the following text exactly, word for word, "
                                        f"then stop.\n\n{passage}"}]  # (1)!
# --8<-- [end:workload]


# --8<-- [start:counters]
SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")


def spec_counters(target) -> dict[str, float]:
    """The speculative-decoding counters of a server's ``/metrics`` (names end in ``_total`` there)
    or of an offline ``LLM`` (``llm.get_metrics()``, the same names without ``_total``)."""
    values = dict.fromkeys(SPEC_COUNTERS, 0.0)
    if isinstance(target, VLLMEndpoint):
        text = httpx.get(f"{target.base_url}/metrics", timeout=10).text
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")  # (1)!
            if name in values and not line.startswith("#"):
                values[name] += float(line.rsplit(" ", 1)[1])  # summed over engines
    elif target.llm_engine.log_stats:  # the book's offline engines keep statistics off
        for metric in target.get_metrics():
            if metric.name in values:
                values[metric.name] += metric.value
    return values


def acceptance(delta: dict[str, float]) -> dict[str, float]:
    """Acceptance rate = accepted ÷ draft tokens; mean acceptance length = 1 + accepted ÷ drafts."""
    drafts, proposed = delta["vllm:spec_decode_num_drafts"], delta["vllm:spec_decode_num_draft_tokens"]
    accepted = delta["vllm:spec_decode_num_accepted_tokens"]
    return {"drafts": int(drafts), "draft_tokens": int(proposed), "accepted": int(accepted),
            "acceptance_rate": accepted / proposed if proposed else 0.0,
            "mean_accept_len": 1 + accepted / drafts if drafts else 1.0}  # (2)!
# --8<-- [end:counters]


# --8<-- [start:decode_run]
def chat_batch(target, conversations: list[list[dict]], max_tokens: int) -> list[tuple[str, int]]:
    """Greedy chat requests, exactly ``max_tokens`` each, all at once: (text, tokens) per request."""
    if isinstance(target, VLLMEndpoint):  # a server: one HTTP request per conversation, concurrently
        client = target.client()

        def one(messages):
            reply = client.chat.completions.create(
                model=target.model, messages=messages, max_tokens=max_tokens, temperature=0.0,
                extra_body={"ignore_eos": True})  # (1)!
            return reply.choices[0].message.content, reply.usage.completion_tokens

        with ThreadPoolExecutor(len(conversations)) as pool:
            return list(pool.map(one, conversations))
    from vllm import SamplingParams  # an offline LLM: one batch

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = target.chat(conversations, params, use_tqdm=False)
    return [(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


def decode_run(target, conversations: list[list[dict]], max_tokens: int) -> dict:
    """tokens/s of one batch, and the acceptance counters' change during it."""
    before = spec_counters(target)
    start = time.perf_counter()
    answers = chat_batch(target, conversations, max_tokens)
    seconds = time.perf_counter() - start
    after = spec_counters(target)
    tokens = sum(n for _, n in answers)
    return {"batch": len(conversations), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            **acceptance({name: after[name] - before[name] for name in SPEC_COUNTERS}),
            "texts": [text for text, _ in answers]}
# --8<-- [end:decode_run]


def best_of(target, conversations, max_tokens: int, repeats: int) -> dict:
    runs = [decode_run(target, conversations, max_tokens) for _ in range(repeats)]
    return max(runs, key=lambda run: run["tokens_per_s"])


# --8<-- [start:compare]
def measure(label: str, engine, concurrencies=(1,), max_tokens: int = 24, repeats: int = 2) -> list[dict]:
    """One engine (a server endpoint or an offline LLM, or a context manager that starts one) at each concurrency."""
    rows = []
    with (engine if hasattr(engine, "__enter__") else nullcontext(engine)) as target:  # (1)!
        decode_run(target, [copy_task(PASSAGES[0])], max_tokens=4)  # warm-up (ngram: Numba compiles here)
        for n in concurrencies:
            conversations = [copy_task(PASSAGES[i % len(PASSAGES)]) for i in range(n)]
            rows.append({"engine": label, "concurrency": n, **best_of(target, conversations, max_tokens, repeats)})
    return rows


def relative(rows: list[dict], base_label: str) -> list[dict]:
    """Speed-up and 'same output' against the baseline at the same concurrency; time per engine step."""
    base = {row["concurrency"]: row for row in rows if row["engine"] == base_label}
    for row in rows:
        ref = base[row["concurrency"]]
        row["speedup"] = row["tokens_per_s"] / ref["tokens_per_s"]
        row["same_tokens"] = row["texts"] == ref["texts"]  # (2)!
        steps = (row["tokens"] - row["accepted"]) / row["batch"]  # (3)!
        row["tokens_per_step"] = row["tokens"] / (row["tokens"] - row["accepted"])
        row["ms_per_step"] = 1000 * row["seconds"] / steps
    return [{k: v for k, v in row.items() if k != "texts"} for row in rows]


def compare(engines: dict, concurrencies=(1,), max_tokens: int = 24, repeats: int = 2) -> list[dict]:
    """Every engine on the same prompts, one after the other; the first one is the baseline."""
    rows = [row for label, engine in engines.items() for row in measure(label, engine, concurrencies, max_tokens, repeats)]
    return relative(rows, next(iter(engines)))
# --8<-- [end:compare]


# --8<-- [start:cpu_comparison]
@experiment(ignore=("baseline",))
def cpu_comparison(max_tokens: int = 24, concurrencies=(1,), repeats: int = 2, baseline=None) -> list[dict]:
    """The book's server against a server with ngram speculation (same flags otherwise), on CPU."""
    engines = {"預設（無推測）": baseline if baseline is not None else vllm_endpoint(),  # (1)!
               f"ngram k={K}": vllm_server(speculative_config=NGRAM)}  # (2)!
    return compare(engines, concurrencies, max_tokens, repeats)
# --8<-- [end:cpu_comparison]


def draft_comparison(max_tokens: int = 24, layers: int = 4, baseline=None) -> list[dict]:
    """Draft-model setups made from the bundled model (``servelab run`` on CPU; not in CI: two more servers)."""
    bundled = prepare_model(log=lambda _: None).path
    truncated = make_truncated_draft(layers)
    engines = {"預設（無推測）": baseline if baseline is not None else vllm_endpoint(),
               f"draft：前 {layers} 層": vllm_server(speculative_config=draft_model_config(truncated, 3)),
               "draft：模型自己": vllm_server(speculative_config=draft_model_config(bundled, 3))}
    return compare(engines, (1,), max_tokens, repeats=1)


# --- the worked example -----------------------------------------------------------------------------

def worked_examples(ngram_alpha: float | None = None) -> list[dict]:
    """The bound for the bundled model and for an 8B model, with their drafters."""
    small, big = bundled_config(), llama_8b_config()
    draft4 = truncated_config(small, 4)
    ngram_alpha = 0.8 if ngram_alpha is None else ngram_alpha
    cases = [
        ("SmolLM2-135M", "ngram（查表）", 0.0, ngram_alpha, K),
        ("SmolLM2-135M", "前 4 層草稿", draft_cost(draft4, small), 0.05, 3),
        ("SmolLM2-135M", "模型自己當草稿", 1.0, 1.0, 3),
        ("Llama-3.1-8B", "Llama-3.2-1B 草稿", draft_cost(LLAMA_1B_SHAPE, big), 0.7, K),
        ("Llama-3.1-8B", "ngram（查表）", 0.0, ngram_alpha, K),
    ]
    return [{"target": t, "drafter": d, "c": round(c, 3), "alpha": round(a, 3), "k": k,
             "E": round(expected_tokens(a, k), 2), "bound": round(speedup_bound(a, k, c), 2)}
            for t, d, c, a, k in cases]


# --- 練習 ----------------------------------------------------------------------------------------

# --8<-- [start:ex_best_k]
def best_k(alpha: float, c: float, k_max: int = 10) -> tuple[int, float]:
    """The number of speculative tokens with the highest bound, and that bound."""
    return max(((k, speedup_bound(alpha, k, c)) for k in range(1, k_max + 1)), key=lambda kb: kb[1])
# --8<-- [end:ex_best_k]


# --8<-- [start:ex_break_even]
def break_even_alpha(k: int, c: float) -> float:
    """The acceptance below which speculation can only slow decode down: E(α, k) = k·c + 1."""
    if expected_tokens(1.0, k) < k * c + 1:
        return float("inf")  # even perfect acceptance cannot pay for this draft
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if speedup_bound(mid, k, c) < 1 else (low, mid)
    return (low + high) / 2
# --8<-- [end:ex_break_even]


# --8<-- [start:ex_prometheus]
def acceptance_from_metrics_text(text: str) -> dict[str, float]:
    """Acceptance from a server's ``/metrics`` text (the counters carry ``_total`` there)."""
    totals = dict.fromkeys(SPEC_COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.endswith("_total") and name[: -len("_total")] in totals:
            totals[name[: -len("_total")]] += float(line.rsplit(" ", 1)[1])  # summed over engines
    return acceptance(totals)
# --8<-- [end:ex_prometheus]


def ngram_serve_argv(profile: str = "cpu") -> list[str]:
    """``vllm serve`` of the book's launcher with this page's ngram configuration (shown on the page)."""
    from servelab.runtime.vllm_engine import serve_argv

    return serve_argv(profile, speculative_config=NGRAM)


# --- GPU -----------------------------------------------------------------------------------------

GPU_CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)


def gpu_engines(settings=None) -> dict:
    """Baseline, ngram (CPU proposer), ngram_gpu and the model-as-its-own-draft, bf16 with CUDA graphs."""
    bundled = prepare_model(settings, log=lambda _: None).path
    common = {"enforce_eager": False, "max_num_seqs": max(GPU_CONCURRENCIES), "settings": settings}
    return {"預設（無推測）": offline_llm(**common),
            f"ngram_gpu k={K}": offline_llm(speculative_config={**NGRAM, "method": "ngram_gpu"},
                                           disable_log_stats=False, **common),
            f"ngram k={K}": offline_llm(speculative_config=NGRAM, disable_log_stats=False, **common),
            "draft：模型自己": offline_llm(speculative_config=draft_model_config(bundled, 3),
                                      disable_log_stats=False, **common)}


def _measure_and_log(label: str, engine, levels, max_tokens: int) -> list[dict]:
    rows = measure(label, engine, levels, max_tokens, repeats=2)
    for row in rows:  # a shard killed at its time limit still leaves what it measured in the log
        print("GPU_ROW", json.dumps({k: v for k, v in row.items() if k != "texts"}, ensure_ascii=False), flush=True)
    return rows


def gpu_batch1(max_tokens: int = 256, settings=None) -> list[dict]:
    """Every engine at batch 1 on the copy task."""
    return relative([row for label, engine in gpu_engines(settings).items()
                     for row in _measure_and_log(label, engine, (1,), max_tokens)], "預設（無推測）")


def gpu_concurrency(max_tokens: int = 256, concurrencies=GPU_CONCURRENCIES, settings=None) -> list[dict]:
    """The baseline and ngram_gpu (the method that keeps asynchronous scheduling) across concurrencies."""
    engines = {label: engine for label, engine in gpu_engines(settings).items()
               if label.startswith(("預設", "ngram_gpu"))}
    return relative([row for label, engine in engines.items()
                     for row in _measure_and_log(label, engine, concurrencies, max_tokens)], "預設（無推測）")


def gpu_benchmark(max_tokens: int = 256, concurrencies=GPU_CONCURRENCIES, settings=None) -> list[dict]:
    """Both GPU measurements (``python -m … --gpu``): batch 1 for every engine, then the concurrency sweep."""
    return gpu_batch1(max_tokens, settings) + [
        row for row in gpu_concurrency(max_tokens, concurrencies, settings) if row["concurrency"] != 1]


def gain_vanishes_at(rows: list[dict], engine: str = f"ngram_gpu k={K}") -> int | None:
    """The first concurrency where the engine is no faster than the baseline (speed-up ≤ 1.05)."""
    for row in sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["concurrency"]):
        if row["speedup"] <= 1.05:
            return row["concurrency"]
    return None


SPEED_COLUMNS = {"engine": "設定", "concurrency": "並行數", "tokens_per_s": "tokens/s", "speedup": "加速",
                 "acceptance_rate": "接受率", "mean_accept_len": "平均接受長度", "tokens_per_step": "每步 token",
                 "ms_per_step": "每步 ms",
                 "same_tokens": "輸出與預設相同"}


def _rounded(rows: list[dict]) -> list[dict]:
    keep = [*SPEED_COLUMNS, "drafts", "draft_tokens", "accepted", "tokens", "seconds", "batch"]
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k in keep} for row in rows]


def write_gpu_results(rows: list[dict], root: Path | None = None, parts=("speedup", "concurrency")) -> list[Path]:
    """``speedup_gpu`` (batch 1, every engine), ``concurrency_gpu`` (baseline and ngram_gpu), ``methods_gpu``."""
    import torch

    batch1 = {r["engine"]: r for r in rows if r["concurrency"] == 1}
    best = max((r["speedup"] for label, r in batch1.items() if label.startswith("ngram")), default=None)
    extra = {"goal": "ngram ≥ 1.5× batch-1 tokens/s (copy-heavy workload, bundled model, bf16, CUDA graphs)",
             "met": None if best is None else best >= 1.5,
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
             "methods": spec_methods()}
    paths = []
    if "speedup" in parts:
        batch1 = [r for r in rows if r["concurrency"] == 1]
        paths.append(write_results(LESSON, "speedup_gpu", _rounded(batch1), SPEED_COLUMNS, extra, root=root))
        paths.append(write_results(LESSON, "methods_gpu", methods_rows(), {"method": "method", "what": "需要什麼"},
                                   root=root))
    if "concurrency" in parts:
        swept = [r for r in rows if r["engine"].startswith(("預設", "ngram_gpu"))]
        paths.append(write_results(LESSON, "concurrency_gpu", _rounded(swept), SPEED_COLUMNS,
                                   {**extra, "gain_vanishes_at": gain_vanishes_at(rows)}, root=root))
    return paths


def write_cpu_results(root: Path | None = None, drafts: bool = True) -> list[Path]:
    with vllm_endpoint() as baseline:  # the session's server, or one of our own for both comparisons
        rows = cpu_comparison(baseline=baseline)
        draft_rows = draft_comparison(baseline=baseline) if drafts else None
    ngram1 = next(r for r in rows if r["engine"].startswith("ngram") and r["concurrency"] == 1)
    alpha = alpha_from_mean_length(ngram1["mean_accept_len"], K)
    paths = [write_results(LESSON, "cpu_speedup", _rounded(rows), SPEED_COLUMNS, root=root),
             write_results(LESSON, "worked_examples", worked_examples(round(alpha, 2)),
                           {"target": "目標模型", "drafter": "草稿", "c": "c", "alpha": "α", "k": "k",
                            "E": "E（每步 token）", "bound": "加速上限"}, {"ngram_alpha_measured": alpha}, root=root),
             write_results(LESSON, "methods_cpu", methods_rows(), {"method": "method", "what": "需要什麼"}, root=root)]
    if draft_rows is not None:
        paths.append(write_results(LESSON, "draft_cpu", _rounded(draft_rows), SPEED_COLUMNS, root=root))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_2.l02_speculative_decoding")
    parser.add_argument("--gpu", action="store_true", help="GPU: batch-1 and concurrency sweep (*_gpu.*)")
    args = parser.parse_args([] if argv is None else argv)
    if args.gpu:
        rows = gpu_benchmark()
        for path in write_gpu_results(rows):
            print(path)
        print(json.dumps(_rounded(rows), indent=2, ensure_ascii=False))
        return 0
    for path in write_cpu_results():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
