"""閘道的設定：一個 pydantic-settings 物件，全部來自 ``SERVELAB_GATEWAY_*`` 環境變數。

    SERVELAB_GATEWAY_UPSTREAMS=http://10.0.0.5:8000,http://10.0.0.6:8000   # 逗號分隔，或 JSON 陣列
    SERVELAB_GATEWAY_API_KEYS=key-a,key-b                                   # 空的 = 不驗證
    SERVELAB_GATEWAY_RATE_LIMIT="100/second"                                # limits 的寫法
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


# --8<-- [start:settings]
class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVELAB_GATEWAY_")

    upstreams: Annotated[list[str], NoDecode] = ["http://127.0.0.1:8000"]  # (1)!
    routing: Literal["round_robin", "least_outstanding", "affinity"] = "round_robin"
    api_keys: Annotated[list[SecretStr], NoDecode] = []  # (2)!
    upstream_api_key: SecretStr | None = None  # 閘道自己對 vLLM 用的金鑰，不是用戶端的
    max_in_flight: int = Field(64, ge=1)  # (3)!
    request_timeout_s: float = Field(60.0, gt=0)  # (4)!
    connect_timeout_s: float = Field(2.0, gt=0)
    max_body_bytes: int = Field(1_000_000, ge=1024)  # (5)!
    rate_limit: str | None = None  # (6)!
    max_model_len: int | None = None  # None：啟動時從上游的 /v1/models 學
    max_tokens_cap: int | None = None  # 閘道允許的 max_tokens 上限（None = 只受 max_model_len 限制）
    health_interval_s: float = Field(5.0, gt=0)
    retry_after_s: int = Field(1, ge=1)  # 429／503 回應的 Retry-After 秒數
    log_json: bool = True
    otel: bool = False
    drain_timeout_s: float = Field(30.0, ge=0)  # (7)!
# --8<-- [end:settings]

    @field_validator("upstreams", "api_keys", mode="before")
    @classmethod
    def _split(cls, value):
        """環境變數可以寫成逗號分隔（a,b）或 JSON 陣列（["a","b"]）。"""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("upstreams")
    @classmethod
    def _strip_slash(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one upstream URL is needed")
        return [url.rstrip("/") for url in value]
