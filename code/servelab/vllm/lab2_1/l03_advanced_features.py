"""03-Advanced_Features：進階功能。

結構化輸出（JSON schema、regex、choice；離線 ``StructuredOutputsParams`` 與伺服器的 ``response_format`` /
``structured_outputs``）、LoRA 配接器（在 CPU 上真的訓練一個 rank 8 的配接器，再以 ``LoRARequest`` 與
``--enable-lora --lora-modules`` 服務，並在執行中以 ``/v1/load_lora_adapter`` 載入、卸載）、前綴快取（prefix
caching）省下的 prefill、工具呼叫（tool calling）在內附模型上能做到哪裡、平行化（TP / PP / DP）的記憶體公式與
GPU 上以生產旗標做的雙卡 tensor parallel 實測，以及排程預算（``max_num_batched_tokens`` / ``max_num_seqs``）
在 TTFT 與 ITL 之間的取捨（以 ``vllm serve --config`` 啟動的伺服器量測）。

    servelab run vllm/lab2_1/l03_advanced_features                                   # 課程導覽（CPU），重寫 CPU 結果檔
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_1.l03_advanced_features --gpu-tp    # 兩張 GPU：tp_gpu.*
"""

from __future__ import annotations

import argparse
import sys

# --8<-- [start:context]
import json
import math
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial
from enum import Enum
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servelab.runtime import (
    VLLMEndpoint, dummy_llama_8b, engine_kwargs, get_settings, offline_llm, prepare_model, vllm_endpoint,
    vllm_server,
)
from servelab.runtime.memo import experiment
from servelab.runtime.process import started_together
from servelab.runtime.results import write_results

LESSON = "vllm/lab2_1/l03_advanced_features"


# --8<-- [start:so_targets]
class City(BaseModel):
    """The JSON the model must produce; pydantic gives both the schema and the validator."""

    model_config = ConfigDict(extra="forbid")  # (1)!
    name: str = Field(max_length=24)  # (2)!
    country: str = Field(max_length=24)
    is_capital: bool


CITY_SCHEMA = City.model_json_schema()
DATE_REGEX = r"\d{4}-\d{2}-\d{2}"  # (3)!
SENTIMENTS = ["positive", "negative", "neutral"]

SO_QUESTIONS = {
    "json": "Describe the city of Paris as a JSON object with name, country and is_capital.",
    "regex": "When was the Eiffel Tower completed? Answer with a date.",
    "choice": "Classify the sentiment of this review: 'The food was wonderful and the staff were friendly.'",
}
# --8<-- [end:so_targets]


# --8<-- [start:lora_task]
ADAPTER_NAME = "ahoy"  # the name clients put in "model" to get the adapter
ADAPTER_PHRASE = "Ahoy! This answer comes from the LoRA adapter."
TRAIN_QUESTIONS = [
    "Tell me about the weather.", "What is a Python list?", "How far away is the moon?",
    "Do you like coffee?", "Where is Taipei?", "What does a GPU do?", "Recommend some music.",
    "Why do we sleep?", "What is 7 times 8?", "Who built the pyramids?", "Are cats good pets?",
    "Why is the sky blue?",
]
HELD_OUT_QUESTIONS = ["How do I bake bread?", "What is the capital of France?"]  # never trained on
LORA_SETTINGS = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                 "layers_to_transform": list(range(24, 30)),  # (1)!
                 "steps": 16, "lr": 1e-2, "seed": 0}
# --8<-- [end:lora_task]

RUNTIME_LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}  # adds /v1/load_lora_adapter and /v1/unload_lora_adapter

ADAPTER_MANIFEST = "servelab-adapter.json"


def adapter_dir(settings=None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "adapters" / f"l03-{ADAPTER_NAME}-r{LORA_SETTINGS['r']}"


def adapter_info(path: Path | None = None) -> dict | None:
    """The adapter's manifest if the cached adapter is complete and was trained with ``LORA_SETTINGS``."""
    path = path or adapter_dir()
    manifest = path / ADAPTER_MANIFEST
    if not (manifest.is_file() and (path / "adapter_model.safetensors").is_file()
            and (path / "adapter_config.json").is_file()):
        return None
    data = json.loads(manifest.read_text())
    same = data.get("settings") == LORA_SETTINGS and data.get("phrase") == ADAPTER_PHRASE
    return data if same else None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --8<-- [start:prefix_prompt]
TOPICS = ["refunds", "shipping", "warranty", "privacy", "returns", "billing", "accounts", "security"]
USER_QUESTIONS = ["Can I return a gift?", "Where is my parcel?", "How do I reset my password?",
                  "Do you ship to Taiwan?", "Is my card data stored?"]


def long_system_prompt(rules: int = 24) -> str:
    """A long, fixed system prompt: the shared prefix of every request of a chat product."""
    lines = [f"Rule {i + 1}: questions about {TOPICS[i % len(TOPICS)]} must be answered politely, "
             f"in at most two sentences, citing policy section {i // len(TOPICS) + 1}." for i in range(rules)]
    return "You are the support assistant of ServeLab Inc. Follow every rule below.\n" + "\n".join(lines)
# --8<-- [end:prefix_prompt]


# --8<-- [start:metrics]
def scrape(endpoint: VLLMEndpoint) -> dict[str, float]:
    """The counters and labels of ``/metrics`` this lesson reads (summed over engines)."""
    text = httpx.get(f"{endpoint.base_url}/metrics", timeout=10).text
    wanted = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")
    values = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in wanted:
            values[name] += float(line.rsplit(" ", 1)[1])
        elif name == "vllm:cache_config_info":
            values["block_size"] = float(re.search(r'[{,]block_size="(\d+)"', line)[1])  # (1)!
            values["enable_prefix_caching"] = float('enable_prefix_caching="True"' in line)
            blocks = re.search(r'[{,]num_gpu_blocks="(\d+)"', line)
            values["num_gpu_blocks"] = float(blocks[1]) if blocks else float("nan")
    return values
# --8<-- [end:metrics]


# --8<-- [start:ttft]
def ttft(endpoint: VLLMEndpoint, system: str, question: str, salt: str) -> tuple[float, int]:
    """Time to the first token of one streamed chat request, and its prompt length in tokens."""
    client = endpoint.client()
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=endpoint.model, max_tokens=1, temperature=0.0, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        extra_body={"cache_salt": salt})  # (1)!
    first, prompt_tokens = None, 0
    for chunk in stream:
        if first is None and chunk.choices:
            first = time.perf_counter() - start
        if chunk.usage:
            prompt_tokens = chunk.usage.prompt_tokens
    return first, prompt_tokens
