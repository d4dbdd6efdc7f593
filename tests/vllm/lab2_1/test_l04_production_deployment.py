"""04-Production_Deployment：生產旗標、金鑰、上限、指標、負載測試、SIGTERM 排水，以及部署檔的驗證。

One extra engine start for the whole file: ``prod`` (module scope) runs ``vllm serve`` with the flags this lesson
teaches, plus request logging and OpenTelemetry tracing to an in-process OTLP receiver (``otlp``). It starts
in the background with the file's first test (the deployment-file checks need no engine), and its last test
sends SIGTERM, so it runs last (tests run in file order).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from servelab.testing.plugin import started_with_the_file
from servelab.vllm.lab2_1 import l04_production_deployment as lesson

MAX_MODEL_LEN = 512
MAX_NUM_SEQS = 4
SHUTDOWN_TIMEOUT = 30


@pytest.fixture(scope="module")
def otlp():
    with lesson.otlp_receiver() as (url, spans):
        yield url, spans


@pytest.fixture(scope="module", autouse=True)
def prod_starting(request, bundled_model, otlp):
    """``prod`` starts with the file's first test, so its start overlaps the checks that need no engine."""
    url, _ = otlp
    with started_with_the_file(request, "prod", lambda: lesson.production_server(
            max_model_len=MAX_MODEL_LEN, max_num_seqs=MAX_NUM_SEQS, shutdown_timeout=SHUTDOWN_TIMEOUT,
            env=lesson.OBSERVABILITY_ENV, **lesson.observability_flags(url)), "prod") as starting:
        yield starting


@pytest.fixture(scope="module")
def prod(prod_starting):
    return prod_starting.result()


@pytest.fixture(scope="module")
def serve_help() -> str:
    text = lesson.serve_help_text()
    assert "--shutdown-timeout" in text, "vllm serve --help=all printed no flags"
    return text


# ---------------------------------------------------------------- deployment files (no engine)

def test_dockerfile_pins_official_image_and_runs_as_non_root():
    facts = lesson.dockerfile_facts()
    image, _, tag = facts["base"].partition(":")
    assert image == "vllm/vllm-openai"
    assert tag == "v0.26.0"  # the GPU path's vLLM; never "latest"
    user = facts["user"].split(":")[0]
    assert user not in ("", "root", "0")
    assert facts["expose"] == ["8000"]
    assert "/health" in facts["healthcheck"] and "127.0.0.1:8000" in facts["healthcheck"]
    assert facts["stopsignal"] == "SIGTERM"
    assert facts["entrypoint"] == ["vllm", "serve"]
    assert facts["cmd"][0] != "serve"  # 「unrecognized arguments: serve」
    assert lesson.flag_value(facts["cmd"], "--port") == "8000"
    assert int(lesson.flag_value(facts["cmd"], "--shutdown-timeout")) > 0


def test_every_flag_in_the_deployment_files_is_a_real_vllm_serve_flag(serve_help):
    cmd = lesson.dockerfile_facts()["cmd"]
    args = lesson.deployment_container()["args"]
    assert lesson.unknown_serve_flags(cmd, serve_help) == []
    assert lesson.unknown_serve_flags(args, serve_help) == []
    # the book's check is stricter than argparse: an abbreviation is not a flag name (see the next test)
    assert lesson.unknown_serve_flags(["--max-num-seq", "4"], serve_help) == ["--max-num-seq"]


def test_vllm_serve_accepts_a_prefix_of_a_flag_and_rejects_only_a_real_typo(capsys):
    """argparse's allow_abbrev (on in vLLM 0.32): --max-num-seq is --max-num-seqs; --max-num-sqs is an error."""
    assert lesson.parse_serve_args(["m", "--max-num-seq", "7"]).max_num_seqs == 7
    with pytest.raises(SystemExit) as typo:
        lesson.parse_serve_args(["m", "--max-num-sqs", "7"])
    assert typo.value.code == 2
    assert "error: unrecognized arguments: --max-num-sqs 7" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lesson.parse_serve_args(["m", "--max-num", "7"])  # the prefix of several flags
    assert "ambiguous option: --max-num could match --max-num-batched-tokens" in capsys.readouterr().err
    argv = lesson.serve_command("cpu")
    args = lesson.parse_serve_args(argv[argv.index("serve") + 1:])  # the page's command line parses
    assert args.max_num_seqs == 4 and args.served_model_name == [lesson.SERVED_NAME]


