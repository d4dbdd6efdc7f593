"""03-Integration_with_vLLM：把 vLLM 放在 FastAPI 後面的三種方式、多副本路由與健康檢查、閘道的成本。

三種方式在同一個負載（``vllm bench serve``）下並排量測：

1. HTTP 代理：``servelab.gateway`` → ``vllm serve``；
2. 行程內引擎：FastAPI 的 lifespan 持有一個 ``AsyncLLM``（V1 API），沒有第二個 HTTP 跳點；
3. 直接打 ``vllm serve``，沒有閘道（基準）。

再把兩個 CPU 副本放在 :class:`servelab.gateway.routing.Router` 後面，比較 round-robin、least-outstanding
與 affinity（以 ``vllm:prefix_cache_hits`` 量），並讓一個副本「斷線」再恢復。

    servelab run vllm/lab2_3/l03_integration_with_vllm                        # CPU：寫出 results/…
    SERVELAB_PROFILE=gpu servelab run vllm/lab2_3/l03_integration_with_vllm   # GPU：gateway_overhead_gpu.*
    python -m servelab.vllm.lab2_3.l03_integration_with_vllm inprocess --port 8400   # 只跑行程內的 AsyncLLM 服務
"""

# --8<-- [start:context]
import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx

from servelab.gateway.routing import Router, Upstream, affinity_key
from servelab.runtime import VLLMEndpoint, get_settings, prepare_model
from servelab.runtime.memo import experiment
from servelab.runtime.process import ManagedProcess, free_port
from servelab.runtime.results import write_results
from servelab.runtime.vllm_engine import engine_env, engine_kwargs
from servelab.vllm.lab2_1.l04_production_deployment import run_bench  # 第 2.1 Lab 的 vllm bench serve 包裝

LESSON = "vllm/lab2_3/l03_integration_with_vllm"


def scrape(base_url: str, names: Sequence[str]) -> dict[str, float]:
    """抓一次 /metrics，把這些樣本（跨 label 加總）讀成 {名稱: 數值}。"""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values
# --8<-- [end:context]


# ============================================================== 方式一：HTTP 代理（servelab.gateway）

