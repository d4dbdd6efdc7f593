"""04-Monitoring_and_Deploy: the gateway's metrics, JSON logs and traces against the session's vLLM, one real
Prometheus for both, the dashboard's metric names, uvicorn workers vs gunicorn, the deployment files'
validators, and SIGTERM draining in a real gateway process.

No engine of its own: every upstream is ``vllm_shared``. The gateway runs in-process (TestClient, or uvicorn
in a thread when Prometheus must reach it over TCP) or as a subprocess where processes are the point
(workers, SIGTERM).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging

import httpx
import pytest

from servelab.gateway import observability
from servelab.vllm.lab2_3 import l04_monitoring_and_deploy as lesson


@pytest.fixture(scope="module")
def gateway(vllm_shared):
    """The gateway on a real TCP port (uvicorn in a thread of this process), in front of the shared vLLM."""
    with lesson.running_gateway(lesson.gateway_settings(vllm_shared)) as base:
        yield base


@pytest.fixture(scope="module")
def prometheus(gateway, vllm_shared):
    with lesson.one_prometheus(gateway, vllm_shared) as base:
        yield base


# ---------------------------------------------------------------- observability.py without an engine

def _tiny_app(tracer_provider=None):
    """A FastAPI app with a lifespan-owned client on a MockTransport: what install() does to any app."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    @asynccontextmanager
    async def lifespan(app):
        async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/call")
    async def call():
        return (await app.state.client.get("http://upstream/x")).json()

    @app.get("/stream")
    async def stream():
        async def events():
            for i in range(3):
                await asyncio.sleep(0.02)
                yield f"data: {i}\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/boom")
    async def boom():
        raise RuntimeError("boom")

    observability.install(app, None, tracer_provider=tracer_provider)
    return app, seen


def test_request_id_is_kept_when_sane_replaced_when_not_and_sent_upstream():
    from fastapi.testclient import TestClient

    app, seen = _tiny_app()
    with TestClient(app) as client:
        assert client.get("/call", headers={"X-Request-Id": "abc-123"}).headers["x-request-id"] == "abc-123"
        hostile = client.get("/call", headers={"X-Request-Id": "x" * 500}).headers["x-request-id"]
        injected = client.get("/call", headers={"X-Request-Id": "a\tb"}).headers["x-request-id"]
    assert len(hostile) == 32 and len(injected) == 32  # replaced by a fresh uuid4 hex
    assert [r.headers["x-request-id"] for r in seen] == ["abc-123", hostile, injected]


def test_metrics_count_routes_codes_streams_and_ttft():
    from fastapi.testclient import TestClient

    app, _ = _tiny_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        client.get("/call")
        client.get("/stream")
        client.get("/nope")
        assert client.get("/boom").status_code == 500
        text = client.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    total = lambda route, code: samples[("servelab_gateway_requests_total",  # noqa: E731
                                          (("code", code), ("method", "GET"), ("route", route)))]
    assert total("/call", "200") == total("/stream", "200") == 1
    assert total(observability.UNMATCHED, "404") == 1 and total("/boom", "500") == 1
    assert samples[("servelab_gateway_ttft_seconds_count", (("route", "/stream"),))] == 1
    assert ("servelab_gateway_ttft_seconds_count", (("route", "/call"),)) not in samples  # only streams
    assert samples[("servelab_gateway_request_duration_seconds_count", (("route", "/stream"), ("stream", "true")))] == 1
    assert samples[("servelab_gateway_in_flight", ())] == 0  # /metrics itself is not counted
    assert samples[("http_requests_total", (("handler", "/call"), ("method", "GET"), ("status", "200")))] == 1


def test_json_log_lines_carry_the_request_id_and_a_crash_is_logged_once_with_it():
    from fastapi.testclient import TestClient

    app, _ = _tiny_app()
    buffer = io.StringIO()
    observability.configure_logging(stream=buffer)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            client.get("/call", headers={"X-Request-Id": "req-1"})
            logging.getLogger("servelab.gateway.upstream").info("inside the handler")  # outside a request
            client.get("/boom", headers={"X-Request-Id": "req-2"})
    finally:
        observability.configure_logging()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["message"] == "request"]
    assert [(a["request_id"], a["status"], a["route"]) for a in access] == [("req-1", 200, "/call"),
                                                                            ("req-2", 500, "/boom")]
    crash = [line for line in lines if line["message"] == "unhandled error"]
    assert len(crash) == 1 and crash[0]["request_id"] == "req-2" and "RuntimeError: boom" in crash[0]["exc_info"]
    assert all({"time", "level", "logger"} <= set(line) for line in lines)