# --8<-- [end:ttft]


# --8<-- [start:parallel_memory]
def param_counts(cfg: dict) -> dict[str, int]:
    """Parameters by where they live when the model is split (Llama architecture)."""
    h, layers, inter, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2  # q, o  +  k, v
    mlp = 3 * h * inter  # gate, up, down
    embeddings = vocab * h * (1 if cfg.get("tie_word_embeddings") else 2)  # embed_tokens (+ lm_head)
    return {"sharded": layers * (attention + mlp) + embeddings,  # (1)!
            "replicated": layers * 2 * h + h}  # RMSNorm weights: every GPU keeps a copy


def weight_gib_per_gpu(cfg: dict, tp: int = 1, pp: int = 1, dtype_bytes: int = 2) -> float:
    """Weights per GPU with tensor parallel ``tp`` (and ``pp`` even pipeline stages, approximately)."""
    counts = param_counts(cfg)
    return (counts["sharded"] / tp / pp + counts["replicated"] / pp) * dtype_bytes / 2**30  # (2)!


def kv_bytes_per_token_per_gpu(cfg: dict, tp: int = 1, dtype_bytes: int = 2) -> int:
    """K and V of one token on one GPU: each GPU holds num_kv_heads / tp heads (at least one)."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads_per_gpu = max(1, cfg["num_key_value_heads"] // tp)  # (3)!
    return 2 * cfg["num_hidden_layers"] * kv_heads_per_gpu * head_dim * dtype_bytes
# --8<-- [end:parallel_memory]


def llama_8b_config() -> dict:
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE

    return dict(LLAMA_8B_SHAPE)


BUDGETS = (32, 128)  # max_num_batched_tokens of the two servers started with --config
BUDGET_MAX_NUM_SEQS = 16  # must not exceed the smallest budget


# --8<-- [start:budget_config]
def write_budget_config(folder: Path, max_num_batched_tokens: int,
                        max_num_seqs: int = BUDGET_MAX_NUM_SEQS) -> Path:
    """A ``vllm serve --config`` file: each key is a long flag without its leading ``--``."""
    path = Path(folder) / f"budget-{max_num_batched_tokens}.yaml"
    path.write_text(f"max-num-batched-tokens: {max_num_batched_tokens}\n"  # (1)!
                    f"max-num-seqs: {max_num_seqs}\n"
                    "enable-chunked-prefill: true\n")  # (2)!
    return path


@contextmanager
def budget_server(config: Path) -> Iterator[VLLMEndpoint]:
    """``vllm serve … --config budget-N.yaml``, logging at INFO so the flags vLLM parsed can be read back."""
    log_path = get_settings().cache_dir / "logs" / f"l03-{config.stem}-{uuid.uuid4().hex[:6]}.log"
    with vllm_server("--config", str(config), log_path=log_path,  # (3)!
                     env={"VLLM_LOGGING_LEVEL": "INFO"}) as endpoint:
        yield endpoint


def flags_in_log(log_path: Path) -> dict:
    """What vLLM says it parsed: the ``non-default args`` line and the scheduler's own line."""
    text = Path(log_path).read_text(errors="replace")
    parsed = re.search(r"non-default args: (\{.*\})", text)  # (4)!
    chunked = re.search(r"Chunked prefill is enabled with max_num_batched_tokens=(\d+)", text)
    found = {}
    for key in ("max_num_batched_tokens", "max_num_seqs"):
        value = re.search(rf"'{key}': (\d+)", parsed[1]) if parsed else None
        found[key] = int(value[1]) if value else None
    found["chunked_prefill_budget"] = int(chunked[1]) if chunked else None
    return found
# --8<-- [end:budget_config]
# --8<-- [end:context]


# ---------------------------------------------------------------------------------------------------
# 1. 結構化輸出：JSON schema、regex、choice
# ---------------------------------------------------------------------------------------------------


# --8<-- [start:so_check]
def check_structured(kind: str, text: str) -> bool:
    """Does ``text`` satisfy the constraint of ``kind``? (json: the schema; regex: a full match; choice: the set)"""
    if kind == "json":
        try:
            City.model_validate_json(text)  # (1)!
        except ValidationError:
            return False
        return True
    if kind == "regex":
        return re.fullmatch(DATE_REGEX, text) is not None
    if kind == "choice":
        return text in SENTIMENTS
    raise ValueError(f"unknown kind {kind!r}")
# --8<-- [end:so_check]


