"""02-Async_Processing：事件迴圈、SSE 串流、用戶端斷線、截止時間、背壓、安全的重試、批次工作、串流的成本。

閘道（``servelab.gateway``）的非同步行為在這一課逐項量測；會壞的上游（串流到一半斷線、永遠不回答）用
:func:`broken_upstream` 模擬——只有故障測試用它，正常請求都送到真的 vLLM。

    servelab run vllm/lab2_3/l02_async_processing     # 對本書的 vLLM 伺服器跑一遍，寫出 results/…
"""

# --8<-- [start:context]
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from servelab.runtime import VLLMEndpoint, vllm_endpoint
from servelab.runtime.memo import experiment
from servelab.runtime.process import free_port
from servelab.runtime.results import write_results
from servelab.gateway.inprocess import running_gateway, wait_until_ready
from servelab.vllm.lab2_3.l01_basic_api import gateway_settings

LESSON = "vllm/lab2_3/l02_async_processing"


def run_sync(coro):
    """asyncio.run；在已經有事件迴圈在跑的地方（Jupyter）改在另一條執行緒裡執行。"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def vllm_counters(base_url: str) -> dict[str, float]:
    """vLLM 自己的 /metrics：正在跑、排隊、已生成的 token 數、各種結束原因的請求數。"""
    wanted = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total"}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
            elif sample.name == "vllm:request_success_total":
                key = f"finished_{sample.labels['finished_reason']}"
                out[key] = out.get(key, 0.0) + sample.value
    return out
# --8<-- [end:context]


# --8<-- [start:event_loop]
def blocking_demo(concurrency: int = 8, delay_s: float = 0.2) -> list[dict]:
    """同一件「等 delay_s 秒」的工作寫成三種 FastAPI 路由，同時送 concurrency 個請求，量總時間。"""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/blocking")
    async def blocking():  # (1)!
        time.sleep(delay_s)
        return {}

    @app.get("/awaiting")
    async def awaiting():  # (2)!
        await asyncio.sleep(delay_s)
        return {}

    @app.get("/threaded")
    def threaded():  # (3)!
        time.sleep(delay_s)
        return {}

    async def run(path: str) -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            start = time.perf_counter()
            await asyncio.gather(*(client.get(path) for _ in range(concurrency)))
            return time.perf_counter() - start

    rows = []
    for path, kind in (("/blocking", "async def + time.sleep"), ("/awaiting", "async def + await asyncio.sleep"),
                       ("/threaded", "def + time.sleep（執行緒池）")):
        total = run_sync(run(path))
        rows.append({"handler": kind, "requests": concurrency, "total_s": round(total, 3),
                     "x_one_request": round(total / delay_s, 1)})
    return rows
# --8<-- [end:event_loop]


# --8<-- [start:stream_frames]
def stream_frames(gateway_url: str, model: str, max_tokens: int = 6) -> dict:
    """直接讀 SSE 的原始位元組：每個事件一行 data:、空行結尾，最後是 usage 與 [DONE]。"""
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    events = []
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=60) as response:
        media_type = response.headers["content-type"]
        raw = b"".join(response.iter_raw())
    for block in raw.split(b"\n\n"):  # (1)!
        if block.strip():
            events.append(block.decode())
    chunks = [json.loads(e[len("data: "):]) for e in events if e != "data: [DONE]"]
    return {"content_type": media_type, "events": len(events), "first": events[0][:120],
            "last_two": events[-2:], "done": events[-1] == "data: [DONE]",
            "usage": chunks[-1].get("usage"), "usage_chunk_has_choices": bool(chunks[-1]["choices"]),
            "text": "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])}
# --8<-- [end:stream_frames]


# --8<-- [start:disconnect]
@experiment(ignore=("gateway_url",))  # 測試與筆記本共用一次量測（servelab.runtime.memo）
def disconnect_aborts(gateway_url: str, upstream: VLLMEndpoint, max_tokens: int = 1000,
                      read_events: int = 3) -> dict:
    """讀幾個事件就關掉連線；用 vLLM 自己的 /metrics 證明生成停了。"""
    before = vllm_counters(upstream.base_url)
    body = {"model": upstream.model, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True}  # (1)!
    with httpx.stream("POST", f"{gateway_url}/v1/completions", json=body, timeout=60) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= read_events:
                break  # (2)!
    closed = time.perf_counter()
    while vllm_counters(upstream.base_url)["vllm:num_requests_running"] > 0:
        if time.perf_counter() - closed > 10:
            break
        time.sleep(0.05)
    settled = time.perf_counter() - closed
    time.sleep(0.5)  # (3)!
    after = vllm_counters(upstream.base_url)
    return {"events_read": seen, "max_tokens": max_tokens, "stopped_after_s": round(settled, 2),
            "running_after": after["vllm:num_requests_running"],
            "tokens_generated": after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"],
            "finished_length": after.get("finished_length", 0) - before.get("finished_length", 0)}
# --8<-- [end:disconnect]


# --8<-- [start:deadline]
@experiment
def deadline_aborts(upstream: VLLMEndpoint, timeout_s: float = 1.0, max_tokens: int = 1000) -> dict:
    """request_timeout_s 很短的閘道：非串流請求在截止時間回 504，vLLM 裡的生成也停了。"""
    before = vllm_counters(upstream.base_url)
    with running_gateway(gateway_settings(upstream, request_timeout_s=timeout_s)) as gateway:
        start = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/completions", timeout=60, json={
            "model": upstream.model, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True})
        elapsed = time.perf_counter() - start
        stream = httpx.post(f"{gateway}/v1/completions", timeout=60, json={
            "model": upstream.model, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True,
            "stream": True})
    time.sleep(0.5)
    after = vllm_counters(upstream.base_url)
    events = [e for e in stream.text.split("\n\n") if e.strip()]
    return {"status": response.status_code, "error": response.json()["error"]["code"],
            "elapsed_s": round(elapsed, 2), "stream_status": stream.status_code, "stream_tail": events[-2:],
            "running_after": after["vllm:num_requests_running"],
            "tokens_generated": after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]}
# --8<-- [end:deadline]


# --8<-- [start:overload]
@experiment
def overload(upstream: VLLMEndpoint, max_in_flight: int = 2, clients: int = 8, max_tokens: int = 12) -> dict:
    """在途上限 2 的閘道同時收到 8 個串流請求：2 個進去，其餘立刻 429 + Retry-After，沒有排隊。"""
    async def one(client: httpx.AsyncClient) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        body = {"model": upstream.model, "prompt": "Hello", "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            await response.aread()
            return response.status_code, time.perf_counter() - start, response.headers.get("retry-after")

    async def run(gateway: str):
        async with httpx.AsyncClient(base_url=gateway, timeout=60) as client:
            return await asyncio.gather(*(one(client) for _ in range(clients)))

    peak = {"running_plus_waiting": 0.0}
    stop = threading.Event()

    def watch():  # (1)!
        while not stop.is_set():
            c = vllm_counters(upstream.base_url)
            peak["running_plus_waiting"] = max(peak["running_plus_waiting"],
                                               c["vllm:num_requests_running"] + c["vllm:num_requests_waiting"])
            time.sleep(0.05)

    with running_gateway(gateway_settings(upstream, max_in_flight=max_in_flight)) as gateway:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = run_sync(run(gateway))
        finally:
            stop.set()
            watcher.join()
    rejected = [r for r in results if r[0] == 429]
    return {"clients": clients, "max_in_flight": max_in_flight, "ok": sum(r[0] == 200 for r in results),
            "rejected_429": len(rejected), "retry_after": sorted({r[2] for r in rejected}),
            "slowest_429_ms": round(max((r[1] for r in rejected), default=0) * 1000, 1),
            "fastest_200_ms": round(min((r[1] for r in results if r[0] == 200), default=0) * 1000, 1),
            "vllm_peak_running_plus_waiting": peak["running_plus_waiting"]}
# --8<-- [end:overload]


# --8<-- [start:retry]
@experiment
def retry_on_connect_error(upstream: VLLMEndpoint, requests: int = 4) -> dict:
    """兩個上游，其中一個的埠沒有人在聽：連不上（一個位元組都沒送出）→ 換一個副本重試，用戶端只看到 200。"""
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # (1)!
    settings = gateway_settings(upstream).model_copy(update={"upstreams": [dead, upstream.base_url],
                                                             "health_interval_s": 3600})
    with running_gateway(settings) as gateway:
        statuses = [httpx.post(f"{gateway}/v1/completions", timeout=60, json={
            "model": upstream.model, "prompt": "Hi", "max_tokens": 1}).status_code for _ in range(requests)]
        ready = httpx.get(f"{gateway}/ready").json()
    return {"statuses": statuses, "upstreams": [(u["url"] == dead and "dead" or "vllm", u["healthy"])
                                                for u in ready["upstreams"]]}
# --8<-- [end:retry]


# --8<-- [start:batch]
def batch_job(gateway_url: str, model: str, prompts: list[str], poll_s: float = 0.2) -> dict:
    """送出一個批次工作、拿到 202 與工作 id，之後輪詢到完成。"""
    lines = [{"custom_id": f"q{i}", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": 4,
                       "temperature": 0}} for i, p in enumerate(prompts)]
    with httpx.Client(base_url=gateway_url, timeout=30) as http:
        submitted = http.post("/v1/jobs", json={"requests": lines})  # (1)!
        job_id = submitted.json()["id"]
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] != "completed":
            time.sleep(poll_s)
    return {"submit_status": submitted.status_code, "id": job_id, "status": job["status"],
            "done": job["done"], "total": job["total"],
            "answers": {r["custom_id"]: (r["status_code"], r["body"]["choices"][0]["message"]["content"])
                        for r in job["results"]}}
# --8<-- [end:batch]


# --8<-- [start:overhead]
def one_stream(base_url: str, model: str, max_tokens: int) -> dict:
    """一個串流請求：TTFT（第一個有內容的事件）、token 之間的平均間隔、總時間。"""
    body = {"model": model, "prompt": "The history of the city", "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True}
    start = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft_ms": (stamps[0] - start) * 1000, "itl_ms": statistics.mean(gaps) * 1000,
            "total_ms": (time.perf_counter() - start) * 1000}


@experiment(ignore=("gateway_url",))  # 測試與筆記本在同一個測試工作階段裡共用一次量測
def streaming_overhead(upstream: VLLMEndpoint, gateway_url: str, rounds: int = 4, max_tokens: int = 6) -> list[dict]:
    """同一個請求輪流直接送 vLLM、經過閘道送，各 rounds 次（交錯，讓兩邊遇到同樣的機器負載）。"""
    one_stream(upstream.base_url, upstream.model, 2)  # 暖身
    samples = {"vLLM 直接": [], "經過閘道": []}
    for _ in range(rounds):
        samples["vLLM 直接"].append(one_stream(upstream.base_url, upstream.model, max_tokens))  # (1)!
        samples["經過閘道"].append(one_stream(gateway_url, upstream.model, max_tokens))
    rows = []
    for path, runs in samples.items():
        rows.append({"path": path, "requests": len(runs), "max_tokens": max_tokens,
                     **{k: round(statistics.median(r[k] for r in runs), 2) for k in ("ttft_ms", "itl_ms", "total_ms")}})
    return rows
# --8<-- [end:overhead]


# --8<-- [start:broken_upstream]
@contextmanager
def broken_upstream(mode: str) -> Iterator[tuple[str, dict]]:
    """故障測試用的上游（不是引擎）：/health 與 /v1/models 正常，生成請求則
    ``die``：送兩個 SSE 事件後直接切斷 TCP 連線（模擬 vLLM 被 kill）；``hang``：收下請求、永遠不回答。"""
    stats = {"open": 0, "peak": 0, "requests": 0}
    loop = asyncio.new_event_loop()
    port = free_port("127.0.0.1")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            if " /health " in line or " /v1/models " in line:
                body = b"{}" if "/health" in line else b'{"object":"list","data":[{"id":"smollm2","max_model_len":2048}]}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
                return
            stats["requests"] += 1
            stats["open"] += 1
            stats["peak"] = max(stats["peak"], stats["open"])
            try:
                if mode == "hang":
                    await reader.read()  # 等到閘道關掉連線（stats["open"] 隨之減 1）
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(2):
                    event = b'data: {"choices":[{"index":0,"text":"t%d"}]}\n\n' % i
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.transport.abort()  # (1)!
            finally:
                stats["open"] -= 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def main(ready: threading.Event, stop: asyncio.Event):
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        await stop.wait()
        server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    ready, stop = threading.Event(), None

    def run():
        nonlocal stop
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        loop.run_until_complete(main(ready, stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield f"http://127.0.0.1:{port}", stats
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(5)
# --8<-- [end:broken_upstream]


# --8<-- [start:sigterm]
def sigterm_drain(upstream: VLLMEndpoint, max_tokens: int = 24) -> dict:
    """python -m servelab.gateway 在子行程裡；串流進行中送 SIGTERM：串流做完、新連線被拒絕、結束碼 0。"""
    port = free_port("127.0.0.1")
    env = {**os.environ, "SERVELAB_GATEWAY_UPSTREAMS": upstream.base_url, "SERVELAB_GATEWAY_DRAIN_TIMEOUT_S": "30"}
    proc = subprocess.Popen([sys.executable, "-m", "servelab.gateway", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.1)
        body = {"model": upstream.model, "prompt": "Once upon a time", "max_tokens": max_tokens,
                "ignore_eos": True, "stream": True}
        chunks, after_signal, new_request = [], None, None
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                chunks.append(line[len("data: "):])
                if len(chunks) == 2:
                    proc.send_signal(signal.SIGTERM)  # (1)!
                    time.sleep(0.3)
                    after_signal = len(chunks)
                    try:
                        new_request = httpx.get(f"{base}/health", timeout=2).status_code  # (2)!
                    except httpx.ConnectError as error:
                        new_request = f"refused ({type(error).__name__})"
        code = proc.wait(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finals = [json.loads(c) for c in chunks if c != "[DONE]"]
    return {"events_before_sigterm": after_signal, "events_total": len(chunks), "done": chunks[-1] == "[DONE]",
            "finish_reason": next((c["choices"][0]["finish_reason"] for c in reversed(finals)
                                   if c.get("choices") and c["choices"][0].get("finish_reason")), None),
            "new_request": new_request, "exit_code": code}
# --8<-- [end:sigterm]


def fault_table(upstream: VLLMEndpoint) -> list[dict]:
    """本頁第 8 節的表：每種故障一列，內容是這次執行量到的。"""
    from servelab.gateway.settings import GatewaySettings

    rows = []
    with broken_upstream("die") as (url, _), running_gateway(GatewaySettings(upstreams=[url])) as gateway:
        start = time.perf_counter()
        text = httpx.post(f"{gateway}/v1/completions", timeout=10, json={
            "model": upstream.model, "prompt": "x", "max_tokens": 5, "stream": True}).text
        events = [e for e in text.split("\n\n") if e]
        rows.append({"fault": "上游在串流途中斷線（模擬）",
                     "result": f"{len(events) - 2} 個完整事件、錯誤事件（{json.loads(events[-2][6:])['error']['status']}）、"
                               f"{events[-1]}；{time.perf_counter() - start:.2f} s 內結束"})
    with broken_upstream("hang") as (url, stats), running_gateway(
            GatewaySettings(upstreams=[url], request_timeout_s=0.5, health_interval_s=0.5)) as gateway:
        wait_until_ready(gateway)
        start = time.perf_counter()
        status = httpx.post(f"{gateway}/v1/completions", timeout=10, json={
            "model": upstream.model, "prompt": "x", "max_tokens": 5}).status_code
        rows.append({"fault": "上游不回答（模擬，截止時間 0.5 s）",
                     "result": f"{status}，{time.perf_counter() - start:.2f} s"})
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    with running_gateway(GatewaySettings(upstreams=[dead])) as gateway:
        ready = httpx.get(f"{gateway}/ready").status_code
        start = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/completions", timeout=10,
                              json={"model": upstream.model, "prompt": "x", "max_tokens": 1})
        rows.append({"fault": "上游停機", "result": f"/ready {ready}；請求 {response.status_code}，"
                     f"Retry-After: {response.headers.get('retry-after')}，{(time.perf_counter() - start) * 1000:.0f} ms"})
    with running_gateway(gateway_settings(upstream)) as gateway:
        d = disconnect_aborts(gateway, upstream)
    rows.append({"fault": "用戶端斷線（vLLM，讀 3 個事件）", "result": f"vLLM {d['stopped_after_s']} s 內停止；"
                 f"生成 {d['tokens_generated']:.0f}/{d['max_tokens']} 個 token；num_requests_running = {d['running_after']:.0f}"})
    t = deadline_aborts(upstream)
    rows.append({"fault": "vLLM 太慢（截止時間 1 s）", "result": f"{t['status']}，{t['elapsed_s']} s；串流以錯誤事件＋[DONE] 結束；"
                 f"兩個請求共生成 {t['tokens_generated']:.0f}/2000 個 token"})
    o = overload(upstream)
    rows.append({"fault": f"過載（{o['clients']} 個同時請求，上限 {o['max_in_flight']}）",
                 "result": f"{o['ok']} 個 200、{o['rejected_429']} 個 429（Retry-After: {', '.join(o['retry_after'])}，"
                           f"最慢 {o['slowest_429_ms']} ms）；vLLM 同時最多 {o['vllm_peak_running_plus_waiting']:.0f} 個請求"})
    g = sigterm_drain(upstream)
    rows.append({"fault": "SIGTERM（串流進行中）", "result": f"串流做完（{g['events_total'] - 1} 個事件，finish_reason={g['finish_reason']}，"
                 f"[DONE]）；新連線 {g['new_request']}；結束碼 {g['exit_code']}"})
    return rows


# --8<-- [start:exercise_in_flight]
def gateway_in_flight_limit(max_num_seqs: int, gateway_replicas: int, headroom: float = 0.1) -> int:
    """練習 2：每個閘道副本的 max_in_flight，讓 vLLM 看到的並行數不超過它一批跑得動的序列數（再加一點餘裕）。"""
    if max_num_seqs < 1 or gateway_replicas < 1:
        raise ValueError("max_num_seqs and gateway_replicas must be at least 1")
    return max(1, int(max_num_seqs * (1 + headroom)) // gateway_replicas)
# --8<-- [end:exercise_in_flight]


OVERHEAD_COLUMNS = {"path": "路徑", "requests": "請求數", "max_tokens": "max_tokens", "ttft_ms": "TTFT p50 (ms)",
                    "itl_ms": "ITL 中位數 (ms)", "total_ms": "總時間 p50 (ms)"}
LOOP_COLUMNS = {"handler": "路由寫法", "requests": "同時請求數", "total_s": "總時間 (s)", "x_one_request": "÷ 一個請求的時間"}


def write_overhead(rows, root=None):
    return write_results(LESSON, "streaming_overhead", rows, OVERHEAD_COLUMNS, root=root)


def write_event_loop(rows, root=None):
    return write_results(LESSON, "event_loop", rows, LOOP_COLUMNS, root=root)


def write_faults(rows: list[dict], root=None):
    return write_results(LESSON, "faults", rows, {"fault": "故障", "result": "閘道的回應（量到的）"}, root=root)


def main() -> int:
    write_event_loop(blocking_demo())
    with vllm_endpoint() as upstream:
        with running_gateway(gateway_settings(upstream)) as gateway:
            print(json.dumps(stream_frames(gateway, upstream.model), ensure_ascii=False, indent=1))
            print(write_overhead(streaming_overhead(upstream, gateway)))
            print(retry_on_connect_error(upstream))
            print(batch_job(gateway, upstream.model, ["Hi", "What is 2+2?"]))
        print(write_faults(fault_table(upstream)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
