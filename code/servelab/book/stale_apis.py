"""APIs the book must not teach as current (removed or renamed upstream).

A mention is allowed only inside an explicit "removed / replaced by" note: a line that also says
已移除, 已棄用, 改用, 取代, removed, replaced or deprecated (or sits in an admonition titled like that).
"""

from __future__ import annotations

import re

# (pattern, what replaced it)
STALE: tuple[tuple[str, str], ...] = (
    (r"vllm\.entrypoints\.openai\.api_server", "vllm serve MODEL"),
    (r"\bVLLM_USE_V1\b", "nothing: V1 is the only engine"),
    (r"\bAsyncLLMEngine\b", "vllm.v1.engine.async_llm.AsyncLLM with AsyncEngineArgs"),
    (r"\bMQLLMEngine\b", "vllm.v1.engine.async_llm.AsyncLLM"),
    (r"\bspeculative_model\s*=|--speculative-model\b", "speculative_config={...}"),
    (r"(?<![\"'])\bnum_speculative_tokens\s*=", "speculative_config={'num_speculative_tokens': ...}"),
    (r"\bngram_prompt_lookup_(?:max|min)\b", "speculative_config prompt_lookup_max/min"),
    (r"\bspeculative_draft_tensor_parallel_size\b", "speculative_config draft_tensor_parallel_size"),
    (r"\bguided_(?:json|regex|choice|grammar)\b", "structured_outputs / response_format"),
    (r"--disable-log-requests\b", "logging is off by default; --enable-log-requests"),
    (r"--use-v2-block-manager\b", "nothing (always on in V1)"),
    (r"--enable-chunked-prefill\b", "nothing (always on in V1)"),
    (r"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
    (r"vllm:gpu_prefix_cache_", "vllm:prefix_cache_*"),
    (r"vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds"),
    (r"\bbenchmark_serving\.py\b", "vllm bench serve"),
    (r"CompilationConfig\.level\b|compilation_config\s*=\s*\{\s*[\"']level[\"']", "CompilationConfig.mode / -O<n>"),
    (r"\bdisable_log_requests\b", "remove it"),
    (r"\b[Gg]en[Aa][Ii]-?[Pp]erf\b", "AIPerf (perf_analyzer for non-LLM models)"),
    (r"\bFasterTransformer\b", "TensorRT-LLM or the vLLM backend"),
    (r"\binflight_batcher_llm\b", "TensorRT-LLM llmapi"),
    (r"--explicitBatch\b", "explicit batch is the only mode in TensorRT 10"),
    (r"\btorch\.jit\.(?:script|trace)\b", "PyTorch 2 paths (TorchScript only as legacy)"),
    (r"\bon_event\(\s*[\"'](?:startup|shutdown)", "FastAPI lifespan= async context manager"),
)

NOTE_MARKERS = re.compile(r"已移除|已棄用|改用|取代|舊版|legacy|removed|replaced|deprecated", re.IGNORECASE)
COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in STALE]


def scan_text(text: str) -> list[tuple[int, str, str]]:
    """(line number, matched text, replacement) for stale mentions outside a removed/replaced note."""
    hits = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        for pattern, replacement in COMPILED:
            match = pattern.search(line)
            if not match:
                continue
            window = " ".join(lines[max(0, number - 3):number])  # the line and the two before it
            if NOTE_MARKERS.search(window):
                continue
            hits.append((number, match.group(0), replacement))
    return hits
