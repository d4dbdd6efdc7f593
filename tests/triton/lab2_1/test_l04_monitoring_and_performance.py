"""04-Monitoring_and_Performance: Triton's metrics, a real Prometheus, perf_analyzer, dynamic batching."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from servelab.runtime.process import free_port
from servelab.triton.lab2_1 import l04_monitoring_and_performance as lesson

HIDDEN, LAYERS = lesson.SHAPES["cpu"]["hidden"], lesson.SHAPES["cpu"]["layers"]


@pytest.fixture(scope="module")
def pair(triton_shared):
    """The two copies of the model (dynamic batching off / on), on CPU instances."""
    return lesson.deploy_pair(triton_shared, "cpu")


@pytest.fixture(scope="module")
def prometheus(triton_shared, vllm_shared, pair):
    """The real prometheus binary scraping the session's Triton and vLLM, plus a target nobody serves."""
    config = yaml.safe_load(lesson.prometheus_config({
        "triton": triton_shared.metrics, "vllm": vllm_shared.base_url.removeprefix("http://")}))
    config["scrape_configs"].append({"job_name": "nothing_listens",
                                     "static_configs": [{"targets": [f"127.0.0.1:{free_port()}"]}]})
    with lesson.prometheus_server(yaml.safe_dump(config)) as base:
        yield base


def _send(endpoint, model, rows_per_request):
    for i, rows in enumerate(rows_per_request):
        x = np.random.default_rng(i).standard_normal((rows, HIDDEN), dtype=np.float32)
        lesson.infer(endpoint, model, x)


# ---------------------------------------------------------------- Triton's metrics port


@pytest.mark.engine
def test_metrics_port_exposes_every_request_metric_with_its_type(triton_shared, pair):
    text = triton_shared.metrics_text()
    types = lesson.metric_types(text)
    for name in lesson.REQUEST_METRICS:
        assert types[name] == ("gauge" if name == "nv_inference_pending_request_count" else "counter"), name
    table = lesson.parse_metrics(text)
    assert {pair["plain"], pair["batched"]} <= set(table["nv_inference_exec_count"])
    # the names on the wire have no _total suffix (Prometheus client libraries add one when they parse)
    assert "nv_inference_request_success_total" not in table


@pytest.mark.engine
def test_one_request_of_three_rows_counts_one_request_three_inferences_one_execution(triton_shared, pair):
    model = pair["batched"]
    x = np.random.default_rng(0).standard_normal((3, HIDDEN), dtype=np.float32)
    np.testing.assert_allclose(lesson.infer(triton_shared, model, x),
                               lesson.reference_forward(x, HIDDEN, LAYERS), atol=1e-5)
    d = lesson.one_request(triton_shared, model, rows=3)
    assert (d["nv_inference_request_success"], d["nv_inference_count"], d["nv_inference_exec_count"]) == (1, 3, 1)
    assert d["nv_inference_request_failure"] == 0 and d["nv_inference_pending_request_count"] == 0
    assert lesson.average_batch_size(d) == 3.0
    parts = lesson.latency_breakdown(d)
    assert parts["infer"] > 0
    assert parts["request"] >= parts["queue"] + parts["input"] + parts["infer"] + parts["output"]


@pytest.mark.engine
def test_reload_keeps_metrics_counters_but_resets_the_statistics_api(triton_shared):
    with tempfile.TemporaryDirectory() as tmp:
        folder = lesson.write_mlp_model(Path(tmp), "l04_mlp_reload", False, hidden=64, layers=1)
        name = triton_shared.add_model(folder)
        for _ in range(2):
            lesson.infer(triton_shared, name, np.ones((1, 64), dtype=np.float32))
        before = lesson.settled_snapshot(triton_shared, name, 2)["nv_inference_request_success"]
        assert lesson.statistics_success(triton_shared, name) >= 2
        triton_shared.add_model(folder)  # copied again: new files, so Triton reloads the model
    assert lesson.statistics_success(triton_shared, name) == 0
    assert lesson.model_snapshot(triton_shared, name)["nv_inference_request_success"] == before >= 2


# ---------------------------------------------------------------- perf_analyzer


@pytest.mark.engine
def test_perf_analyzer_reports_ordered_percentiles_and_matches_triton_counters(triton_shared, pair):
    rows = lesson.latency_vs_concurrency(triton_shared, pair["batched"], levels=(1, 4), request_count=150)
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["throughput"] > 0
        assert row["sent"] == row["requests"] == 150  # what perf_analyzer sent is what Triton counted
        assert row["throughput"] == pytest.approx(150 / row["busy_s"])
        # perf_analyzer 2.51 divides by its measurement window, which --request-count rounds up to whole seconds
        assert row["window_s"] >= row["busy_s"] and abs(row["window_s"] - round(row["window_s"])) < 0.1
        assert row["pa_throughput"] == pytest.approx(150 / row["window_s"], rel=0.01)
    assert rows[0]["avg_batch"] == 1.0  # one request in flight: nothing to batch with
    assert rows[1]["avg_batch"] > 1.0  # four in flight: the dynamic batcher merges them


