"""04-Monitoring_and_Deploy：閘道的指標、JSON 日誌、追蹤、儀表板、workers、容器與 Kubernetes、優雅關機。

這一課把 Lab 2.3 的閘道（``servelab.gateway``）放到看得見、部署得了的狀態：閘道與 vLLM 的指標進同一個
Prometheus，日誌是一行一個 JSON 物件、帶著傳給 vLLM 的請求 ID，OpenTelemetry 追蹤從閘道一路連到 vLLM，
部署檔（``deploy/gateway/``）由驗證器檢查，SIGTERM 的排水在真的 uvicorn 行程上量。

    servelab run vllm/lab2_3/l04_monitoring_and_deploy      # 寫出 results/vllm/lab2_3/l04_monitoring_and_deploy/
"""

# --8<-- [start:context]
import io
import json
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
from pathlib import Path

import httpx

from servelab.book.tree import ROOT  # 本書儲存庫的根目錄（deploy/gateway/ 在它底下）
from servelab.gateway import observability
from servelab.gateway.app import create_app
from servelab.gateway.inprocess import running_gateway  # 第 2.1 節
from servelab.gateway.settings import GatewaySettings
from servelab.runtime import VLLMEndpoint, get_settings, vllm_server
from servelab.runtime.memo import experiment
from servelab.runtime.process import ManagedProcess, free_port
from servelab.runtime.results import write_results

LESSON = "vllm/lab2_3/l04_monitoring_and_deploy"
DEPLOY_DIR = ROOT / "deploy" / "gateway"  # Dockerfile、compose、Prometheus、Grafana、k8s
K8S_DIR = DEPLOY_DIR / "k8s"
GATEWAY_KEY = "sk-lesson-" + secrets.token_hex(8)  # 這一課的閘道金鑰（每個行程一把新的）


def gateway_settings(upstream: VLLMEndpoint, **overrides) -> GatewaySettings:
    """閘道的設定：上游是這台 vLLM，用戶端要帶 GATEWAY_KEY。"""
    key = None if upstream.api_key in ("", "EMPTY") else upstream.api_key
    return GatewaySettings(upstreams=[upstream.base_url], upstream_api_key=key,
                           api_keys=[GATEWAY_KEY], **overrides)


def bearer(key: str = GATEWAY_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(model: str, max_tokens: int = 8, stream: bool = False) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "Count from one to twenty."}],
            "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def gateway_env(container: dict) -> dict[str, str]:
    """Deployment 容器的 env（Secret 來的值換成佔位字串），交給 GatewaySettings 剖析。"""
    return {item["name"]: item.get("value", f"<{item['name'].lower()}>") for item in container["env"]}
# --8<-- [end:context]


# --8<-- [start:traffic]
def send_traffic(gateway: str, model: str, streams: int = 3) -> list[int]:
    """幾個串流、一個一般請求，再加上三種錯誤：沒有金鑰、參數錯、模型不存在。回傳每個的狀態碼。"""
    codes = []
    with httpx.Client(base_url=gateway, timeout=60) as http:
        for _ in range(streams):
            with http.stream("POST", "/v1/chat/completions", headers=bearer(),
                             json=chat_body(model, stream=True)) as response:
                response.read()  # 讀到 data: [DONE]
                codes.append(response.status_code)
        codes.append(http.post("/v1/chat/completions", headers=bearer(), json=chat_body(model)).status_code)
        codes.append(http.post("/v1/chat/completions", json=chat_body(model)).status_code)  # 401
        codes.append(http.post("/v1/chat/completions", headers=bearer(),
                               json={**chat_body(model), "temperature": -1}).status_code)  # 400／422
        codes.append(http.post("/v1/chat/completions", headers=bearer(),
                               json={**chat_body(model), "model": "no-such-model"}).status_code)  # 404
    return codes
# --8<-- [end:traffic]


# --8<-- [start:scrape]
def scrape(base_url: str, prefixes: Sequence[str], key: str | None = None, **match: str) -> dict[str, float]:
    """抓一次 /metrics，留下名稱以 prefixes 開頭、label 符合 match 的樣本（跨 label 加總；histogram 只留 _sum、_count）。"""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", headers=bearer(key) if key else {}, timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name.startswith(tuple(prefixes)) and not sample.name.endswith(("_bucket", "_created"))
                    and all(sample.labels.get(k) == v for k, v in match.items())):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def by_label(base_url: str, metric: str, label: str, key: str | None = None, **match: str) -> dict[str, float]:
    """某個 counter 依一個 label 分組的值，例如 servelab_gateway_requests_total 依 code；match 只留這些 label 值。"""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", headers=bearer(key) if key else {}, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in match.items()):
                out[sample.labels[label]] = out.get(sample.labels[label], 0.0) + sample.value
    return out