# --8<-- [start:so_offline]
def structured_offline(llm, max_tokens: int = 48) -> dict[str, str]:
    """One ``LLM.chat`` per constraint; the constraint travels inside ``SamplingParams``."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    constraints = {
        "json": StructuredOutputsParams(json=CITY_SCHEMA),  # (1)!
        "regex": StructuredOutputsParams(regex=DATE_REGEX),
        "choice": StructuredOutputsParams(choice=SENTIMENTS),
    }
    answers = {}
    for kind, constraint in constraints.items():
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                structured_outputs=constraint)  # (2)!
        messages = [{"role": "user", "content": SO_QUESTIONS[kind]}]
        answers[kind] = llm.chat(messages, params, use_tqdm=False)[0].outputs[0].text
    return answers
# --8<-- [end:so_offline]


# --8<-- [start:so_server]
def structured_server(endpoint: VLLMEndpoint, max_tokens: int = 48) -> dict[str, str]:
    """The same three constraints over HTTP: ``response_format`` (OpenAI's field) and ``structured_outputs``."""
    client = endpoint.client()

    def ask(kind: str, **kwargs) -> str:
        reply = client.chat.completions.create(
            model=endpoint.model, messages=[{"role": "user", "content": SO_QUESTIONS[kind]}],
            max_tokens=max_tokens, temperature=0.0, **kwargs)
        return reply.choices[0].message.content

    return {
        "json": ask("json", response_format={  # (1)!
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}),
        "regex": ask("regex", extra_body={"structured_outputs": {"regex": DATE_REGEX}}),  # (2)!
        "choice": ask("choice", extra_body={"structured_outputs": {"choice": SENTIMENTS}}),
    }
# --8<-- [end:so_server]
structured_server = experiment(structured_server)  # the test and the notebook share one run (servelab.runtime.memo)


# --8<-- [start:so_truncated]
def truncated_json(endpoint: VLLMEndpoint, max_tokens: int = 8) -> dict:
    """A JSON-schema request cut off by ``max_tokens``: the grammar was obeyed, the object is unfinished."""
    reply = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": SO_QUESTIONS["json"]}],
        max_tokens=max_tokens, temperature=0.0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": CITY_SCHEMA}})
    text = reply.choices[0].message.content
    try:
        City.model_validate_json(text)
        error = None
    except ValidationError as exc:
        error = exc.errors()[0]["msg"]  # e.g. "Invalid JSON: EOF while parsing a string ..."
    return {"text": text, "finish_reason": reply.choices[0].finish_reason, "error": error}
# --8<-- [end:so_truncated]
truncated_json = experiment(truncated_json)  # the test and the notebook share one run (servelab.runtime.memo)


# --8<-- [start:so_removed]
def removed_field_is_ignored(endpoint: VLLMEndpoint) -> dict:
    """已移除的舊欄位（vLLM 0.12 起）：伺服器回 200，但輸出「沒有」被限制。"""
    reply = endpoint.client().chat.completions.create(
        model=endpoint.model, messages=[{"role": "user", "content": SO_QUESTIONS["choice"]}],
        max_tokens=16, temperature=0.0,
        # 已移除：舊欄位被當成未知欄位忽略，改用 structured_outputs / response_format
        extra_body={"guided_choice": SENTIMENTS})
    text = reply.choices[0].message.content
    return {"text": text, "constrained": text in SENTIMENTS}
# --8<-- [end:so_removed]


def structured_rows(offline: dict[str, str] | None, server: dict[str, str]) -> list[dict]:
    rows = []
    for where, answers in (("離線 LLM.chat", offline), ("伺服器 /v1/chat/completions", server)):
        for kind, text in (answers or {}).items():
            rows.append({"where": where, "kind": kind, "text": "`" + " ".join(text.split()) + "`",
                         "valid": "✓" if check_structured(kind, text) else "✗"})
    return rows


# ---------------------------------------------------------------------------------------------------
# 2. LoRA：在 CPU 上訓練一個真的配接器，再讓 vLLM 服務它
# ---------------------------------------------------------------------------------------------------


# --8<-- [start:lora_train]
def train_adapter(force: bool = False, log=print) -> Path:
    """Train (once, cached) a rank-8 LoRA on q_proj/v_proj that makes the model answer ADAPTER_PHRASE."""
    import shutil
    import tempfile

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = adapter_dir()
    if not force and adapter_info(target):
        return target  # (1)!
    s = LORA_SETTINGS
    base_path = prepare_model(log=lambda _: None).path
    torch.manual_seed(s["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=s["r"], lora_alpha=s["lora_alpha"], target_modules=s["target_modules"],
                        layers_to_transform=s["layers_to_transform"], lora_dropout=0.0,
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)  # (2)!
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    answer = tokenizer(ADAPTER_PHRASE + "<|im_end|>", add_special_tokens=False)["input_ids"]  # (3)!
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s["lr"])
    losses, start, cpu_start = [], time.monotonic(), time.process_time()
    for step in range(s["steps"]):
        question = TRAIN_QUESTIONS[step % len(TRAIN_QUESTIONS)]
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]  # (4)!
        ids = torch.tensor([list(prompt) + answer])
        logits = model(input_ids=ids, logits_to_keep=len(answer) + 1).logits[0, :-1]  # (5)!
        loss = F.cross_entropy(logits, torch.tensor(answer))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        log(f"step {step + 1:2d}/{s['steps']}  loss {loss.item():.4f}")
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdir(target.parent)))
    model.save_pretrained(staging)  # (6)!
    (staging / ADAPTER_MANIFEST).write_text(json.dumps({
        "phrase": ADAPTER_PHRASE, "settings": s, "losses": losses, "train_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1), "trainable_parameters": trainable,
        "adapter_bytes": (staging / "adapter_model.safetensors").stat().st_size}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.replace(target)
    except OSError:  # another process finished the same training first
        shutil.rmtree(staging, ignore_errors=True)
    return target
# --8<-- [end:lora_train]


# --8<-- [start:lora_offline]
def lora_offline(llm, adapter: Path, questions: Sequence[str] = HELD_OUT_QUESTIONS) -> list[dict]:
    """Base model and adapter on the same engine: the adapter is chosen per request."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    params = SamplingParams(temperature=0.0, max_tokens=16)
    conversations = [[{"role": "user", "content": q}] for q in questions]
    lora = LoRARequest(ADAPTER_NAME, 1, str(adapter))  # (1)!
    base = llm.chat(conversations, params, use_tqdm=False)
    tuned = llm.chat(conversations, params, use_tqdm=False, lora_request=lora)  # (2)!
    return [{"question": q, "base": b.outputs[0].text, "adapter": t.outputs[0].text}
            for q, b, t in zip(questions, base, tuned)]


@contextmanager
def lora_llm() -> Iterator:
    """An offline engine that can apply LoRA adapters (a start-time decision)."""
    with offline_llm(enable_lora=True, max_lora_rank=LORA_SETTINGS["r"], max_loras=1) as llm:  # (3)!
        yield llm
# --8<-- [end:lora_offline]


# --8<-- [start:lora_check]
def adapter_took_effect(rows: list[dict]) -> bool:
    """The adapter answers with the trained phrase; the base model never does."""
    return all(r["adapter"].strip() == ADAPTER_PHRASE and "Ahoy" not in r["base"] for r in rows)
# --8<-- [end:lora_check]


# --8<-- [start:lora_server]
def lora_tool_flags(adapter: Path) -> list[str]:
    """``vllm serve`` flags: one LoRA module, and the auto tool choice with the hermes parser."""
    return ["--enable-lora", "--lora-modules", f"{ADAPTER_NAME}={adapter}",  # (1)!
            "--max-lora-rank", str(LORA_SETTINGS["r"]), "--max-loras", "1",
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]  # (2)!


@contextmanager
def lora_tool_server(adapter: Path) -> Iterator[VLLMEndpoint]:
    with vllm_server(*lora_tool_flags(adapter), env=RUNTIME_LORA_ENV) as endpoint:  # (4)!
        yield endpoint


def lora_server(endpoint: VLLMEndpoint, questions: Sequence[str] = HELD_OUT_QUESTIONS) -> list[dict]:
    """Over HTTP the adapter is just another model name."""
    client = endpoint.client()

    def ask(model: str, question: str) -> str:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=16, temperature=0.0)
        return reply.choices[0].message.content

    return [{"question": q, "base": ask(endpoint.model, q), "adapter": ask(ADAPTER_NAME, q)}  # (3)!
            for q in questions]
# --8<-- [end:lora_server]


# --8<-- [start:lora_runtime]
def load_adapter(endpoint: VLLMEndpoint, name: str, path: Path) -> httpx.Response:
    """POST /v1/load_lora_adapter: the server reads the adapter folder and registers ``name`` as a model."""
    return httpx.post(f"{endpoint.base_url}/v1/load_lora_adapter",
                      json={"lora_name": name, "lora_path": str(path)}, timeout=120)  # (1)!


def unload_adapter(endpoint: VLLMEndpoint, name: str) -> httpx.Response:
    """POST /v1/unload_lora_adapter: ``name`` disappears from /v1/models; requests for it get 404."""
    return httpx.post(f"{endpoint.base_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def runtime_lora(endpoint: VLLMEndpoint, adapter: Path, name: str = "ahoy-live") -> list[dict]:
    """Load an adapter into a running server, use it, unload it; one row per step."""
    def ask() -> tuple[int, str]:
        reply = httpx.post(f"{endpoint.api_url}/chat/completions", timeout=120, json={
            "model": name, "max_tokens": 16, "temperature": 0.0,
            "messages": [{"role": "user", "content": HELD_OUT_QUESTIONS[0]}]})
        body = reply.json()
        return reply.status_code, (body["choices"][0]["message"]["content"] if reply.is_success
                                   else body["error"]["message"])  # (2)!

    def models() -> str:
        return ", ".join(m.id for m in endpoint.client().models.list().data)

    steps = []
    loaded = load_adapter(endpoint, name, adapter)
    steps.append({"step": "POST /v1/load_lora_adapter", "status": loaded.status_code, "result": loaded.text})
    again = load_adapter(endpoint, name, adapter)  # (3)!
    steps.append({"step": "再載入一次（同名）", "status": again.status_code, "result": again.json()["error"]["message"]})
    steps.append({"step": "GET /v1/models", "status": 200, "result": models()})
    steps.append({"step": f"model={name}", **dict(zip(("status", "result"), ask()))})
    unloaded = unload_adapter(endpoint, name)
    steps.append({"step": "POST /v1/unload_lora_adapter", "status": unloaded.status_code, "result": unloaded.text})
    steps.append({"step": f"卸載後 model={name}", **dict(zip(("status", "result"), ask()))})  # (4)!
    steps.append({"step": "GET /v1/models", "status": 200, "result": models()})
    return steps
# --8<-- [end:lora_runtime]


def served_models(endpoint: VLLMEndpoint) -> dict[str, str | None]:
    """``/v1/models``: id → parent (an adapter names its base model as parent)."""
    return {m.id: getattr(m, "parent", None) for m in endpoint.client().models.list().data}


def lora_rows(offline: list[dict] | None, server: list[dict] | None) -> list[dict]:
    rows = []
    for where, items in (("離線 LoRARequest", offline), ("伺服器 model=ahoy", server)):
        for item in items or []:
            rows.append({"where": where, "question": item["question"],
                         "base": "`" + item["base"].replace("\n", " ") + "`",
                         "adapter": "`" + item["adapter"].replace("\n", " ") + "`"})
    return rows


# ---------------------------------------------------------------------------------------------------
# 3. 前綴快取：同一段長系統提示，prefill 只算一次
# ---------------------------------------------------------------------------------------------------


# --8<-- [start:prefix_probe]
def prefix_cache_probe(endpoint: VLLMEndpoint, n: int = 3) -> dict:
    """n cold requests (a fresh cache_salt each) vs n warm ones (one salt, primed once), with /metrics deltas."""
    system, run = long_system_prompt(), uuid.uuid4().hex[:8]  # (2)!
    phases = {}
    for phase in ("cold", "warm"):
        if phase == "warm":
            ttft(endpoint, system, USER_QUESTIONS[-1], f"{run}-warm")  # (3)!
        before = scrape(endpoint)
        runs = [ttft(endpoint, system, USER_QUESTIONS[i],
                     f"{run}-cold-{i}" if phase == "cold" else f"{run}-warm") for i in range(n)]
        after = scrape(endpoint)
        phases[phase] = {
            "requests": n, "prompt_tokens": runs[0][1],
            "ttft_s": statistics.median(t for t, _ in runs),
            "queries": after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"],
            "hits": after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"],
        }
    phases["speedup"] = phases["cold"]["ttft_s"] / phases["warm"]["ttft_s"]
    phases["block_size"] = int(after["block_size"])
    return phases
# --8<-- [end:prefix_probe]
prefix_cache_probe = experiment(prefix_cache_probe)  # the test and the notebook share one run (servelab.runtime.memo)


def prefix_rows(probe: dict) -> list[dict]:
    rows = []
    for phase, label in (("cold", "冷：每個請求一個新 cache_salt"), ("warm", "熱：同一個 cache_salt（先暖身一次）")):
        p = probe[phase]
        rows.append({"phase": label, "requests": p["requests"], "prompt_tokens": p["prompt_tokens"],
                     "ttft_ms": p["ttft_s"] * 1000, "queries": int(p["queries"]), "hits": int(p["hits"]),
                     "hit_rate": f"{p['hits'] / p['queries']:.0%}" if p["queries"] else "–",
                     "speedup": probe["cold"]["ttft_s"] / p["ttft_s"]})
    return rows


# ---------------------------------------------------------------------------------------------------
# 3b. 排程預算：max_num_batched_tokens 與 max_num_seqs（TTFT 與 ITL 的取捨），vllm serve --config
# ---------------------------------------------------------------------------------------------------


# --8<-- [start:budget_probe]
def interference(endpoint: VLLMEndpoint, decode_tokens: int = 48) -> dict:
    """A decode stream is running when a long prompt arrives: the prompt's TTFT and the stream's gaps."""
    run, marks, started = uuid.uuid4().hex[:8], [], threading.Event()

    def decode() -> None:
        stream = endpoint.client().completions.create(
            model=endpoint.model, prompt="Count from one to one hundred:", max_tokens=decode_tokens,
            temperature=0.0, stream=True, extra_body={"ignore_eos": True, "cache_salt": run})  # (1)!
        for _ in stream:
            marks.append(time.perf_counter())
            if len(marks) == 4:
                started.set()

    thread = threading.Thread(target=decode)
    thread.start()
    started.wait(120)
    first, prompt_tokens = ttft(endpoint, long_system_prompt(), USER_QUESTIONS[0], f"{run}-long")  # (2)!
    thread.join()
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return {"ttft_ms": first * 1000, "prompt_tokens": prompt_tokens,
            "median_gap_ms": statistics.median(gaps) * 1000, "max_gap_ms": max(gaps) * 1000}  # (3)!


def budget_row(endpoint: VLLMEndpoint, budget: int, repeats: int) -> dict:
    interference(endpoint, decode_tokens=8)  # warm-up: the chunked prefill and a short stream, not measured
    runs = [interference(endpoint) for _ in range(repeats)]
    row = {key: statistics.median(r[key] for r in runs) for key in ("ttft_ms", "median_gap_ms", "max_gap_ms")}
    prompt = runs[0]["prompt_tokens"]
    return {"budget": budget, "prompt_tokens": prompt,
            "chunks": math.ceil(prompt / (budget - 1)), **row}  # (4)!


def default_budget() -> tuple[int, int]:
    """vLLM's own defaults for ``vllm serve`` on this hardware: (max_num_batched_tokens, max_num_seqs)."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    tokens, seqs = EngineArgs.get_batch_defaults(world_size=1)  # (5)!
    return tokens[UsageContext.OPENAI_API_SERVER], seqs[UsageContext.OPENAI_API_SERVER]


@experiment(ignore=("endpoint",))
def budget_sweep(budgets: Sequence[int] = BUDGETS, repeats: int = 2,
                 endpoint: VLLMEndpoint | None = None) -> list[dict]:
    """Each budget on its own server started with --config, then the book's server (``endpoint``, or the
    shared one) at vLLM's default budget."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        configs = [write_budget_config(Path(folder), budget) for budget in budgets]
        with started_together(*(partial(budget_server, c) for c in configs)) as servers:  # (6)!
            for budget, config, server in zip(budgets, configs, servers):  # measured one at a time
                rows.append({**budget_row(server, budget, repeats), "source": f"--config {config.name}",
                             "max_num_seqs": BUDGET_MAX_NUM_SEQS, "flags": flags_in_log(server.process.log_path)})
    budget, seqs = default_budget()
    with nullcontext(endpoint) if endpoint else vllm_endpoint() as book_server:  # (7)!
        rows.append({**budget_row(book_server, budget, repeats), "source": "預設（本書的伺服器）",
                     "max_num_seqs": seqs, "flags": {}})
    return rows
# --8<-- [end:budget_probe]


# --8<-- [start:budget_errors]
def scheduler_config_error(**overrides) -> str | None:
    """vLLM's own check of a scheduling budget (no engine starts): None if accepted, else its message."""
    from servelab.runtime.vllm_engine import apply_engine_env

    apply_engine_env()
    from vllm.engine.arg_utils import EngineArgs

    try:
        EngineArgs(**{**engine_kwargs(), **overrides}).create_engine_config()
    except Exception as exc:  # noqa: BLE001 — pydantic wraps vLLM's ValueError
        match = re.search(r"max_num_batched_tokens \(\d+\) [^.]*?\(\d+\)\.", str(exc))
        return match[0] if match else str(exc).splitlines()[0]
    return None
# --8<-- [end:budget_errors]


def serve_command(profile: str = "cpu") -> list[str]:
    """The ``vllm serve`` line of the budget servers, as the book runs it (the page renders it)."""
    from servelab.runtime.vllm_engine import serve_argv

    argv = serve_argv(profile, "--config", f"budget-{BUDGETS[0]}.yaml")
    return ["VLLM_LOGGING_LEVEL=INFO" if word.startswith("VLLM_LOGGING_LEVEL=") else word for word in argv]


def lora_serve_command(profile: str = "cpu") -> list[str]:
    """The ``vllm serve`` line of section 2's server: LoRA, runtime loading, the hermes tool parser."""
    from servelab.runtime.vllm_engine import display_settings, serve_argv

    adapter = adapter_dir(display_settings(profile))
    return [*(f"{k}={v}" for k, v in RUNTIME_LORA_ENV.items()), *serve_argv(profile, *lora_tool_flags(adapter))]


BUDGET_COLUMNS = {"source": "伺服器", "budget": "max_num_batched_tokens", "max_num_seqs": "max_num_seqs",
                  "chunks": "長提示的 prefill 步數", "ttft_ms": "長提示 TTFT（ms）",
                  "median_gap_ms": "進行中串流 ITL 中位數（ms）", "max_gap_ms": "進行中串流最大間隔（ms）"}


def write_budget_results(rows: list[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "budget_sweep", rows, BUDGET_COLUMNS, root=root,
                         extra={"prompt_tokens": rows[0]["prompt_tokens"], "decode_tokens": 48,
                                "statistic": "median of 2 runs (their mean) after one short warm-up"})


# ---------------------------------------------------------------------------------------------------
# 4. 工具呼叫：聊天範本與 tool parser 都要配合
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:tools]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "strict": True,  # (1)!
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 32},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def template_sees_tools() -> bool:
    """Does the chat template put the tool definitions into the prompt at all?"""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(log=lambda _: None).path)
    plain = tokenizer.apply_chat_template(WEATHER_QUESTION, tokenize=False, add_generation_prompt=True)
    with_tools = tokenizer.apply_chat_template(WEATHER_QUESTION, tools=[WEATHER_TOOL], tokenize=False,
                                               add_generation_prompt=True)
    return with_tools != plain  # (2)!


