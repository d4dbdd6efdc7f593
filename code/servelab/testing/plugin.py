"""The book's pytest plugin (loaded with ``-p servelab.testing.plugin``): engines start once per session.

* ``vllm_shared``   — ``vllm serve`` with the book's defaults (the bundled model, served as ``smollm2``)
* ``llm_shared``    — an offline ``vllm.LLM`` in this process
* ``triton_shared`` — ``tritonserver`` in explicit model-control mode on a session repository;
                      lessons add their models with ``triton_shared.add_model(folder)``
* ``triton_scratch`` — a second Triton for loads that are meant to fail (they leave a server not ready)

Starting ``vllm_shared``/``triton_shared`` exports the variables ``servelab serve vllm|triton`` prints for a
reader — ``SERVELAB_VLLM_URL``; ``SERVELAB_TRITON_URL``, ``SERVELAB_TRITON_GRPC``,
``SERVELAB_TRITON_METRICS_URL`` (and ``SERVELAB_TRITON_ENDPOINT``, JSON for Python code) — so notebooks and
the pages' shell blocks run in this session reach the same engines. The session's servers use free ports
(a reader's ``servelab serve`` may hold the documented ones). If those variables are already set (servers
started with ``servelab serve``), the fixtures use those servers instead of starting new ones. GPU tests carry ``@pytest.mark.gpu``: on CPU they are reported as skipped with the reason.

Early start: once the tests are collected, the server engines that some collected test will ask for
(``vllm_shared``, ``triton_shared``; a notebook counts through the engines its code talks to) begin to
start in a background thread, so their ~30 s of start-up overlaps the first tests (the site build and the
browser test use one core of two). The fixture then only waits for the start to finish. The offline
``llm_shared`` is not started early: a ``vllm.LLM`` belongs to the thread that uses it.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from servelab.runtime import settings as settings_module
from servelab.runtime.process import InBackground


def _activate_this_environment() -> None:
    """Shell code blocks run as a reader runs them after ``source .venv/bin/activate``: ``python``,
    ``servelab`` and ``vllm`` are this environment's, never whatever else comes first on PATH."""
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + (os.pathsep + path if path else "")
    if sys.prefix != sys.base_prefix:  # a virtual environment (on the GPU runner it is the system Python)
        os.environ.setdefault("VIRTUAL_ENV", sys.prefix)


def pytest_configure(config):
    """CPU test runs write their figures into a scratch copy of ``results/``, never into the book's own.

    The GPU profile writes into ``results/`` itself: that is how the GPU runner's figures reach the book.
    """
    _activate_this_environment()
    if os.environ.get("SERVELAB_PROFILE") == "gpu" or os.environ.get("SERVELAB_RESULTS_DIR"):
        return
    import shutil
    import tempfile

    from servelab.book.tree import ROOT

    scratch = tempfile.mkdtemp(prefix="servelab-results-")
    if (ROOT / "results").is_dir():
        shutil.copytree(ROOT / "results", scratch, dirs_exist_ok=True)
    os.environ["SERVELAB_RESULTS_DIR"] = scratch
    config.add_cleanup(lambda: shutil.rmtree(scratch, ignore_errors=True))


_EARLY: dict[str, InBackground] = {}


def _engines_wanted(items) -> set[str]:
    from servelab.book.notebooks import engines_used

    wanted: set[str] = set()
    for item in items:
        if any(m.name == "skip" for m in item.iter_markers()):
            continue
        wanted |= set(getattr(item, "fixturenames", ()))
        lesson = getattr(getattr(item, "callspec", None), "params", {}).get("lesson")
        notebook = getattr(lesson, "notebook", None)
        if notebook is not None and notebook.exists():
            wanted |= set(engines_used(notebook))
    return wanted


def _start_vllm():
    from servelab.runtime import prepare_model, vllm_server

    prepare_model(log=lambda _: None)
    return vllm_server()