# --8<-- [start:gateway_server]
@contextmanager
def gateway_server(upstreams: Sequence[str], routing: str = "round_robin", port: int | None = None,
                   workers: int = 1, **settings) -> Iterator[str]:
    """本書的閘道（servelab.gateway）以 uvicorn 在子行程執行；回傳它的網址。"""
    port = port or free_port()
    env = {"SERVELAB_GATEWAY_UPSTREAMS": json.dumps(list(upstreams)),  # (1)!
           "SERVELAB_GATEWAY_ROUTING": routing,
           **{f"SERVELAB_GATEWAY_{key.upper()}": str(value) for key, value in settings.items()}}
    argv = [sys.executable, "-m", "uvicorn", "--factory", "servelab.gateway.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            *(["--workers", str(workers)] if workers > 1 else [])]  # (2)!
    log = get_settings().cache_dir / "logs" / f"gateway-{port}.log"
    proc = ManagedProcess("gateway", argv, log, env=env)
    proc.start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/ready", 60)  # (3)!
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()
# --8<-- [end:gateway_server]


# ============================================================== 方式二：行程內的 AsyncLLM

# --8<-- [start:inprocess_app]
def create_inprocess_app(engine_args: dict | None = None):
    """FastAPI 的 lifespan 持有一個 AsyncLLM；/v1/completions（含 SSE 串流）直接呼叫 engine.generate()。"""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.renderers.inputs.preprocess import parse_model_prompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = engine_args or engine_kwargs()
    model_name = kwargs["served_model_name"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))  # (1)!
        app.state.engine = engine
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="in-process AsyncLLM", lifespan=lifespan)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        engine: AsyncLLM = request.app.state.engine
        params = SamplingParams(max_tokens=body.get("max_tokens", 16), temperature=body.get("temperature", 1.0),
                                ignore_eos=body.get("ignore_eos", False),
                                output_kind=RequestOutputKind.DELTA)  # (2)!
        (prompt,) = await engine.renderer.render_cmpl_async(  # (3)!
            [parse_model_prompt(engine.model_config, body["prompt"])])
        request_id = f"cmpl-{uuid.uuid4().hex}"
        outputs = engine.generate(prompt, params, request_id)  # (4)!
        created = int(time.time())

        def chunk(text: str, finish: str | None, usage: dict | None = None) -> str:
            data = {"id": request_id, "object": "text_completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish}] if usage is None else [],
                    "usage": usage}
            return f"data: {json.dumps(data)}\n\n"

        if body.get("stream"):
            async def events():
                completion_tokens = 0
                async for out in outputs:  # (5)!
                    piece = out.outputs[0]
                    completion_tokens += len(piece.token_ids)
                    yield chunk(piece.text, piece.finish_reason)
                    if out.finished and (body.get("stream_options") or {}).get("include_usage"):
                        prompt_tokens = len(out.prompt_token_ids or [])
                        yield chunk("", None, {"prompt_tokens": prompt_tokens,
                                               "completion_tokens": completion_tokens,
                                               "total_tokens": prompt_tokens + completion_tokens})
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")

        text, tokens, finish, prompt_tokens = "", 0, None, 0
        async for out in outputs:
            text += out.outputs[0].text
            tokens += len(out.outputs[0].token_ids)
            finish, prompt_tokens = out.outputs[0].finish_reason, len(out.prompt_token_ids or [])
        return JSONResponse({"id": request_id, "object": "text_completion", "created": created,
                             "model": model_name, "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                       "total_tokens": prompt_tokens + tokens}})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "max_model_len": kwargs["max_model_len"]}]}

    @app.get("/health")
    async def health(request: Request):
        await request.app.state.engine.check_health()  # (6)!
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)  # (7)!

    return app
# --8<-- [end:inprocess_app]


# --8<-- [start:inprocess_server]
@contextmanager
def inprocess_server(port: int | None = None) -> Iterator[VLLMEndpoint]:
    """行程內 AsyncLLM 服務，放在它自己的子行程（測試行程裡已經有別的引擎）。"""
    port = port or free_port()
    argv = [sys.executable, "-m", "servelab.vllm.lab2_3.l03_integration_with_vllm", "inprocess", "--port", str(port)]
    settings = get_settings()
    log = settings.cache_dir / "logs" / f"inprocess-{port}.log"
    proc = ManagedProcess("in-process AsyncLLM", argv, log,
                          env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1", **engine_env(settings)})
    proc.start()
    try:
        proc.wait_ready(f"http://127.0.0.1:{port}/health", settings.startup_timeout_s)
        yield VLLMEndpoint(f"http://127.0.0.1:{port}", process=proc)
    finally:
        proc.stop()
# --8<-- [end:inprocess_server]


def serve_inprocess(port: int) -> None:
    import uvicorn

    uvicorn.run(create_inprocess_app(), host="127.0.0.1", port=port, log_level="warning")


# ============================================================== 三種方式，同一個負載

# --8<-- [start:three_ways]
CPU_LOAD = {"input_len": 64, "output_len": 16}
CPU_CONCURRENCIES = (1, 4)


def measure_ways(targets: dict[str, VLLMEndpoint], concurrencies: Sequence[int], num_prompts: int,
                 input_len: int, output_len: int, rounds: int = 1) -> list[dict]:
    """對每個目標、每個並行數跑同一個 vllm bench serve 負載；目標輪流跑，機器的起伏平均分給每一方。"""
    tokenizer = prepare_model(log=lambda _: None).path
    rows = []
    for concurrency in concurrencies:
        n = max(num_prompts, 4 * concurrency)
        for attempt in range(rounds):  # (1)!
            for way, endpoint in targets.items():
                with cpu_meter(endpoint.base_url) as cpu:
                    row = run_bench(endpoint, tokenizer, concurrency, n, input_len, output_len)
                rows.append({"way": way, "round": attempt, **row, **cpu})
    return rows


@contextmanager
def cpu_meter(base_url: str) -> Iterator[dict]:
    """量測期間，監聽 base_url 那個連接埠的行程（與它的子行程：uvicorn 的 worker）用了幾秒 CPU。
    只量本書的閘道（命令列有 servelab.gateway）；vLLM 的 API 伺服器與引擎核心不在這裡量。
    除以負載本身的時間（vllm bench serve 的 duration，不含它匯入 vLLM 的十幾秒）就是平均用了幾個核心。"""
    import psutil

    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    found: dict = {}
    procs: list = []
    try:  # 監聽的可能是 worker：往上找到命令列是閘道的那個行程，再算它整棵行程樹
        for pid in {c.pid for c in psutil.net_connections("tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}:
            proc = psutil.Process(pid)
            while proc.parent() and "servelab.gateway" in " ".join(proc.parent().cmdline()):
                proc = proc.parent()
            if "servelab.gateway" in " ".join(proc.cmdline()):
                procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = []

    def cpu_seconds() -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    start = cpu_seconds()
    yield found
    if procs:
        found["gateway_cpu_s"] = cpu_seconds() - start
# --8<-- [end:three_ways]


# --8<-- [start:overhead]
def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def collapse(rows: Sequence[dict]) -> list[dict]:
    """同一個（方式, 並行數）跑了幾輪：每個數字取中位數。"""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["way"], row["max_concurrency"]), []).append(row)
    out = []
    for (way, concurrency), group in groups.items():
        merged = {"way": way, "max_concurrency": concurrency, "rounds": len(group),
                  "num_prompts": group[0]["num_prompts"]}
        for key in ("output_throughput", "request_throughput", "p50_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
                    "p50_itl_ms", "p99_itl_ms", "p50_e2el_ms", "completed", "failed"):
            merged[key] = _median([r[key] for r in group])
        out.append(merged)
    return out


def gateway_overhead(rows: Sequence[dict], direct: str = "vllm serve", via: str = "gateway") -> list[dict]:
    """閘道的成本：同一個並行數下，經過閘道與直接打 vLLM 的差。"""
    by = {(r["way"], r["max_concurrency"]): r for r in collapse(rows)}
    out = []
    for (way, concurrency), base in sorted(by.items(), key=lambda item: item[0][1]):
        if way != direct or (via, concurrency) not in by:
            continue
        gw = by[(via, concurrency)]
        out.append({"max_concurrency": concurrency, "num_prompts": base["num_prompts"],
                    "direct_tok_s": base["output_throughput"], "gateway_tok_s": gw["output_throughput"],
                    "throughput_loss_pct": 100 * (1 - gw["output_throughput"] / base["output_throughput"]),
                    "direct_p50_ttft_ms": base["p50_ttft_ms"], "gateway_p50_ttft_ms": gw["p50_ttft_ms"],
                    "added_p50_ttft_ms": gw["p50_ttft_ms"] - base["p50_ttft_ms"],  # (1)!
                    "added_p50_itl_ms": gw["p50_itl_ms"] - base["p50_itl_ms"]})
    return out
# --8<-- [end:overhead]


WAYS_COLUMNS = {"way": "方式", "max_concurrency": "並行數", "num_prompts": "請求數", "rounds": "輪數",
                "output_throughput": "輸出 tok/s", "p50_ttft_ms": "TTFT p50 (ms)", "p90_ttft_ms": "TTFT p90",
                "p50_itl_ms": "ITL p50 (ms)", "p50_e2el_ms": "E2E p50 (ms)", "failed": "失敗"}
OVERHEAD_COLUMNS = {"max_concurrency": "並行數", "num_prompts": "請求數", "direct_tok_s": "直接 tok/s",
                    "gateway_tok_s": "經閘道 tok/s", "throughput_loss_pct": "吞吐量損失 (%)",
                    "added_p50_ttft_ms": "TTFT p50 增加 (ms)", "added_p50_itl_ms": "ITL p50 增加 (ms)"}
# 議題訂的目標：吞吐量損失 ≤ 3 %、p50 TTFT 增加 ≤ 5 ms、ITL 增加「≈ 0」（本書取 ≤ 0.5 ms）
GOALS = {"throughput_loss_pct": 3.0, "added_p50_ttft_ms": 5.0, "added_p50_itl_ms": 0.5}


def write_ways(rows: Sequence[dict], name: str, root: Path | None = None, extra: dict | None = None) -> Path:
    table = collapse(rows)
    columns = dict(WAYS_COLUMNS)
    if min(r["num_prompts"] for r in table) >= 200:
        columns["p99_ttft_ms"] = "TTFT p99"
    return write_results(LESSON, name, table, columns, root=root,
                         extra={"tool": "vllm bench serve", "raw": list(rows), **(extra or {})})


def write_overhead(rows: Sequence[dict], name: str, root: Path | None = None, extra: dict | None = None,
                   via: Sequence[str] = ("gateway",)) -> Path:
    table = [{"way": way, **row} for way in via for row in gateway_overhead(rows, via=way)]
    columns = OVERHEAD_COLUMNS if len(via) == 1 else {"way": "閘道", **OVERHEAD_COLUMNS}
    cpu = {(r["way"], r["max_concurrency"]): r["gateway_cpu_s"] / r["duration_s"] for r in rows if "gateway_cpu_s" in r}
    if cpu:  # 閘道行程（含所有 worker）在量測期間平均用了幾個核心
        for row in table:
            row["gateway_cpu_cores"] = cpu.get((row["way"], row["max_concurrency"]))
        columns = {**columns, "gateway_cpu_cores": "閘道 CPU（核心）"}
    for row in table:
        row["met"] = (row["throughput_loss_pct"] <= GOALS["throughput_loss_pct"]
                      and row["added_p50_ttft_ms"] <= GOALS["added_p50_ttft_ms"]
                      and abs(row["added_p50_itl_ms"]) <= GOALS["added_p50_itl_ms"])
    return write_results(LESSON, name, table, columns, root=root,
                         extra={"tool": "vllm bench serve", "goals": GOALS, **(extra or {})})


# --8<-- [start:gateway_vs_direct]
@experiment
def gateway_vs_direct(endpoint: VLLMEndpoint, concurrency: int = 2, num_prompts: int = 8,
                      input_len: int = 64, output_len: int = 32) -> list[dict]:
    """同一個 vllm bench serve 負載：先直接打 vLLM，再經過閘道（閘道只在這段時間存在）。"""
    tokenizer = prepare_model(log=lambda _: None).path
    key = {"upstream_api_key": endpoint.api_key} if endpoint.api_key != "EMPTY" else {}
    rows = [{"way": "vllm serve", **run_bench(endpoint, tokenizer, concurrency, num_prompts, input_len, output_len)}]
    with gateway_server([endpoint.base_url], **key) as url:
        via = VLLMEndpoint(url, endpoint.model)  # 閘道沒有開金鑰驗證
        rows.append({"way": "gateway", **run_bench(via, tokenizer, concurrency, num_prompts, input_len, output_len)})
    return rows
# --8<-- [end:gateway_vs_direct]


# ============================================================== 兩個副本：路由策略

# --8<-- [start:shared_prefix_load]
def session_prompts(sessions: int, turns: int, nonce: str, prefix_words: int = 200) -> list[tuple[str, str]]:
    """(session id, prompt)：每個 session 有自己很長的系統提示（共同前綴），之後的問題各不相同。"""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    prompts = []
    for turn in range(turns):
        for s in range(sessions):
            system = f"[{nonce}-{s}] " + " ".join(words[(s + i) % len(words)] for i in range(prefix_words))
            prompts.append((f"{nonce}-{s}", f"{system}\nQuestion {turn}: what comes next?"))
    return prompts  # 交錯排列：s0 t0、s1 t0、…、s0 t1、…
# --8<-- [end:shared_prefix_load]


def cache_block_size(base_url: str) -> int:
    """The KV block size a server reports in ``vllm:cache_config_info`` (128 on the book's CPU)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text):
        if family.name == "vllm:cache_config_info":
            return int(family.samples[0].labels["block_size"])
    raise LookupError("vllm:cache_config_info not in /metrics")


# --8<-- [start:route_sessions]
PREFIX_METRICS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")  # 單位：token


async def route_sessions(upstreams: Sequence[str], policy: str, prompts: Sequence[tuple[str, str]],
                         model: str, use_session: bool = True) -> dict:
    """經過 Router 依序送出請求（max_tokens=1：只看 prefill），回傳每個副本的請求數與前綴快取命中。"""
    before = {url: scrape(url, PREFIX_METRICS) for url in upstreams}
    served = dict.fromkeys(upstreams, 0)
    async with httpx.AsyncClient(timeout=120) as client:
        router = Router(upstreams, policy, client)
        for session, prompt in prompts:
            body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
            key = affinity_key(body, session if use_session else None)  # (1)!
            async with router.lease(key) as upstream:
                response = await client.post(f"{upstream.url}/v1/completions", json=body)
                response.raise_for_status()
                served[upstream.url] += 1
    after = {url: scrape(url, PREFIX_METRICS) for url in upstreams}
    hits = sum(after[u][PREFIX_METRICS[0]] - before[u][PREFIX_METRICS[0]] for u in upstreams)
    queries = sum(after[u][PREFIX_METRICS[1]] - before[u][PREFIX_METRICS[1]] for u in upstreams)
    return {"policy": policy, "key": "session" if use_session else "prefix", "requests": len(prompts),
            "served": list(served.values()), "hit_tokens": int(hits), "query_tokens": int(queries),
            "hit_rate": hits / queries if queries else 0.0}  # (2)!
# --8<-- [end:route_sessions]


@experiment
def compare_policies(upstreams: tuple[str, ...], model: str, sessions: int = 3, turns: int = 2) -> list[dict]:
    """The same shared-prefix load under each policy; a fresh prefix (nonce) per policy, so no policy
    profits from what the previous one left in the caches. (Least-outstanding sends one request at a time
    exactly as round-robin does: nothing is in flight when the next one is picked.)"""
    runs = [("round_robin", True), ("affinity", True), ("affinity", False)]
    rows = []
    for policy, use_session in runs:
        prompts = session_prompts(sessions, turns, nonce=secrets.token_hex(4))
        rows.append(asyncio.run(route_sessions(upstreams, policy, prompts, model, use_session)))
    return rows


POLICY_COLUMNS = {"policy": "策略", "key": "affinity 的鍵", "requests": "請求數", "served": "各副本請求數",
                  "hit_tokens": "命中 token", "query_tokens": "查詢 token", "hit_rate": "前綴快取命中率"}


def write_policies(rows: Sequence[dict], root: Path | None = None) -> Path:
    shown = [{**r, "served": " / ".join(str(n) for n in r["served"]),
              "key": r["key"] if r["policy"] == "affinity" else "—",
              "label": f"{r['policy']}（{r['key']}）" if r["policy"] == "affinity" else r["policy"]} for r in rows]
    return write_results(LESSON, "policies", shown, POLICY_COLUMNS, root=root,
                         extra={"raw": list(rows)})


# --8<-- [start:uneven_load]
async def uneven_load(upstreams: Sequence[str], policy: str, model: str, requests: int = 8,
                      gap_s: float = 0.5, long_tokens: int = 32) -> dict:
    """長短交錯的請求（長、短、長、短…），每隔 gap_s 到一個：各副本同時最多有幾個在途？"""
    peak = dict.fromkeys(upstreams, 0)
    long_on = dict.fromkeys(upstreams, 0)
    async with httpx.AsyncClient(timeout=120) as client:
        router = Router(upstreams, policy, client)

        async def one(i: int) -> None:
            body = {"model": model, "prompt": f"Request {i}:", "temperature": 0, "ignore_eos": True,
                    "max_tokens": long_tokens if i % 2 == 0 else 1}  # (1)!
            async with router.lease() as upstream:
                peak[upstream.url] = max(peak[upstream.url], upstream.outstanding)
                long_on[upstream.url] += i % 2 == 0
                (await client.post(f"{upstream.url}/v1/completions", json=body)).raise_for_status()

        start = time.perf_counter()
        tasks = []
        for i in range(requests):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(gap_s)
        await asyncio.gather(*tasks)
    return {"policy": policy, "long_requests_per_replica": list(long_on.values()),
            "peak_outstanding": list(peak.values()), "wall_s": round(time.perf_counter() - start, 2)}
# --8<-- [end:uneven_load]


@experiment
def compare_balancing(upstreams: tuple[str, ...], model: str) -> list[dict]:
    return [asyncio.run(uneven_load(upstreams, policy, model)) for policy in ("round_robin", "least_outstanding")]


# ============================================================== 健康檢查：副本斷線、恢復

# --8<-- [start:fault_proxy]
class FaultProxy:
    """一條可以拔掉的網路線：把 127.0.0.1:port 轉到副本；cut() 之後新連線被拒、舊連線被切斷。"""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int | None = None) -> str:
        self.port = port or getattr(self, "port", None) or free_port()
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        self.server.close()  # 不再接受連線：connect 被拒
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()
        await self.server.wait_closed()

    async def restore(self) -> None:
        await self.start(self.port)
# --8<-- [end:fault_proxy]


# --8<-- [start:failover]
async def failover_demo(good: str, flaky: str, model: str, interval_s: float = 0.2) -> list[dict]:
    """兩個副本，其中一條線被拔掉再接回：每個階段送 4 個請求，記下路由器怎麼看、請求去了哪裡。"""
    proxy = FaultProxy(flaky)
    flaky_url = await proxy.start()
    events = []
    async with httpx.AsyncClient(timeout=30) as client:
        router = Router([good, flaky_url], "round_robin", client, health_interval_s=interval_s,
                        health_timeout_s=1.0)
        checker = asyncio.create_task(router.check_health())  # (1)!

        async def phase(name: str) -> None:
            statuses, where = [], []
            for i in range(4):
                body = {"model": model, "prompt": f"{name} {i}", "max_tokens": 1}
                try:
                    async with router.lease() as upstream:
                        where.append("replica-2" if upstream.url == flaky_url else "replica-1")
                        statuses.append((await client.post(f"{upstream.url}/v1/completions", json=body)).status_code)
                except httpx.TransportError as error:
                    statuses.append(type(error).__name__)  # (2)!
            events.append({"phase": name, "healthy": [u.healthy for u in router.upstreams],
                           "routed_to": where, "statuses": statuses})

        await asyncio.sleep(2 * interval_s)
        await phase("兩個都正常")
        await proxy.cut()
        await phase("剛拔線")
        await asyncio.sleep(3 * interval_s)
        await phase("健康檢查之後")
        await proxy.restore()
        restored = time.monotonic()
        while not router.upstreams[1].healthy and time.monotonic() - restored < 30:
            await asyncio.sleep(interval_s / 10)
        back_after_s = round(time.monotonic() - restored, 2)  # (3)!
        await phase("接回之後")
        events[-1]["back_after_s"] = back_after_s
        checker.cancel()
        await proxy.cut()
    return events
# --8<-- [end:failover]


FAILOVER_COLUMNS = {"phase": "階段", "healthy": "路由器眼中的健康（副本 1、2）", "routed_to": "請求去向",
                    "statuses": "HTTP 狀態", "removed_by": "副本 2 被誰移出"}


def removed_by(event: dict) -> str:
    """Which check took the cut replica out first: a request that could not connect, or GET /health."""
    return "被動：請求連不上" if "ConnectError" in event["statuses"] else "主動：/health 失敗"


def write_failover(events: Sequence[dict], root: Path | None = None) -> Path:
    shown = [{"phase": e["phase"], "healthy": " / ".join("是" if h else "否" for h in e["healthy"]),
              "routed_to": ", ".join(e["routed_to"]), "statuses": ", ".join(str(s) for s in e["statuses"]),
              "removed_by": removed_by(e) if i == 1 else ""}
             for i, e in enumerate(events)]
    return write_results(LESSON, "failover", shown, FAILOVER_COLUMNS, root=root, extra={"raw": list(events)})


# ============================================================== GPU：閘道的成本在快的引擎上

# --8<-- [start:gpu_overhead]
GPU_LOAD = {"input_len": 512, "output_len": 64}
GPU_CONCURRENCIES = (1, 16, 64)


GPU_WORKERS = 4


def gpu_overhead(concurrencies: Sequence[int] = GPU_CONCURRENCIES, rounds: int = 1, num_prompts: int = 100,
                 workers: int = GPU_WORKERS, root: Path | None = None) -> list[dict]:
    """GPU：內附模型（bf16、CUDA graphs，一步約 1.6 ms）；vllm serve 直接、經過一個閘道行程、經過 workers 個，輪流跑。"""
    from servelab.runtime import vllm_server
    from servelab.vllm.lab2_1.l04_production_deployment import _last_gpu  # 多張 GPU 時用最後一張

    many = f"gateway ×{workers}"
    with vllm_server(enforce_eager=False, env=_last_gpu()) as direct, \
            gateway_server([direct.base_url], max_in_flight=256) as gw, \
            gateway_server([direct.base_url], workers=workers, max_in_flight=256) as gw_many:  # (1)!
        targets = {"vllm serve": direct, "gateway": VLLMEndpoint(gw, direct.model),
                   many: VLLMEndpoint(gw_many, direct.model)}
        rows = measure_ways(targets, concurrencies, num_prompts=num_prompts, rounds=rounds, **GPU_LOAD)
    write_ways(rows, "three_ways_gpu", root=root, extra={"load": GPU_LOAD})
    write_overhead(rows, "gateway_overhead_gpu", root=root, extra={"load": GPU_LOAD, "workers": workers},
                   via=("gateway", many))  # (2)!
    return rows
# --8<-- [end:gpu_overhead]


# ============================================================== 練習

# --8<-- [start:exercise_expected_hits]
def common_prefix_tokens(a: Sequence[int], b: Sequence[int]) -> int:
    """兩個 prompt 的 token 從頭開始有幾個相同。"""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def expected_hit_tokens(sessions: int, turns: int, common_tokens: int, block_size: int, visits: int) -> int:
    """前綴快取命中的 token 數：每個 session 在每個去過的副本上第一次都要算，之後每輪命中完整的區塊。"""
    reusable = common_tokens // block_size * block_size  # 只有填滿的區塊會被快取、被命中
    return sessions * (turns - visits) * reusable
# --8<-- [end:exercise_expected_hits]


# --8<-- [start:exercise_power_of_two]
def pick_power_of_two(router: Router, rng) -> Upstream:
    """「兩個隨機選擇」：隨機抽兩個健康的副本，取在途請求較少的那一個。"""
    candidates = router.healthy()
    if len(candidates) == 1:
        return candidates[0]
    first, second = rng.sample(candidates, 2)
    return first if first.outstanding <= second.outstanding else second
# --8<-- [end:exercise_power_of_two]


# --8<-- [start:exercise_drain]
async def drain(router: Router, url: str, timeout_s: float = 30.0) -> float:
    """維護前把一個副本移出輪替：不再分配新請求，等它手上的請求做完；回傳等了幾秒。"""
    upstream = next(u for u in router.upstreams if u.url == url.rstrip("/"))
    router.mark_down(upstream, "draining for maintenance")
    start = time.monotonic()
    while upstream.outstanding > 0:
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{url} still has {upstream.outstanding} requests after {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
# --8<-- [end:exercise_drain]


# ============================================================== servelab run

def cpu_run(root: Path | None = None, rounds: int = 1) -> dict:
    """Everything the page shows, on CPU, with two engines: ``vllm serve`` and the in-process AsyncLLM
    service (the second replica for routing, and the second way for the comparison)."""
    from servelab.runtime import vllm_server
    from servelab.runtime.process import started_together

    out: dict = {}
    with started_together(vllm_server, inprocess_server) as (first, second):
        upstreams = (first.base_url, second.base_url)
        out["policies"] = compare_policies(upstreams, first.model)
        write_policies(out["policies"], root)
        out["balancing"] = compare_balancing(upstreams, first.model)
        write_balancing(out["balancing"], root)
        out["failover"] = asyncio.run(failover_demo(first.base_url, second.base_url, first.model))
        write_failover(out["failover"], root)
        with gateway_server([first.base_url]) as gw:
            targets = {"vllm serve": first, "gateway": VLLMEndpoint(gw, first.model), "AsyncLLM 行程內": second}
            rows = measure_ways(targets, CPU_CONCURRENCIES, num_prompts=16, rounds=rounds, **CPU_LOAD)
    write_ways(rows, "three_ways", root, extra={"load": CPU_LOAD})
    write_overhead(rows, "gateway_overhead", root, extra={"load": CPU_LOAD})
    out["ways"] = rows
    return out


BALANCING_COLUMNS = {"policy": "策略", "long_requests_per_replica": "長請求（副本 1 / 2）",
                     "peak_outstanding": "在途峰值（副本 1 / 2）", "wall_s": "總時間 (s)"}


def write_balancing(rows: Sequence[dict], root: Path | None = None) -> Path:
    shown = [{**r, "long_requests_per_replica": " / ".join(map(str, r["long_requests_per_replica"])),
              "peak_outstanding": " / ".join(map(str, r["peak_outstanding"]))} for r in rows]
    return write_results(LESSON, "balancing", shown, BALANCING_COLUMNS, root=root, extra={"raw": list(rows)})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inprocess"]:
        port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 8400
        serve_inprocess(port)
        return 0
    if get_settings().profile == "gpu":
        for row in gateway_overhead(gpu_overhead()):
            print(row)
        return 0
    out = cpu_run()
    for row in [*out["policies"], *out["balancing"], *out["failover"], *gateway_overhead(out["ways"])]:
        print(row)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
