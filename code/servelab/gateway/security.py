"""API 金鑰：除了健康檢查以外的每條路由都要 ``Authorization: Bearer <key>``。

* 比對用 ``hmac.compare_digest``（常數時間）：比對所花的時間不透露金鑰有幾個字元猜對了。
  每個設定的金鑰都比一次（不提早結束），所以時間也不透露「有幾把金鑰」或「對到第幾把」。
* 金鑰以 ``SecretStr`` 保存（``repr`` 與日誌只會看到 ``**********``），閘道不記錄請求標頭；
  用戶端的金鑰不會轉給 vLLM，閘道對 vLLM 用自己的 ``upstream_api_key``。
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from servelab.gateway.errors import GatewayError

OPEN_PATHS = frozenset({"/health", "/ready"})  # 探針不帶金鑰（kubelet、負載平衡器）


# --8<-- [start:check_key]
def key_digests(keys: list[SecretStr]) -> list[bytes]:
    """啟動時把每把金鑰雜湊一次：之後比對的是固定長度（32 位元組）的摘要。"""
    return [hashlib.sha256(k.get_secret_value().encode()).digest() for k in keys]  # (1)!


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_matches(presented: str | None, digests: list[bytes]) -> bool:
    """常數時間比對：對每把金鑰都比一次，最後才合併結果。"""
    candidate = hashlib.sha256((presented or "").encode("utf-8", "surrogatepass")).digest()
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(candidate, digest)  # (2)!
    return matched and presented is not None
# --8<-- [end:check_key]


# --8<-- [start:auth_middleware]
class ApiKeyMiddleware:
    """純 ASGI 中介層：在讀取請求內容之前就拒絕沒有金鑰的請求（401，OpenAI 信封）。"""

    def __init__(self, app, keys: list[SecretStr]) -> None:
        self.app, self.digests = app, key_digests(keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.digests or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        if not key_matches(bearer_token(authorization), self.digests):
            error = GatewayError(401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await error.response()(scope, receive, send)  # (1)!
        await self.app(scope, receive, send)
# --8<-- [end:auth_middleware]