def _start_triton():
    import shutil
    import tempfile
    from contextlib import contextmanager

    from servelab.runtime import triton_server

    @contextmanager
    def server():
        repository = Path(tempfile.mkdtemp(prefix="servelab-triton-repository-"))
        try:
            with triton_server(repository) as endpoint:
                yield endpoint
        finally:
            shutil.rmtree(repository, ignore_errors=True)

    return server()


def pytest_collection_finish(session):
    if os.environ.get("SERVELAB_NO_EARLY_START") or session.config.option.collectonly:
        return
    wanted = _engines_wanted(session.items)
    if "vllm_shared" in wanted and not os.environ.get("SERVELAB_VLLM_URL"):
        _EARLY["vllm_shared"] = InBackground(_start_vllm, "vllm_shared")
    if "triton_shared" in wanted and not os.environ.get("SERVELAB_TRITON_ENDPOINT"):
        _EARLY["triton_shared"] = InBackground(_start_triton, "triton_shared")


def pytest_unconfigure(config):
    for early in _EARLY.values():  # started early but never asked for (e.g. the run stopped at -x)
        early.close()
    _EARLY.clear()


def _gpu_available() -> tuple[bool, str]:
    if os.environ.get("SERVELAB_PROFILE") != "gpu":
        return False, "GPU test: set SERVELAB_PROFILE=gpu on a machine with an NVIDIA GPU (make test-gpu)"
    try:
        import torch
    except ImportError:
        return False, "GPU test: torch is not installed"
    if not torch.cuda.is_available():
        return False, "GPU test: SERVELAB_PROFILE=gpu but torch sees no CUDA device"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ok, reason = _gpu_available()
    for item in items:
        if type(item).__name__ == "TestBlock" and any(item.iter_markers("usefixtures")):
            _give_fixtures_to_code_blocks(item)
        if "gpu" in item.keywords and not ok:
            item.add_marker(pytest.mark.skip(reason=reason))


def _give_fixtures_to_code_blocks(item) -> None:
    """Give a pytest-codeblocks item the fixtures its ``<!--pytest.mark.usefixtures(...)-->`` asks for.

    Code blocks are plain ``pytest.Item``s, which pytest does not fill with fixtures; do what pytest does
    for doctests, so a curl block on a page really starts (or reuses) the engine it talks to.
    """
    from _pytest.fixtures import TopRequest

    info = item.session._fixturemanager.getfixtureinfo(node=item, func=None, cls=None)
    item._fixtureinfo = info
    item.fixturenames = info.names_closure
    item.funcargs = {}
    item._request = TopRequest(item, _ispytest=True)
    item.setup = item._request._fillfixtures  # called by pytest's SetupState once the item is active


