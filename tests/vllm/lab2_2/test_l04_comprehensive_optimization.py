"""04-Comprehensive_Optimization：固定負載、SLO 與 goodput、請求速率掃描、Pareto 前緣、預設對調整後的最終表。

Engines: the session's ``vllm_shared`` server is the CPU "tuned" configuration (vLLM 0.32's CPU default
``max_num_seqs`` 128 with the book's engine arguments). The Lab 2.1 production configuration (``max_num_seqs`` 4,
``max_model_len`` 512) cannot be the shared server, so :func:`lesson.cpu_sweep` starts ONE server of its own,
inside the ``@experiment`` it shares with the notebook (the notebook runs first; this file then reads its result).
"""

from __future__ import annotations

import argparse
import json

import pytest

from servelab.vllm.lab2_2 import l04_comprehensive_optimization as lesson


@pytest.fixture(scope="module")
def cpu_rows(vllm_shared, bundled_model):
    return lesson.cpu_sweep(vllm_shared, str(bundled_model.path))


def _result(ttfts, latencies, output_lens, duration=2.0, errors=None):
    return {"ttfts": ttfts, "latencies": latencies, "output_lens": output_lens, "duration": duration,
            "errors": errors or [""] * len(ttfts)}


# ---------------------------------------------------------------- pure functions (no engine)

def test_goodput_counts_requests_that_meet_both_slos():
    slo = lesson.SLO(ttft_ms=100, tpot_ms=10)
    result = _result(ttfts=[0.05, 0.20, 0.05, 0.05, 0.01],
                     latencies=[0.05 + 9 * 0.009, 0.20 + 9 * 0.005, 0.05 + 9 * 0.02, 0.06, 0.3],
                     output_lens=[10, 10, 10, 1, 10], errors=["", "", "", "", "timeout"])
    # ok; TTFT too slow; TPOT too slow; a single token (TPOT counts as 0, as vLLM does); failed (not counted)
    assert lesson.good_requests(result, slo) == [True, False, False, True]
    assert lesson.goodput(result, slo) == pytest.approx(2 / 2.0)
    looser = lesson.SLO(ttft_ms=300, tpot_ms=25)
    assert lesson.goodput_under([result], looser) == [pytest.approx(4 / 2.0)]  # exercise 1: no re-run


def test_pareto_front_keeps_only_undominated_points():
    rows = [{"output_throughput": 100, "p90_e2el_ms": 50}, {"output_throughput": 200, "p90_e2el_ms": 80},
            {"output_throughput": 150, "p90_e2el_ms": 90},  # dominated by the 200/80 point
            {"output_throughput": 300, "p90_e2el_ms": 400}, {"output_throughput": 300, "p90_e2el_ms": 500}]
    assert lesson.pareto_front(rows) == [True, True, False, True, False]


def test_final_table_takes_each_configs_best_rate():
    rows = [{"config": c, "request_rate": r, "request_goodput": g, "slo_attainment": g / r, "p90_ttft_ms": 1.0,
             "p90_tpot_ms": 1.0, "output_throughput": 10 * g, "meets_p90_slo": ok}
            for c, r, g, ok in [("a", 1, 1.0, True), ("a", 2, 1.5, False), ("b", 1, 1.0, True), ("b", 2, 2.0, True),
                                ("b", 4, 3.0, False)]]
    table = lesson.final_table(rows, {"a": {"max_num_seqs": 4}, "b": {"max_num_seqs": 128}}, baseline="a")
    a, b = table
    assert (a["best_rate"], a["ratio"], a["p90_capacity"]) == (2, 1.0, 1)
    assert (b["best_rate"], b["ratio"], b["p90_capacity"]) == (4, 2.0, 2)
    assert b["flags"] == "max_num_seqs=128"


def test_combination_warnings_name_the_conflicts():
    tuned = {"max_num_seqs": 256, "quantization": "fp8", "kv_cache_dtype": "fp8"}
    assert len(lesson.combination_warnings(tuned)) == 1  # fp8 KV: check quality first
    assert lesson.combination_warnings({**tuned, "quality_checked": True}) == []
    spec = {"max_num_seqs": 256, "speculative_config": {"method": "ngram", "num_speculative_tokens": 4}}
    assert any("speculative decoding" in w for w in lesson.combination_warnings(spec))
    assert any("chunked prefill" in w for w in lesson.combination_warnings({"enable_chunked_prefill": False}))
    assert any("TTFT" in w for w in lesson.combination_warnings({"max_num_batched_tokens": 128, "max_num_seqs": 64}))
    assert any("拒絕啟動" in w for w in lesson.combination_warnings({"max_num_batched_tokens": 128}))
    assert lesson.combination_warnings({"max_num_seqs": 8, "speculative_config": {"method": "ngram"}}) == []


def test_exercises_littles_law_and_knee():
    assert lesson.seqs_needed(100, 1.2) == 150  # 100 req/s × 1.2 s = 120 in flight, ×1.25 headroom
    assert lesson.seqs_needed(80, 1.0, headroom=1.0) == 80
    rows = [{"config": "x", "request_rate": r, "request_goodput": g} for r, g in [(10, 10), (20, 19), (30, 20)]]
    assert lesson.knee_rate(rows, "x") == 30
    assert lesson.knee_rate(rows[:2], "x") is None


def test_gpu_configs_change_only_the_tuned_levers():
    assert lesson.TUNED_GPU_CHANGES == {"quantization": "fp8", "kv_cache_dtype": "fp8", "max_num_seqs": 256}
    from servelab.vllm.lab2_1.l03_advanced_features import PRODUCTION_GPU_FLAGS

    base = lesson.gpu_baseline_flags()
    for key, value in PRODUCTION_GPU_FLAGS.items():  # the same production flags as Lab 2.1 lesson 03
        assert base[key] == value if isinstance(value, bool) else float(base[key]) == float(value), key
    assert lesson.GPU_WORKLOAD.num_prompts >= 200  # enough for the p90/p99 the GPU tables show