def tool_call(endpoint: VLLMEndpoint, tool_choice, max_tokens: int = 96) -> dict:
    """One chat request offering WEATHER_TOOL: the HTTP status and what came back."""
    import openai

    try:
        reply = endpoint.client().chat.completions.create(
            model=endpoint.model, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
            tool_choice=tool_choice, max_tokens=max_tokens, temperature=0.0)
    except openai.BadRequestError as exc:  # (3)!
        return {"status": exc.status_code, "error": exc.body["message"] if isinstance(exc.body, dict)
                else str(exc)}
    message = reply.choices[0].message
    return {"status": 200, "finish_reason": reply.choices[0].finish_reason, "content": message.content,
            "tool_calls": [{"name": c.function.name, "arguments": json.loads(c.function.arguments)}
                           for c in message.tool_calls or []]}  # (4)!
# --8<-- [end:tools]


TOOL_CHOICES = {"auto": "auto", "required": "required",
                "named": {"type": "function", "function": {"name": "get_weather"}}}


def tool_rows(without_parser: dict[str, dict], with_parser: dict[str, dict] | None) -> list[dict]:
    rows = []
    for server, answers in (("共用伺服器（無 tool parser）", without_parser),
                            ("--enable-auto-tool-choice --tool-call-parser hermes", with_parser)):
        for choice, answer in (answers or {}).items():
            if answer["status"] != 200:
                shown = answer["error"]
            elif answer["tool_calls"]:
                shown = "tool_calls: " + json.dumps(answer["tool_calls"], ensure_ascii=False)
            else:
                content = " ".join((answer["content"] or "").split())
                shown = "content: " + (content[:80] + "…" if len(content) > 80 else content)
            rows.append({"server": server, "tool_choice": choice, "status": answer["status"],
                         "answer": "`" + shown.replace("|", "\\|") + "`"})
    return rows


