"""04-Comprehensive_Optimization：綜合最佳化。

方法：先固定負載（workload），再定 SLO（TTFT、TPOT 上限）與 goodput（每秒「達到 SLO 的請求數」，
``vllm bench serve --goodput`` 的定義），對每個設定掃一組請求速率（request rate），讀吞吐量對延遲的
Pareto 前緣；最後把 Lab 2.1 的預設設定與調整後的設定放在同一台機器、同一份負載下比 goodput。

``vllm bench serve`` 在這個行程裡呼叫（``vllm.benchmarks.serve`` 的剖析器與 ``main``），省下每次啟動
``vllm`` 指令列約 10 秒的匯入時間；命令列與 ``vllm bench serve`` 完全相同。

    servelab run vllm/lab2_2/l04_comprehensive_optimization          # CPU：sweep_cpu.*、final_cpu.*
    SERVELAB_PROFILE=gpu python -m servelab.vllm.lab2_2.l04_comprehensive_optimization --gpu   # H200：*_gpu.*
"""

from __future__ import annotations

import argparse
import importlib
import sys

# --8<-- [start:context]
import contextlib
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from servelab.runtime import VLLMEndpoint, dummy_llama_8b, get_settings, prepare_model, vllm_server
from servelab.runtime.results import write_results
from servelab.runtime.vllm_engine import apply_engine_env

LESSON = "vllm/lab2_2/l04_comprehensive_optimization"
# --8<-- [end:context]

from servelab.runtime import vllm_endpoint  # noqa: E402  (not shown: the page's snippets do not use these)
from servelab.runtime.memo import experiment  # noqa: E402
from servelab.runtime.process import InBackground  # noqa: E402


# --8<-- [start:workload]
@dataclass(frozen=True)
class Workload:
    """固定的負載：每個設定、每個速率都送一模一樣的請求（同一個 seed）。"""

    input_len: int  # prompt 的 token 數（random 資料集）
    output_len: int  # 每個請求生成的 token 數（--ignore-eos：不提早結束）
    num_prompts: int  # 每個速率送幾個請求
    seed: int = 0


@dataclass(frozen=True)
class SLO:
    """服務水準目標（service level objective）：每個請求都要同時做到。"""

    ttft_ms: float  # 第一個 token 最晚何時到
    tpot_ms: float  # 之後每個 token 的平均間隔（time per output token）

    def goodput_args(self) -> list[str]:
        return ["--goodput", f"ttft:{self.ttft_ms:g}", f"tpot:{self.tpot_ms:g}"]  # (1)!


CPU_WORKLOAD = Workload(input_len=32, output_len=12, num_prompts=8)
CPU_SLO = SLO(ttft_ms=1000, tpot_ms=150)
CPU_RATES = (2.0, 8.0)  # 請求/秒（Poisson 到達）
GPU_WORKLOAD = Workload(input_len=256, output_len=128, num_prompts=200)  # (2)!
GPU_SLO = SLO(ttft_ms=500, tpot_ms=25)
GPU_RATES = (40.0, 70.0, 100.0, 130.0, 160.0)
# --8<-- [end:workload]


# --8<-- [start:bench_argv]
def bench_argv(endpoint: VLLMEndpoint, tokenizer: str | Path, workload: Workload, request_rate: float,
               slo: SLO, result_file: Path) -> list[str]:
    """``vllm bench serve`` 的參數（不含 ``vllm bench serve`` 本身）：一個速率、一份固定負載、一組 SLO。"""
    return ["--backend", "openai", "--endpoint", "/v1/completions",
            "--base-url", endpoint.base_url, "--model", endpoint.model, "--tokenizer", str(tokenizer),
            "--dataset-name", "random", "--random-input-len", str(workload.input_len),
            "--random-output-len", str(workload.output_len), "--ignore-eos",
            "--num-prompts", str(workload.num_prompts), "--seed", str(workload.seed),
            "--request-rate", f"{request_rate:g}", "--burstiness", "1.0",  # (1)!
            *slo.goodput_args(),  # (2)!
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--disable-tqdm", "--save-result", "--save-detailed",  # (3)!
            "--result-dir", str(result_file.parent), "--result-filename", result_file.name]
# --8<-- [end:bench_argv]


