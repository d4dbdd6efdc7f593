"""01-Multi_Model_Repository: several real models in one Triton repository, control modes, the repository API.

The tour (tokenizer, torch classifier, ensemble and the bundled LLM) runs on the shared Triton
(``triton_shared``, explicit mode) and unloads everything afterwards. The control modes need servers of
their own (the mode is a server flag): three small numpy-model servers started side by side by
:func:`control_modes`, which the notebook already ran in this session (``@experiment``).
"""

from __future__ import annotations

import io

import pytest
import torch

from servelab.triton.lab2_2 import l01_multi_model_repository as lesson


# --- files and models (no engine) -------------------------------------------------------------

def test_repository_layout_and_rendered_model_files(tmp_path):
    names = lesson.write_multi_model_repository(tmp_path, "t_", llm=True)
    assert names == {r: "t_" + r for r in ("tokenizer", "classifier", "pipeline", "llm")}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names.values())
    tok = (tmp_path / "t_tokenizer" / "1" / "model.py").read_text()
    assert "TritonPythonModel = TokenizerModel" in tok and (tmp_path / "t_tokenizer/1/tokenizer.json").stat().st_size > 1e6
    clf = (tmp_path / "t_classifier" / "1" / "model.py").read_text()
    assert "class BagClassifier(nn.Module)" in clf and "import torch" in clf
    compile(tok, "tokenizer/model.py", "exec"), compile(clf, "classifier/model.py", "exec")
    ensemble = (tmp_path / "t_pipeline" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble and ensemble.index("t_tokenizer") < ensemble.index("t_classifier")
    assert not any((tmp_path / "t_pipeline" / "1").iterdir())  # an ensemble's version folder is empty
    assert 'backend: "python"' in (tmp_path / "t_llm" / "config.pbtxt").read_text()


def test_classifier_ignores_padding_and_weights_depend_on_the_seed():
    model = lesson.BagClassifier()
    model.load_state_dict(torch.load(io.BytesIO(lesson.classifier_weights(0)), weights_only=True))
    ids = torch.zeros(2, lesson.MAX_TOKENS, dtype=torch.long)
    ids[:, :3] = torch.tensor([5, 17, 99])
    ids[1, 3:] = 1234  # garbage after the real tokens: masked out by N_TOKENS
    with torch.inference_mode():
        logits = model(ids, torch.tensor([[3], [3]]))
    torch.testing.assert_close(logits[0], logits[1])
    assert lesson.classifier_weights(0) == lesson.classifier_weights(0) != lesson.classifier_weights(1)


def test_exercise_instances_that_fit():
    assert lesson.instances_that_fit(1000, 210, 170) == 5  # 210 + 4 × 170 = 890 ≤ 1000 < 1060
    assert lesson.instances_that_fit(200, 210, 170) == 0


def test_exercise_publish_atomically(tmp_path):
    repo, src = tmp_path / "repo", tmp_path / "build"
    repo.mkdir()
    lesson.write_tiny(src, "m")
    (repo / "m").mkdir()  # an older copy is replaced as a whole
    (repo / "m" / "stale.txt").write_text("old")
    target = lesson.publish_atomically(src / "m", repo)
    assert sorted(p.name for p in target.rglob("*")) == ["1", "config.pbtxt", "model.py"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging-")]


# --- on the shared Triton (explicit mode) -------------------------------------------------------

@pytest.mark.engine
def test_tour_loads_four_models_side_by_side_and_accounts_for_them(triton_shared):
    seen = lesson.tour(triton_shared)
    assert all("state" not in m for m in seen["index_before"])  # on disk, not loaded
    assert {m["name"]: m["state"] for m in seen["index_after"]} == {n: "READY" for n in seen["names"].values()}
    assert "Paris" in seen["answers"]["llm"]
    assert len(seen["answers"]["pipeline"]) == 2 and all(0 <= x < lesson.N_CLASSES for x in seen["answers"]["pipeline"])
    rows = {r["role"]: r for r in seen["rows"]}
    assert [rows[r]["instances"] for r in ("tokenizer", "classifier", "pipeline", "llm")] == [1, 1, 0, 1]
    assert rows["llm"]["stub_pss_mib"] > 5 * rows["classifier"]["stub_pss_mib"] > 5 * 0  # vLLM dwarfs the rest
    assert rows["classifier"]["stub_uss_mib"] > rows["tokenizer"]["stub_uss_mib"]  # torch vs tokenizers only
    two = rows["classifier ×2"]
    assert two["instances"] == 2 and seen["override_count"] == 2 and seen["file_still_count_1"]
    assert two["stub_uss_mib"] > 1.5 * rows["classifier"]["stub_uss_mib"]  # a second instance = a second process
    assert seen["stubs_left"] == 0  # unload ended every stub


@pytest.mark.engine
def test_load_from_payload_needs_a_config_and_leaves_the_repository_alone(triton_shared):
    out = lesson.load_from_payload(triton_shared)
    assert out["files_without_config"]["status"] in (400, 500)
    assert "failed to load" in out["files_without_config"]["message"]
    assert out["ready"] and out["stubs"] == 1 and not out["in_repository"]
    assert out["indexed"] == []  # the index lists what is on disk; a payload model is not
    assert not any(p.startswith(str(triton_shared.repository)) for p in out["model_py"])


@pytest.mark.engine
def test_control_modes_and_the_poll_race():
    out = lesson.control_modes()
    a, b = lesson.PREFIX + "a", lesson.PREFIX + "b"
    modes = {r["mode"]: r for r in out["modes"]}
    assert modes["none"]["at_start"] == {a: "READY", b: "READY"}
    assert modes["none"]["load_status"] == 503 and "not allowed" in modes["none"]["load_message"]
    assert modes["explicit"]["at_start"] == {a: "READY", b: ""}  # --load-model loads only a
    assert modes["explicit"]["load_status"] == 200 and modes["explicit"]["after_load"][b] == "READY"
    assert modes["poll"]["at_start"] == {a: "READY", b: "READY"} and modes["poll"]["load_status"] == 503
    race = out["race"]
    during = [e for e in race["timeline"] if e["t_s"] < race["copied_at_s"]]
    assert any(e["state"] == "UNAVAILABLE" and e["infer_status"] >= 400 for e in during)  # the half copy
    assert race["timeline"][-1]["state"] == "READY" and race["timeline"][-1]["infer_status"] == 200
    assert race["ready_finally"]


@pytest.mark.gpu
def test_gpu_memory_per_model(triton_shared):
    """GPU profile (H200): the LLM's KIND_GPU instance takes the GPU memory vLLM reserves; the others none.
    Needs the GPU to itself (vLLM reserves gpu_memory_utilization of it). About 60–120 s."""
    rows = {r["role"]: r for r in lesson.write_gpu(triton_shared)}
    assert "Paris" in rows["llm"]["answer"]
    assert rows["llm"]["gpu_mib"] > 10_000  # weights + the KV cache vLLM preallocates
    assert all(abs(rows[r]["gpu_mib"]) < 512 for r in ("tokenizer", "classifier", "pipeline"))
    assert rows["pipeline"]["instances"] == 0 and rows["llm"]["instances"] == 1