@pytest.mark.engine
def test_dynamic_batching_raises_throughput_with_fewer_executions(triton_shared, pair):
    plain, batched = lesson.compare_batching(triton_shared, pair, concurrency=8, request_count=300)
    assert plain["avg_batch"] == 1.0 and plain["executions"] == plain["requests"] == 300
    assert batched["avg_batch"] > 2.0
    assert batched["executions"] < plain["executions"] / 2
    assert batched["speedup"] > 1.2, (plain["throughputs"], batched["throughputs"])


@pytest.mark.engine
def test_request_rate_mode_sends_open_loop_at_the_target_rate(triton_shared, pair):
    load = lesson.LOAD["cpu"]
    rows = lesson.latency_vs_request_rate(triton_shared, pair, load["rates"], load["rate_requests"])
    assert [(r["dynamic_batching"], r["request_rate"]) for r in rows] == [
        (key, float(rate)) for key in ("關", "開") for rate in load["rates"]]
    for row in rows:
        assert row["sent"] == max(load["rate_requests"], int(row["request_rate"])) >= 200  # enough for p99
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["achieved"] <= row["request_rate"] * 1.1  # open loop: never faster than the schedule
    slow = [r for r in rows if r["request_rate"] == min(load["rates"])]
    assert all(r["achieved"] > 0.8 * r["request_rate"] for r in slow)  # far below capacity it keeps up
    assert max(r["avg_batch"] for r in rows if r["dynamic_batching"] == "開") > 1.0
    assert all(r["avg_batch"] == 1.0 for r in rows if r["dynamic_batching"] == "關")


def test_perf_analyzer_argv_switches_to_request_rate_mode():
    endpoint = type("E", (), {"http": "127.0.0.1:8100"})()
    argv = lesson.perf_analyzer_argv("pa", endpoint, "m", "300:300", Path("/tmp/x"), mode="request_rate")
    assert argv[argv.index("--request-rate-range") + 1] == "300:300" and "--concurrency-range" not in argv


@pytest.mark.engine
def test_unstable_measurement_is_the_documented_error(triton_shared, pair):
    with pytest.raises(RuntimeError, match="Failed to obtain stable measurement"):
        lesson.run_perf_analyzer(triton_shared, pair["plain"], "1:1", request_count=None,
                                 interval_ms=200, stability=0)


@pytest.mark.engine
def test_random_fp32_input_data_can_be_nan(triton_shared, pair):
    with pytest.raises(RuntimeError, match="INPUT0 contains NaN"):
        lesson.run_perf_analyzer(triton_shared, pair["plain"], "1:1", request_count=20, input_data="random")


@pytest.mark.engine
def test_unknown_model_is_the_documented_error(triton_shared):
    with pytest.raises(RuntimeError, match="Request for unknown model: 'l04_no_such_model' is not found"):
        lesson.run_perf_analyzer(triton_shared, "l04_no_such_model", "1:1", request_count=5)


def test_perf_analyzer_csv_parser_reads_percentiles():
    text = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
            "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
            "p50 latency,p90 latency,p95 latency,p99 latency\n"
            "2,250.5,40,900,1500,20,3000,60,0,5000,7000,8000,12000\n")
    (row,) = lesson.parse_perf_csv(text)
    assert row == {"concurrency": 2, "pa_throughput": 250.5, "p50_ms": 5.0, "p90_ms": 7.0, "p95_ms": 8.0,
                   "p99_ms": 12.0, "server_queue_ms": 1.5, "server_infer_ms": 3.0}


# ---------------------------------------------------------------- Prometheus


def test_promtool_accepts_the_book_config_and_the_generated_one(tmp_path):
    generated = tmp_path / "prometheus.yml"
    generated.write_text(lesson.prometheus_config({"triton": "127.0.0.1:8002", "vllm": "127.0.0.1:8000"}))
    for path in (lesson.docker_file("prometheus.yml"), generated):
        proc = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0 and "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert yaml.safe_load(generated.read_text())["global"]["scrape_interval"] == "1s"