# --8<-- [start:run_bench_serve]
def run_bench_serve(argv: Sequence[str], api_key: str = "EMPTY") -> dict:
    """在這個行程裡執行 ``vllm bench serve ARGV``：用 vLLM 自己的剖析器與 main，讀回它存的結果檔。"""
    apply_engine_env()  # vLLM 的日誌層級等環境變數，要在匯入 vllm 之前設定
    os.environ["OPENAI_API_KEY"] = api_key  # (1)!
    from vllm.benchmarks.serve import add_cli_args, main
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # vLLM before the utils split
        from vllm.utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    args = parser.parse_args(list(argv))
    log, error = io.StringIO(), []

    def work() -> None:  # (2)!
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                main(args)
        except BaseException as exc:  # noqa: BLE001 — re-raised below, in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if error:
        tail = "\n".join(log.getvalue().strip().splitlines()[-10:])
        raise RuntimeError(f"vllm bench serve failed: {error[0]!r}\n{tail}") from error[0]
    result = json.loads((Path(args.result_dir) / args.result_filename).read_text())
    if result["completed"] == 0:  # (3)!
        raise RuntimeError(f"vllm bench serve: all {result['failed']} requests failed at {args.base_url}")
    return result
# --8<-- [end:run_bench_serve]


def bench_command(profile: str = "cpu", request_rate: str = "2") -> list[str]:
    """The ``vllm bench serve`` line that :func:`sweep` runs for one rate (page: ``servelab:command``), against
    ``servelab serve vllm`` (CPU) or the GPU runner's server; paths shown with ``$HOME``."""
    from servelab.runtime.process import for_display
    from servelab.runtime.vllm_engine import display_settings
    from servelab.runtime.model import model_dir

    settings = display_settings(profile)
    endpoint = VLLMEndpoint("http://127.0.0.1:8000")
    if profile == "gpu":
        workload, slo, tokenizer = GPU_WORKLOAD, GPU_SLO, dummy_llama_8b(settings)
        endpoint.model = gpu_baseline_flags()["served_model_name"]
    else:
        workload, slo, tokenizer = CPU_WORKLOAD, CPU_SLO, model_dir(settings)
    argv = bench_argv(endpoint, for_display(str(tokenizer)), workload,
                      float(request_rate), slo, Path("results") / "bench.json")
    return ["vllm", "bench", "serve", *argv]


def serve_command(config: str = "tuned") -> list[str]:
    """``vllm serve`` of the GPU run (page: ``servelab:command``): the Lab 2.1 flags, or them plus the tuned levers."""
    from servelab.runtime.vllm_engine import display_settings, serve_argv

    model = dummy_llama_8b(display_settings("gpu"))
    flags = gpu_baseline_flags() | (TUNED_GPU_CHANGES if config == "tuned" else {})
    return serve_argv("gpu", model=str(model), load_format="dummy", **flags)


# --8<-- [start:step_bytes]
def decode_step_gb(weight_gb: float, seqs: int, context: int, kv_bytes_per_token: int) -> float:
    """decode 一步要從記憶體讀的量：權重讀一次，加上批次裡每個序列到目前為止的 KV。"""
    return weight_gb + seqs * context * kv_bytes_per_token / 1e9  # (1)!
# --8<-- [end:step_bytes]


# --8<-- [start:goodput]
def good_requests(result: dict, slo: SLO) -> list[bool]:
    """每個請求是否達到 SLO，照 vLLM 0.32 ``vllm/benchmarks/serve.py`` 的 ``calculate_metrics``：
    TTFT ≤ 上限，而且 TPOT = (延遲 − TTFT) ÷ (輸出 token − 1) ≤ 上限（只有一個 token 時 TPOT 算 0）。"""
    good = []
    for ttft, latency, out, err in zip(result["ttfts"], result["latencies"], result["output_lens"],
                                       result["errors"]):
        if err:  # 失敗的請求不算
            continue
        tpot = (latency - ttft) / (out - 1) if out > 1 else 0.0  # (1)!
        good.append(ttft * 1000 <= slo.ttft_ms and tpot * 1000 <= slo.tpot_ms)
    return good


def goodput(result: dict, slo: SLO) -> float:
    """goodput = 達到 SLO 的請求數 ÷ 整段量測時間（請求/秒）。"""
    return sum(good_requests(result, slo)) / result["duration"]  # (2)!
# --8<-- [end:goodput]


# --8<-- [start:sweep]
SWEEP_COLUMNS = {"config": "設定", "request_rate": "請求速率 (req/s)", "completed": "完成",
                 "request_throughput": "吞吐量 (req/s)", "request_goodput": "goodput (req/s)",
                 "slo_attainment": "達標比例", "p90_ttft_ms": "TTFT p90 (ms)", "p90_tpot_ms": "TPOT p90 (ms)",
                 "p90_e2el_ms": "E2E p90 (ms)", "output_throughput": "輸出 tok/s", "pareto": "Pareto 前緣"}