def test_traces_span_server_and_upstream_call_and_inject_traceparent():
    from fastapi.testclient import TestClient
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app, seen = _tiny_app(tracer_provider=provider)
    with TestClient(app) as client:
        client.get("/call", headers={"X-Request-Id": "traced-1"})
        client.get("/health-not-a-route")
    spans = {span.kind.name: span for span in exporter.get_finished_spans() if span.name != "GET"
             or span.kind.name == "CLIENT"}
    server, call = spans["SERVER"], spans["CLIENT"]
    assert server.name == "GET /call" and server.attributes["servelab.request_id"] == "traced-1"
    assert call.parent.span_id == server.context.span_id and call.context.trace_id == server.context.trace_id
    version, trace_id, parent_id, _ = seen[0].headers["traceparent"].split("-")
    assert int(trace_id, 16) == server.context.trace_id and int(parent_id, 16) == call.context.span_id


# ---------------------------------------------------------------- the gateway in front of the shared vLLM

@pytest.mark.engine
def test_the_request_id_reaches_vllm_and_names_its_request(vllm_shared):
    result = lesson.logged_request(vllm_shared, "lesson-l04-0001")
    assert result["status"] == 200 and result["echoed"] == "lesson-l04-0001"
    assert result["vllm_id"] == "chatcmpl-lesson-l04-0001"  # vLLM used our X-Request-Id as its request id
    (access,) = [line for line in result["log"] if line["message"] == "request"]
    assert access["request_id"] == "lesson-l04-0001" and access["route"] == "/v1/chat/completions"
    assert access["status"] == 200 and access["duration_ms"] > 0
    assert lesson.GATEWAY_KEY not in json.dumps(result["log"])  # keys never reach the log


@pytest.mark.engine
def test_a_trace_spans_gateway_to_vllm(vllm_shared):
    spans = lesson.traced_chat(vllm_shared)
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    (call,) = [s for s in spans if s["kind"] == "CLIENT" and s["parent_id"] == server["span_id"]]
    assert server["name"] == "POST /v1/chat/completions"
    assert call["trace_id"] == server["trace_id"] and call["parent_id"] == server["span_id"]
    attributes = call["attributes"]  # the instrumentation's default: the older HTTP semantic conventions
    assert (attributes.get("url.full") or attributes["http.url"]) == vllm_shared.base_url + "/v1/chat/completions"
    assert (attributes.get("http.response.status_code") or attributes["http.status_code"]) == 200
    assert 0 < call["duration_ms"] < server["duration_ms"]  # the client span ends at vLLM's headers


@pytest.mark.engine
def test_gateway_metrics_count_traffic_by_code_and_ttft_next_to_vllms(gateway, vllm_shared, tmp_path):
    chat = {"route": "/v1/chat/completions"}
    before = lesson.by_label(gateway, "servelab_gateway_requests_total", "code", lesson.GATEWAY_KEY, **chat)
    codes = lesson.send_traffic(gateway, vllm_shared.model, streams=2)
    assert codes[:3] == [200, 200, 200] and codes[3] == 401 and codes[4] in (400, 422) and codes[5] == 404
    after = lesson.by_label(gateway, "servelab_gateway_requests_total", "code", lesson.GATEWAY_KEY, **chat)
    delta = {code: after[code] - before.get(code, 0) for code in after if after[code] != before.get(code, 0)}
    assert delta == {"200": 3, "401": 1, str(codes[4]): 1, "404": 1}
    assert lesson.error_ratio(delta, "4") == pytest.approx(3 / 6) and lesson.error_ratio(delta, "5") == 0
    row = lesson.ttft_side_by_side(gateway, vllm_shared)
    assert row["vllm_counted"] == row["streams"]  # vLLM saw exactly our requests in between
    assert row["gateway_ttft_ms"] > row["vllm_ttft_ms"] > 0  # the gateway's clock starts earlier
    assert row["gateway_e2e_ms"] > row["gateway_ttft_ms"]
    assert row["gateway_e2e_ms"] > row["vllm_e2e_ms"]  # the gateway's request contains vLLM's
    lesson.write_side_by_side(row, root=tmp_path)
    assert "閘道 TTFT" in (tmp_path / lesson.LESSON / "ttft_side_by_side.md").read_text()


@pytest.mark.engine
def test_one_prometheus_scrapes_gateway_and_vllm(prometheus, gateway, vllm_shared):
    up = lesson.wait_for(prometheus, 'up{job=~"gateway|vllm"}', lambda r: len(r) == 2 and
                         all(x["value"][1] == "1" for x in r))
    assert {x["metric"]["job"] for x in up} == {"gateway", "vllm"}  # the gateway's key file worked too
    codes = lesson.wait_for(prometheus, 'sum by (code) (servelab_gateway_requests_total{route="/v1/chat/completions"})',
                            lambda r: any(x["metric"].get("code") == "200" for x in r))
    assert any(x["metric"]["code"] == "200" and float(x["value"][1]) >= 1 for x in codes)
    vllm_ttft = lesson.wait_for(prometheus, "vllm:time_to_first_token_seconds_count", bool)
    assert float(vllm_ttft[0]["value"][1]) > 0


