"""02-Async_Processing，與可靠性測試的故障部分。

Normal requests go to the session's ``vllm_shared`` through an in-process gateway (uvicorn in a thread).
Faults that cannot be done to the shared engine use :func:`lesson.broken_upstream` (a deliberately broken
upstream: dies mid-stream, or never answers). The SIGTERM test runs ``python -m servelab.gateway`` as a
real subprocess in front of ``vllm_shared``.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from servelab.gateway.app import create_app
from servelab.gateway.settings import GatewaySettings
from servelab.vllm.lab2_3 import l02_async_processing as lesson
from servelab.gateway.inprocess import running_gateway, wait_until_ready
from servelab.vllm.lab2_3.l01_basic_api import gateway_settings

FAULTS: list[dict] = []


@pytest.fixture(scope="module")
def gateway(vllm_shared):
    with running_gateway(gateway_settings(vllm_shared)) as url:
        yield url


# ---------------------------------------------------------------- no engine

def test_a_blocking_call_in_async_def_serialises_every_request():
    rows = {r["handler"]: r for r in lesson.blocking_demo(concurrency=8, delay_s=0.2)}
    assert rows["async def + time.sleep"]["x_one_request"] >= 6  # 8 requests one after another
    assert rows["async def + await asyncio.sleep"]["x_one_request"] < 3
    assert rows["def + time.sleep（執行緒池）"]["x_one_request"] < 3
    lesson.write_event_loop(list(rows.values()))


def test_upstream_killed_mid_stream_gives_an_error_event_and_a_clean_end():
    with lesson.broken_upstream("die") as (url, _), running_gateway(GatewaySettings(upstreams=[url])) as gateway:
        start = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/completions", timeout=10,
                              json={"model": "smollm2", "prompt": "x", "max_tokens": 5, "stream": True})
        elapsed = time.perf_counter() - start
        events = [e for e in response.text.split("\n\n") if e]
        assert events[:2] == ['data: {"choices":[{"index":0,"text":"t0"}]}',
                              'data: {"choices":[{"index":0,"text":"t1"}]}']  # whole events only
        assert '"code": "upstream_error"' in events[2] and '"status": 502' in events[2]
        assert events[3] == "data: [DONE]" and elapsed < 3
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="x")
        with pytest.raises(openai.APIError, match="Upstream stream broke"):  # the SDK raises, it does not hang
            list(client.completions.create(model="smollm2", prompt="x", max_tokens=5, stream=True))
    FAULTS.append({"fault": "上游在串流途中斷線", "result": f"錯誤事件（502）＋ [DONE]，{elapsed:.2f} s 內結束"})


def test_slow_upstream_504_at_the_deadline_and_the_upstream_connection_is_closed():
    with lesson.broken_upstream("hang") as (url, stats), running_gateway(
            GatewaySettings(upstreams=[url], request_timeout_s=0.5, health_interval_s=0.5)) as gateway:
        wait_until_ready(gateway)  # on a busy machine the start-up health check can miss; the next one is 0.5 s later
        start = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/completions", timeout=10,
                              json={"model": "smollm2", "prompt": "x", "max_tokens": 5})
        elapsed = time.perf_counter() - start
        assert response.status_code == 504 and response.json()["error"]["code"] == "upstream_timeout"
        assert 0.5 <= elapsed < 1.5
        for _ in range(50):
            if stats["open"] == 0:
                break
            time.sleep(0.02)
        assert stats["requests"] == 1 and stats["open"] == 0  # the gateway hung up: the upstream saw it
    FAULTS.append({"fault": "上游不回答（截止時間 0.5 s）", "result": f"504，{elapsed:.2f} s；上游連線已關閉"})


def test_upstream_down_readiness_fails_and_requests_get_503_fast():
    from servelab.runtime.process import free_port

    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    with running_gateway(GatewaySettings(upstreams=[dead])) as gateway:
        assert httpx.get(f"{gateway}/health").status_code == 200  # alive
        ready = httpx.get(f"{gateway}/ready")
        assert ready.status_code == 503 and ready.json()["upstreams"][0]["healthy"] is False
        start = time.perf_counter()
        response = httpx.post(f"{gateway}/v1/chat/completions", timeout=10,
                              json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
        elapsed = time.perf_counter() - start
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "no_healthy_upstream"
        assert elapsed < 0.5
    FAULTS.append({"fault": "上游停機", "result": f"/ready 503；請求 503 + Retry-After，{elapsed * 1000:.0f} ms"})


def test_overload_429_with_retry_after_and_nothing_queued():
    async def burst(gateway: str, n: int):
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            async def one():
                start = time.perf_counter()
                r = await client.post("/v1/completions", json={"model": "smollm2", "prompt": "x", "max_tokens": 1})
                return r.status_code, r.headers.get("retry-after"), time.perf_counter() - start
            return await asyncio.gather(*(one() for _ in range(n)))

    with lesson.broken_upstream("hang") as (url, stats), running_gateway(
            GatewaySettings(upstreams=[url], max_in_flight=2, request_timeout_s=1.0)) as gateway:
        results = asyncio.run(burst(gateway, 20))
    rejected = [r for r in results if r[0] == 429]
    assert len(rejected) == 18 and {r[1] for r in rejected} == {"1"}
    assert max(r[2] for r in rejected) < 0.9  # answered at once, not after waiting for a slot
    assert stats["requests"] == 2 and stats["peak"] == 2  # only max_in_flight reached the upstream
    assert sorted(r[0] for r in results if r[0] != 429) == [504, 504]
    FAULTS.append({"fault": "過載（20 個同時請求，上限 2）",
                   "result": "18 個立刻 429 + Retry-After: 1；上游只收到 2 個"})


def test_draining_gateway_is_not_ready_and_refuses_new_api_requests():
    app = create_app(GatewaySettings(upstreams=["http://127.0.0.1:9"]))
    with TestClient(app) as client:
        app.state.draining = True  # what DrainingServer.handle_exit sets on SIGTERM
        ready = client.get("/ready")
        refused = client.get("/v1/jobs/job-x")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
        assert client.get("/health").status_code == 200  # still alive while draining


def test_rate_limit_answers_429_with_retry_after():
    app = create_app(GatewaySettings(upstreams=["http://127.0.0.1:9"], rate_limit="2/second"))
    with TestClient(app) as client:
        codes = [client.get("/v1/jobs/job-x") for _ in range(3)]
    assert [c.status_code for c in codes] == [404, 404, 429]
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded" and int(codes[2].headers["retry-after"]) >= 1


def test_api_keys_on_every_route_but_health_constant_time_and_never_logged(monkeypatch):
    keys = ["sk-alpha-0123456789", "sk-beta-9876543210"]
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "servelab.gateway", "uvicorn", "httpx")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        settings = GatewaySettings(upstreams=["http://127.0.0.1:9"], api_keys=keys)
        with TestClient(create_app(settings)) as client:
            assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 503
            for path in ("/v1/models", "/v1/jobs/x", "/metrics", "/docs", "/openapi.json"):
                assert client.get(path).status_code == 401, path
            basic = client.get("/v1/models", headers={"Authorization": f"Basic {keys[0]}"})
            assert basic.status_code == 401  # only the Bearer scheme
            denied = client.get("/v1/models", headers={"Authorization": "Bearer sk-alpha-012345678X"})
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
            calls.clear()
            allowed = client.get("/v1/jobs/x", headers={"Authorization": f"Bearer {keys[1]}"})
            assert allowed.status_code == 404  # past the key check
            assert len(calls) == len(keys)  # every key compared, no early exit
            assert client.get("/metrics", headers={"Authorization": f"Bearer {keys[0]}"}).status_code == 200
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    logged = stream.getvalue()
    assert "request" in logged  # the gateway did log the requests ...
    assert not any(k in logged or k[:12] in logged for k in keys)  # ... but no key, not even a prefix
    assert not any(k in repr(settings) or k in str(settings.model_dump()) for k in keys)


def test_exercise_in_flight_limit():
    assert lesson.gateway_in_flight_limit(64, 2) == 35  # 64 × 1.1 = 70 in all, 35 per gateway
    assert lesson.gateway_in_flight_limit(64, 2, headroom=0) == 32
    assert lesson.gateway_in_flight_limit(4, 8) == 1  # never 0: a gateway that admits nothing is down
    with pytest.raises(ValueError):
        lesson.gateway_in_flight_limit(0, 2)


# ---------------------------------------------------------------- against vLLM

def test_sse_framing_done_and_usage_in_the_last_chunk(gateway, vllm_shared):
    out = lesson.stream_frames(gateway, vllm_shared.model, max_tokens=6)
    assert out["content_type"].startswith("text/event-stream")
    assert out["done"] and out["first"].startswith("data: {")
    assert out["usage"]["completion_tokens"] == 6 and not out["usage_chunk_has_choices"]


def test_client_disconnect_aborts_the_generation_in_vllm(gateway, vllm_shared):
    out = lesson.disconnect_aborts(gateway, vllm_shared, max_tokens=1000, read_events=3)
    assert out["running_after"] == 0 and out["stopped_after_s"] < 3
    assert out["tokens_generated"] < 100  # of 1000 asked for: vLLM stopped
    assert out["finished_length"] == 0  # it did not finish normally
    FAULTS.append({"fault": "用戶端斷線（讀 3 個事件）",
                   "result": f"vLLM {out['stopped_after_s']} s 內停止，只生成 {out['tokens_generated']:.0f}/1000 個 token"})


def test_exercise_disconnect_after_20_events(gateway, vllm_shared):
    out = lesson.disconnect_aborts(gateway, vllm_shared, max_tokens=1000, read_events=20)
    assert out["running_after"] == 0 and 20 <= out["tokens_generated"] < 60


def test_deadline_504_and_abort_in_vllm(vllm_shared):
    out = lesson.deadline_aborts(vllm_shared, timeout_s=1.0, max_tokens=1000)
    assert out["status"] == 504 and out["error"] == "upstream_timeout"
    assert 1.0 <= out["elapsed_s"] < 2.5
    assert '"status": 504' in out["stream_tail"][0] and out["stream_tail"][1] == "data: [DONE]"
    assert out["running_after"] == 0 and out["tokens_generated"] < 400  # two requests of 1000 tokens, cut at 1 s
    FAULTS.append({"fault": "vLLM 太慢（截止時間 1 s）",
                   "result": f"504，{out['elapsed_s']} s；vLLM 停止（{out['tokens_generated']:.0f}/2000 token）"})


def test_overload_against_vllm(vllm_shared):
    out = lesson.overload(vllm_shared, max_in_flight=2, clients=8, max_tokens=12)
    assert out["ok"] == 2 and out["rejected_429"] == 6 and out["retry_after"] == ["1"]
    assert out["slowest_429_ms"] < out["fastest_200_ms"]
    assert out["vllm_peak_running_plus_waiting"] <= 2


def test_retry_only_on_connect_errors(vllm_shared):
    out = lesson.retry_on_connect_error(vllm_shared)
    assert out["statuses"] == [200] * 4
    assert ("dead", False) in out["upstreams"] and ("vllm", True) in out["upstreams"]


def test_batch_job_submit_and_poll(gateway, vllm_shared):
    out = lesson.batch_job(gateway, vllm_shared.model, ["Hi", "What is 2+2?", "Name a color."])
    assert out["submit_status"] == 202 and out["status"] == "completed" and out["done"] == out["total"] == 3
    assert set(out["answers"]) == {"q0", "q1", "q2"} and all(s == 200 and t for s, t in out["answers"].values())


def test_streaming_overhead(gateway, vllm_shared):
    rows = {r["path"]: r for r in lesson.streaming_overhead(vllm_shared, gateway)}
    direct, via = rows["vLLM 直接"], rows["經過閘道"]
    assert via["ttft_ms"] < direct["ttft_ms"] * 1.5 + 25  # CPU, 4 samples: a sanity bound, not the goal
    assert via["itl_ms"] < direct["itl_ms"] * 1.3 + 5
    lesson.write_overhead(list(rows.values()))


def test_sigterm_in_flight_stream_finishes_new_connections_refused(vllm_shared):
    out = lesson.sigterm_drain(vllm_shared, max_tokens=24)
    assert out["done"] and out["finish_reason"] == "length"
    assert out["events_total"] > out["events_before_sigterm"] + 10  # the stream went on after SIGTERM
    assert str(out["new_request"]).startswith("refused")
    assert out["exit_code"] == 0
    FAULTS.append({"fault": "SIGTERM（串流進行中）",
                   "result": f"串流做完（{out['events_total'] - 1} 個事件 + [DONE]）；新連線被拒；結束碼 0"})
    lesson.write_faults(FAULTS)