def sweep(endpoint: VLLMEndpoint, tokenizer: str | Path, config: str, rates: Sequence[float],
          workload: Workload, slo: SLO) -> list[dict]:
    """對一台伺服器（一個設定）依序跑每個請求速率，每個速率一次 vllm bench serve。"""
    rows = []
    for rate in rates:
        with tempfile.TemporaryDirectory() as tmp:
            argv = bench_argv(endpoint, tokenizer, workload, rate, slo, Path(tmp) / "bench.json")
            result = run_bench_serve(argv, endpoint.api_key)
        result.setdefault("latencies", [t + sum(i) for t, i in zip(result["ttfts"], result["itls"])])  # 舊版沒有這欄
        rows.append({
            "config": config, "request_rate": rate, "num_prompts": workload.num_prompts,
            **{key: result[key] for key in ("completed", "failed", "duration", "request_throughput",
                                            "request_goodput", "output_throughput", "p50_ttft_ms",
                                            "p90_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p90_tpot_ms",
                                            "p99_tpot_ms", "p90_itl_ms", "p90_e2el_ms", "p99_e2el_ms")},
            "goodput_check": goodput(result, slo),  # (1)!
            "slo_attainment": sum(good_requests(result, slo)) / result["completed"],
            "meets_p90_slo": result["p90_ttft_ms"] <= slo.ttft_ms and result["p90_tpot_ms"] <= slo.tpot_ms,
        })
    return rows
# --8<-- [end:sweep]


# --8<-- [start:pareto]
def pareto_front(rows: Sequence[dict], x: str = "output_throughput", y: str = "p90_e2el_ms") -> list[bool]:
    """每個量測點是否在 Pareto 前緣上：沒有別的點吞吐量（x）更高、延遲（y）又更低。"""
    front = []
    for row in rows:
        dominated = any(other[x] >= row[x] and other[y] <= row[y] and (other[x] > row[x] or other[y] < row[y])
                        for other in rows)  # (1)!
        front.append(not dominated)
    return front
# --8<-- [end:pareto]


# --8<-- [start:final_table]
FINAL_COLUMNS = {"config": "設定", "flags": "兩者不同的旗標", "best_rate": "goodput 最高的速率 (req/s)",
                 "request_goodput": "goodput (req/s)", "slo_attainment": "達標比例",
                 "p90_ttft_ms": "TTFT p90 (ms)", "p90_tpot_ms": "TPOT p90 (ms)",
                 "output_throughput": "輸出 tok/s", "p90_capacity": "p90 達標的最高速率", "ratio": "goodput 倍數"}


def final_table(rows: Sequence[dict], flags: dict[str, dict], baseline: str) -> list[dict]:
    """每個設定取它自己 goodput 最高的那個速率（各自最好的一點），再和基準設定比倍數。"""
    table = []
    for config, changed in flags.items():
        mine = [row for row in rows if row["config"] == config]
        best = max(mine, key=lambda row: row["request_goodput"])  # (1)!
        passing = [row["request_rate"] for row in mine if row["meets_p90_slo"]]
        table.append({"config": config, "flags": ", ".join(f"{k}={v}" for k, v in changed.items()),
                      "best_rate": best["request_rate"], "p90_capacity": max(passing, default=0.0),
                      **{key: best[key] for key in ("request_goodput", "slo_attainment", "p90_ttft_ms",
                                                    "p90_tpot_ms", "output_throughput")}})
    base = next(row["request_goodput"] for row in table if row["config"] == baseline)
    for row in table:
        row["ratio"] = row["request_goodput"] / base if base else math.inf  # (2)!
    return table
# --8<-- [end:final_table]


def write_sweep(rows: list[dict], name: str, workload: Workload, slo: SLO, configs: dict[str, dict],
                root: Path | None = None) -> Path:
    front = pareto_front(rows)
    rows = [{**row, "pareto": "是" if on else ""} for row, on in zip(rows, front)]
    columns = dict(SWEEP_COLUMNS)
    return write_results(LESSON, name, rows, columns, root=root,
                         extra={"tool": "vllm bench serve (in-process)", "workload": asdict(workload),
                                "slo": asdict(slo), "configs": configs,
                                "requests_per_level": workload.num_prompts})


