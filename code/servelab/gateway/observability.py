"""The gateway's observability: Prometheus metrics, JSON logs with a request id, OpenTelemetry traces.

``install(app, settings)`` is called once by :func:`servelab.gateway.app.create_app`. It adds:

* ``GET /metrics`` — prometheus-fastapi-instrumentator's generic HTTP metrics (``http_requests_total``,
  ``http_request_duration_seconds``, ``http_request_size_bytes``…) plus the gateway's own
  ``servelab_gateway_*`` metrics (requests by route and exact code, latency and TTFT histograms with buckets
  that fit LLM requests, in-flight requests);
* a request id per request: the caller's ``X-Request-Id`` when it is a sane token, else a new one; it is
  echoed in the response, set on every log record of the request, and sent to vLLM on every upstream call
  (vLLM then names the request ``chatcmpl-<id>`` / ``cmpl-<id>``);
* one JSON log line per request (``python-json-logger``) on the ``servelab.gateway`` logger;
* with ``settings.otel`` (or an explicit ``tracer_provider``): OpenTelemetry spans for the FastAPI server
  side and for the pooled ``httpx.AsyncClient`` that calls vLLM, so one trace spans gateway → vLLM
  (the W3C ``traceparent`` header is injected into the upstream call).

The app's ``httpx.AsyncClient`` is created in its ``lifespan``, after ``install`` ran: ``install`` wraps the
lifespan and, once it has started, calls :func:`instrument_client` on every ``httpx.AsyncClient`` it finds on
``app.state`` (or in the lifespan's state, or one attribute deeper, e.g. ``app.state.router.client``).

Multi-process servers (``uvicorn --workers N``, ``gunicorn -w N``): each worker has its own metrics; set
``PROMETHEUS_MULTIPROC_DIR`` to an empty folder before the workers start and ``/metrics`` sums all workers.
"""

from __future__ import annotations