# ---------------------------------------------------------------- vLLM's own parser (no server)

def test_bench_argv_is_valid_vllm_bench_serve_with_goodput(tmp_path, bundled_model):
    from vllm.benchmarks.serve import add_cli_args, check_goodput_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from servelab.runtime import VLLMEndpoint

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = lesson.bench_argv(VLLMEndpoint("http://127.0.0.1:9"), bundled_model.path, lesson.CPU_WORKLOAD, 2.0,
                             lesson.CPU_SLO, tmp_path / "r.json")
    args = parser.parse_args(argv)
    assert check_goodput_args(args) == {"ttft": 1000.0, "tpot": 150.0}  # milliseconds
    assert (args.request_rate, args.burstiness, args.num_prompts) == (2.0, 1.0, lesson.CPU_WORKLOAD.num_prompts)
    assert args.ignore_eos and args.save_detailed
    # troubleshooting: ITL is not a goodput metric in vLLM (only ttft, tpot, e2el)
    with pytest.raises(ValueError, match=r"Invalid metric name found, itl: 50.0"):
        check_goodput_args(argparse.Namespace(goodput=["itl:50"]))
    with pytest.raises(argparse.ArgumentTypeError, match="Invalid format found for service level objectives"):
        check_goodput_args(argparse.Namespace(goodput=["ttft=500"]))


def test_small_token_budget_with_many_sequences_is_refused():
    from vllm.config import SchedulerConfig

    flags = {"max_num_batched_tokens": 128, "max_num_seqs": 256}
    assert lesson.combination_warnings(flags)  # the package says it before vLLM does
    with pytest.raises(ValueError, match=r"max_num_batched_tokens \(128\) must be greater than or equal to max_num_seqs \(256\)"):
        SchedulerConfig(**flags, max_model_len=2048, is_encoder_decoder=False)


# ---------------------------------------------------------------- the CPU sweep (one own server)

def test_cpu_sweep_measures_every_level_and_our_goodput_is_vllms(cpu_rows):
    configs = [lesson.CPU_BASELINE, lesson.CPU_TUNED]
    assert [(r["config"], r["request_rate"]) for r in cpu_rows] == [(c, r) for c in configs for r in lesson.CPU_RATES]
    for row in cpu_rows:
        assert row["completed"] == lesson.CPU_WORKLOAD.num_prompts and row["failed"] == 0
        assert row["goodput_check"] == pytest.approx(row["request_goodput"], rel=1e-9)  # same definition as vLLM
        assert row["request_goodput"] <= row["request_throughput"] + 1e-9
        assert 0.0 <= row["slo_attainment"] <= 1.0
        assert row["p90_ttft_ms"] > 0 and row["p90_tpot_ms"] > 0


def test_cpu_max_num_seqs_4_queues_at_the_high_rate(cpu_rows):
    high = max(lesson.CPU_RATES)
    by = {(r["config"], r["request_rate"]): r for r in cpu_rows}
    base, tuned = by[(lesson.CPU_BASELINE, high)], by[(lesson.CPU_TUNED, high)]
    # with 4 slots, requests 5..8 wait for a free slot: their TTFT includes the queue
    assert base["p90_ttft_ms"] > 1.3 * tuned["p90_ttft_ms"]
    # the other side of the trade-off: more sequences per step, each step is slower
    assert tuned["p90_tpot_ms"] > base["p90_tpot_ms"] * 0.9


def test_cpu_results_files(cpu_rows, tmp_path):
    table = lesson.final_table(cpu_rows, lesson.cpu_configs(), lesson.CPU_BASELINE)
    assert table[0]["ratio"] == 1.0 and table[1]["ratio"] > 0
    lesson.write_sweep(cpu_rows, "sweep_cpu", lesson.CPU_WORKLOAD, lesson.CPU_SLO, lesson.cpu_configs(), root=tmp_path)
    lesson.write_final(table, "final_cpu", lesson.CPU_WORKLOAD, lesson.CPU_SLO, root=tmp_path)
    saved = json.loads((tmp_path / lesson.LESSON / "sweep_cpu.json").read_text())
    assert saved["slo"] == {"ttft_ms": 1000, "tpot_ms": 150}
    assert any(row["pareto"] == "是" for row in saved["rows"])
    assert "goodput" in (tmp_path / lesson.LESSON / "final_cpu.md").read_text()


# ---------------------------------------------------------------- GPU (the runner)

@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_lab21_default_against_tuned_on_one_h200():
    from servelab.runtime.provenance import provenance
    from servelab.runtime.results import results_root

    assert provenance()["gpu"] is not None
    rows, table = lesson.gpu_final()
    assert len(rows) == 2 * len(lesson.GPU_RATES)
    for row in rows:
        assert row["completed"] == row["num_prompts"] >= 200 and row["failed"] == 0
        # within one request: if vLLM 0.26 saves no per-request latencies, they are rebuilt from TTFT + ITLs
        assert abs(row["goodput_check"] - row["request_goodput"]) <= 1.01 / row["duration"]
    base, tuned = table
    print(f"goodput: {base['request_goodput']:.1f} → {tuned['request_goodput']:.1f} req/s "
          f"({tuned['ratio']:.2f}×, goal ≥ 1.5×)")
    assert tuned["request_goodput"] > base["request_goodput"]  # the page reports the ratio against the 1.5× goal
    for name in ("sweep_gpu", "final_gpu"):
        assert (results_root() / lesson.LESSON / f"{name}.json").exists()