def write_final(table: list[dict], name: str, workload: Workload, slo: SLO, root: Path | None = None) -> Path:
    return write_results(LESSON, name, table, FINAL_COLUMNS, root=root,
                         extra={"workload": asdict(workload), "slo": asdict(slo)})


# --8<-- [start:cpu_configs]
CPU_BASELINE = "Lab 2.1 生產旗標"
CPU_TUNED = "調整後（max_num_seqs 128）"


def cpu_configs() -> dict[str, dict]:
    """CPU 上比的兩個設定，只列兩者不同的旗標（其餘都是本書伺服器的引擎參數）。"""
    from servelab.vllm.lab2_1.l04_production_deployment import production_flags

    lab21 = production_flags()  # (1)!
    return {CPU_BASELINE: {"max_num_seqs": lab21["max_num_seqs"], "max_model_len": lab21["max_model_len"]},
            CPU_TUNED: {"max_num_seqs": 128, "max_model_len": get_settings().max_model_len}}  # (2)!
# --8<-- [end:cpu_configs]


@experiment(ignore=("shared", "tokenizer"))
def cpu_sweep(shared: VLLMEndpoint, tokenizer: str, rates: Sequence[float] = CPU_RATES,
              workload: Workload = CPU_WORKLOAD, slo: SLO = CPU_SLO) -> list[dict]:
    """CPU：Lab 2.1 生產旗標的伺服器（自己啟動一台）與本書的共用伺服器（vLLM 的 CPU 預設 max_num_seqs 128）。"""
    configs = cpu_configs()
    starting = InBackground(lambda: vllm_server(**configs[CPU_BASELINE]), "l04-baseline")
    try:  # while the server starts, this process imports vLLM's benchmark code (~10 s); nothing is measured yet
        apply_engine_env()
        importlib.import_module("vllm.benchmarks.serve")
        rows = sweep(starting.result(), tokenizer, CPU_BASELINE, rates, workload, slo)
    finally:
        starting.close()  # stopped before the shared server is measured: the two never share the CPU
    return rows + sweep(shared, tokenizer, CPU_TUNED, rates, workload, slo)


# --8<-- [start:gpu_configs]
def gpu_baseline_flags() -> dict:
    """Lab 2.1 第 4 課 Dockerfile 的生產旗標（max_num_seqs 64、gpu_memory_utilization 0.90、CUDA graphs）。"""
    from servelab.vllm.lab2_1.l04_production_deployment import gpu_production_flags

    return gpu_production_flags()


TUNED_GPU_CHANGES = {
    "quantization": "fp8",  # (1)!
    "kv_cache_dtype": "fp8",  # (2)!
    "max_num_seqs": 256,  # (3)!
}
GPU_BASELINE = "Lab 2.1 生產旗標"
GPU_TUNED = "調整後（FP8 權重＋FP8 KV＋max_num_seqs 256）"
# --8<-- [end:gpu_configs]


def _last_gpu() -> dict[str, str]:
    """Take the last GPU when there are several (the session's shared server, if any, holds GPU 0)."""
    import torch

    count = torch.cuda.device_count()
    return {"CUDA_VISIBLE_DEVICES": str(count - 1)} if count > 1 else {}


# --8<-- [start:gpu_final]
def gpu_final(rates: Sequence[float] = GPU_RATES, workload: Workload = GPU_WORKLOAD, slo: SLO = GPU_SLO,
              root: Path | None = None) -> tuple[list[dict], list[dict]]:
    """GPU：同一張 H200、同一份負載，Lab 2.1 的生產旗標與調整後的設定各啟動一次，各掃一組速率。"""
    model = dummy_llama_8b()  # Llama-3.1-8B 的形狀、隨機權重：load_format="dummy"
    base = gpu_baseline_flags()
    configs = {GPU_BASELINE: base, GPU_TUNED: base | TUNED_GPU_CHANGES}
    rows = []
    for name, flags in configs.items():
        with vllm_server(model=str(model), load_format="dummy", env=_last_gpu(), **flags) as endpoint:
            rows += sweep(endpoint, model, name, rates, workload, slo)  # (1)!
    vllm_defaults = {"quantization": None, "kv_cache_dtype": "auto"}  # 不設定時 vLLM 的值（bfloat16 權重與 KV）
    changes = {GPU_BASELINE: {k: base.get(k, vllm_defaults.get(k)) for k in TUNED_GPU_CHANGES},
               GPU_TUNED: TUNED_GPU_CHANGES}
    table = final_table(rows, changes, GPU_BASELINE)
    write_sweep(rows, "sweep_gpu", workload, slo, {k: {**v} for k, v in configs.items()}, root=root)
    write_final(table, "final_gpu", workload, slo, root=root)
    return rows, table