# --8<-- [start:context]
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUEST_ID_HEADER = "X-Request-Id"
# 桶的上界（秒）：LLM 的請求從幾毫秒（被拒絕）到一兩分鐘（長串流），預設的桶（最多 10 秒）不夠
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
UNMATCHED = "<unmatched>"  # 沒有任何路由符合的路徑，label 一律寫這個（label 的值不能無限多）
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})  # 探針與抓取：不算在途、日誌只寫 DEBUG
request_id_var: ContextVar[str | None] = ContextVar("servelab_gateway_request_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    """這個 task 正在處理的請求的 ID（不在請求裡時是 None）。"""
    return request_id_var.get()


def _route_of(scope: dict, routes) -> str:
    """路由的樣板（/v1/jobs/{job_id}）；中介層在路由之前就回答的請求也找得到。"""
    route = scope.get("route")  # FastAPI 的路由器把符合的路由放進 scope
    if route is None:
        from starlette.routing import Match

        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or UNMATCHED


def _current_trace_id() -> str | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the gateway's extras include opentelemetry
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _annotate_current_span(request_id: str) -> None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("servelab.request_id", request_id)
# --8<-- [end:context]


# --8<-- [start:metrics]
class GatewayMetrics:
    """閘道自己的指標；每個 app 一個 registry（同一個行程裡可以有好幾個 app，例如測試）。"""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "servelab_gateway_requests", "Requests answered, by route template and exact status code",
            ["route", "method", "code"], registry=registry)  # (1)!
        self.latency = Histogram(
            "servelab_gateway_request_duration_seconds", "Request start to last byte sent (whole stream)",
            ["route", "stream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "servelab_gateway_ttft_seconds", "Streaming requests: request start to the first body chunk sent",
            ["route"], buckets=TTFT_BUCKETS, registry=registry)  # (2)!
        self.in_flight = Gauge(
            "servelab_gateway_in_flight", "Requests being served now (a stream counts until its last byte)",
            registry=registry, multiprocess_mode="livesum")  # (3)!
# --8<-- [end:metrics]


# --8<-- [start:request_id]
def choose_request_id(incoming: str | None) -> str:
    """用戶端的 X-Request-Id 若是短而安全的字串就沿用，否則產生一個新的。"""
    if incoming and _SAFE_ID.match(incoming):  # (1)!
        return incoming
    return uuid.uuid4().hex


async def add_request_id(request: httpx.Request) -> None:
    """httpx 的 event hook：每一個送往 vLLM 的請求都帶著它所服務的那個請求的 ID。"""
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_HEADER.lower() not in request.headers:
        request.headers[REQUEST_ID_HEADER] = request_id  # (2)!
# --8<-- [end:request_id]


# --8<-- [start:middleware]
class ObservabilityMiddleware:
    """純 ASGI 中介層（不緩衝串流）：請求 ID、指標，每個請求一行日誌。"""

    def __init__(self, app, metrics: GatewayMetrics, logger: logging.Logger, routes=()) -> None:
        self.app, self.metrics, self.logger, self.routes = app, metrics, logger, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = choose_request_id(headers.get("x-request-id"))
        token = request_id_var.set(request_id)
        _annotate_current_span(request_id)
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "stream": False, "ttft": None}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                response_headers = list(message.get("headers", []))
                for key, value in response_headers:
                    if key.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        seen["stream"] = True
                response_headers.append((b"x-request-id", request_id.encode()))  # (1)!
                message = {**message, "headers": response_headers}
            elif message["type"] == "http.response.body" and seen["ttft"] is None and message.get("body"):
                seen["ttft"] = time.perf_counter() - start  # (2)!
            await send(message)

        counted = scope["path"] not in QUIET_PATHS
        if counted:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:  # 用戶端斷線會取消 task（CancelledError 不是 Exception）：那不是我們的錯誤
            self.logger.exception("unhandled error", extra={"path": scope["path"]})
            raise
        finally:
            if counted:
                self.metrics.in_flight.dec()
            duration = time.perf_counter() - start
            route = _route_of(scope, self.routes)
            self.metrics.requests.labels(route, scope["method"], str(seen["status"])).inc()
            self.metrics.latency.labels(route, str(seen["stream"]).lower()).observe(duration)
            if seen["stream"] and seen["ttft"] is not None:
                self.metrics.ttft.labels(route).observe(seen["ttft"])
            self.logger.log(logging.INFO if counted else logging.DEBUG, "request", extra={  # (3)!
                "method": scope["method"], "path": scope["path"], "route": route, "status": seen["status"],
                "duration_ms": round(duration * 1000, 2), "stream": seen["stream"],
                "ttft_ms": None if seen["ttft"] is None or not seen["stream"] else round(seen["ttft"] * 1000, 2)})
            request_id_var.reset(token)
# --8<-- [end:middleware]


# --8<-- [start:logging]
class RequestContext(logging.Filter):
    """把 request_id（以及有 span 時的 trace id）加到這個請求的每一筆日誌上。"""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.trace_id = _current_trace_id()
        return True


def configure_logging(json_logs: bool = True, stream=None, level: int | str | None = None) -> logging.Logger:
    """``servelab.gateway`` logger：一行一個 JSON 物件（或純文字），帶 request_id。"""
    from pythonjsonlogger.json import JsonFormatter

    logger = logging.getLogger("servelab.gateway")
    for handler in [h for h in logger.handlers if getattr(h, "_servelab", False)]:
        logger.removeHandler(handler)  # install() 兩次（測試、reload）不會讓每行印兩次
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._servelab = True  # type: ignore[attr-defined]
    handler.addFilter(RequestContext())
    if json_logs:
        handler.setFormatter(JsonFormatter(
            "{levelname}{name}{message}{request_id}{trace_id}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"}))  # (1)!
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("SERVELAB_GATEWAY_LOG_LEVEL", "INFO"))
    logger.propagate = False  # (2)!
    return logger
# --8<-- [end:logging]


# --8<-- [start:tracing]
def tracer_provider_from_env(service_name: str = "servelab-gateway"):
    """以 OTLP/HTTP 送出 span 的 TracerProvider（``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``，預設 :4318）。"""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def install_tracing(app, tracer_provider) -> None:
    """除了探針與 /metrics，每個路由一個 SERVER span。"""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider,
        excluded_urls="/health,/ready,/metrics",  # (1)!
        exclude_spans=["receive", "send"])  # (2)!
    app.state.tracer_provider = tracer_provider


def instrument_client(client: httpx.AsyncClient, tracer_provider=None) -> None:
    """上游的 client：每個呼叫帶 X-Request-Id；有 tracer provider 時再加一個 CLIENT span，並注入
    ``traceparent``（vLLM 自己的 ``llm_request`` span 因此接到閘道的 trace 底下）。"""
    hooks = client.event_hooks
    if add_request_id not in hooks["request"]:
        client.event_hooks = {**hooks, "request": [*hooks["request"], add_request_id]}
    if tracer_provider is not None and not getattr(client, "_is_instrumented_by_opentelemetry", False):
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=tracer_provider)  # (3)!
# --8<-- [end:tracing]


def _clients(*places: Any) -> list[httpx.AsyncClient]:
    """Every httpx.AsyncClient in these objects' attributes (or dict values), up to one level deeper."""
    found: dict[int, httpx.AsyncClient] = {}

    def values(obj: Any) -> Iterable[Any]:
        if isinstance(obj, dict):
            return list(obj.values())
        state = getattr(obj, "_state", None)  # starlette.datastructures.State keeps its attributes here
        if isinstance(state, dict):
            return list(state.values())
        return [v for k, v in vars(obj).items() if not k.startswith("__")] if hasattr(obj, "__dict__") else []

    for place in places:
        if place is None:
            continue
        for value in values(place):
            if isinstance(value, httpx.AsyncClient):
                found[id(value)] = value
            elif not isinstance(value, (str, bytes, int, float, list, tuple)):
                for inner in values(value):
                    if isinstance(inner, httpx.AsyncClient):
                        found[id(inner)] = inner
    return list(found.values())


# --8<-- [start:install]
def install(app, settings=None, tracer_provider=None) -> None:
    """指標、請求 ID、JSON 日誌；settings.otel 為真（或給了 tracer_provider）時再加追蹤。"""
    from prometheus_fastapi_instrumentator import Instrumentator

    registry = CollectorRegistry()  # (1)!
    metrics = GatewayMetrics(registry)
    logger = configure_logging(json_logs=getattr(settings, "log_json", True))
    Instrumentator(should_group_status_codes=False, excluded_handlers=["^/metrics$"],
                   registry=registry).instrument(app).expose(app, include_in_schema=False)  # (2)!
    build = app.build_middleware_stack

    def build_with_observability():  # (3)!
        stack = build()  # ServerErrorMiddleware → add_middleware 加的中介層 → 路由器
        stack.app = ObservabilityMiddleware(stack.app, metrics, logger, routes=app.router.routes)
        return stack

    app.build_middleware_stack = build_with_observability
    app.state.metrics, app.state.metrics_registry = metrics, registry
    if tracer_provider is None and getattr(settings, "otel", False):
        tracer_provider = tracer_provider_from_env()
    if tracer_provider is not None:
        install_tracing(app, tracer_provider)

    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_):  # (4)!
        async with original(app_) as state:
            provider = getattr(app_.state, "tracer_provider", None)  # install_tracing() 可能之後才呼叫
            for client in _clients(app_.state, state):
                instrument_client(client, provider)
            try:
                yield state
            finally:
                if provider is not None and hasattr(provider, "force_flush"):
                    provider.force_flush()

    app.router.lifespan_context = lifespan
# --8<-- [end:install]
