"""Write Triton model folders: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/<files>``."""

from __future__ import annotations

import json
from pathlib import Path

from servelab.runtime.settings import Settings, get_settings

TEMPLATES = Path(__file__).with_name("triton_models")


def write_model(repository: Path, name: str, config: str, files: dict[str, str | bytes] | None = None,
                version: int = 1) -> Path:
    """Create (or replace the files of) one model folder and return it."""
    folder = Path(repository) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config.strip() + "\n")
    for filename, content in (files or {}).items():
        target = folder / str(version) / filename
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return folder


def write_vllm_model(repository: Path, name: str = "vllm_chat", settings: Settings | None = None,
                     max_batch_size: int = 0, **overrides) -> Path:
    """A Python-backend model hosting vLLM with the profile's engine arguments."""
    from servelab.runtime.vllm_engine import engine_env, engine_kwargs

    settings = settings or get_settings()
    engine_args = {**engine_kwargs(settings), **overrides, "env": engine_env(settings)}
    engine_args.pop("served_model_name", None)
    config = f'''
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "prompt" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [ {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: {"KIND_GPU" if settings.profile == "gpu" else "KIND_CPU"} count: 1 }} ]
parameters {{ key: "engine_args" value: {{ string_value: {json.dumps(json.dumps(engine_args))} }} }}
'''
    return write_model(repository, name, config, {"model.py": (TEMPLATES / "vllm_model.py").read_text()})