def test_an_api_key_that_starts_with_a_dash(capsys):
    """secrets.token_urlsafe starts a key with "-" about once in 64: as a separate word argparse takes it for a
    flag (a CI run's server exited with this message); the book's one-word --api-key=KEY form keeps it."""
    from servelab.runtime import get_settings
    from servelab.runtime.vllm_engine import serve_spec

    key = "-Xy_dash-first-key"
    with pytest.raises(SystemExit) as split:
        lesson.parse_serve_args(["m", "--api-key", key])
    assert split.value.code == 2
    assert "error: argument --api-key: expected at least one argument" in capsys.readouterr().err
    _, argv = serve_spec(get_settings(), 8000, api_key=key)
    assert f"--api-key={key}" in argv
    assert lesson.parse_serve_args(argv[argv.index("serve") + 1:]).api_key == [key]


def test_observability_flags_parse():
    from servelab.runtime.vllm_engine import _cli_args

    flags = lesson.observability_flags("http://127.0.0.1:4318/v1/traces")
    args = lesson.parse_serve_args(_cli_args({"model": "m", **flags}))
    assert args.enable_log_requests is True and args.otlp_traces_endpoint == "http://127.0.0.1:4318/v1/traces"
    assert lesson.parse_serve_args(["m"]).enable_log_requests is False  # request logging is off by default


def test_the_real_cli_takes_the_abbreviation_rejects_the_typo_and_a_second_serve(bundled_model):
    """One real ``vllm serve`` run, as the Dockerfile's ENTRYPOINT ["vllm", "serve"] + a CMD that starts with
    "serve" again would make it: the model path becomes an extra positional argument, --max-num-seq (a
    prefix) is accepted, and only --max-num-sqs is reported beside it — the two rows of the troubleshooting
    table, from vLLM's own command line."""
    from servelab.runtime.vllm_engine import engine_env, vllm_command

    model = str(bundled_model.path)
    proc = subprocess.run([*vllm_command(), "serve", "serve", model, "--max-num-seq", "4", "--max-num-sqs", "7"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **engine_env()},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"vllm: error: unrecognized arguments: {model} --max-num-sqs 7"


def test_kubernetes_manifests_pass_the_schema_validator():
    checked = lesson.validate_k8s()
    assert checked == ["deployment.yaml: Deployment", "pdb.yaml: PodDisruptionBudget", "service.yaml: Service"]


def test_the_kubernetes_validator_rejects_a_misspelled_probe_field(tmp_path):
    import kubernetes_validate

    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10
    broken = tmp_path / "deployment.yaml"
    broken.write_text(json.dumps(doc))  # JSON is YAML
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        lesson.validate_k8s([broken])


def test_deployment_probes_ports_and_shutdown_budget():
    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    container = lesson.deployment_container(doc)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == int(lesson.flag_value(container["args"], "--port"))
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # room to load 16 GB of weights
    assert "/v1/models" in container["readinessProbe"]["exec"]["command"][-1]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "vllm-api-key"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    assert container["image"].endswith(":" + lesson.dockerfile_facts()["base"].split(":")[1])
    assert lesson.grace_problems(doc) == []
    service = lesson.load_yaml(lesson.K8S_DIR / "service.yaml")
    assert service["spec"]["selector"] == doc["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_exercise_grace_problems_catches_a_short_grace_period():
    doc = lesson.load_yaml(lesson.K8S_DIR / "deployment.yaml")
    short = copy.deepcopy(doc)
    del short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]  # Kubernetes default: 30 s
    problems = lesson.grace_problems(short)
    assert len(problems) == 1 and "terminationGracePeriodSeconds=30" in problems[0]
    abort = copy.deepcopy(doc)
    args = abort["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--shutdown-timeout") + 1] = "0"
    assert any("中止" in p for p in lesson.grace_problems(abort))


