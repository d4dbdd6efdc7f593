"""SSE 串流：把 vLLM 的事件原樣轉給用戶端。

**為什麼不用 sse-starlette 重新編碼。** vLLM 送出的已經是正確的 SSE（每個事件 ``data: {...}\\n\\n``，最後
``data: [DONE]\\n\\n``，``stream_options.include_usage`` 時最後一個 chunk 帶 ``usage``）。把每個事件解析、再由
SSE 函式庫重新編碼，只會在每個 token 多付一次 JSON 解析與序列化，而閘道並不改動事件內容。所以閘道只做三件事：

1. 以事件邊界（``\\n\\n``）切齊再送出：上游在事件中間斷掉時，用戶端不會收到半個事件；
2. 上游斷線、截止時間到：補一個 OpenAI 形狀的錯誤事件 ``data: {"error": {...}}`` 與 ``data: [DONE]``，
   讓用戶端乾淨地結束，而不是卡在讀取上；
3. 用戶端斷線：Starlette 取消這個產生器，``finally`` 關掉上游連線，vLLM 隨即中止生成。
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.responses import StreamingResponse

from servelab.gateway.errors import error_body

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # 反向代理（nginx）不要緩衝


def error_event(status: int, message: str, code: str) -> bytes:
    body = error_body(status, message, code=code)
    body["error"]["status"] = status
    return b"data: " + json.dumps(body).encode() + b"\n\n"


# --8<-- [start:relay]
async def relay_events(response: httpx.Response, deadline: float, timeout_s: float) -> AsyncIterator[bytes]:
    """上游的位元組 → 完整的 SSE 事件；結束時一定有 [DONE]。"""
    chunks = response.aiter_bytes().__aiter__()
    pending, finished = b"", False
    try:
        while True:
            async with asyncio.timeout_at(deadline):  # (1)!
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
            pending += chunk
            cut = pending.rfind(b"\n\n")  # (2)!
            if cut < 0:
                continue
            ready, pending = pending[:cut + 2], pending[cut + 2:]
            finished = ready.endswith(DONE)
            yield ready
    except TimeoutError:
        yield error_event(504, f"Upstream did not finish within {timeout_s:g} s", "upstream_timeout")  # (3)!
        finished = False
    except httpx.TransportError as error:
        yield error_event(502, f"Upstream stream broke: {type(error).__name__}", "upstream_error")  # (4)!
        finished = False
    else:
        if not finished:
            yield error_event(502, "Upstream ended the stream without [DONE]", "upstream_error")
    if not finished:
        yield DONE
# --8<-- [end:relay]


# --8<-- [start:stream_response]
class UpstreamStream(StreamingResponse):
    """StreamingResponse 加上一定會執行的清理：放掉副本的計數、關掉上游連線。"""

    def __init__(self, events: AsyncIterator[bytes], cleanup, **kwargs) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS, **kwargs)
        self._events, self._cleanup = events, cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)  # (1)!
        finally:
            with anyio.CancelScope(shield=True):  # (2)!
                await self._events.aclose()
                await self._cleanup()
# --8<-- [end:stream_response]
