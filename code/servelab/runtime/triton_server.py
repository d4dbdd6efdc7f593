"""Triton Inference Server 2.51, the build that ships inside the ``nvidia-pytriton`` wheel.

The book installs that wheel with ``--no-deps``: we use its ``tritonserver`` binary and its Python
backend, not PyTriton's own Python API. What the server needs here, set up by :func:`triton_server`:

* a backends folder holding the Python backend and the stub built for the running Python (3.X);
* ``LD_LIBRARY_PATH`` with this interpreter's ``libpython`` folder and ``nvidia_pytriton.libs``;
* the stub takes its Python environment from the ``python3`` first on ``PATH``: we put a small venv
  first, holding **numpy<2** (numpy 2 corrupts tensors in this stub build) and seeing this
  environment's packages (torch, vLLM) through a ``.pth`` file;
* a UTF-8 locale, and every port bound to 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from servelab.runtime.process import (
    ManagedProcess, ServerStartError, ensure_port_free, for_display, free_port, log_tail,
)
from servelab.runtime.settings import Settings, get_settings

TRITON_VERSION = "2.51.0"
# numpy 2 corrupts tensors in this stub build; scipy must then be one built for numpy 1.x (a scipy made
# for numpy 2, as GPU images ship, fails on import with "module 'numpy' has no attribute 'long'").
BACKEND_REQUIREMENTS = ("numpy==1.26.4", "scipy==1.14.1")


class TritonSetupError(RuntimeError):
    """Triton's files or its Python-backend environment are missing."""


def triton_home() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonSetupError(
            "Triton is not installed: pip install --no-deps nvidia-pytriton==0.7.0 (make setup does it)")
    home = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise TritonSetupError(f"no tritonserver binary under {home}")
    return home


def _py_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def backends_path(settings: Settings) -> Path:
    return settings.cache_dir / "triton" / f"backends-py{_py_version()}"


def backend_env_path(settings: Settings) -> Path:
    return settings.cache_dir / "triton" / f"pyenv-py{_py_version()}"


def backends_dir(settings: Settings | None = None) -> Path:
    """``<cache>/triton/backends/python`` with the backend, its utils and the stub for this Python."""
    settings = settings or get_settings()
    home = triton_home()
    version = _py_version()
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonSetupError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    target = backends_path(settings)
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in [*sorted(p for p in (home / "backends" / "python").iterdir() if p.is_file()), stub]:
        dest = python / source.name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            shutil.copy2(source, dest)
    return target


def stub_env(env: Path, requirements: Sequence[str], parents: Sequence[str] = ()) -> Path:
    """A venv at ``env`` for Triton's Python stub: ``requirements`` installed into its site-packages
    (``pip --target``, no dependencies), then ``parents`` (other site-packages folders) visible after
    them through a ``.pth`` file; without ``parents`` the venv sees only what was installed. A venv has
    ``bin/activate``, which ``EXECUTION_ENV_PATH`` needs. Made once and reused while the requirements
    stay the same. Safe from several threads and processes at once (servers started in parallel): the
    check and the writes happen under a file lock, and the marker and ``.pth`` are replaced atomically."""
    import fcntl

    site = env / "lib" / f"python{_py_version()}" / "site-packages"
    marker = site / "servelab-stub-env.json"
    requirements, parents = list(requirements), list(parents)
    env.parent.mkdir(parents=True, exist_ok=True)
    with _STUB_ENV_LOCK, open(env.parent / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes; _STUB_ENV_LOCK: other threads of this one
        recorded = json.loads(marker.read_text()) if marker.exists() else {}
        if recorded.get("requirements") != requirements:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(env)], check=True)
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                 "--target", str(site), *requirements], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                raise TritonSetupError(f"cannot install {' '.join(requirements)} for Triton's Python stub: {tail}")
            recorded = {"requirements": requirements}
        if recorded.get("parents") != parents:
            pth = site / "servelab-parent.pth"
            if parents:
                _write_atomic(pth, "".join(f"{p}\n" for p in parents))
            else:
                pth.unlink(missing_ok=True)
            _write_atomic(marker, json.dumps({**recorded, "parents": parents}))
    return env