# --8<-- [end:scrape]


# --8<-- [start:side_by_side]
def mean_delta(before: dict, after: dict, histogram: str) -> float | None:
    count = after.get(f"{histogram}_count", 0.0) - before.get(f"{histogram}_count", 0.0)
    total = after.get(f"{histogram}_sum", 0.0) - before.get(f"{histogram}_sum", 0.0)
    return total / count if count else None


@experiment(ignore=("gateway",))
def ttft_side_by_side(gateway: str, upstream: VLLMEndpoint, streams: int = 4, max_tokens: int = 8) -> dict:
    """同樣幾個串流請求：閘道量到的 TTFT、vLLM 自己量到的 TTFT，和兩者的差。"""
    ours, theirs = ("servelab_gateway_",), ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds")
    chat = {"route": "/v1/chat/completions"}  # (3)!
    g0, v0 = scrape(gateway, ours, GATEWAY_KEY, **chat), scrape(upstream.base_url, theirs)
    with httpx.Client(base_url=gateway, timeout=60) as http:
        for _ in range(streams):
            with http.stream("POST", "/v1/chat/completions", headers=bearer(),
                             json=chat_body(upstream.model, max_tokens, stream=True)) as response:
                response.read()
    g1, v1 = scrape(gateway, ours, GATEWAY_KEY, **chat), scrape(upstream.base_url, theirs)
    gateway_ttft = mean_delta(g0, g1, "servelab_gateway_ttft_seconds")  # (1)!
    vllm_ttft = mean_delta(v0, v1, "vllm:time_to_first_token_seconds")  # (2)!
    return {"streams": streams, "max_tokens": max_tokens,
            "gateway_ttft_ms": round(gateway_ttft * 1000, 2), "vllm_ttft_ms": round(vllm_ttft * 1000, 2),
            "added_ms": round((gateway_ttft - vllm_ttft) * 1000, 2),
            "gateway_e2e_ms": round(mean_delta(g0, g1, "servelab_gateway_request_duration_seconds") * 1000, 2),
            "vllm_e2e_ms": round(mean_delta(v0, v1, "vllm:e2e_request_latency_seconds") * 1000, 2),
            "vllm_counted": int(v1["vllm:time_to_first_token_seconds_count"]
                                - v0.get("vllm:time_to_first_token_seconds_count", 0))}
# --8<-- [end:side_by_side]


SIDE_BY_SIDE_COLUMNS = {"streams": "串流請求數", "max_tokens": "max_tokens",
                        "gateway_ttft_ms": "閘道 TTFT 平均 (ms)", "vllm_ttft_ms": "vLLM TTFT 平均 (ms)",
                        "added_ms": "差 (ms)", "gateway_e2e_ms": "閘道整個請求 (ms)", "vllm_e2e_ms": "vLLM 整個請求 (ms)"}