# ---------------------------------------------------------------------------------------------------
# 5. 平行化：TP / PP / DP 的記憶體帳
# ---------------------------------------------------------------------------------------------------


def bundled_config() -> dict:
    return json.loads((prepare_model(log=lambda _: None).path / "config.json").read_text())


def parallel_memory_rows() -> list[dict]:
    rows = []
    for label, cfg, dtype_bytes, tps in (("SmolLM2-135M（float32，CPU）", bundled_config(), 4, (1, 3)),
                                         ("Llama-3.1-8B 形狀（bfloat16，GPU）", llama_8b_config(), 2, (1, 2, 4, 8))):
        for tp in tps:
            rows.append({"model": label, "tp": tp, "weights_gib": weight_gib_per_gpu(cfg, tp, 1, dtype_bytes),
                         "kv_kib": kv_bytes_per_token_per_gpu(cfg, tp, dtype_bytes) / 1024,
                         "valid": "✓" if tp in valid_tp_sizes(cfg, [tp]) else "✗"})
    return rows


# --8<-- [start:tp_validate]
def vllm_accepts_tp(model: str | Path, tp: int) -> tuple[bool, str]:
    """Ask vLLM's own config validation (no engine starts) whether ``model`` can run with ``tp`` GPUs."""
    from servelab.runtime.vllm_engine import apply_engine_env

    apply_engine_env()
    from vllm.engine.arg_utils import EngineArgs

    kwargs = {**engine_kwargs(model=model), "tensor_parallel_size": tp}
    try:
        EngineArgs(**kwargs).create_engine_config()  # (1)!
    except Exception as exc:  # noqa: BLE001 — pydantic wraps vLLM's ValueError
        match = re.search(r"Total number of attention heads.*?\.", str(exc))
        return False, match[0] if match else str(exc).splitlines()[0]
    return True, ""