def backend_python_env(settings: Settings | None = None) -> Path:
    """The venv whose ``python3`` the stub runs (first on the server's ``PATH``): numpy<2 and a matching
    scipy first, then this environment's packages, and PYTHONPATH's (how the GPU runner installs vLLM)."""
    settings = settings or get_settings()
    parents = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
               *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    parents = list(dict.fromkeys(str(Path(p).resolve()) for p in parents))
    return stub_env(backend_env_path(settings), BACKEND_REQUIREMENTS, parents)


_STUB_ENV_LOCK = threading.Lock()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def server_env(settings: Settings | None = None, inherit: dict[str, str] | None = None,
               pyenv: Path | None = None) -> dict[str, str]:
    """The environment ``tritonserver`` needs; ``inherit`` (default: ``os.environ``) gives PATH and
    LD_LIBRARY_PATH to extend, ``pyenv`` the backend venv (default: made by :func:`backend_python_env`)."""
    home = triton_home()
    inherit = os.environ if inherit is None else inherit
    libs = [sysconfig.get_config_var("LIBDIR"), str(home.parents[1] / "nvidia_pytriton.libs")]
    if inherit.get("LD_LIBRARY_PATH"):
        libs.append(inherit["LD_LIBRARY_PATH"])
    pyenv = pyenv or backend_python_env(settings)
    return {
        "LD_LIBRARY_PATH": ":".join(libs),
        "PATH": f"{pyenv / 'bin'}:{inherit.get('PATH', '/usr/bin:/bin')}",
        "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1",
    }


@dataclass
class TritonEndpoint:
    """Where a Triton server answers. URLs are ``host:port``, as ``tritonclient`` takes them."""

    http: str
    grpc: str
    metrics: str
    repository: Path
    process: ManagedProcess | None = None

    def http_client(self, **kwargs):
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.http, **kwargs)

    def grpc_client(self, **kwargs):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc, **kwargs)

    def metrics_text(self) -> str:
        return httpx.get(f"http://{self.metrics}/metrics", timeout=10).text

    def add_model(self, model_dir: Path, name: str | None = None, load: bool = True) -> str:
        """Copy a model folder into the repository and (re)load it (``--model-control-mode=explicit``)."""
        name = name or model_dir.name
        dest = self.repository / name
        if dest.resolve() != model_dir.resolve():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(model_dir, dest)
        if load:
            self.http_client().load_model(name)
        return name

    def to_env(self) -> str:
        return json.dumps({"http": self.http, "grpc": self.grpc, "metrics": self.metrics,
                           "repository": str(self.repository)})

    @classmethod
    def from_env(cls, value: str) -> TritonEndpoint:
        data = json.loads(value)
        return cls(data["http"], data["grpc"], data["metrics"], Path(data["repository"]))


TRITON_PORTS = {"http": 8100, "grpc": 8101, "metrics": 8102}  # `servelab serve triton`; every page's defaults


def serve_spec(settings: Settings, repositories: Sequence[Path], ports: dict[str, int],
               control_mode: str = "explicit", extra_args: Sequence[str] = (),
               backends: Path | None = None) -> list[str]:
    """The ``tritonserver`` argv of the book's server: one source for :func:`triton_server` (which runs
    it) and :func:`serve_argv` (which the pages show)."""
    host = settings.host
    return [str(triton_home() / "bin" / "tritonserver"),
            *[f"--model-repository={Path(r).resolve()}" for r in repositories],
            f"--backend-directory={backends or backends_dir(settings)}",
            f"--model-control-mode={control_mode}",
            f"--http-address={host}", f"--http-port={ports['http']}",
            f"--grpc-address={host}", f"--grpc-port={ports['grpc']}",
            f"--metrics-address={host}", f"--metrics-port={ports['metrics']}",
            "--allow-metrics=true", "--exit-timeout-secs=10", *extra_args]