# --8<-- [start:prometheus]
def prometheus_config(targets: dict[str, str], key_file: Path, interval: str = "1s") -> str:
    """deploy/gateway/prometheus.yml，只換掉這台機器的目標、金鑰檔的路徑與抓取間隔。"""
    import yaml

    config = yaml.safe_load((DEPLOY_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key_file)  # (1)!
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


@contextmanager
def one_prometheus(gateway: str, upstream: VLLMEndpoint) -> Iterator[str]:
    """真的 prometheus 執行檔，同時抓閘道與 vLLM（Triton 第 4 課的 prometheus_server）。"""
    from servelab.triton.lab2_1.l04_monitoring_and_performance import prometheus_server

    with tempfile.TemporaryDirectory(prefix="l04-gateway-key-") as tmp:
        key_file = Path(tmp) / "gateway_metrics_key"
        key_file.write_text(GATEWAY_KEY)
        targets = {"gateway": gateway.removeprefix("http://"), "vllm": upstream.base_url.removeprefix("http://")}
        with prometheus_server(prometheus_config(targets, key_file)) as base:  # (2)!
            yield base
# --8<-- [end:prometheus]


def prom_query(base: str, expr: str) -> list[dict]:
    from servelab.triton.lab2_1.l04_monitoring_and_performance import prom_query as query

    return query(base, expr)


def wait_for(base: str, expr: str, predicate, timeout_s: float = 30.0) -> list[dict]:
    from servelab.triton.lab2_1.l04_monitoring_and_performance import wait_for as wait

    return wait(base, expr, predicate, timeout_s)


# --8<-- [start:dashboard]
GRAFANA_DASHBOARD = DEPLOY_DIR / "grafana" / "dashboards" / "gateway.json"
METRIC_NAME = re.compile(r"\b(servelab_gateway_[a-z_]+|http_[a-z_]+|vllm:[a-z0-9_]+|up)\b(?=\s*[{\[)])")


def dashboard_queries(path: Path = GRAFANA_DASHBOARD) -> list[tuple[str, str]]:
    """(面板標題, PromQL) —— 儀表板裡的每一個查詢。"""
    dashboard = json.loads(path.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def dashboard_metrics(path: Path = GRAFANA_DASHBOARD) -> set[str]:
    """查詢用到的指標族名稱（去掉 _bucket、_sum、_count、_total）。"""
    names = {m for _, expr in dashboard_queries(path) for m in METRIC_NAME.findall(expr)}
    return {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in names} - {"up"}


def render(expr: str, route: str = ".+", rate_interval: str = "30s") -> str:
    """像 Grafana 一樣先代換變數，再交給 Prometheus。"""
    return expr.replace("$__rate_interval", rate_interval).replace("$route", route)
# --8<-- [end:dashboard]


def metric_families(base_url: str, key: str | None = None) -> set[str]:
    """Every metric family a server exports (names as the Prometheus parser reports them)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", headers=bearer(key) if key else {}, timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}


# --8<-- [start:json_logs]
def logged_request(upstream: VLLMEndpoint, request_id: str = "lesson-l04-0001") -> dict:
    """一個帶 X-Request-Id 的請求：閘道的 JSON 日誌行，以及 vLLM 用同一個 ID 命名的回應。"""
    from fastapi.testclient import TestClient

    app = create_app(gateway_settings(upstream))
    buffer = io.StringIO()
    observability.configure_logging(json_logs=True, stream=buffer, level="INFO")  # (1)!
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", headers={**bearer(), "X-Request-Id": request_id},
                               json=chat_body(upstream.model))
    observability.configure_logging(json_logs=True)  # 改回 stderr
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    return {"status": response.status_code, "echoed": response.headers.get("x-request-id"),
            "vllm_id": response.json().get("id"), "log": lines}  # (2)!
# --8<-- [end:json_logs]


# --8<-- [start:traces]
def traced_chat(upstream: VLLMEndpoint, stream: bool = True) -> list[dict]:
    """一個請求的 span：閘道的 SERVER span 與它呼叫 vLLM 的 CLIENT span（記憶體裡的 exporter）。"""
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # (1)!
    app = create_app(gateway_settings(upstream))
    observability.install_tracing(app, provider)
    with TestClient(app) as client:
        with client.stream("POST", "/v1/chat/completions", headers=bearer(),
                           json=chat_body(upstream.model, stream=stream)) as response:
            response.read()
    return [{"name": span.name, "kind": span.kind.name, "trace_id": format(span.context.trace_id, "032x"),
             "span_id": format(span.context.span_id, "016x"),
             "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
             "duration_ms": round((span.end_time - span.start_time) / 1e6, 2),
             "attributes": dict(span.attributes)} for span in exporter.get_finished_spans()]
# --8<-- [end:traces]


# --8<-- [start:servers]
SERVERS = {  # (1)!
    "uvicorn, 1 process": ["-m", "uvicorn", "--factory", "servelab.gateway.app:create_app", "--no-access-log"],
    "uvicorn --workers 2": ["-m", "uvicorn", "--factory", "servelab.gateway.app:create_app", "--no-access-log",
                            "--workers", "2"],
    "gunicorn -k asgi -w 2": ["-m", "gunicorn", "-k", "asgi", "-w", "2", "servelab.gateway.app:create_app()"],
}


def server_argv(kind: str, port: int) -> list[str]:
    bind = ["--bind", f"127.0.0.1:{port}"] if "gunicorn" in kind else ["--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, *SERVERS[kind], *bind]


@contextmanager
def gateway_process(kind: str, upstream: VLLMEndpoint, multiproc: bool = True) -> Iterator[tuple[str, ManagedProcess]]:
    """閘道當成獨立行程；設定全部從環境變數來，和容器裡一樣。"""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="l04-gateway-") as tmp:
        env = {"SERVELAB_GATEWAY_UPSTREAMS": upstream.base_url, "SERVELAB_GATEWAY_API_KEYS": GATEWAY_KEY,
               "SERVELAB_GATEWAY_LOG_JSON": "true"}
        if upstream.api_key not in ("", "EMPTY"):
            env["SERVELAB_GATEWAY_UPSTREAM_API_KEY"] = upstream.api_key
        if multiproc:
            os.mkdir(f"{tmp}/prom")
            env["PROMETHEUS_MULTIPROC_DIR"] = f"{tmp}/prom"  # (2)!
        proc = ManagedProcess(f"gateway ({kind})", server_argv(kind, port), Path(tmp) / "gateway.log", env=env)
        proc.start()
        try:
            base = f"http://127.0.0.1:{port}"
            proc.wait_ready(f"{base}/health", timeout_s=60)
            yield base, proc
        finally:
            proc.stop()
# --8<-- [end:servers]


# --8<-- [start:hammer]
def hammer(base: str, path: str = "/health", requests: int = 400, concurrency: int = 16) -> float:
    """以 concurrency 條連線送 requests 個 GET，回傳每秒完成的請求數。"""
    import asyncio

    async def run() -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
            queue = iter(range(requests))

            async def worker() -> None:
                for _ in queue:
                    try:
                        response = await client.get(path)
                    except httpx.RemoteProtocolError:  # (1)!
                        response = await client.get(path)
                    response.raise_for_status()

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return requests / (time.perf_counter() - start)

    result: list[float] = []  # 一條自己的執行緒與事件迴圈：在筆記本（已有事件迴圈）裡也能呼叫
    thread = threading.Thread(target=lambda: result.append(asyncio.run(run())))
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(f"the load on {base}{path} failed (see the traceback above)")
    return result[0]


@experiment(ignore=("upstream",))
def compare_servers(upstream: VLLMEndpoint, requests: int = 400, concurrency: int = 16) -> list[dict]:
    """同一個閘道、三種跑法：每秒能回答多少個 /health，以及 /metrics 算到的請求數對不對。"""
    rows = []
    for kind in SERVERS:
        with gateway_process(kind, upstream) as (base, _):
            hammer(base, requests=50, concurrency=4)  # 暖身：連線、第一次匯入
            before = by_label(base, "servelab_gateway_requests_total", "route", GATEWAY_KEY).get("/health", 0)
            rate = hammer(base, requests=requests, concurrency=concurrency)
            after = by_label(base, "servelab_gateway_requests_total", "route", GATEWAY_KEY).get("/health", 0)
            rows.append({"server": kind, "requests_per_s": round(rate, 1), "sent": requests,
                         "counted": int(after - before), "loadavg_1m": round(os.getloadavg()[0], 2)})  # (2)!
    return rows
# --8<-- [end:hammer]


SERVER_COLUMNS = {"server": "跑法", "requests_per_s": "/health 請求/秒", "sent": "送出",
                  "counted": "/metrics 算到", "loadavg_1m": "1 分鐘負載"}


# --8<-- [start:sigterm]
@dataclass
class DrainReport:
    exit_code: int | None
    exit_s: float  # SIGTERM 到行程結束
    chunks_before: int  # SIGTERM 之前收到的 SSE 事件
    chunks_after: int  # SIGTERM 之後收到的：進行中的串流繼續
    finish_reason: str | None
    done: bool  # 收到 data: [DONE]
    new_request: str  # SIGTERM 之後的新請求得到什麼


def sigterm_during_stream(base: str, proc: ManagedProcess, model: str, max_tokens: int = 24,
                          after_chunks: int = 3) -> DrainReport:
    """串流進行到第 after_chunks 個事件時對閘道送 SIGTERM：串流有沒有做完、新請求怎樣、行程多久結束。"""
    times: list[float] = []
    last: dict = {"done": False}

    def consume() -> None:
        body = chat_body(model, max_tokens, stream=True) | {"ignore_eos": True}  # 生成滿 max_tokens
        with httpx.stream("POST", f"{base}/v1/chat/completions", headers=bearer(), timeout=120,
                          json=body) as response:
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    last["done"] = True
                elif line.startswith("data: {"):
                    times.append(time.monotonic())
                    for choice in json.loads(line[6:]).get("choices", []):
                        last["finish_reason"] = choice.get("finish_reason") or last.get("finish_reason")

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while len(times) < after_chunks and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = time.monotonic()
    os.kill(proc.proc.pid, signal.SIGTERM)  # (1)!
    time.sleep(0.2)
    try:
        new = httpx.post(f"{base}/v1/chat/completions", headers=bearer(), json=chat_body(model, 2), timeout=5)
        new_request = f"{new.status_code} {new.json()['error']['code']}"
    except httpx.HTTPError as error:
        new_request = type(error).__name__  # (2)!
    code = proc.proc.wait(timeout=90)
    reader.join(timeout=10)
    return DrainReport(code, round(time.monotonic() - sent, 2), sum(t <= sent for t in times),
                       sum(t > sent for t in times), last.get("finish_reason"), last["done"], new_request)
# --8<-- [end:sigterm]


DRAIN_COLUMNS = {"exit_code": "結束碼", "exit_s": "SIGTERM→結束 (s)", "chunks_before": "SIGTERM 前事件",
                 "chunks_after": "SIGTERM 後事件", "finish_reason": "finish_reason", "done": "收到 [DONE]",
                 "new_request": "SIGTERM 後的新請求"}


def drain_command(port: int) -> list[str]:
    """The Dockerfile's ENTRYPOINT + CMD, on 127.0.0.1 and a free port (what the drain test runs)."""
    from servelab.vllm.lab2_1.l04_production_deployment import dockerfile_facts

    facts = dockerfile_facts(DEPLOY_DIR / "Dockerfile")
    argv = [*facts["entrypoint"], *facts["cmd"]]
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = "127.0.0.1", str(port)
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


@contextmanager
def dockerfile_gateway(upstream: VLLMEndpoint, drain_timeout_s: float = 30) -> Iterator[tuple[str, ManagedProcess]]:
    """The gateway started with the Dockerfile's command line (python -m servelab.gateway)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="l04-drain-") as tmp:
        env = {"SERVELAB_GATEWAY_UPSTREAMS": upstream.base_url, "SERVELAB_GATEWAY_API_KEYS": GATEWAY_KEY,
               "SERVELAB_GATEWAY_DRAIN_TIMEOUT_S": str(drain_timeout_s)}
        if upstream.api_key not in ("", "EMPTY"):
            env["SERVELAB_GATEWAY_UPSTREAM_API_KEY"] = upstream.api_key
        proc = ManagedProcess("gateway (Dockerfile CMD)", drain_command(port), Path(tmp) / "gateway.log", env=env)
        proc.start()
        try:
            base = f"http://127.0.0.1:{port}"
            proc.wait_ready(f"{base}/ready", timeout_s=60)
            yield base, proc
        finally:
            proc.stop()


# --8<-- [start:validate]
def validate_k8s(paths: Sequence[Path] | None = None) -> list[str]:
    """kubernetes-validate 內附的 Kubernetes JSON schema，嚴格模式（拒絕 schema 裡沒有的欄位）。"""
    from servelab.vllm.lab2_1.l04_production_deployment import validate_k8s as validate

    return validate(paths or sorted(K8S_DIR.glob("*.yaml")))  # (1)!


def validate_compose(path: Path = DEPLOY_DIR / "compose.yaml") -> subprocess.CompletedProcess:
    from servelab.vllm.lab2_1.l04_production_deployment import validate_compose as validate

    return validate(path)  # (2)!


def settings_from_env(env: dict[str, str]) -> GatewaySettings:
    """清單寫的環境變數，閘道實際會讀成什麼（名稱拼錯的變數會被 pydantic-settings 默默忽略）。"""
    unknown = [name for name in env if name.startswith("SERVELAB_GATEWAY_")
               and name.removeprefix("SERVELAB_GATEWAY_").lower() not in GatewaySettings.model_fields]
    if unknown:
        raise ValueError(f"not a GatewaySettings field: {unknown}")  # (3)!
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SERVELAB_GATEWAY_")}
    try:
        os.environ.update(env)
        return GatewaySettings()
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)
# --8<-- [end:validate]


def dockerfile_facts() -> dict:
    from servelab.vllm.lab2_1.l04_production_deployment import dockerfile_facts as facts

    return facts(DEPLOY_DIR / "Dockerfile")


def load_yaml(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


def requirement_pins(path: Path = DEPLOY_DIR / "requirements.txt") -> dict[str, str]:
    """{distribution: version} of the image's requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def gateway_distributions() -> dict[str, str]:
    """{distribution: installed version} of every third-party module servelab.gateway imports."""
    import ast
    import importlib.util
    from importlib.metadata import distribution, packages_distributions, version

    modules = set()
    for path in (ROOT / "code" / "servelab" / "gateway").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    top_level = packages_distributions()
    found = {}
    for module in sorted(modules):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in ("servelab", "__future__"):
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # "from package import function": not a module
            continue
        if spec is None or spec.origin is None:  # a namespace package (opentelemetry) or a name in a module
            continue
        origin = Path(spec.origin).resolve()
        for dist in top_level.get(top, []):
            files = distribution(dist).files or []
            if any(Path(distribution(dist).locate_file(f)).resolve() == origin for f in files):
                found[dist.lower().replace("_", "-")] = version(dist)
                break
    return found


def servelab_imports_outside_gateway() -> set[str]:
    """servelab modules the gateway imports that the image does not copy (only servelab/gateway/ is in it)."""
    import ast

    outside = set()
    for path in (ROOT / "code" / "servelab" / "gateway").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            outside |= {n for n in names if n.startswith("servelab") and not n.startswith("servelab.gateway")
                        and n != "servelab"}
    return outside


# --8<-- [start:exercise_error_ratio]
def error_ratio(by_code: dict[str, float], klass: str = "5") -> float:
    """練習 1：某一類狀態碼（"4" 或 "5"）占全部請求的比例；PromQL 的寫法在頁面上。"""
    total = sum(by_code.values())
    errors = sum(v for code, v in by_code.items() if code.startswith(klass))
    return errors / total if total else 0.0
# --8<-- [end:exercise_error_ratio]


# --8<-- [start:exercise_grace]
def gateway_grace_problems(deployment: dict) -> list[str]:
    """練習 2：terminationGracePeriodSeconds 要大於 preStop 的等待加上閘道的排水時間。"""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = float(gateway_env(container).get("SERVELAB_GATEWAY_DRAIN_TIMEOUT_S",
                                             GatewaySettings.model_fields["drain_timeout_s"].default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    wait = pre_stop.get("sleep", {}).get("seconds", 0)
    problems = []
    if grace <= wait + drain:
        problems.append(f"terminationGracePeriodSeconds={grace} ≤ preStop {wait} + drain {drain:g}：排水中會被 SIGKILL")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
        problems.append("readinessProbe 不是 /ready：排水中的 Pod 仍會被當成就緒")
    return problems
# --8<-- [end:exercise_grace]


def write_side_by_side(row: dict, root: Path | None = None) -> Path:
    return write_results(LESSON, "ttft_side_by_side", [row], SIDE_BY_SIDE_COLUMNS, root=root)


def write_servers(rows: list[dict], root: Path | None = None) -> Path:
    return write_results(LESSON, "servers", rows, SERVER_COLUMNS, root=root,
                         extra={"cpu_count": os.cpu_count()})


def write_drain(report: DrainReport, root: Path | None = None) -> Path:
    return write_results(LESSON, "drain", [asdict(report)], DRAIN_COLUMNS, root=root)


def main() -> int:
    get_settings()
    with vllm_server() as upstream:
        with running_gateway(gateway_settings(upstream), quiet=False) as gateway:
            print("traffic:", send_traffic(gateway, upstream.model))
            with one_prometheus(gateway, upstream) as prom:
                up = wait_for(prom, 'up{job=~"gateway|vllm"}', lambda r: len(r) == 2)
                print("prometheus up:", {x["metric"]["job"]: x["value"][1] for x in up})
            row = ttft_side_by_side(gateway, upstream)
            write_side_by_side(row)
            print(row)
        rows = compare_servers(upstream)
        write_servers(rows)
        with dockerfile_gateway(upstream) as (base, proc):
            report = sigterm_during_stream(base, proc, upstream.model)
        write_drain(report)
    for item in [*rows, asdict(report)]:
        print(item)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