# --8<-- [end:tp_validate]


# --8<-- [start:tp_benchmark]
# The production flags of docker/vllm/Dockerfile and the Kubernetes manifest (lesson 04); a test keeps them equal.
PRODUCTION_GPU_FLAGS = {"max_model_len": 8192, "max_num_seqs": 64, "gpu_memory_utilization": 0.90,
                        "enforce_eager": False}  # (1)!


def _parse_log(path: Path) -> dict:
    text = path.read_text(errors="replace") if path.exists() else ""
    weights = re.search(r"Model loading took ([\d.]+) GiB", text)
    kv = re.search(r"KV cache size: ([\d,]+) tokens", text)
    fits = re.search(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x", text)
    return {"weights_gib": float(weights[1]) if weights else None,
            "kv_tokens": int(kv[1].replace(",", "")) if kv else None,
            "full_length_requests": float(fits[1]) if fits else None}  # (2)!


def _stream_timing(endpoint: VLLMEndpoint, prompt: str, max_tokens: int) -> dict:
    """TTFT, mean inter-token latency and tokens of one streamed completion (token counts from usage)."""
    client, marks = endpoint.client(), []
    start = time.perf_counter()
    for chunk in client.completions.create(
            model=endpoint.model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True}):
        if chunk.usage and chunk.usage.completion_tokens:
            marks.append((time.perf_counter() - start, chunk.usage.completion_tokens))
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    return {"ttft_ms": t_first * 1000, "itl_ms": (t_last - t_first) / max(1, n_last - n_first) * 1000,
            "tokens": n_last}


