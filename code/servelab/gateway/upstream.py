"""把請求轉給 vLLM：一個共用的 ``httpx.AsyncClient``、截止時間、只在安全時重試、把上游的錯誤包成信封。

* **截止時間（deadline）**：每個請求一個絕對時間點（``request_timeout_s`` 之後）。時間到了，閘道取消等待，
  httpx 關掉那條連線，vLLM 看到用戶端斷線就中止（abort）這個請求——GPU 不會繼續替沒有人等的回答工作。
* **重試**：只在「連線都沒建立」（``ConnectError``／``ConnectTimeout``／``PoolTimeout``）時換一個副本重試：
  這時 vLLM 一個位元組都沒收到，重送不會讓同一個請求生成兩次。讀取途中斷掉的請求不重試。
* **用戶端斷線**：非串流請求也監看 ``http.disconnect``，用戶端一走就取消上游請求。
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx

from servelab.gateway.errors import GatewayError, error_body
from servelab.gateway.routing import NoHealthyUpstream

RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # 請求一定沒有送到 vLLM


# --8<-- [start:client]
def make_client(settings) -> httpx.AsyncClient:
    """整個閘道共用的一個連線池（在 lifespan 裡建立、關閉）。"""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=settings.connect_timeout_s, read=None, write=30.0,
                              pool=settings.connect_timeout_s),  # (1)!
        limits=httpx.Limits(max_connections=settings.max_in_flight + 16,
                            max_keepalive_connections=settings.max_in_flight + 16),  # (2)!
        trust_env=False)  # (3)!
# --8<-- [end:client]


def encode_body(payload: dict[str, Any]) -> bytes:
    """驗證過的請求 → 送給 vLLM 的 JSON。孤立的 surrogate（"\\ud800"）與 NaN 在這裡變成 400。"""
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        raise GatewayError(400, "The request contains an unpaired UTF-16 surrogate; send valid Unicode text.",
                           code="invalid_unicode") from None
    except ValueError as error:
        raise GatewayError(400, f"The request contains a non-finite number (NaN or Infinity): {error}",
                           code="invalid_number") from None


def upstream_headers(settings, request_id: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if settings.upstream_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"  # 閘道自己的金鑰
    if request_id:
        headers["X-Request-Id"] = request_id
    return headers


def upstream_error(status: int, content: bytes) -> GatewayError:
    """vLLM 的錯誤回應 → 閘道的信封。4xx 原樣轉達（是用戶端的錯），5xx 變成 502（是上游的錯）。"""
    try:
        data = json.loads(content)
        detail = data.get("error", data) if isinstance(data, dict) else {}
        detail = detail if isinstance(detail, dict) else {"message": str(detail)}
    except (ValueError, UnicodeDecodeError):
        detail = {"message": content[:300].decode("utf-8", "replace")}
    message = str(detail.get("message") or detail.get("detail") or f"upstream answered {status}")
    if status >= 500:
        return GatewayError(502 if status != 503 else 503, f"Upstream error ({status}): {message}",
                            code="upstream_error")
    param = detail.get("param") if isinstance(detail.get("param"), str) else None
    code = detail.get("code")
    return GatewayError(status, message, param=param, code=str(code) if code is not None else None)


# --8<-- [start:open_upstream]
async def open_upstream(state, path: str, content: bytes, key: str | None, deadline: float,
                        request_id: str | None = None) -> tuple[httpx.Response, AsyncExitStack]:
    """送出請求、等到回應標頭。回傳的 stack 關閉時才釋放副本的計數與連線（串流要撐到最後一個位元組）。"""
    settings, router, client = state.settings, state.router, state.client
    headers = upstream_headers(settings, request_id)
    for attempt in range(len(router.upstreams)):  # 最多每個副本試一次
        stack = AsyncExitStack()
        try:
            upstream = await stack.enter_async_context(router.lease(key))
        except NoHealthyUpstream as error:
            raise GatewayError(503, f"No healthy upstream: {error}", code="no_healthy_upstream",
                               headers={"Retry-After": str(settings.retry_after_s)}) from None  # (1)!
        try:
            async with asyncio.timeout_at(deadline):  # (2)!
                request = client.build_request("POST", upstream.url + path, content=content, headers=headers)
                response = await client.send(request, stream=True)
        except RETRYABLE as error:  # (3)!
            router.mark_down(upstream, f"{type(error).__name__}: {error}")
            await stack.aclose()
            continue
        except TimeoutError:
            await stack.aclose()
            raise GatewayError(504, f"Upstream did not answer within {settings.request_timeout_s:g} s",
                               code="upstream_timeout") from None
        except httpx.TransportError as error:
            await stack.aclose()
            raise GatewayError(502, f"Upstream connection failed: {type(error).__name__}",
                               code="upstream_error") from None
        except BaseException:
            await stack.aclose()
            raise
        stack.push_async_callback(response.aclose)
        return response, stack
    raise GatewayError(503, "No upstream could be reached", code="no_healthy_upstream",
                       headers={"Retry-After": str(settings.retry_after_s)})
# --8<-- [end:open_upstream]


# --8<-- [start:complete]
async def complete(state, path: str, content: bytes, key: str | None, deadline: float,
                   request_id: str | None = None) -> tuple[int, bytes]:
    """非串流：整個回應在截止時間之前讀完；上游的錯誤變成 GatewayError。"""
    response, stack = await open_upstream(state, path, content, key, deadline, request_id)
    async with stack:
        try:
            async with asyncio.timeout_at(deadline):
                body = await response.aread()
        except TimeoutError:
            raise GatewayError(504, f"Upstream did not finish within {state.settings.request_timeout_s:g} s",
                               code="upstream_timeout") from None  # (1)!
        except httpx.TransportError as error:
            raise GatewayError(502, f"Upstream connection broke: {type(error).__name__}",
                               code="upstream_error") from None
    if response.status_code != 200:
        raise upstream_error(response.status_code, body)
    return response.status_code, body


async def until_disconnected(receive) -> None:
    """請求內容讀完之後，ASGI 的 receive() 只會在用戶端斷線時回傳 http.disconnect。"""
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive, work):
    """執行 work；用戶端先斷線就取消它（取消會關掉上游連線，vLLM 隨即中止）。"""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)  # (2)!
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise GatewayError(499, "Client closed the request", code="client_closed")
    return task.result()
# --8<-- [end:complete]


def deadline_in(seconds: float) -> float:
    """loop.time() 的絕對截止時間（asyncio.timeout_at 用的時鐘）。"""
    return asyncio.get_running_loop().time() + seconds


async def fetch_models(state) -> dict[str, int | None]:
    """從第一個回答的上游讀 /v1/models：模型名稱 → max_model_len。"""
    headers = upstream_headers(state.settings)
    for upstream in state.router.upstreams:
        try:
            response = await state.client.get(upstream.url + "/v1/models", headers=headers,
                                              timeout=state.settings.connect_timeout_s)
            if response.status_code == 200:
                return {m["id"]: m.get("max_model_len") for m in response.json().get("data", [])}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            continue
    return {}


async def known_models(state) -> dict[str, int | None]:
    """已知的模型；還不知道時（上游啟動得比閘道晚）最多每 2 秒重新問一次。"""
    if not state.models and time.monotonic() - state.models_checked_at > 2.0:
        state.models_checked_at = time.monotonic()
        state.models = await fetch_models(state)
    return state.models


__all__ = ["complete", "open_upstream", "cancel_on_disconnect", "encode_body", "error_body", "make_client"]