@pytest.mark.engine
def test_every_dashboard_query_uses_exported_metrics_and_prometheus_accepts_it(prometheus, gateway, vllm_shared):
    exported = lesson.metric_families(gateway, lesson.GATEWAY_KEY) | lesson.metric_families(vllm_shared.base_url)
    used = lesson.dashboard_metrics()
    assert used - exported == set(), used - exported
    assert {"servelab_gateway_requests", "servelab_gateway_ttft_seconds", "servelab_gateway_in_flight",
            "vllm:time_to_first_token_seconds", "http_request_duration_seconds"} <= used
    for title, expr in lesson.dashboard_queries():
        lesson.prom_query(prometheus, lesson.render(expr))  # raises ValueError if Prometheus refuses it


def test_dashboard_is_well_formed_and_provisioned():
    from servelab.triton.lab2_1.l04_monitoring_and_performance import dashboard_problems

    dashboard = json.loads(lesson.GRAFANA_DASHBOARD.read_text())
    assert dashboard_problems(dashboard) == []
    source = lesson.load_yaml(lesson.DEPLOY_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = source["datasources"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasource["uid"]}
    assert datasource["url"] == "http://prometheus:9090"
    assert not {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"} & lesson.dashboard_metrics()
    broken = copy.deepcopy(dashboard)
    broken["panels"][0]["targets"][0]["expr"] = "rate(servelab_gateway_request_total[1m])"  # a typo
    path = lesson.GRAFANA_DASHBOARD.parent / "__broken__.json"
    try:
        path.write_text(json.dumps(broken))
        assert "servelab_gateway_request" in lesson.dashboard_metrics(path)  # the name check would catch it
    finally:
        path.unlink()


# ---------------------------------------------------------------- workers, gunicorn, SIGTERM

@pytest.mark.engine
def test_uvicorn_workers_and_gunicorn_serve_and_multiprocess_metrics_add_up(vllm_shared, tmp_path):
    rows = lesson.compare_servers(vllm_shared)
    assert [r["server"] for r in rows] == list(lesson.SERVERS)
    for row in rows:
        assert row["requests_per_s"] > 50, row
        assert row["counted"] == row["sent"], row  # PROMETHEUS_MULTIPROC_DIR: /metrics sums every worker
    lesson.write_servers(rows, root=tmp_path)


@pytest.mark.engine
def test_sigterm_drains_the_in_flight_stream_and_refuses_new_requests(vllm_shared, tmp_path):
    with lesson.dockerfile_gateway(vllm_shared) as (base, proc):
        healthcheck = json.loads(lesson.dockerfile_facts()["healthcheck"].split("CMD", 1)[1])
        port = base.rsplit(":", 1)[1]
        import subprocess
        import sys

        ok = subprocess.run([sys.executable, "-c", healthcheck[2].replace("127.0.0.1:8300", f"127.0.0.1:{port}")],
                            capture_output=True, timeout=30)
        assert ok.returncode == 0  # the image's HEALTHCHECK command, against the real process
        report = lesson.sigterm_during_stream(base, proc, vllm_shared.model, max_tokens=24)
    assert report.exit_code == 0 and report.exit_s < 30
    assert report.chunks_before >= 3 and report.chunks_after > 0  # the stream went on after SIGTERM
    assert report.finish_reason == "length" and report.done  # ... to its last event (ignore_eos) and [DONE]
    assert report.new_request in ("ConnectError", "503 draining")  # nothing new is admitted
    lesson.write_drain(report, root=tmp_path)


# ---------------------------------------------------------------- deployment files (no engine)

def test_dockerfile_runs_the_gateway_as_non_root_with_a_healthcheck():
    facts = lesson.dockerfile_facts()
    assert facts["base"].startswith("python:3.11.") and "latest" not in facts["base"]
    assert facts["user"].split(":")[0] not in ("", "root", "0")
    assert facts["expose"] == ["8300"] and facts["stopsignal"] == "SIGTERM"
    assert facts["entrypoint"] == ["python", "-m", "servelab.gateway"]
    assert "/health" in facts["healthcheck"] and "127.0.0.1:8300" in facts["healthcheck"]
    import importlib

    assert callable(importlib.import_module("servelab.gateway.__main__").main)  # the module the image runs
    assert lesson.drain_command(9999)[-4:] == ["--host", "127.0.0.1", "--port", "9999"]


def test_the_image_requirements_pin_every_module_the_gateway_imports():
    pins = lesson.requirement_pins()
    imported = lesson.gateway_distributions()
    missing = set(imported) - set(pins)
    assert not missing, f"servelab.gateway imports these, the image does not install them: {missing}"
    wrong = {name: (pins[name], imported[name]) for name in imported if pins[name] != imported[name]}
    assert not wrong, f"(pinned, tested) versions differ: {wrong}"
    assert lesson.servelab_imports_outside_gateway() == set()  # the image copies only servelab/gateway


def test_kubernetes_manifests_pass_the_schema_validator_and_a_typo_fails_it(tmp_path):
    import kubernetes_validate

    assert lesson.validate_k8s() == ["deployment.yaml: Deployment", "hpa.yaml: HorizontalPodAutoscaler",
                                     "pdb.yaml: PodDisruptionBudget", "service.yaml: Service"]
    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    broken = tmp_path / "deployment.yaml"
    broken.write_text(json.dumps(doc))
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        lesson.validate_k8s([broken])


def test_deployment_env_is_what_the_gateway_reads_and_points_at_the_vllm_service():
    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    settings = lesson.settings_from_env(lesson.gateway_env(container))
    vllm_service = lesson.load_yaml(lesson.ROOT / "docker" / "vllm" / "k8s" / "service.yaml")
    assert settings.upstreams == [f"http://{vllm_service['metadata']['name']}:{vllm_service['spec']['ports'][0]['port']}"]
    assert settings.drain_timeout_s == 60 and settings.log_json is True and len(settings.api_keys) == 1
    vllm_container = lesson.load_yaml(lesson.ROOT / "docker" / "vllm" / "k8s" / "deployment.yaml")[
        "spec"]["template"]["spec"]["containers"][0]
    upstream_key = next(e for e in container["env"] if e["name"] == "SERVELAB_GATEWAY_UPSTREAM_API_KEY")
    assert upstream_key["valueFrom"] == vllm_container["env"][0]["valueFrom"]  # the key vLLM itself reads
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert lesson.gateway_grace_problems(doc) == []
    assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    service = lesson.load_yaml(lesson.K8S_DIR / "service.yaml")
    assert service["spec"]["selector"] == doc["spec"]["selector"]["matchLabels"]
    with pytest.raises(ValueError, match="SERVELAB_GATEWAY_UPSTREAM"):
        lesson.settings_from_env({"SERVELAB_GATEWAY_UPSTREAM": "http://x:8000"})  # a misspelled variable


def test_exercise_gateway_grace_problems_catches_a_short_grace_and_a_liveness_readiness():
    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    short = copy.deepcopy(doc)
    del short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert any("terminationGracePeriodSeconds=30" in p for p in lesson.gateway_grace_problems(short))
    wrong = copy.deepcopy(doc)
    wrong["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] = "/health"
    assert any("/ready" in p for p in lesson.gateway_grace_problems(wrong))


def test_compose_file_passes_the_compose_spec_and_wires_the_services():
    proc = lesson.validate_compose()
    assert proc.returncode == 0 and "validation done" in proc.stdout, proc.stdout + proc.stderr
    compose = lesson.load_yaml(lesson.DEPLOY_DIR / "compose.yaml")
    assert set(compose["services"]) == {"vllm", "gateway", "prometheus", "grafana"}
    gateway = compose["services"]["gateway"]
    settings = lesson.settings_from_env({k: v.split("$")[0] or "<secret>" for k, v in gateway["environment"].items()})
    assert settings.upstreams == ["http://vllm:8000"]
    assert int(gateway["stop_grace_period"].rstrip("s")) > settings.drain_timeout_s
    assert gateway["build"]["dockerfile"] == "deploy/gateway/Dockerfile"
    assert gateway["depends_on"]["vllm"]["condition"] == "service_healthy"
    prom = lesson.load_yaml(lesson.DEPLOY_DIR / "prometheus.yml")
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    assert targets == {"gateway": ["gateway:8300"], "vllm": ["vllm:8000"]}
    key_path = prom["scrape_configs"][0]["authorization"]["credentials_file"]
    assert key_path == "/run/secrets/" + compose["services"]["prometheus"]["secrets"][0]


def test_promtool_accepts_the_prometheus_config_with_this_machines_paths(tmp_path):
    import subprocess

    key = tmp_path / "key"
    key.write_text("k")
    config = tmp_path / "prometheus.yml"
    config.write_text(lesson.prometheus_config({"gateway": "127.0.0.1:8300", "vllm": "127.0.0.1:8000"}, key))
    proc = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