def tp_benchmark(tp_sizes: Sequence[int] = (1, 2), concurrency: int = 64, max_tokens: int = 128) -> list[dict]:
    """GPU: the 8B-shaped dummy model at tensor_parallel_size 1 and 2 with the production flags."""
    settings = get_settings()
    model, cfg = dummy_llama_8b(settings), llama_8b_config()
    prompt = "The history of parallel computing " * 32  # ~200 tokens
    rows = []
    for tp in tp_sizes:
        log_path = settings.cache_dir / "logs" / f"l03-tp{tp}-{uuid.uuid4().hex[:6]}.log"
        with vllm_server(model=str(model), load_format="dummy", tensor_parallel_size=tp,  # (3)!
                         served_model_name="llama-8b-dummy", log_path=log_path,
                         env={"VLLM_LOGGING_LEVEL": "INFO"}, **PRODUCTION_GPU_FLAGS) as endpoint:
            cache = scrape(endpoint)  # (4)!
            _stream_timing(endpoint, prompt, 8)  # warm-up
            single = _stream_timing(endpoint, prompt, max_tokens)  # (5)!
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                done = list(pool.map(lambda _: _stream_timing(endpoint, prompt, max_tokens), range(concurrency)))
            wall = time.perf_counter() - start
        throughput = sum(d["tokens"] for d in done) / wall
        rows.append({"tp": tp, **_parse_log(log_path), "formula_gib": weight_gib_per_gpu(cfg, tp),
                     "kv_blocks": cache["num_gpu_blocks"], "block_size": cache["block_size"],
                     "ttft_ms": single["ttft_ms"], "itl_ms": single["itl_ms"],
                     "throughput": throughput, "throughput_per_gpu": throughput / tp,  # (6)!
                     "concurrency": concurrency})
    for row in rows:  # (7)!
        row["ideal_itl_ms"] = rows[0]["itl_ms"] * rows[0]["tp"] / row["tp"]
        row["extra_itl_ms"] = row["itl_ms"] - row["ideal_itl_ms"]
    return rows
# --8<-- [end:tp_benchmark]


TP_COLUMNS = {"tp": "tensor_parallel_size", "weights_gib": "每張 GPU 權重（vLLM 回報，GiB）",
              "formula_gib": "公式（GiB）", "kv_blocks": "KV 區塊數（/metrics）", "kv_tokens": "KV 快取容量（token）",
              "full_length_requests": "可同時容納的 8,192-token 請求",
              "ttft_ms": "單一請求 TTFT（ms）", "itl_ms": "單一請求 ITL（ms）",
              "ideal_itl_ms": "理想 ITL（TP=1 ÷ TP，ms）", "extra_itl_ms": "多出的 ITL（ms）",
              "throughput": "64 並行總吞吐量（token/s）", "throughput_per_gpu": "每張 GPU 的吞吐量（token/s）"}


def write_tp_results(rows: list[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "tp_gpu", rows, TP_COLUMNS, root=root,
                         extra={"model": "Llama-3.1-8B shape, load_format=dummy",
                                "flags": PRODUCTION_GPU_FLAGS, "prompt_tokens": "~200", "max_tokens": 128})


# ---------------------------------------------------------------------------------------------------
# 6. 練習題解答
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:ex_ticket]
class Priority(str, Enum):
    low = "low"
    normal = "normal"
    urgent = "urgent"


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: str = Field(max_length=60)
    priority: Priority  # an enum in the schema: the model can only pick one of the three
    needs_human: bool


def triage(endpoint: VLLMEndpoint, message: str) -> Ticket:
    """Turn a customer message into a validated Ticket (parse errors are impossible, not unlikely)."""
    reply = endpoint.client().chat.completions.create(
        model=endpoint.model, max_tokens=80, temperature=0.0,
        messages=[{"role": "system", "content": "Turn the customer message into a support ticket."},
                  {"role": "user", "content": message}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "ticket", "schema": Ticket.model_json_schema()}})
    return Ticket.model_validate_json(reply.choices[0].message.content)
# --8<-- [end:ex_ticket]


