"""The gateway app: ``create_app(settings) -> FastAPI``.

    uvicorn --factory servelab.gateway.app:create_app --host 127.0.0.1 --port 8300
    python -m servelab.gateway            # the same, with SIGTERM draining (see __main__.py)
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from servelab.gateway import observability
from servelab.gateway.admission import AdmissionMiddleware, BodyGuardMiddleware
from servelab.gateway.errors import GatewayError, install_error_handlers
from servelab.gateway.jobs import JobStore
from servelab.gateway.routing import Router, affinity_key
from servelab.gateway.schemas import (
    ERROR_RESPONSES, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, Job,
    JobRequest, ModelList, SamplingFields, requested_tokens,
)
from servelab.gateway.security import ApiKeyMiddleware
from servelab.gateway.settings import GatewaySettings
from servelab.gateway.streaming import UpstreamStream, relay_events
from servelab.gateway.upstream import (
    cancel_on_disconnect, complete, deadline_in, encode_body, fetch_models, known_models, make_client,
    open_upstream, upstream_error, upstream_headers,
)

SESSION_HEADER = "x-session-id"  # 同一個對話送到同一個副本（routing="affinity"）


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: FastAPI):
    """整個行程只有一個 httpx.AsyncClient（連線池）與一個 Router；關閉時依序收掉。"""
    state, settings = app.state, app.state.settings
    state.client = make_client(settings)  # (1)!
    state.router = Router(settings.upstreams, settings.routing, state.client,
                          health_interval_s=settings.health_interval_s,
                          health_timeout_s=settings.connect_timeout_s)
    state.jobs = JobStore(state)
    await state.router.check_once()  # (2)!
    state.models, state.models_checked_at = await fetch_models(state), 0.0
    health = asyncio.create_task(state.router.check_health())  # (3)!
    try:
        yield
    finally:
        health.cancel()
        await state.jobs.close()
        await state.client.aclose()
# --8<-- [end:lifespan]


# --8<-- [start:check_request]
async def check_request(state, body: SamplingFields) -> dict:
    """閘道自己能擋的錯誤：未知的模型（404）、max_tokens 超過上限（400）。回傳要送給 vLLM 的內容。"""
    settings = state.settings
    models = await known_models(state)
    if models and body.model not in models:  # (1)!
        raise GatewayError(404, f"The model '{body.model}' does not exist. Available: {', '.join(models)}",
                           param="model", code="model_not_found")
    payload = body.model_dump(exclude_unset=True)  # (2)!
    wanted = requested_tokens(body)
    limit = settings.max_model_len or models.get(body.model)
    if wanted is not None and limit is not None and wanted > limit:
        raise GatewayError(400, f"max_tokens={wanted} is larger than the model's context ({limit} tokens)",
                           param="max_tokens", code="max_tokens_too_large")
    if settings.max_tokens_cap is not None:
        if wanted is not None and wanted > settings.max_tokens_cap:
            raise GatewayError(400, f"max_tokens={wanted} is larger than this gateway allows "
                                    f"({settings.max_tokens_cap})", param="max_tokens", code="max_tokens_too_large")
        if wanted is None:
            payload["max_tokens"] = settings.max_tokens_cap  # (3)!
    return payload
# --8<-- [end:check_request]


# --8<-- [start:proxy]
async def proxy(request: Request, path: str, body: SamplingFields) -> Response:
    state = request.app.state
    payload = await check_request(state, body)
    content = encode_body(payload)
    key = affinity_key(payload, request.headers.get(SESSION_HEADER)) if state.settings.routing == "affinity" else None
    request_id = observability.current_request_id()  # 同一個 X-Request-Id 傳給 vLLM（第 4 課）
    deadline = deadline_in(state.settings.request_timeout_s)  # (1)!
    if not body.stream:
        _, raw = await cancel_on_disconnect(request.receive, complete(state, path, content, key, deadline, request_id))
        return Response(raw, media_type="application/json")  # (2)!
    response, stack = await open_upstream(state, path, content, key, deadline, request_id)
    if response.status_code != 200:
        async with stack:
            raise upstream_error(response.status_code, await response.aread())
    events = relay_events(response, deadline, state.settings.request_timeout_s)
    return UpstreamStream(events, cleanup=stack.aclose)  # (3)!
# --8<-- [end:proxy]


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app = FastAPI(title="servelab gateway", version="1.0",
                  summary="OpenAI-compatible gateway in front of vLLM", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)

    # --8<-- [start:routes]
    @app.post("/v1/chat/completions", responses={200: {"model": ChatCompletionResponse, "content": {
        "text/event-stream": {}}}, **ERROR_RESPONSES})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await proxy(request, "/v1/chat/completions", body)

    @app.post("/v1/completions", responses={200: {"model": CompletionResponse, "content": {
        "text/event-stream": {}}}, **ERROR_RESPONSES})
    async def completions(body: CompletionRequest, request: Request):
        return await proxy(request, "/v1/completions", body)

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def models(request: Request):
        state = request.app.state
        _, raw = await complete_get(state, "/v1/models")
        return Response(raw, media_type="application/json")

    @app.get("/health")
    async def health():  # (1)!
        return {"status": "ok"}

    @app.get("/ready", responses={503: ERROR_RESPONSES[503]})
    async def ready(request: Request):  # (2)!
        state = request.app.state
        upstreams = state.router.snapshot()
        if state.draining:
            return JSONResponse({"status": "draining", "upstreams": upstreams}, status_code=503)
        if not state.router.ready:
            return JSONResponse({"status": "no healthy upstream", "upstreams": upstreams}, status_code=503)
        return {"status": "ready", "upstreams": upstreams, "in_flight": state.in_flight}
    # --8<-- [end:routes]

    @app.post("/v1/jobs", status_code=202, response_model=Job, responses=ERROR_RESPONSES)
    async def submit_job(body: JobRequest, request: Request):
        return request.app.state.jobs.submit(body)

    @app.get("/v1/jobs/{job_id}", response_model=Job, responses=ERROR_RESPONSES)
    async def get_job(job_id: str, request: Request):
        return request.app.state.jobs.get(job_id)

    def openapi() -> dict:
        """FastAPI 自動替每個有請求內容的路由列出 422；這個閘道的驗證錯誤是 400，所以把 422 拿掉。"""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for methods in schema["paths"].values():
                for operation in methods.values():
                    operation.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi

    # --8<-- [start:middleware]
    app.add_middleware(BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)  # (1)!
    app.add_middleware(AdmissionMiddleware, state=app.state, max_in_flight=settings.max_in_flight,
                       retry_after_s=settings.retry_after_s, rate_limit=settings.rate_limit)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    observability.install(app, settings)  # (2)!
    # --8<-- [end:middleware]
    return app


async def complete_get(state, path: str) -> tuple[int, bytes]:
    """GET 到第一個健康的副本（/v1/models）。"""
    import httpx

    try:
        upstream = state.router.pick(None)
    except Exception as error:
        raise GatewayError(503, f"No healthy upstream: {error}", code="no_healthy_upstream",
                           headers={"Retry-After": str(state.settings.retry_after_s)}) from None
    try:
        response = await state.client.get(upstream.url + path, headers=upstream_headers(state.settings),
                                          timeout=state.settings.request_timeout_s)
    except httpx.HTTPError as error:
        raise GatewayError(502, f"Upstream connection failed: {type(error).__name__}", code="upstream_error") from None
    if response.status_code != 200:
        raise upstream_error(response.status_code, response.content)
    return 200, response.content