# --8<-- [end:gpu_final]


# --8<-- [start:combine]
def combination_warnings(flags: dict) -> list[str]:
    """把 01–03 課的設定合在一起之前先檢查：哪些組合會互相抵銷（每條都有那一課的量測為證）。"""
    warnings = []
    seqs = int(flags.get("max_num_seqs", 256))
    if flags.get("speculative_config") and seqs > 16:
        warnings.append("speculative decoding 在高並行時沒有好處：批次已經把 GPU 填滿，草稿 token 反而佔掉預算（第 2 課）")
    if flags.get("enable_chunked_prefill") is False:
        warnings.append("關掉 chunked prefill：長 prompt 的 prefill 一步做完，進行中請求的 ITL 會出現尖峰（第 1 課）")
    budget = flags.get("max_num_batched_tokens")
    if budget is not None and int(budget) < seqs:
        warnings.append(f"max_num_batched_tokens {budget} < max_num_seqs {seqs}：vLLM 拒絕啟動（每一步至少要給每個序列一個 token）")
    elif budget is not None and int(budget) < 512:
        warnings.append("max_num_batched_tokens 很小：ITL 平穩，但長 prompt 要分很多步，TTFT 變長（第 1 課）")
    if str(flags.get("kv_cache_dtype", "auto")).startswith("fp8") and not flags.get("quality_checked"):
        warnings.append("FP8 KV 快取讓容量加倍，但會改變輸出：上線前先比對品質（第 1、3 課）")
    if seqs > 128 and flags.get("enforce_eager"):
        warnings.append("enforce_eager：沒有 CUDA graphs，大批次 decode 的每一步多出 CPU 啟動 kernel 的開銷")
    return warnings
# --8<-- [end:combine]


# --8<-- [start:exercise_reslo]
def goodput_under(rows_results: Sequence[dict], slo: SLO) -> list[float]:
    """練習 1：換一組 SLO，不必重跑：用存下的逐請求資料（--save-detailed）重算每個速率的 goodput。"""
    return [goodput(result, slo) for result in rows_results]
# --8<-- [end:exercise_reslo]


# --8<-- [start:exercise_littles_law]
def seqs_needed(request_rate: float, e2e_latency_s: float, headroom: float = 1.25) -> int:
    """練習 2：Little's law——同時在服務中的請求 = 到達率 × 每個請求停留的時間；再留一點餘裕。"""
    return math.ceil(request_rate * e2e_latency_s * headroom)
# --8<-- [end:exercise_littles_law]


# --8<-- [start:exercise_knee]
def knee_rate(rows: Sequence[dict], config: str) -> float | None:
    """練習 3：goodput 開始低於請求速率 90% 的第一個速率（這個設定在這個 SLO 下的極限）。"""
    for row in sorted((r for r in rows if r["config"] == config), key=lambda r: r["request_rate"]):
        if row["request_goodput"] < 0.9 * row["request_rate"]:
            return row["request_rate"]
    return None
# --8<-- [end:exercise_knee]


def cpu_main(root: Path | None = None) -> tuple[list[dict], list[dict]]:
    """CPU: the book's server (``SERVELAB_VLLM_URL``, or a new one) and :func:`cpu_sweep`, writing both result files."""
    settings = get_settings()
    tokenizer = str(prepare_model(settings, log=print).path)
    with vllm_endpoint(settings) as shared:  # `servelab serve vllm`'s server if it runs, else a new one
        rows = cpu_sweep(shared, tokenizer)
    table = final_table(rows, cpu_configs(), CPU_BASELINE)
    write_sweep(rows, "sweep_cpu", CPU_WORKLOAD, CPU_SLO, cpu_configs(), root=root)
    write_final(table, "final_cpu", CPU_WORKLOAD, CPU_SLO, root=root)
    return rows, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servelab.vllm.lab2_2.l04_comprehensive_optimization")
    parser.add_argument("--gpu", action="store_true", help="H200: Lab 2.1 flags vs tuned on the 8B dummy (*_gpu.*)")
    args = parser.parse_args([] if argv is None else argv)  # servelab run calls main() with no arguments
    rows, table = gpu_final() if args.gpu or get_settings().profile == "gpu" else cpu_main()
    for row in [*rows, *table]:
        print({k: v for k, v in row.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