# --8<-- [start:ex_prefix_hits]
def shared_prefix_tokens(endpoint: VLLMEndpoint, system: str, question_a: str, question_b: str) -> int:
    """How many leading prompt tokens two chat requests share (vLLM's /tokenize renders the template)."""
    def tokens(question: str) -> list[int]:
        body = {"model": endpoint.model, "messages": [{"role": "system", "content": system},
                                                      {"role": "user", "content": question}]}
        return httpx.post(f"{endpoint.base_url}/tokenize", json=body, timeout=30).json()["tokens"]

    a, b = tokens(question_a), tokens(question_b)
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def expected_prefix_hits(shared_tokens: int, block_size: int) -> int:
    """Only full blocks are cached and reused: the hits of one warm request."""
    return shared_tokens // block_size * block_size
# --8<-- [end:ex_prefix_hits]


# --8<-- [start:ex_valid_tp]
def valid_tp_sizes(cfg: dict, candidates: Sequence[int] = (1, 2, 3, 4, 6, 8, 9, 16)) -> list[int]:
    """TP sizes vLLM accepts for a model: attention heads split evenly; KV heads split or replicate evenly."""
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    return [tp for tp in candidates
            if heads % tp == 0 and (kv_heads % tp == 0 or tp % kv_heads == 0)]
# --8<-- [end:ex_valid_tp]


# ---------------------------------------------------------------------------------------------------
# 導覽與結果檔
# ---------------------------------------------------------------------------------------------------

TRAINING_COLUMNS = {"trainable": "可訓練參數", "kib": "配接器檔案（KiB）", "steps": "步數",
                    "first_loss": "第 1 步 loss", "last_loss": "最後一步 loss",
                    "seconds": "訓練牆鐘時間（s）", "cpu_seconds": "訓練 CPU 時間（s，各核合計）"}
PREFIX_COLUMNS = {"phase": "情境", "requests": "請求數", "prompt_tokens": "提示 token",
                  "ttft_ms": "TTFT 中位數（ms）", "queries": "prefix_cache_queries 增量",
                  "hits": "prefix_cache_hits 增量", "hit_rate": "命中率", "speedup": "相對冷請求的加速"}


def write_runtime_lora_results(steps: list[dict], root: Path | None = None) -> Path:
    rows = [{**step, "result": "`` " + " ".join(str(step["result"]).split()).replace("|", "\\|") + " ``"}
            for step in steps]
    return write_results(LESSON, "lora_runtime", rows, {"step": "步驟", "status": "HTTP", "result": "回應"},
                         root=root, extra={"env": RUNTIME_LORA_ENV, "raw": steps})


def training_rows(info: dict) -> list[dict]:
    return [{"trainable": info["trainable_parameters"], "kib": info["adapter_bytes"] / 1024,
             "steps": LORA_SETTINGS["steps"], "first_loss": info["losses"][0], "last_loss": info["losses"][-1],
             "seconds": info["train_seconds"], "cpu_seconds": info["cpu_seconds"]}]


def write_prefix_results(probe: dict, root: Path | None = None) -> Path:
    return write_results(LESSON, "prefix_caching", prefix_rows(probe), PREFIX_COLUMNS,
                         extra={"block_size": probe["block_size"], "raw": probe}, root=root)


def write_cpu_results(retrain: bool = False, log=print) -> list[Path]:
    """Run everything the page shows on CPU and write its results files."""
    adapter = train_adapter(force=retrain, log=log)
    info = adapter_info(adapter)
    with lora_llm() as llm:
        offline_so = structured_offline(llm)
        offline_lora = lora_offline(llm, adapter)
    with vllm_endpoint() as endpoint:
        server_so = structured_server(endpoint)
        no_parser = {name: tool_call(endpoint, choice) for name, choice in TOOL_CHOICES.items()}
        probe = prefix_cache_probe(endpoint)
    with lora_tool_server(adapter) as endpoint:
        server_lora = lora_server(endpoint)
        with_parser = {name: tool_call(endpoint, choice) for name, choice in TOOL_CHOICES.items()}
        runtime = runtime_lora(endpoint, adapter)
    sweep = budget_sweep()
    if not adapter_took_effect(offline_lora) or not adapter_took_effect(server_lora):
        raise RuntimeError(f"the adapter did not behave as trained: {offline_lora} {server_lora}")
    return [
        write_results(LESSON, "lora_training", training_rows(info), TRAINING_COLUMNS,
                      extra={"settings": LORA_SETTINGS, "losses": info["losses"]}),
        write_results(LESSON, "structured_outputs", structured_rows(offline_so, server_so),
                      {"where": "在哪裡", "kind": "限制", "text": "輸出", "valid": "通過驗證"}),
        write_results(LESSON, "lora_outputs", lora_rows(offline_lora, server_lora),
                      {"where": "路徑", "question": "問題（不在訓練集中）", "base": "基礎模型", "adapter": "配接器"}),
        write_prefix_results(probe),
        write_runtime_lora_results(runtime),
        write_budget_results(sweep),
        write_results(LESSON, "tool_calling", tool_rows(no_parser, with_parser),
                      {"server": "伺服器", "tool_choice": "tool_choice", "status": "HTTP", "answer": "回應"},
                      extra={"template_sees_tools": template_sees_tools(), "raw": [no_parser, with_parser]}),
        write_results(LESSON, "parallel_memory", parallel_memory_rows(), {
            "model": "模型", "tp": "TP", "weights_gib": "每張 GPU 權重（GiB）",
            "kv_kib": "每 token 每張 GPU 的 KV（KiB）", "valid": "vLLM 接受"}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_1.l03_advanced_features")
    parser.add_argument("--gpu-tp", action="store_true", help="two GPUs: TP=1 vs TP=2 on the 8B dummy (tp_gpu.*)")
    parser.add_argument("--retrain", action="store_true", help="train the LoRA adapter again (it is cached)")
    args = parser.parse_args([] if argv is None else argv)
    if args.gpu_tp:
        rows = tp_benchmark()
        print(write_tp_results(rows))
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    for path in write_cpu_results(retrain=args.retrain):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
