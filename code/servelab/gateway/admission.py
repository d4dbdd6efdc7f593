"""誰可以進來、可以帶多少東西進來：請求大小與類型、在途上限、限流、排水。

全部是純 ASGI 中介層（不是 ``BaseHTTPMiddleware``）：它們不緩衝串流回應，對每個請求只多幾個屬性存取。
"""

from __future__ import annotations

import math
import time

from servelab.gateway.errors import GatewayError

API_PREFIX = "/v1/"


def _header(scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope["headers"] if k == name), None)


# --8<-- [start:body_guard]
class BodyGuardMiddleware:
    """POST 必須是 JSON（415），內容不能超過 ``max_body_bytes``（413）——在交給 FastAPI 解析之前。"""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        media_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            return await GatewayError(415, f"Content-Type must be application/json, got {media_type or 'none'!r}",
                                      code="unsupported_media_type").response()(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large()(scope, receive, send)  # (1)!
        chunks, received, more = [], 0, True
        while more:  # (2)!
            message = await receive()
            if message["type"] != "http.request":  # 用戶端在送完之前就斷線了
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_body_bytes:
                return await self._too_large()(scope, receive, send)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # 之後只會是 http.disconnect

        await self.app(scope, replay, send)

    def _too_large_error(self) -> GatewayError:
        return GatewayError(413, f"Request body is larger than {self.max_body_bytes} bytes",
                            code="request_too_large")

    def _too_large(self):
        return self._too_large_error().response()
# --8<-- [end:body_guard]


# --8<-- [start:admission]
class AdmissionMiddleware:
    """在途請求上限 + 限流 + 排水。滿了就立刻回 429 與 ``Retry-After``，不排隊：
    佇列放在 vLLM 裡（它的排程器知道 KV 快取還放得下多少），閘道不再多藏一個看不見的佇列。"""

    def __init__(self, app, state, max_in_flight: int, retry_after_s: int, rate_limit: str | None) -> None:
        self.app, self.state = app, state  # state：app.state（in_flight、draining 放在這裡）
        self.max_in_flight, self.retry_after = max_in_flight, str(retry_after_s)
        self.limiter = self.limit = None
        if rate_limit:
            from limits import parse
            from limits.storage import MemoryStorage
            from limits.strategies import MovingWindowRateLimiter

            self.limit = parse(rate_limit)  # (1)!
            self.limiter = MovingWindowRateLimiter(MemoryStorage())
        state.in_flight = 0
        state.draining = False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            return await self.app(scope, receive, send)
        if self.state.draining:  # (2)!
            error = GatewayError(503, "The gateway is shutting down; retry on another replica.",
                                 code="draining", headers={"Retry-After": self.retry_after, "Connection": "close"})
            return await error.response()(scope, receive, send)
        if self.limiter is not None:
            who = _header(scope, b"authorization") or (scope.get("client") or ("?",))[0]
            if not self.limiter.hit(self.limit, str(hash(who))):  # (3)!
                reset = self.limiter.get_window_stats(self.limit, str(hash(who))).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                error = GatewayError(429, f"Rate limit {self.limit} exceeded", code="rate_limit_exceeded",
                                     headers={"Retry-After": str(wait)})
                return await error.response()(scope, receive, send)
        if self.state.in_flight >= self.max_in_flight:  # (4)!
            error = GatewayError(429, f"Too many requests in flight (limit {self.max_in_flight})",
                                 code="too_many_requests", headers={"Retry-After": self.retry_after})
            return await error.response()(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)  # 串流回應：直到最後一個位元組送出才算結束
        finally:
            self.state.in_flight -= 1
# --8<-- [end:admission]