def serve_argv(profile: str = "cpu", repository: str = "$HOME/triton-repo", *extra_args: str,
               ports: dict[str, int] | None = None) -> list[str]:
    """``tritonserver`` exactly as :func:`triton_server` runs it (the same binary and Python backend for
    both profiles), with the environment it sets as ``NAME=value`` words in front; paths shown with
    ``$HOME`` and ``$VIRTUAL_ENV``, the inherited PATH as ``$PATH``."""
    from servelab.runtime.vllm_engine import display_settings

    settings = display_settings(profile)
    env = server_env(settings, inherit={"PATH": "$PATH"}, pyenv=backend_env_path(settings))
    argv = serve_spec(settings, [Path("/REPO")], ports or dict(TRITON_PORTS), extra_args=extra_args,
                      backends=backends_path(settings))
    argv = [a.replace("/REPO", repository) for a in argv]
    return [*(f"{k}={for_display(v)}" for k, v in sorted(env.items())), *(for_display(a) for a in argv)]


# --8<-- [start:triton_server]
@contextmanager
def triton_server(*repositories: Path, settings: Settings | None = None,
                  control_mode: str = "explicit", extra_args: Sequence[str] = (),
                  log_path: Path | None = None, ports: dict[str, int] | None = None) -> Iterator[TritonEndpoint]:
    """``tritonserver`` on 127.0.0.1 with HTTP, gRPC and metrics ports (``ports``, or free ones),
    ready on ``/v2/health/ready``."""
    settings = settings or get_settings()
    if not repositories:
        raise TritonSetupError("triton_server needs at least one model repository")
    for repo in repositories:
        if not Path(repo).is_dir():
            raise TritonSetupError(f"model repository {repo} does not exist")
    host = settings.host  # (2)!
    ports = ports or {name: free_port(host) for name in ("http", "grpc", "metrics")}
    for port in ports.values():
        ensure_port_free(host, port)
    argv = serve_spec(settings, repositories, ports, control_mode, extra_args)  # (1)!
    log_path = log_path or settings.cache_dir / "logs" / f"triton-{ports['http']}.log"
    proc = ManagedProcess("tritonserver", argv, log_path, env=server_env(settings))
    proc.start()
    try:
        proc.wait_ready(f"http://{host}:{ports['http']}/v2/health/ready", settings.startup_timeout_s)  # (3)!
        yield TritonEndpoint(f"{host}:{ports['http']}", f"{host}:{ports['grpc']}",
                             f"{host}:{ports['metrics']}", Path(repositories[0]).resolve(), proc)
    finally:
        proc.stop()
# --8<-- [end:triton_server]


@contextmanager
def triton_endpoint(repository: Path, settings: Settings | None = None) -> Iterator[TritonEndpoint]:
    """The running Triton that ``servelab serve triton`` or the test session exported
    (``SERVELAB_TRITON_ENDPOINT``, else ``SERVELAB_TRITON_URL``/``_GRPC``/``_METRICS_URL``), or a new one
    on ``repository``. With the URL variables only, models are copied into ``repository`` (pass the
    folder the server serves)."""
    settings = settings or get_settings()
    if settings.triton_endpoint:
        yield TritonEndpoint.from_env(settings.triton_endpoint)
    elif settings.triton_url:
        host = settings.triton_url.split("://", 1)[-1].rstrip("/")
        metrics = (settings.triton_metrics_url or "").split("://", 1)[-1].rstrip("/")
        yield TritonEndpoint(host, settings.triton_grpc or "", metrics, Path(repository).resolve())
    else:
        with triton_server(repository, settings=settings) as endpoint:
            yield endpoint


def wait_model_ready(endpoint: TritonEndpoint, name: str, timeout_s: float = 300.0) -> None:
    client = endpoint.http_client()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.is_model_ready(name):
            return
        time.sleep(0.5)
    log = endpoint.process.log_path if endpoint.process else None
    raise ServerStartError(f"model {name} not ready after {timeout_s:.0f} s" + (f" — read {log}" if log else ""),
                           log_tail(log) if log else "")
