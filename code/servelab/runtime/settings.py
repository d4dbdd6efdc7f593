"""One settings object for the whole book: which profile runs, where the cache lives, how engines start.

Everything is read from ``SERVELAB_*`` environment variables, so a lesson never hard-codes the profile::

    SERVELAB_PROFILE=gpu pytest -m gpu      # the GPU runner
    SERVELAB_CACHE_DIR=/data/servelab ...   # another cache
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "servelab"


# --8<-- [start:settings]
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVELAB_")

    profile: Literal["cpu", "gpu"] = "cpu"  # (1)!
    cache_dir: Path = Field(default_factory=_default_cache)
    host: str = "127.0.0.1"  # (2)!
    kv_cache_gib: int = 1  # CPU only: kv_cache_memory_bytes= / --kv-cache-memory-bytes, in GiB
    gpu_memory_utilization: float = 0.85  # GPU only
    max_model_len: int = 2048
    enforce_eager: bool = True  # (3)!
    startup_timeout_s: float = 600.0
    model: str | None = None  # SERVELAB_MODEL: a model folder to serve instead of the bundled one
    # Servers someone already started: `servelab serve vllm|triton` prints these exports, and the test
    # session sets them for notebooks and code blocks.
    vllm_url: str | None = None  # e.g. http://127.0.0.1:8000
    api_key: str | None = None  # only with `servelab serve vllm --api-key`
    triton_url: str | None = None  # e.g. http://127.0.0.1:8100
    triton_grpc: str | None = None  # e.g. 127.0.0.1:8101
    triton_metrics_url: str | None = None  # e.g. http://127.0.0.1:8102
    triton_endpoint: str | None = None  # JSON for Python code: {"http", "grpc", "metrics", "repository"}

    @property
    def dtype(self) -> str:
        return "float32" if self.profile == "cpu" else "bfloat16"  # (4)!
# --8<-- [end:settings]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
