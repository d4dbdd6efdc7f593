"""The publishing workflows are valid GitHub Actions workflows and do what the README says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from servelab.book.tree import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _lint(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, paths)], capture_output=True, text=True)


def test_workflows_pass_the_linter():
    assert WORKFLOWS
    result = _lint(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("name: broken\non: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    assert _lint([broken]).returncode != 0


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_ci_runs_make_test_and_deploys_the_site_on_main():
    ci = _load("ci.yml")
    runs = [step.get("run", "") for step in ci["jobs"]["test"]["steps"]]
    assert any(run.strip() == "make test" for run in runs)
    deploy = ci["jobs"]["deploy"]
    assert deploy["needs"] == "test" and "refs/heads/main" in deploy["if"]
    uses = [step.get("uses", "") for step in deploy["steps"]]
    assert any(u.startswith("actions/deploy-pages") for u in uses)
    assert any("mkdocs build --strict" in step.get("run", "") for step in deploy["steps"])


def test_gpu_job_runs_the_gpu_marker_on_a_self_hosted_gpu_runner():
    gpu = _load("gpu.yml")["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(gpu["runs-on"])
    runs = [step.get("run", "") for step in gpu["steps"]]
    # the one GPU recipe (README, contributor guide, make test-gpu): build the pinned wheels, run the suite
    assert any(".ci/gpu-wheels /tmp/gw" in run for run in runs)
    assert any("GPU_WHEELS=/tmp/gw .ci/gpu-suite" in run for run in runs)
    suite = (ROOT / ".ci" / "gpu-suite").read_text()
    assert "SERVELAB_PROFILE=gpu" in suite and "-m gpu" in suite
    for doc in ("README.md", "docs/contributing.md", "Makefile"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert ".ci/gpu-wheels /tmp/gw" in text and "GPU_WHEELS=/tmp/gw .ci/gpu-suite" in text, doc


def test_ci_script_calls_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "make test" in script
    assert "make test" in (ROOT / "README.md").read_text(encoding="utf-8")