@pytest.mark.engine
def test_prometheus_scrapes_the_same_counters_triton_serves(prometheus, triton_shared, pair):
    assert lesson.scalar(lesson.wait_for(prometheus, 'up{job="triton"}', lambda r: lesson.scalar(r) == 1)) == 1
    model = pair["plain"]
    before = lesson.model_snapshot(triton_shared, model)["nv_inference_request_success"]
    _send(triton_shared, model, [1] * 5)
    direct = lesson.settled_snapshot(triton_shared, model, before + 5)["nv_inference_request_success"]
    assert direct == before + 5
    expr = f'nv_inference_request_success{{model="{model}"}}'
    seen = lesson.scalar(lesson.wait_for(prometheus, expr, lambda r: lesson.scalar(r) == direct))
    assert seen == direct


@pytest.mark.engine
def test_prometheus_scrapes_vllm_on_its_api_port(prometheus, vllm_shared):
    assert lesson.scalar(lesson.wait_for(prometheus, 'up{job="vllm"}', lambda r: lesson.scalar(r) == 1)) == 1
    result = lesson.wait_for(prometheus, "vllm:e2e_request_latency_seconds_count", bool)
    assert result and result[0]["metric"]["job"] == "vllm"


@pytest.mark.engine
def test_a_target_nobody_serves_is_down_with_connection_refused(prometheus):
    lesson.wait_for(prometheus, 'up{job="nothing_listens"}', lambda r: lesson.scalar(r) == 0)
    target = lesson.prom_targets(prometheus)["nothing_listens"]
    assert target["health"] == "down" and "connection refused" in target["lastError"]


@pytest.mark.engine
def test_bad_promql_is_rejected_with_bad_data(prometheus):
    with pytest.raises(ValueError, match="bad_data"):
        lesson.prom_query(prometheus, "rate(nv_inference_count[1m)")


# ---------------------------------------------------------------- the Grafana dashboard


def test_dashboard_json_is_well_formed_and_covers_every_request_metric():
    dashboard = lesson.load_dashboard()
    assert lesson.dashboard_problems(dashboard) == []
    exprs = " ".join(expr for _, expr in lesson.dashboard_targets(dashboard))
    for name in lesson.REQUEST_METRICS:
        assert name in exprs, name
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert "nv_inference_request_success" in variables["model"]["definition"]


def test_dashboard_checker_catches_overlapping_panels_and_missing_exprs():
    dashboard = lesson.load_dashboard()
    broken = json.loads(json.dumps(dashboard))
    broken["panels"][1]["gridPos"] = dict(broken["panels"][0]["gridPos"])
    broken["panels"][2]["targets"][0]["expr"] = ""
    problems = lesson.dashboard_problems(broken)
    assert any("overlaps" in p for p in problems) and any("without expr" in p for p in problems)


@pytest.mark.engine
def test_every_dashboard_query_is_accepted_by_prometheus(prometheus, triton_shared, pair):
    _send(triton_shared, pair["batched"], [2, 2, 2])
    dashboard = lesson.load_dashboard()
    for title, expr in lesson.dashboard_targets(dashboard):
        lesson.prom_query(prometheus, lesson.render_expr(expr))  # raises ValueError if Prometheus refuses it
    throughput = next(expr for title, expr in lesson.dashboard_targets(dashboard) if title == "請求吞吐量")
    result = lesson.wait_for(prometheus, lesson.render_expr(throughput, pair["batched"]),
                             lambda r: bool(r) and lesson.scalar(r) > 0)
    assert result[0]["metric"]["model"] == pair["batched"] and lesson.scalar(result) > 0


# ---------------------------------------------------------------- vLLM's counterparts


