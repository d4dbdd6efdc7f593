"""vLLM, started one way for the whole book: offline ``LLM`` and ``vllm serve``, for the active profile.

* :func:`engine_kwargs` — the engine arguments of the profile (CPU: float32, eager, small KV cache;
  GPU: bfloat16). Lessons add their own on top.
* :func:`offline_llm` — a ``vllm.LLM`` in this process (a context manager that frees it).
* :func:`vllm_server` — ``vllm serve`` as a child process on 127.0.0.1 with a free port.
* :func:`vllm_endpoint` — the server the test session already runs, or a new one.
"""

from __future__ import annotations

import gc
import importlib.metadata
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from servelab.runtime.model import SERVED_NAME, prepare_model
from servelab.runtime.process import ManagedProcess, ensure_port_free, free_port
from servelab.runtime.settings import Settings, get_settings

# Llama-3.1-8B's shapes: with load_format="dummy" vLLM fills random weights, so the GPU profile measures
# realistic memory traffic and kernels without downloading 16 GB.
LLAMA_8B_SHAPE = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}


def engine_env(settings: Settings | None = None) -> dict[str, str]:
    """Environment the engine reads at import time."""
    settings = settings or get_settings()
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if settings.profile == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
    else:
        env["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"  # CUDA cannot be re-initialized in a forked child
    return env


def apply_engine_env(settings: Settings | None = None) -> None:
    for key, value in engine_env(settings).items():
        os.environ.setdefault(key, value)


def ensure_vllm_metadata() -> None:
    """vllm-cpu installs as the distribution ``vllm-cpu``; the ``vllm`` command asks for ``vllm``.

    Writing a ``vllm-<version>+cpu.dist-info`` alias makes ``importlib.metadata.version("vllm")`` work.
    The ``+cpu`` suffix matters: vLLM's platform detection reads it (without it, vllm-cpu 0.32 stops with
    "RuntimeError: Failed to infer device type"; Lab 2.1 lesson 01 reproduces this in a test).
    """
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        version = importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return  # not the CPU build: nothing to alias
    local = version if "+" in version else f"{version}+cpu"
    alias = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{local}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {local}\n")
    (alias / "INSTALLER").write_text("servelab\n")
    importlib.metadata.distributions.cache_clear() if hasattr(importlib.metadata.distributions, "cache_clear") else None


def dummy_llama_8b(settings: Settings | None = None) -> Path:
    """A model folder with Llama-3.1-8B's config and the bundled tokenizer, for ``load_format="dummy"``."""
    settings = settings or get_settings()
    source = prepare_model(settings, log=lambda _: None).path
    target = settings.cache_dir / "models" / "llama-8b-shape-dummy"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(LLAMA_8B_SHAPE, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    return target


# --8<-- [start:engine_kwargs]
def engine_kwargs(settings: Settings | None = None, model: str | Path | None = None) -> dict:
    """The engine arguments of the active profile; lessons override what they teach."""
    settings = settings or get_settings()
    kwargs = {
        "model": str(model or prepare_model(settings, log=lambda _: None).path),
        "served_model_name": SERVED_NAME,
        "dtype": settings.dtype,  # (1)!
        "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,  # (2)!
        "seed": 0,
    }
    if settings.profile == "gpu":
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization  # (3)!
    return kwargs
# --8<-- [end:engine_kwargs]


def _cli_args(kwargs: dict) -> list[str]:
    args = [kwargs.pop("model")]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        else:
            args += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


@contextmanager
def cpu_threads(count: int | None = None, settings: Settings | None = None) -> Iterator[int]:
    """Run torch ops with ``count`` threads (CPU profile): as many as vLLM's CPU worker binds.

    vLLM's CPU worker reserves one core for the scheduler and binds its OpenMP threads to the rest,
    and then replaces ``torch.set_num_threads`` with a function that only warns. With the engine in
    this process, more torch threads than bound cores spin against each other (a 10x slowdown on
    2 cores); ``torch._C``'s setter is the original one.
    """
    import torch

    if (settings or get_settings()).profile != "cpu":
        yield torch.get_num_threads()
        return
    count = count or max(1, len(os.sched_getaffinity(0)) - 1)
    before = torch.get_num_threads()
    torch._C.set_num_threads(count)
    try:
        yield count
    finally:
        torch._C.set_num_threads(before)


@contextmanager
def offline_llm(settings: Settings | None = None, **overrides) -> Iterator:
    """A ``vllm.LLM`` for the profile, freed on exit."""
    settings = settings or get_settings()
    apply_engine_env(settings)
    if settings.profile == "cpu":
        # In-process engine core on CPU: quicker start and teardown. On a GPU the engine core keeps its
        # own process, so that shutting it down really returns the GPU memory.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    llm = LLM(**{**engine_kwargs(settings), **overrides})
    try:
        with cpu_threads(settings=settings):
            yield llm
    finally:
        core = getattr(llm.llm_engine, "engine_core", None)
        if hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()
        if settings.profile == "gpu":
            import torch

            torch.cuda.empty_cache()


@dataclass
class VLLMEndpoint:
    """Where an OpenAI-compatible vLLM server answers."""

    base_url: str  # http://127.0.0.1:PORT
    model: str = SERVED_NAME
    api_key: str = "EMPTY"
    process: ManagedProcess | None = None

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.api_url, api_key=self.api_key, **kwargs)

    def async_client(self, **kwargs):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=self.api_url, api_key=self.api_key, **kwargs)


