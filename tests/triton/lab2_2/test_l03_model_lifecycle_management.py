"""03-Model_Lifecycle_Management: swaps, unloads, warm-up, readiness, retries, shutdown and the runbook.

Loads that succeed run on the session's Triton (``triton_shared``), with model names of this lesson, unloaded
afterwards. Everything that must fail a load, or that stops the server, runs on small servers of its own
(``server_flags`` starts one per flag set): a failed load leaves a strict server not ready for good.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from servelab.runtime.results import results_root
from servelab.triton.lab2_2 import l03_model_lifecycle_management as lesson

UNKNOWN = "has no available versions"  # Triton's 404 for a model with nothing loaded


# --- the model folder (no engine) ------------------------------------------------------------------

def test_version_folder_holds_this_module_and_its_behaviour(tmp_path):
    folder = lesson.write_version(tmp_path, "m", 2, warmup=True, init_s=0.5, cold_ms=10)
    assert (folder / "2" / "model.py").read_text() == lesson.model_source()
    assert Path(lesson.__file__).read_text().startswith(lesson.model_source())
    assert json.loads((folder / "2" / "behaviour.json").read_text()) == {"init_s": 0.5, "cold_ms": 10}
    config = (folder / "config.pbtxt").read_text()
    assert "version_policy: { latest { num_versions: 1 } }" in config
    assert "model_warmup" in config and "zero_data: true" in config
    assert "model_warmup" not in lesson.model_config("m")
    override = json.loads(lesson.rollback_config("m", 1))
    assert override["version_policy"] == {"specific": {"versions": [1]}}


# --- the session's Triton: loads that succeed ------------------------------------------------------

@pytest.mark.engine
def test_zero_downtime_swap_and_rollback_under_load(triton_shared):
    result = lesson.swap_under_load(triton_shared)
    lesson.save_swap(result)
    steady, swap, rollback, naive = result["phases"]
    assert [p["phase"] for p in result["phases"]] == ["steady", "swap", "rollback", "naive"]
    assert steady["versions"] == [1] and steady["failed"] == 0
    assert swap["failed"] == 0 and swap["versions"] == [1, 2] and swap["requests"] > 50
    assert rollback["failed"] == 0 and rollback["versions"] == [1, 2]
    assert naive["failed"] > 0 and UNKNOWN in naive["error"]  # unload-then-load leaves a gap
    assert swap["not_ready_polls"] > 0  # strict readiness: 400 while the old version is UNLOADING
    after_swap = [b for b in result["timeline"]
                  if swap["start_s"] + swap["change_s"] <= b["t"] and b["t"] + 0.25 <= rollback["start_s"]]
    assert after_swap and all(b["v1"] == 0 and b["v2"] > 0 for b in after_swap)  # v2 alone once loaded
    saved = json.loads((results_root() / lesson.LESSON / "swap.json").read_text())
    assert [r["failed"] for r in saved["rows"]][:3] == [0, 0, 0]
    assert "changes" in json.loads((results_root() / lesson.LESSON / "swap_timeline.json").read_text())


@pytest.mark.engine
def test_unload_lets_queued_and_running_requests_finish(triton_shared):
    result = lesson.unload_in_flight(triton_shared)
    lesson.save_in_flight(result)
    assert result["completed"] == result["in_flight"] == 3  # all three answered, though unload came first
    assert result["in_flight_ms"] > 2 * 500  # one instance, no batching: the third waited for two executes
    assert result["unload_call_s"] < 0.5  # the unload call returns at once
    assert result["late_ok"] is False and UNKNOWN in result["late_error"]
    assert result["ready_after_unload"] is False


@pytest.mark.engine
def test_model_warmup_moves_the_first_request_cost_into_the_load(triton_shared):
    off, on = lesson.warmup_effect(triton_shared)
    lesson.save_warmup([off, on])
    assert (off["warmup"], on["warmup"]) == (False, True)
    assert off["first_ms"] >= 0.9 * off["cold_ms"]  # the first request paid the lazy initialisation
    assert on["first_ms"] < 0.25 * off["first_ms"]
    # … which moved into the load. A stub starts in 1–2.5 s on a busy 2-core machine, so the 1.5 s of lazy
    # initialisation is made large enough to stand out of that noise.
    assert on["load_s"] > off["load_s"] + 0.5 * on["cold_ms"] / 1e3


@pytest.mark.engine
def test_runbook_promotes_a_good_version_and_rolls_back_a_wrong_one(triton_shared):
    rows = lesson.runbook_demo(triton_shared)
    lesson.save_runbook(rows)
    v2 = [r for r in rows if r["release"] == "v2"]
    v3 = [r for r in rows if r["release"] == "v3"]
    assert [r["step"] for r in v2] == ["serving before", "load new version", "smoke test", "promoted"]
    assert all(r["ok"] for r in v2) and v2[-1]["outcome"] == "promoted" and v2[-1]["detail"] == "v2"
    assert [r["step"] for r in v3] == ["serving before", "load new version", "smoke test", "rolled back"]
    assert [r["ok"] for r in v3] == [True, True, False, True]
    assert v3[2]["detail"] == "Y=[4.0, 6.0, 8.0, 10.0]"  # 2·[0, 1, 2, 3] + 3, plus the bias of 1
    assert v3[-1]["outcome"] == "rolled back" and v3[-1]["detail"] == "v2"
    assert (results_root() / lesson.LESSON / "runbook.md").exists()


@pytest.mark.engine
def test_exercise_probes_answer_on_a_healthy_server(triton_shared):
    lesson.wait_ready(triton_shared)  # an earlier test's unload may still be UNLOADING: ready says 400
    probes = lesson.kubernetes_probes(port=8000)
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["readinessProbe"]["failureThreshold"] * probes["readinessProbe"]["periodSeconds"] > 5
    for probe in probes.values():
        assert httpx.get(f"http://{triton_shared.http}{probe['httpGet']['path']}").status_code == 200


# --- servers of their own: failed loads, retries, readiness flags, SIGTERM -------------------------

@pytest.mark.engine
def test_strict_server_failed_load_retry_runbook_and_short_exit_timeout():
    r = lesson.compare_server_flags()[0]
    assert (r["strict_readiness"], r["exit_timeout_s"], r["retry_count"]) == (True, 1, 1)
    assert r["before"] == {"live": 200, "ready": 200}
    assert "load failed for model 'broken'" in r["broken_error"] and "(attempt 2)" in r["broken_error"]
    assert r["after_failed_load"] == {"live": 200, "ready": 400}  # strict: one failed model → not ready
    assert r["good_still_serves"] is True
    assert r["broken_index"][0]["state"] == "UNAVAILABLE"
    assert r["flaky_error"] == "" and r["flaky_attempts"] == 2  # failed once, the retry loaded it
    assert (r["runbook"]["outcome"], r["runbook"]["serving"]) == ("kept", 1)  # failed reload: v1 serves on
    assert r["ready_at_end"]["ready"] == 400  # strict: still not ready, though every loaded model serves
    assert r["shutdown"]["exit_s"] < 1.9  # gave up on the 2 s request after about 1 s
    assert not r["shutdown"]["in_flight"].startswith("v")


@pytest.mark.engine
def test_relaxed_server_stays_ready_no_retry_and_drains_in_flight():
    runs = lesson.compare_server_flags()  # the same measurement as the test above (one run per session)
    lesson.save_flags(runs)
    r = runs[1]
    assert (r["strict_readiness"], r["exit_timeout_s"], r["retry_count"]) == (False, 10, 0)
    assert r["after_failed_load"] == {"live": 200, "ready": 200}  # not strict: ready despite the failure
    assert "(attempt 1)" in r["broken_error"]
    assert r["ready_at_end"]["ready"] == 200
    assert "initialize failed (attempt 1)" in r["flaky_error"] and r["flaky_attempts"] == 1  # no retry
    assert r["shutdown"]["in_flight"] == "v1"  # the 2 s request finished before the server exited
    assert 1.5 < r["shutdown"]["exit_s"] < 10
    saved = json.loads((results_root() / lesson.LESSON / "server_flags.json").read_text())
    assert [row["ready_after_failed_load"] for row in saved["rows"]] == [400, 200]
