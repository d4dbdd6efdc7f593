"""04-Advanced_Configuration: each config knob, measured on the real Triton 2.51.

Knobs that need no server flag run on the session's Triton (``triton_shared``, this lesson's model names,
unloaded afterwards). The response cache and the rate limiter need server flags: ``server_features`` starts
one small server of its own. The GPU test (``-m gpu``) repeats the instance-group and priority measurements
with ``kind: KIND_GPU``.
"""

from __future__ import annotations

import json

import pytest

from servelab.runtime.results import results_root
from servelab.triton.lab2_2 import l04_advanced_configuration as lesson


def test_config_blocks(tmp_path):
    config = lesson.model_config("m", count=2, scheduling=lesson.BATCHERS["preferred_4"],
                                 extra="response_cache { enable: true }")
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in config
    assert "preferred_batch_size: [ 4 ]" in config and "response_cache { enable: true }" in config
    assert lesson.model_source("Accumulator").endswith("TritonPythonModel = Accumulator\n")
    assert "CONTROL_SEQUENCE_CORRID" in lesson.accumulator_config("s")


@pytest.mark.engine
def test_two_instances_double_throughput_and_each_costs_a_stub(triton_shared):
    one, two = lesson.instance_groups(triton_shared)
    assert (one["instances"], two["instances"]) == (1, 2)  # two stub processes served the requests
    assert two["req_per_s"] > 1.5 * one["req_per_s"]  # a sleeping execute: two instances overlap
    assert two["rss_mib"] > 10  # every instance is a whole Python process with numpy


@pytest.mark.engine
def test_dynamic_batcher_settings(triton_shared):
    rows = {r["batcher"]: r for r in lesson.dynamic_batcher(triton_shared)}
    assert rows["none"]["mean_batch"] == 1.0
    assert rows["dynamic"]["mean_batch"] > 2  # whatever waits in the queue goes into one execute
    assert rows["dynamic"]["req_per_s"] > 2 * rows["none"]["req_per_s"]
    assert rows["preferred_4"]["mean_batch"] >= 3
    # waiting batches too; whether it beats the default's batch depends on when the closed-loop clients resend
    # (one run 8 vs 5.3, a CI run 4.25 vs 6.25): the page says so, the test asserts only what always holds
    assert rows["delay_20ms"]["mean_batch"] > 2


@pytest.mark.engine
def test_exercise_measured_throughput_stays_under_the_ceiling(triton_shared):
    rows = lesson.check_ceilings(lesson.instance_groups(triton_shared), lesson.dynamic_batcher(triton_shared))
    assert lesson.throughput_ceiling(2, 40) == 50 and lesson.throughput_ceiling(1, 20, 4) == 200
    for row in rows:
        assert 0.5 < row["ratio"] <= 1.05, row


@pytest.mark.engine
def test_priority_queue_policy_and_sequences(triton_shared):
    prio = lesson.priorities(triton_shared)
    assert prio["high_p50_ms"] < 0.5 * prio["low_p50_ms"]  # priority 1 jumps the queue
    queue = lesson.queue_policy(triton_shared)
    assert queue["outcomes"].get("ok", 0) >= 1
    refused = {what: n for what, n in queue["outcomes"].items() if what != "ok"}
    assert refused and any("Exceeds maximum queue size" in what for what in refused)
    assert "timeout" in queue["override"].lower()
    seq = lesson.sequences(triton_shared)
    assert seq["answers"] == [(101, 1.0), (202, 10.0), (101, 3.0), (202, 30.0), (101, 6.0)]
    assert "must specify a non-zero or non-empty correlation ID" in seq["without_sequence_id"]
    features = lesson.server_features()
    lesson.save_all(lesson.instance_groups(triton_shared), lesson.dynamic_batcher(triton_shared),
                    prio, queue, seq, features)
    saved = json.loads((results_root() / lesson.LESSON / "queue.json").read_text())
    assert any("Exceeds maximum queue size" in r["result"] for r in saved["rows"])


@pytest.mark.engine
def test_preserve_ordering_holds_a_fast_response_behind_a_slow_one(triton_shared):
    off, on = lesson.preserve_ordering(triton_shared)
    lesson.save_ordering([off, on])
    assert off["preserve_ordering"] is False and on["preserve_ordering"] is True
    assert off["fast_p50_ms"] < 120  # the free instance answers the fast request at once
    assert on["fast_p50_ms"] > 180  # held until the slow one (300 ms, started 50 ms earlier) is answered
    assert on["fast_p50_ms"] > 2 * off["fast_p50_ms"]


@pytest.mark.engine
def test_a_field_from_a_newer_release_fails_the_load_on_2_51(triton_scratch):
    assert lesson.load_with_a_newer_field(triton_scratch) == (
        "failed to load 'l04_newer_field', failed to poll from model repository")


@pytest.mark.engine
def test_response_cache_and_rate_limiter():
    features = lesson.server_features()
    cache = features["cache"]
    assert (cache["misses"], cache["hits"]) == (5, 15)  # five distinct inputs, each seen four times
    assert cache["hit_p50_ms"] < 0.5 * cache["miss_p50_ms"]  # a hit skips the 50 ms execute
    shared, free = features["rate_limiter"]
    assert shared["total_req_per_s"] < 0.75 * free["total_req_per_s"]  # one resource: one execute at a time
    assert shared["a_req_per_s"] > shared["b_req_per_s"]  # priority 1 gets more turns than priority 2
    assert features["cache_with_sequence"] != "loaded"


@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_instance_groups_and_priorities(triton_shared):
    rows = lesson.gpu_measurements(triton_shared)
    groups = {r["count"]: r for r in rows["instance_groups"]}
    assert groups[2]["instances"] == 2 and groups[2]["req_per_s"] > 1.2 * groups[1]["req_per_s"]
    assert rows["priority"]["high_p50_ms"] < 0.5 * rows["priority"]["low_p50_ms"]
    saved = json.loads((results_root() / lesson.LESSON / "instance_groups_gpu.json").read_text())
    assert saved["provenance"]["gpu"] is not None