def vllm_command() -> list[str]:
    """The ``vllm`` command of this interpreter's environment (or its entry point, where no script exists)."""
    ensure_vllm_metadata()
    beside = Path(sys.executable).parent / "vllm"
    if beside.exists():
        return [str(beside)]
    if shutil.which("vllm"):
        return [shutil.which("vllm")]
    # vLLM installed with --target (no console script): call the same entry point the script calls
    return [sys.executable, "-c", "import sys; from vllm.entrypoints.cli.main import main; sys.exit(main())"]


# --8<-- [start:vllm_server]
@contextmanager
def vllm_server(*extra_args: str, settings: Settings | None = None, port: int | None = None,
                api_key: str | None = None, env: dict[str, str] | None = None,
                log_path: Path | None = None, **overrides) -> Iterator[VLLMEndpoint]:
    """``vllm serve`` on 127.0.0.1, ready on ``/health``, stopped (SIGTERM) on exit."""
    settings = settings or get_settings()
    port = port or free_port(settings.host)
    ensure_port_free(settings.host, port)  # (1)!
    kwargs = {**engine_kwargs(settings), **overrides}
    argv = [*vllm_command(), "serve", *_cli_args(kwargs), "--host", settings.host, "--port", str(port),
            *extra_args]
    if api_key:
        argv += ["--api-key", api_key]  # (2)!
    log_path = log_path or settings.cache_dir / "logs" / f"vllm-{port}.log"
    proc = ManagedProcess("vllm serve", argv, log_path, env={**engine_env(settings), **(env or {})})
    proc.start()
    try:
        base = f"http://{settings.host}:{port}"
        proc.wait_ready(f"{base}/health", settings.startup_timeout_s)  # (3)!
        yield VLLMEndpoint(base, kwargs["served_model_name"], api_key or "EMPTY", proc)
    finally:
        proc.stop()  # (4)!
# --8<-- [end:vllm_server]


@contextmanager
def vllm_endpoint(settings: Settings | None = None) -> Iterator[VLLMEndpoint]:
    """The book's shared server when ``SERVELAB_VLLM_URL`` names one, else a server of our own."""
    settings = settings or get_settings()
    if settings.vllm_url:
        yield VLLMEndpoint(settings.vllm_url.rstrip("/"))
    else:
        with vllm_server(settings=settings) as endpoint:
            yield endpoint
