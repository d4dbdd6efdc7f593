"""02-Version_Control_and_AB_Testing: versions, splits, shadow, canary and the A/B statistics, on the real server.

One ``@experiment`` (:func:`ab_experiment`, shared with the notebook) loads the numpy ``scorer`` (three
versions), a BLS router and an ensemble into the shared Triton (explicit mode), sends about 1,900 requests
and unloads everything. The tests assert on what those requests and Triton's per-version counters measured.
"""

from __future__ import annotations

import math

import pytest

from servelab.triton.lab2_2 import l02_version_control_and_ab_testing as lesson


def binomial_band(p: float, n: int, z: float = 3.29) -> tuple[float, float]:
    """A 99.9 % band for a measured share: the split is random, so its share is too."""
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


# --- statistics (no engine) --------------------------------------------------------------------

def test_sample_size_matches_the_textbook_values():
    assert lesson.sample_size_per_arm(0.30, 0.40) == 356  # α = 0.05 two-sided, power 0.8
    assert 3700 < lesson.sample_size_per_arm(0.30, 0.33) < 3800  # a 3-point lift needs ten times more
    assert abs(lesson.normal_quantile(0.975) - 1.959964) < 1e-5


def test_two_proportion_test_against_a_hand_computation():
    t = lesson.two_proportion_test(30, 100, 45, 100)
    pooled = 75 / 200
    z = 0.15 / math.sqrt(pooled * (1 - pooled) * 0.02)
    assert abs(t["z"] - z) < 1e-9 and abs(t["p_value"] - math.erfc(z / math.sqrt(2))) < 1e-9
    assert t["significant"] and t["ci_low"] > 0
    assert not lesson.two_proportion_test(30, 100, 33, 100)["significant"]


def test_exercises():
    assert abs(lesson.expected_sticky(0.2, 4) - 0.4112) < 1e-9 and lesson.expected_sticky(0.0, 4) == 1.0
    assert lesson.min_canary_requests(0.10) == 29 and lesson.min_canary_requests(0.01) == 299


def test_router_hash_is_the_clients_hash():
    for key in ("user-1", "user-42", "alice"):
        u = int.from_bytes(__import__("hashlib").sha256(key.encode()).digest()[:8], "big") / 2**64
        assert lesson.hash_bucket(key) == u


def test_version_counters_parse_and_sum_failure_reasons():
    text = "\n".join([
        'nv_inference_request_success{model="m",version="2"} 7',
        'nv_inference_request_failure{model="m",reason="BACKEND",version="2"} 2',
        'nv_inference_request_failure{model="m",reason="REJECTED",version="2"} 1',
        'nv_inference_request_success{model="other",version="1"} 9'])
    assert lesson.version_counters(text, "m") == {2: {"nv_inference_request_success": 7.0,
                                                      "nv_inference_request_failure": 3.0}}


def test_canary_rule():
    base = {"nv_inference_request_success": 300, "nv_inference_compute_infer_duration_us": 300 * 2000}
    good = {"nv_inference_request_success": 50, "nv_inference_compute_infer_duration_us": 50 * 2100}
    slow = {"nv_inference_request_success": 50, "nv_inference_compute_infer_duration_us": 50 * 9000}
    failing = {**good, "nv_inference_request_failure": 5}
    assert lesson.canary_decision({1: base, 2: good}, 1, 2)["verdict"] == "promote"
    assert lesson.canary_decision({1: base, 2: slow}, 1, 2)["verdict"] == "rollback"
    assert lesson.canary_decision({1: base, 2: failing}, 1, 2)["verdict"] == "rollback"
    assert lesson.canary_decision({1: base, 2: {"nv_inference_request_success": 5}}, 1, 2)["verdict"] == "wait"


# --- on the shared Triton ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def measured(triton_shared):
    return lesson.ab_experiment(triton_shared)


@pytest.mark.engine
def test_version_policies_and_named_versions(measured):
    rows = {r["policy"]: r for r in measured["policies"]}
    assert rows["latest [1]"]["ready"] == [3] and rows["latest [1]"]["v2"] == 404
    assert "version 2 is not found" in rows["latest [1]"]["error_v2"]
    assert rows["latest [2]"]["ready"] == [2, 3]
    assert rows["all"]["ready"] == [1, 2, 3] and [rows["all"][f"v{v}"] for v in (1, 2, 3)] == [1, 2, 3]
    assert rows["specific [1, 3]"]["ready"] == [1, 3] and rows["specific [1, 3]"]["v2"] >= 400
    assert all(r["default_version"] == 3 for r in rows.values())  # no version named: the highest ready


@pytest.mark.engine
def test_bls_router_splits_by_weight_and_sticky_hash(measured):
    w, h = measured["weighted"], measured["hashed"]
    low, high = binomial_band(0.2, w["n"])
    assert low <= w["share_b"] <= high
    assert w["sticky"] < 0.8  # a per-request draw moves most users between versions
    low, high = binomial_band(0.5, h["n"] // 4)  # 200 users decide the share, not 800 requests
    assert low <= h["share_b"] <= high
    assert h["sticky"] == 1.0  # the hash of the user id: one version per user, always
    assert measured["client_agrees"] == 1.0  # the client computes the same split


@pytest.mark.engine
def test_ensemble_cannot_branch(measured):
    both, one = measured["ensemble"]
    assert both["v1"] == both["v2"] == both["requests"]  # every step runs for every request
    assert one["v1"] == one["requests"] and one["v2"] == 0  # only the client's requested outputs prune it


@pytest.mark.engine
def test_shadow_sees_every_request_and_answers_no_one(measured):
    s = measured["shadow"]
    assert s["client_versions"] == [1] and s["client_errors"] == 0
    assert s["v3_success"] + s["v3_failure"] == s["n"] and s["v3_failure"] > 0  # v3 fails ~10 %, unseen


@pytest.mark.engine
def test_error_responses_are_counted_as_success_by_triton_2_51(measured):
    rows = {r["how"]: r for r in measured["error_accounting"]}
    assert rows["error response"]["client_errors"] > 0 and rows["error response"]["counted_failure"] == 0
    assert rows["raise"]["counted_failure"] == rows["raise"]["client_errors"] > 0


@pytest.mark.engine
def test_canary_promotes_the_good_candidate_and_rolls_back_the_bad(measured):
    good, bad = measured["canary"]
    assert good["candidate"] == 2 and good["verdict"] == "promote" and good["client_errors"] == 0
    assert bad["candidate"] == 3 and bad["verdict"] == "rollback" and bad["canary"]["failure_rate"] > 0
    assert bad["canary"]["mean_compute_ms"] > 1.5 * bad["baseline"]["mean_compute_ms"]
    assert measured["promoted"] == [2] and measured["after_promotion"]["version"] == 2


@pytest.mark.engine
def test_ab_statistics_on_measured_outcomes(measured):
    verdict = lesson.decide_winner(measured)
    assert verdict["n_per_arm"] >= verdict["needed_per_arm"] == 356
    assert verdict["ci_low"] <= 0.10 <= verdict["ci_high"]  # the true lift (0.40 − 0.30) is inside the CI
    assert verdict["significant"] and verdict["winner"] == 2