def test_compose_file_passes_the_compose_spec_schema():
    proc = lesson.validate_compose()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validation done" in proc.stdout


def test_compose_schema_check_rejects_an_unknown_key(tmp_path):
    doc = lesson.load_yaml(lesson.DOCKER_DIR / "compose.yaml")
    doc["services"]["vllm"]["stop_grace_periods"] = "75s"
    broken = tmp_path / "compose.yaml"
    broken.write_text(json.dumps(doc))  # JSON is YAML
    proc = lesson.validate_compose(broken)
    assert proc.returncode != 0 and "stop_grace_periods" in proc.stdout + proc.stderr


def test_compose_wires_prometheus_to_vllm_and_outlasts_the_drain():
    compose = lesson.load_yaml(lesson.DOCKER_DIR / "compose.yaml")
    prom = lesson.load_yaml(lesson.DOCKER_DIR / "prometheus.yml")
    vllm = compose["services"]["vllm"]
    assert compose["services"]["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["vllm:8000"]  # service name : container port
    assert compose["services"]["prometheus"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    drain = int(lesson.flag_value(lesson.dockerfile_facts()["cmd"], "--shutdown-timeout"))
    assert int(vllm["stop_grace_period"].rstrip("s")) > drain  # Docker's default of 10 s would SIGKILL mid-drain
    assert "VLLM_API_KEY" in vllm["environment"]


def test_grafana_dashboard_is_provisioned_with_the_prometheus_of_the_compose_file():
    dashboard = json.loads(lesson.GRAFANA_DASHBOARD.read_text())
    source = lesson.load_yaml(lesson.DOCKER_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"  # the compose service
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    assert uids == {datasource["uid"]} and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["targets"] for panel in dashboard["panels"])
    compose = lesson.load_yaml(lesson.DOCKER_DIR / "compose.yaml")
    volumes = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in volumes
    provider = lesson.load_yaml(lesson.DOCKER_DIR / "grafana" / "provisioning" / "dashboards" / "vllm.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    # no stale names (vLLM V1 renamed them)
    assert not {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"} & lesson.dashboard_metrics()


def test_headroom_formula_worked_examples():
    cpu, gpu = lesson.headroom_rows()
    assert cpu["per_token"] == 2 * 30 * 3 * 64 * 4 == 46080
    assert gpu["per_token"] == 2 * 32 * 8 * 128 * 2 == 131072
    assert cpu["kv_tokens"] % 128 == 0 and gpu["kv_tokens"] % 16 == 0
    assert cpu["preempt_risk"] is False  # 4 sequences of 512 tokens fit many times over
    assert gpu["full_length_seqs"] < gpu["max_num_seqs"]  # 64 full 8K sequences do not fit on one H100


def test_exercise_replicas_needed_little_law():
    assert lesson.replicas_needed(target_rps=10, e2e_latency_s=4.0, concurrency_per_replica=64) == 1
    assert lesson.replicas_needed(target_rps=40, e2e_latency_s=4.0, concurrency_per_replica=64) == 4
    assert lesson.replicas_needed(0.1, 1.0, 4) == 1


# ---------------------------------------------------------------- the production server

@pytest.mark.engine
def test_api_key_guards_v1_but_not_health_or_metrics(prod):
    rows = {(r["request"], r["key"]): r["status"] for r in lesson.check_auth(prod)}
    assert rows[("GET /v1/models", "沒有")] == 401
    assert rows[("GET /v1/models", "錯誤")] == 401
    assert rows[("GET /v1/models", "正確")] == 200
    assert rows[("GET /health", "沒有")] == 200
    assert rows[("GET /metrics", "沒有")] == 200
    response = httpx.post(f"{prod.api_url}/completions", json={"model": prod.model, "prompt": "Hi", "max_tokens": 2})
    assert response.status_code == 401 and response.json() == {"error": "Unauthorized"}


@pytest.mark.engine
def test_served_model_name_replaces_the_path(prod):
    models = httpx.get(f"{prod.api_url}/models", headers=lesson.auth_headers(prod)).json()["data"]
    assert [m["id"] for m in models] == [lesson.SERVED_NAME]
    assert models[0]["max_model_len"] == MAX_MODEL_LEN
    response = httpx.post(f"{prod.api_url}/completions", headers=lesson.auth_headers(prod),
                          json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2})
    assert response.status_code == 404
    assert f"Valid aliases: {lesson.SERVED_NAME}" in response.json()["error"]["message"]


@pytest.mark.engine
def test_exercise_is_ready(prod):
    assert lesson.is_ready(prod) is True
    stranger = lesson.VLLMEndpoint(prod.base_url, prod.model, api_key="not-the-key")
    assert lesson.is_ready(stranger) is False
    other_name = lesson.VLLMEndpoint(prod.base_url, "llama-8b", api_key=prod.api_key)
    assert lesson.is_ready(other_name) is False


@pytest.mark.engine
def test_the_readiness_and_healthcheck_commands_of_the_files_work_against_a_real_server(prod):
    port = prod.base_url.rsplit(":", 1)[1]
    probe = lesson.deployment_container()["readinessProbe"]["exec"]["command"]
    code = probe[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    run = lambda key: subprocess.run([sys.executable, "-c", code], env={**os.environ, "VLLM_API_KEY": key},  # noqa: E731
                                     capture_output=True, text=True, timeout=30)
    assert run(prod.api_key).returncode == 0
    failed = run("not-the-key")
    assert failed.returncode != 0 and "401" in failed.stderr
    healthcheck = json.loads(lesson.dockerfile_facts()["healthcheck"].split("CMD", 1)[1])
    assert healthcheck[:2] == ["python3", "-c"]
    ok = subprocess.run([sys.executable, "-c", healthcheck[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                        capture_output=True, timeout=30)
    assert ok.returncode == 0


@pytest.mark.engine
def test_limits_at_max_model_len_give_the_servers_real_answers(prod, tmp_path):
    rows = lesson.probe_limits(prod, MAX_MODEL_LEN)
    too_many, too_long, clamped = rows
    assert too_many["status"] == 400
    assert too_many["detail"].startswith(f"max_tokens={MAX_MODEL_LEN + 1} cannot be greater than "
                                         f"max_model_len={MAX_MODEL_LEN}")
    assert too_long["status"] == 400
    assert too_long["detail"].startswith(f"This model's maximum context length is {MAX_MODEL_LEN} tokens")
    assert clamped["status"] == 200  # vLLM 0.32 shortens max_tokens to what is left of the context
    usage = clamped["usage"]
    assert usage["prompt_tokens"] == MAX_MODEL_LEN - 8
    assert usage["completion_tokens"] == MAX_MODEL_LEN - usage["prompt_tokens"] == 8
    assert "finish_reason=length" in clamped["detail"]
    lesson.write_limits(rows, root=tmp_path)
    assert "cannot be greater than" in (tmp_path / lesson.LESSON / "limits.md").read_text()


@pytest.mark.engine
def test_max_num_seqs_queues_the_fifth_request_instead_of_failing_it(prod):
    from concurrent.futures import ThreadPoolExecutor

    def gauges():
        values = lesson.scrape_metrics(prod.base_url)
        return int(values["vllm:num_requests_running"]), int(values["vllm:num_requests_waiting"])

    # Stage the arrivals: the fifth request is sent only once the first four run, and the four are long
    # streams (448 tokens) that the test closes once the fifth has been seen waiting, which aborts them in
    # vLLM. Two CI runs with four 128-token requests sent at once saw them finish before the fifth arrived
    # (a fast host, staggered arrivals); this way the window does not depend on the host's speed.
    stop = threading.Event()

    def long_stream(i):
        body = {"model": prod.model, "prompt": f"Story {i}:", "max_tokens": MAX_MODEL_LEN - 64,
                "temperature": 0, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{prod.api_url}/completions", json=body,
                          headers=lesson.auth_headers(prod), timeout=120) as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    break
            return response.status_code

    seen = set()
    with ThreadPoolExecutor(MAX_NUM_SEQS + 1) as pool:
        futures = [pool.submit(long_stream, i) for i in range(MAX_NUM_SEQS)]
        deadline = time.monotonic() + 120
        while gauges()[0] < MAX_NUM_SEQS and time.monotonic() < deadline:
            time.sleep(0.02)
        futures.append(pool.submit(lesson._complete, prod, "Story 4:", 16))
        while (MAX_NUM_SEQS, 1) not in seen and not all(f.done() for f in futures) and time.monotonic() < deadline:
            seen.add(gauges())
            time.sleep(0.05)
        stop.set()  # close the four streams: vLLM aborts them and the fifth gets its slot
        statuses = [f.result() for f in futures[:-1]] + [futures[-1].result().status_code]
        seen.add(gauges())
    assert statuses == [200] * (MAX_NUM_SEQS + 1)  # nobody is rejected
    assert max(running for running, _ in seen) == MAX_NUM_SEQS  # never more than --max-num-seqs at once
    assert (MAX_NUM_SEQS, 1) in seen, seen  # the fifth one waited in the queue


@pytest.mark.engine
def test_metric_names_of_the_page_exist_on_the_running_server(prod):
    families = lesson.metric_families(prod.base_url)
    for name in lesson.WATCHED:
        assert name in families, name
    assert "vllm:gpu_cache_usage_perc" not in families  # renamed to vllm:kv_cache_usage_perc
    assert "vllm:time_per_output_token_seconds" not in families  # renamed to vllm:inter_token_latency_seconds


@pytest.mark.engine
def test_metrics_move_with_requests_and_exercise_mean_ttft(prod):
    before = lesson.scrape_metrics(prod.base_url)
    start = time.perf_counter()
    for _ in range(2):
        assert lesson._complete(prod, "Hello", 8).status_code == 200
    wall = time.perf_counter() - start
    after = lesson.scrape_metrics(prod.base_url)
    assert after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0) == 16
    assert after["vllm:time_to_first_token_seconds_count"] - before.get(
        "vllm:time_to_first_token_seconds_count", 0) == 2
    assert 0.0 <= after["vllm:kv_cache_usage_perc"] <= 1.0
    assert after["vllm:num_requests_running"] == 0
    mean_ttft = lesson.mean_between(before, after, "vllm:time_to_first_token_seconds")
    mean_itl = lesson.mean_between(before, after, "vllm:inter_token_latency_seconds")
    assert 0 < mean_ttft < wall and 0 < mean_itl < wall
    with pytest.raises(ValueError):
        lesson.mean_between(after, after, "vllm:time_to_first_token_seconds")


@pytest.mark.engine
def test_headroom_formula_matches_what_the_server_reports(prod, settings):
    info = lesson.cache_config(prod.base_url)
    block = int(info["block_size"])
    per_token = lesson.kv_bytes_per_token(lesson.SMOLLM2, 4)
    budget = settings.kv_cache_gib * lesson.GIB
    assert int(info["kv_cache_memory_bytes"]) == budget
    predicted = lesson.headroom(budget, per_token, block, MAX_MODEL_LEN, MAX_NUM_SEQS)
    assert int(info["kv_cache_size_tokens"]) == predicted["kv_tokens"]
    assert float(info["kv_cache_max_concurrency"]) == pytest.approx(predicted["full_length_seqs"], abs=1e-3)


@pytest.mark.engine
def test_load_test_with_vllm_bench_serve(vllm_shared, bundled_model, tmp_path):
    """The notebook's run (concurrency 2, 8 prompts, the book's server): measured once per session. The
    API key reaching the tool is checked on ``prod`` by the next test (a wrong key would be 401, not 404)."""
    rows = lesson.load_test(vllm_shared, bundled_model.path, concurrencies=(2,), num_prompts=8, root=tmp_path)
    (row,) = rows
    assert row["completed"] == row["num_prompts"] == 8 and row["failed"] == 0
    assert row["total_output_tokens"] == 8 * 32  # --ignore-eos: every request generated all 32 tokens
    for metric in ("ttft", "itl", "e2el"):
        p50, p90 = (row[f"p{p}_{metric}_ms"] for p in (50, 90))
        assert p90 >= p50 > 0, metric
    assert row["p50_e2el_ms"] > row["p50_ttft_ms"]  # a request lasts longer than its first token
    assert row["output_throughput"] > 0
    # throughput ≈ tokens / duration, as the tool defines it
    assert row["output_throughput"] == pytest.approx(row["total_output_tokens"] / row["duration_s"], rel=1e-6)
    saved = json.loads((tmp_path / lesson.LESSON / "load_test.json").read_text())
    assert saved["provenance"]["profile"] == "cpu" and saved["requests_per_level"] == [8]
    # 8 requests: p99 would be the maximum, so the table does not show it
    assert not any(key.startswith("p99_") for key in saved["columns"])
    assert "p90_ttft_ms" in saved["columns"] and "p99" not in (tmp_path / lesson.LESSON / "load_test.md").read_text()
    # Exercise: how many replicas for 8 requests/s at the measured median latency?
    e2e_s = row["p50_e2el_ms"] / 1000
    replicas = lesson.replicas_needed(8, e2e_s, MAX_NUM_SEQS)
    capacity = MAX_NUM_SEQS * 0.8  # requests one replica holds at 80 % of max_num_seqs
    assert (replicas - 1) * capacity < 8 * e2e_s <= replicas * capacity or replicas == 1


@pytest.mark.engine
def test_the_books_load_test_fails_when_every_request_failed(prod):
    """vLLM's own ``vllm bench serve`` exits 0 with a warning; the book's wrapper exits 1 and says why."""
    env = {**os.environ, "SERVELAB_VLLM_URL": prod.base_url, "SERVELAB_API_KEY": prod.api_key}
    proc = subprocess.run([sys.executable, "-m", lesson.__name__, "bench", "--model", "no-such-model",
                           "--num-prompts", "2"], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: vllm bench serve exited with 0, but all 2 requests failed" in proc.stderr
    assert "(model 'no-such-model' at " in proc.stderr and "): Not Found — check the model name" in proc.stderr


@pytest.mark.engine
def test_request_logging_writes_one_line_per_request(prod):
    before = prod.process.log_path.read_text(errors="replace").count("Received request")
    assert lesson._complete(prod, "Hello", 4).status_code == 200
    deadline = time.monotonic() + 10
    while prod.process.log_path.read_text(errors="replace").count("Received request") == before:
        assert time.monotonic() < deadline, "no 'Received request' line in the server log"
        time.sleep(0.2)
    line = [ln for ln in prod.process.log_path.read_text(errors="replace").splitlines() if "Received request" in ln][-1]
    assert "params: SamplingParams(" in line and "max_tokens=4" in line


@pytest.mark.engine
def test_opentelemetry_trace_of_one_request(prod, otlp):
    _, spans = otlp
    span = lesson.traced_request(prod, spans)
    assert span["service"] == lesson.OBSERVABILITY_ENV["OTEL_SERVICE_NAME"]
    assert span["parent_span_id"] == span["client_parent_id"]  # the caller's traceparent is the parent
    attributes = span["attributes"]
    assert attributes["gen_ai.usage.completion_tokens"] == 8
    assert attributes["gen_ai.request.max_tokens"] == 8
    assert 0 < attributes["gen_ai.latency.time_to_first_token"] <= attributes["gen_ai.latency.e2e"]
    assert attributes["gen_ai.latency.time_in_queue"] >= 0
    names = {s["name"] for s in spans}
    assert "llm_request" in names and len(names) > 1, names  # start-up spans (loading, warm-up) came too


@pytest.mark.engine
def test_grafana_dashboard_queries_only_metrics_the_server_exports(prod):
    used = lesson.dashboard_metrics()
    exported = lesson.metric_families(prod.base_url)
    assert used - exported == set(), used - exported
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds",
            "vllm:inter_token_latency_seconds"} <= used


@pytest.mark.engine
def test_triton_counterpart_health_and_metrics(triton_shared):
    import time

    # the session's Triton is shared: a model another test just unloaded may still be shutting down
    # (ready answers 400 meanwhile); wait until it settles, then ready must agree with the models' states
    deadline = time.monotonic() + 90
    health = lesson.triton_health(triton_shared)
    while health["ready"] != 200 and time.monotonic() < deadline:
        time.sleep(1)
        health = lesson.triton_health(triton_shared)
    assert health["live"] == 200
    # ready means: the server and every model it should serve are ready (one model still loading → 400)
    assert (health["ready"] == 200) == (health["models_not_ready"] == []), health["models_not_ready"]
    assert "nv_cpu_utilization" in health["metric_families"]  # server-wide families are always there
    # per-model families (nv_inference_*) appear once a model is loaded
    loaded = [m for m in triton_shared.http_client().get_model_repository_index() if m.get("state") == "READY"]
    assert ("nv_inference_request_success" in health["metric_families"]) == bool(loaded)
    assert health["metrics_port"] != triton_shared.http.rsplit(":", 1)[1]  # metrics have a port of their own


@pytest.mark.engine
def test_sigterm_drains_the_in_flight_stream_then_exits_cleanly(prod, tmp_path):
    """Last test of the module: it stops the ``prod`` server."""
    report = lesson.sigterm_during_stream(prod, SHUTDOWN_TIMEOUT, max_tokens=32)
    assert report.exit_code == 0
    assert report.exit_s < SHUTDOWN_TIMEOUT + 15
    assert report.chunks_before >= 3 and report.chunks_after > 0  # generation went on after SIGTERM
    assert report.completion_tokens == 32 and report.finish_reason == "length"  # the request was completed
    # nothing new is admitted while draining; vLLM 0.32 answers 500 (the page's troubleshooting table)
    assert report.new_request == "500 cannot schedule new futures after shutdown"
    assert report.health_during_drain == "200"  # /health stays 200: readiness does not take the pod out
    assert prod.process.proc.poll() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{prod.base_url}/health", timeout=5)
    lesson.write_shutdown(report, root=tmp_path)
    assert (tmp_path / lesson.LESSON / "shutdown.md").exists()


@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_load_test_on_an_8b_model_with_the_dockerfiles_flags():
    from servelab.runtime.provenance import provenance
    from servelab.runtime.results import results_root

    assert provenance()["gpu"] is not None
    rows = lesson.gpu_load_test()
    assert [r["max_concurrency"] for r in rows] == list(lesson.GPU_CONCURRENCIES)
    for row in rows:
        assert row["num_prompts"] >= lesson.P99_MIN_REQUESTS  # enough for the p99 the table shows
        assert row["failed"] == 0 and row["completed"] == row["num_prompts"]
        assert row["p99_ttft_ms"] >= row["p90_ttft_ms"] >= row["p50_ttft_ms"] > 0
        assert row["p99_itl_ms"] >= row["p50_itl_ms"] > 0
    by_c = {r["max_concurrency"]: r for r in rows}
    assert by_c[64]["output_throughput"] > 8 * by_c[1]["output_throughput"]  # batching raises throughput
    assert by_c[64]["p50_itl_ms"] < 3 * by_c[1]["p50_itl_ms"]  # ... at a small cost per token
    # past --max-num-seqs 64 the extra requests wait in the queue: TTFT grows, throughput does not
    assert by_c[128]["p50_ttft_ms"] > 2 * by_c[64]["p50_ttft_ms"]
    assert by_c[128]["output_throughput"] < 1.3 * by_c[64]["output_throughput"]
    saved = json.loads((results_root() / lesson.LESSON / "load_test_gpu.json").read_text())
    assert saved["flags"]["enforce_eager"] is False  # CUDA graphs, as in the Dockerfile
    cmd = lesson.dockerfile_facts()["cmd"]
    for flag in ("--max-model-len", "--max-num-seqs", "--gpu-memory-utilization", "--shutdown-timeout"):
        assert saved["flags"][flag[2:].replace("-", "_")] == lesson.flag_value(cmd, flag)
    assert "p99_ttft_ms" in saved["columns"]