def _export(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
    settings_module.get_settings.cache_clear()


@pytest.fixture(scope="session")
def settings():
    return settings_module.get_settings()


@pytest.fixture(scope="session")
def bundled_model(settings):
    from servelab.runtime import prepare_model

    return prepare_model(settings)


@contextmanager
def started_with_the_file(request, fixture: str, factory, name: str):
    """For a module-scoped autouse fixture: start a test file's own server (``factory``) in the background with
    the file's first test, when a selected test of the file asks for ``fixture``; stop it with the file.
    The fixture ``fixture`` then waits with ``.result()``. Yields the :class:`InBackground`, or None."""
    items = [item for item in request.session.items
             if getattr(item, "module", None) is request.module and not item.get_closest_marker("skip")]
    if not any(fixture in getattr(item, "fixturenames", ()) for item in items):
        yield None
        return
    starting = InBackground(factory, name)
    try:
        yield starting
    finally:
        starting.close()


@contextmanager
def _early_or(early: InBackground | None, factory):
    """The engine an early start began (waiting for it), else one started now."""
    if early is None:
        with factory() as value:
            yield value
        return
    try:
        yield early.result()
    finally:
        early.close()


@pytest.fixture(scope="session")
def vllm_shared(bundled_model):
    from servelab.runtime import VLLMEndpoint

    if os.environ.get("SERVELAB_VLLM_URL"):
        yield VLLMEndpoint(os.environ["SERVELAB_VLLM_URL"].rstrip("/"),
                           api_key=os.environ.get("SERVELAB_API_KEY") or "EMPTY")
        return
    early = _EARLY.pop("vllm_shared", None)
    with _early_or(early, _start_vllm) as endpoint:
        _export("SERVELAB_VLLM_URL", endpoint.base_url)
        yield endpoint
        _export("SERVELAB_VLLM_URL", None)


@pytest.fixture(scope="session")
def llm_shared(bundled_model):
    from servelab.runtime import offline_llm

    with offline_llm() as llm:
        yield llm


TRITON_VARIABLES = ("SERVELAB_TRITON_URL", "SERVELAB_TRITON_GRPC", "SERVELAB_TRITON_METRICS_URL",
                    "SERVELAB_TRITON_ENDPOINT")


def triton_exports(endpoint) -> dict[str, str]:
    """The variables ``servelab serve triton`` prints, for ``endpoint``."""
    return {"SERVELAB_TRITON_URL": f"http://{endpoint.http}", "SERVELAB_TRITON_GRPC": endpoint.grpc,
            "SERVELAB_TRITON_METRICS_URL": f"http://{endpoint.metrics}",
            "SERVELAB_TRITON_ENDPOINT": endpoint.to_env()}


@pytest.fixture(scope="session")
def triton_shared():
    from servelab.runtime import TritonEndpoint

    if os.environ.get("SERVELAB_TRITON_ENDPOINT"):
        endpoint = TritonEndpoint.from_env(os.environ["SERVELAB_TRITON_ENDPOINT"])
        for key, value in triton_exports(endpoint).items():
            os.environ.setdefault(key, value)
        yield endpoint
        return
    early = _EARLY.pop("triton_shared", None)
    with _early_or(early, _start_triton) as endpoint:
        for key, value in triton_exports(endpoint).items():
            _export(key, value)
        yield endpoint
        for key in TRITON_VARIABLES:
            _export(key, None)


@pytest.fixture(scope="session")
def triton_scratch(tmp_path_factory):
    """A second session Triton for loads that are *meant* to fail (broken repositories, missing backends).

    A failed load leaves Triton not ready (``/v2/health/ready`` → 400) for the rest of its life: the server
    keeps the failed model in its lifecycle even after its folder is removed and ``unload_model`` is called.
    Failure demos therefore never touch ``triton_shared``.
    """
    from servelab.runtime import triton_server

    with triton_server(tmp_path_factory.mktemp("triton-scratch")) as endpoint:
        yield endpoint


@pytest.fixture
def clean_env(monkeypatch):
    """Run a test without the shared endpoints in the environment (it starts what it needs)."""
    for key in ("SERVELAB_VLLM_URL", "SERVELAB_API_KEY", *TRITON_VARIABLES):
        monkeypatch.delenv(key, raising=False)
    settings_module.get_settings.cache_clear()
    yield
    settings_module.get_settings.cache_clear()


# --- the record of GPU runs -------------------------------------------------------------------------
# On the GPU profile, the outcome of every gpu-marked test is merged into results/gpu_runs.json with the
# run's provenance, so the status page can show which lessons were verified on a GPU, and when.
_GPU_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if os.environ.get("SERVELAB_PROFILE") != "gpu" or "gpu" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":
        if report.when == "call" or report.nodeid not in _GPU_OUTCOMES:
            _GPU_OUTCOMES[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    if not _GPU_OUTCOMES:
        return
    import json

    from servelab.book.tree import ROOT
    from servelab.runtime.provenance import provenance

    path = ROOT / "results" / "gpu_runs.json"
    record = json.loads(path.read_text()) if path.exists() else {"tests": {}}
    prov = provenance()
    for nodeid, outcome in _GPU_OUTCOMES.items():
        record["tests"][nodeid] = {"outcome": outcome, "date": prov["date"], "device": prov["device"],
                                   "driver": (prov.get("gpu") or {}).get("driver"),
                                   "versions": prov["versions"]}
    record["tests"] = dict(sorted(record["tests"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