@pytest.mark.engine
def test_vllm_metrics_have_the_taught_names_and_types(vllm_shared):
    reply = vllm_shared.client().chat.completions.create(
        model=vllm_shared.model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert reply.usage.completion_tokens > 0
    text = lesson.vllm_metrics_text(vllm_shared)
    types = lesson.metric_types(text)
    for name, kind in lesson.VLLM_METRICS.items():
        assert types.get(name) == kind, name
    ttft = lesson.histogram_mean(text, "vllm:time_to_first_token_seconds")
    e2e = lesson.histogram_mean(text, "vllm:e2e_request_latency_seconds")
    assert 0 < ttft <= e2e
    usage = lesson.parse_metrics(text)["vllm:kv_cache_usage_perc"]
    assert all(0.0 <= v <= 1.0 for v in usage.values())


# ---------------------------------------------------------------- formulas and exercises


def test_weight_bytes_formula_matches_the_bundled_model_and_llama_8b(bundled_model):
    config = json.loads((bundled_model.path / "config.json").read_text())
    assert lesson.llama_parameters(config) == bundled_model.parameters == 134_515_008
    from servelab.runtime.vllm_engine import LLAMA_8B_SHAPE

    assert lesson.llama_parameters(LLAMA_8B_SHAPE) == 8_030_261_248
    assert lesson.decode_read_parameters(LLAMA_8B_SHAPE) == 8_030_261_248 - 128_256 * 4096 == 7_504_924_672
    assert lesson.decode_read_parameters(config) == 134_515_008  # tied: the embedding is the output head too
    assert round(lesson.weight_read_ms(lesson.decode_read_parameters(LLAMA_8B_SHAPE), 2, 3350), 2) == 4.48
    assert round(lesson.weight_read_ms(134_515_008, 2, 3350), 3) == 0.080
    assert lesson.mlp_weight_bytes(**lesson.SHAPES["cpu"]) == 33_554_432  # 32 MiB per execute() on CPU
    assert lesson.mlp_weight_bytes(**lesson.SHAPES["gpu"]) == 536_870_912  # 512 MiB on the GPU profile


@pytest.mark.engine
def test_exercise_1_queue_share(triton_shared, pair):
    model = pair["batched"]
    before = lesson.model_snapshot(triton_shared, model)
    lesson.run_perf_analyzer(triton_shared, model, "4:4", request_count=100)
    d = lesson.delta(before, lesson.settled_snapshot(
        triton_shared, model, before["nv_inference_request_success"] + 100))
    share = lesson.queue_share(d)
    assert 0 < share < 1
    parts = lesson.latency_breakdown(d)
    assert share == pytest.approx(parts["queue"] / parts["request"])


@pytest.mark.engine
def test_exercise_2_average_batch_promql_equals_the_counters(prometheus, triton_shared):
    with tempfile.TemporaryDirectory() as tmp:  # a model of its own: every request it gets is this test's
        name = triton_shared.add_model(lesson.write_mlp_model(Path(tmp), "l04_mlp_promql", True, hidden=64,
                                                              layers=1))
    expr = lesson.AVG_BATCH_PROMQL % {"model": name}
    count = f'nv_inference_count{{model="{name}"}}'
    start = lesson.model_snapshot(triton_shared, name)
    lesson.wait_for(prometheus, count, lambda r: lesson.scalar(r) == start["nv_inference_count"])
    for rows in (2, 2, 2, 4):  # 10 rows in 4 executions
        lesson.infer(triton_shared, name, np.ones((rows, 64), dtype=np.float32))
    end = lesson.settled_snapshot(triton_shared, name, start["nv_inference_request_success"] + 4)
    lesson.wait_for(prometheus, count, lambda r: lesson.scalar(r) == end["nv_inference_count"])
    assert lesson.average_batch_size(lesson.delta(start, end)) == 2.5
    assert lesson.scalar(lesson.prom_query(prometheus, expr)) == pytest.approx(2.5)


@pytest.mark.engine
def test_exercise_3_which_bad_requests_reach_the_failure_counter(triton_shared, pair):
    seen = lesson.bad_requests(triton_shared, pair["plain"], lesson.deploy_raising_model(triton_shared))
    wrong = seen["wrong_width"]
    assert wrong["error"].startswith("[400]") and "unexpected shape for input 'INPUT0'" in wrong["error"]
    assert wrong["success"] == 0 and not any(wrong["failure"].values())
    nan = seen["nan_input"]
    assert nan["error"] == "[500] INPUT0 contains NaN"
    assert nan["success"] == 1 and not any(nan["failure"].values())  # an error *response* counts as success
    raised = seen["execute_raises"]
    assert raised["error"].startswith("[500] Failed to process the request(s)")
    assert raised["success"] == 0 and raised["failure"]["BACKEND"] == 1
    assert sum(raised["failure"].values()) == 1


@pytest.mark.engine
def test_exercise_4_histogram_mean_of_ttft(vllm_shared):
    text = lesson.vllm_metrics_text(vllm_shared)
    table = lesson.parse_metrics(text)
    mean = lesson.histogram_mean(text, "vllm:time_to_first_token_seconds")
    total = sum(table["vllm:time_to_first_token_seconds_sum"].values())
    assert mean == pytest.approx(total / sum(table["vllm:time_to_first_token_seconds_count"].values()))
    assert mean > 0


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.engine
def test_dynamic_batching_on_gpu_writes_the_gpu_results(triton_shared):
    from servelab.runtime.results import read_results

    sweep, (plain, batched), rates = lesson.run_all(triton_shared, "gpu")
    assert [r["concurrency"] for r in sweep] == [1, 2, 3, 4]
    assert plain["avg_batch"] == 1.0 and batched["avg_batch"] > 2.0
    assert batched["speedup"] > 1.2
    assert len(rates) == 2 * len(lesson.LOAD["gpu"]["rates"])
    assert all(r["sent"] >= 200 for r in rates)
    for name in ("batching_gpu", "perf_concurrency_gpu", "request_rate_gpu"):
        data = read_results(lesson.LESSON, name)
        assert data["provenance"]["gpu"] is not None, name
