"""01-Basic_API：OpenAPI、錯誤信封、健康與就緒、官方 openai 用戶端，與可靠性測試的「壞輸入」部分：
40 多種壞掉或惡意的請求各得到 4xx 信封、沒有未處理的例外、閘道之後照常服務；schemathesis 依閘道的 OpenAPI
產生請求（合法與不合法的都有），沒有任何 5xx。

The gateway runs in-process (uvicorn in a thread, milliseconds); the upstream is the session's ``vllm_shared``.
The fuzzing gateway caps ``max_tokens`` at 1 so each generated request costs vLLM one token.
"""

from __future__ import annotations

import logging
import os
import tempfile

# hypothesis keeps a cache (.hypothesis/) in the working directory; keep the checkout clean
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "servelab-hypothesis"))

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from servelab.gateway.app import create_app
from servelab.gateway.settings import GatewaySettings
from servelab.vllm.lab2_3 import l01_basic_api as lesson


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def captured_logs():
    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("servelab.gateway", "uvicorn.error", "uvicorn", "")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def gateway(vllm_shared):
    with lesson.running_gateway(lesson.gateway_settings(vllm_shared)) as url:
        yield url


# ---------------------------------------------------------------- no engine

def test_openapi_has_the_routes_and_the_bounds_of_the_models():
    rows = {r["route"]: r for r in lesson.openapi_summary()}
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health", "GET /ready",
            "POST /v1/jobs", "GET /v1/jobs/{job_id}"} <= rows.keys()
    chat = rows["POST /v1/chat/completions"]
    assert chat["request"] == "ChatCompletionRequest"
    assert "temperature ≥ 0.0, ≤ 2.0" in chat["bounds"] and "項數 ≥ 1" in chat["bounds"]
    assert "422" not in chat["errors"] and "400" in chat["errors"]  # validation errors are 400 here
    lesson.write_openapi(list(rows.values()))


def test_validation_errors_are_400_in_the_envelope_without_an_engine():
    app = create_app(GatewaySettings(upstreams=["http://127.0.0.1:9"]))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # raise_server_exceptions: an unhandled exception fails the test
        response = client.post("/v1/chat/completions", json={"model": "m", "messages": [], "max_tokens": 1})
        assert response.status_code == 400
        assert lesson.envelope_problems(response) == []
        assert response.json()["error"]["param"] == "messages"
        down = client.post("/v1/chat/completions", json={"model": "m", "messages": lesson.MSG})
        assert down.status_code == 503 and down.headers["retry-after"] == "1"


def test_exercise_strict_vs_lax():
    assert lesson.strict_vs_lax("0.7") == {"lax": 0.7, "strict": "error: float_type"}
    assert lesson.strict_vs_lax(1) == {"lax": 1.0, "strict": 1.0}  # an int is a valid float in JSON


def test_exercise_envelope_problems():
    good = httpx.Response(400, json={"error": {"message": "x", "type": "t", "param": None, "code": None}})
    assert lesson.envelope_problems(good) == []
    assert lesson.envelope_problems(httpx.Response(400, json={"detail": "x"})) == ["no 'error' object"]
    assert "status 200 is not an error" in lesson.envelope_problems(httpx.Response(200, json={"ok": 1}))
    assert lesson.envelope_problems(httpx.Response(500, text="boom")) == ["not JSON"]


# ---------------------------------------------------------------- against vLLM

def test_health_and_ready(gateway):
    result = lesson.probes(gateway)
    assert result["health"] == 200 and result["ready"] == 200
    assert result["ready_body"]["upstreams"][0]["healthy"] is True


def test_the_official_openai_client_works_through_the_gateway_unchanged(gateway, vllm_shared):
    out = lesson.openai_through_gateway(gateway, vllm_shared.model)
    assert out["chat"] and out["completion"] and out["stream"]
    assert out["chat_usage"]["completion_tokens"] == 8
    assert out["stream_usage"]["completion_tokens"] == 8  # usage arrives in the last chunk
    assert out["models"] == [vllm_shared.model]


def test_bad_requests_are_4xx_envelopes_and_the_gateway_keeps_serving(gateway, vllm_shared, captured_logs):
    rows = lesson.probe_bad_requests(gateway, vllm_shared.model)
    *bad, alive = rows
    assert len({r["case"] for r in bad}) >= 30
    wrong = [(r["case"], r["status"], r["expected"]) for r in bad if r["status"] != r["expected"]]
    assert wrong == []
    assert all(400 <= r["status"] < 500 and r["envelope"] for r in bad)
    assert alive["status"] == 200
    unhandled = [r for r in captured_logs.records if r.levelno >= logging.ERROR or r.exc_info]
    assert unhandled == [], [r.getMessage() for r in unhandled]
    lesson.write_bad_requests(rows)


# ---------------------------------------------------------------- the schema-driven fuzzer

SCHEMA = schemathesis.openapi.from_dict(create_app(GatewaySettings()).openapi())


@pytest.fixture(scope="module")
def fuzz_gateway(vllm_shared):
    with lesson.running_gateway(lesson.gateway_settings(vllm_shared, max_tokens_cap=1)) as url:
        yield url


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_fuzz_the_openapi_no_5xx(case, fuzz_gateway):
    response = case.call(base_url=fuzz_gateway, timeout=60)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= error.keys()
