"""OpenAI 的錯誤信封：每個 4xx／5xx 都是 ``{"error": {"message", "type", "param", "code"}}``。

驗證錯誤（FastAPI 的 ``RequestValidationError``，包括壞掉的 JSON）一律回 **400**，不是 FastAPI 預設的 422：
OpenAI 的 API 與 vLLM 的伺服器對參數錯誤都回 400，用戶端的重試與錯誤處理邏輯是照著 400 寫的。
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("servelab.gateway")

# --8<-- [start:error_types]
ERROR_TYPES = {  # HTTP 狀態 → 信封裡的 type（用戶端 SDK 依狀態碼決定例外類別，type 給人讀）
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
    502: "upstream_error", 503: "service_unavailable", 504: "timeout_error",
}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI 錯誤信封。"""
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class GatewayError(Exception):
    """閘道自己決定的錯誤：由例外處理器轉成信封。"""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.status, self.message, param=self.param, code=self.code),
                            status_code=self.status, headers=self.headers)
# --8<-- [end:error_types]


# --8<-- [start:validation_handler]
def _param(loc: tuple) -> str | None:
    """("body", "messages", 0, "role") → "messages[0].role"（OpenAI 的 param 寫法）。"""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":  # (1)!
        return GatewayError(400, f"Invalid JSON body: {first.get('ctx', {}).get('error', 'cannot parse')}",
                            code="invalid_json").response()
    param = _param(tuple(first.get("loc", ())))
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return GatewayError(400, message, param=param, code=first.get("type")).response()  # (2)!
# --8<-- [end:validation_handler]


async def on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI／Starlette 自己丟的 404（沒有這條路由）、405（方法不對）等，也包成信封。"""
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "error"
    message = exc.detail if isinstance(exc.detail, str) else phrase
    return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def on_gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    return exc.response()


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """最後一道防線：記下例外（不含請求內容與標頭），回 500 信封，不把內部訊息交給用戶端。"""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, "internal gateway error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(Exception, on_unexpected)
