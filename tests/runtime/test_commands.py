"""The command lines a page shows are the argv the launchers run; `servelab run` leaves the book alone;
a reader's mistakes get one line that says what to do. None of these starts an engine."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import socket
import subprocess
import sys
import types

import pytest

from servelab.book import commands
from servelab.book.tree import ROOT
from servelab.runtime import process as process_module
from servelab.runtime.process import ModelPathError, PortInUseError

SERVELAB = [sys.executable, "-m", "servelab.cli"]
vllm_engine = importlib.import_module("servelab.runtime.vllm_engine")
triton_module = importlib.import_module("servelab.runtime.triton_server")


class Captured(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """ManagedProcess.start records the argv and environment the launcher would run, and starts nothing."""
    seen = {}

    def start(self):
        seen.update(argv=list(self.argv), env=dict(self.env))
        raise Captured

    monkeypatch.setattr(process_module.ManagedProcess, "start", start)
    return seen


def _free_port() -> int:
    return process_module.free_port()


def _block(markdown: str) -> str:
    lines = [line.strip() for line in markdown.splitlines()]
    start = lines.index("```bash")
    end = lines.index("```", start)
    return "\n".join(markdown.splitlines()[start + 1:end]).strip("\n")


def _as_run(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Expand the page's $HOME/$VIRTUAL_ENV/$PATH as the reader's shell does; split env words off."""
    words = shlex.split(os.path.expandvars(commands.unformat(commands.shell_join(argv))))
    env = {}
    while words and commands._ENV_WORD.match(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


@pytest.mark.parametrize("profile", ["cpu", "gpu"], ids=["profile-cpu", "profile-gpu"])
def test_vllm_page_block_is_the_launchers_argv(profile, captured, bundled_model, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    port = _free_port()
    target = "servelab.runtime.vllm_engine:serve_argv"
    marker = f"<!-- servelab:command {target} {profile} -->"
    rendered = _block(commands.expand(f"text\n{marker}\nmore"))
    argv = vllm_engine.serve_argv(profile)
    # the block is the shell-quoted argv, one option per line
    assert commands.unformat(rendered) == commands.shell_join(argv)
    assert commands.shell_join(argv) == shlex.join(argv).replace("'$HOME", "$HOME").replace(
        "instruct'", "instruct")  # shlex.join, except that $HOME stays expandable
    assert "--host 127.0.0.1 \\\n  --port 8000" in rendered and rendered.splitlines()[0].startswith("HF_HUB_OFFLINE=1")
    # the launcher runs that argv (on another port here), with its own venv's vllm, and that environment
    settings = vllm_engine.display_settings(profile)
    with pytest.raises(Captured):
        with vllm_engine.vllm_server(settings=settings, port=port):
            pass
    env, words = _as_run(vllm_engine.serve_argv(profile, port=port))
    assert captured["argv"] == [*vllm_engine.vllm_command(), *words[1:]]
    assert {k: captured["env"][k] for k in env} == env
    assert words[:2] == ["vllm", "serve"] and words[-4:] == ["--host", "127.0.0.1", "--port", str(port)]


def test_triton_page_block_is_the_launchers_argv(captured, tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    rendered = _block(commands.expand("<!-- servelab:command servelab.runtime.triton_server:serve_argv cpu -->"))
    assert commands.unformat(rendered) == commands.shell_join(triton_module.serve_argv("cpu"))
    assert "--http-port=8100" in rendered and "--grpc-port=8101" in rendered and "--metrics-port=8102" in rendered
    ports = {name: _free_port() for name in ("http", "grpc", "metrics")}
    settings = vllm_engine.display_settings("cpu")
    with pytest.raises(Captured):
        with triton_module.triton_server(tmp_path, settings=settings, ports=ports):
            pass
    env, words = _as_run(triton_module.serve_argv("cpu", str(tmp_path), ports=ports))
    assert captured["argv"] == words
    assert {k: captured["env"][k] for k in env} == env


def test_marker_keeps_indentation_and_quotes():
    text = "=== \"CPU\"\n\n    <!-- servelab:command servelab.runtime.vllm_engine:serve_argv cpu -->\n"
    out = commands.expand(text)
    assert "    ```bash\n    HF_HUB_OFFLINE=1" in out and out.rstrip().endswith("    ```")
    assert commands.shell_join(["a b", "$HOME/x", "it's"]) == "'a b' $HOME/x 'it'\"'\"'s'"
    assert commands.format_command(["X=1", "cmd", "sub", "--flag", "--opt", "v w"]) == \
        "X=1 \\\ncmd sub \\\n  --flag \\\n  --opt 'v w'"


def test_mkdocs_hook_expands_the_marker():
    from servelab.book.mkdocs_hooks import on_page_markdown

    out = on_page_markdown("<!-- servelab:command servelab.runtime.vllm_engine:serve_argv gpu -->",
                           None, {}, None)
    assert "--dtype bfloat16" in out and "<!--" not in out


# --- named errors ---------------------------------------------------------------------------------------
def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVELAB, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_port_taken_is_one_line(settings):
    with socket.socket() as sock:
        sock.bind((settings.host, 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port 127.0.0.1:{port} is already in use"):
            with vllm_engine.vllm_server(port=port):
                pass
        out = _cli("serve", "vllm", "--port", str(port))  # checked before anything starts
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("servelab: error:")]
    assert len(errors) == 1 and f"port 127.0.0.1:{port} is already in use" in errors[0]
    assert "choose another port" in errors[0] and "Traceback" not in out.stderr


def test_wrong_model_path_is_one_line(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelPathError, match="does not exist"):
        with vllm_engine.vllm_server(model=str(missing)):
            pass
    out = _cli("serve", "vllm", "--port", str(_free_port()), env={"SERVELAB_MODEL": str(missing)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"servelab: error: model path {missing} does not exist")
    assert "servelab model prepare" in out.stderr
    debug = _cli("--debug", "serve", "vllm", "--model", str(tmp_path))  # a folder, but not a model
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "has no config.json" in debug.stderr


def test_wrong_lesson_name_suggests_the_closest():
    out = _cli("run", "vllm/lab2_1/l02_basic_infrence")
    assert out.returncode == 2
    assert "did you mean vllm/lab2_1/l02_basic_inference?" in out.stderr
    assert "  triton/lab2_1/l01_triton_setup_and_installation" in out.stderr


# --- servelab run writes a scratch folder -----------------------------------------------------------------
def _git_status_results() -> str:
    return subprocess.run(["git", "status", "--porcelain", "results"], capture_output=True, text=True,
                          cwd=ROOT).stdout


@pytest.fixture
def fake_lesson(monkeypatch, tmp_path):
    """vllm/lab2_1/l02's module replaced by one whose main() writes a result file (no engine)."""
    from servelab import cli
    from servelab.runtime import settings as settings_module
    from servelab.runtime.results import write_results

    rel = "vllm/lab2_1/l02_basic_inference"
    fake = types.ModuleType("fake")
    fake.main = lambda: write_results(rel, "cli_probe", [{"a": 1}], {"a": "A"}) and 0
    monkeypatch.setitem(sys.modules, "servelab.vllm.lab2_1.l02_basic_inference", fake)
    monkeypatch.delenv("SERVELAB_RESULTS_DIR", raising=False)
    monkeypatch.setenv("SERVELAB_CACHE_DIR", str(tmp_path / "cache"))
    settings_module.get_settings.cache_clear()
    yield cli, rel
    settings_module.get_settings.cache_clear()


def test_run_writes_a_scratch_folder_and_leaves_results_alone(fake_lesson, tmp_path, capsys):
    cli, rel = fake_lesson
    before = _git_status_results()
    assert cli.main(["run", rel]) == 0
    written = tmp_path / "cache" / "results" / rel / "cli_probe.json"
    assert written.exists() and json.loads(written.read_text())["rows"] == [{"a": 1}]
    assert not (ROOT / "results" / rel / "cli_probe.json").exists()
    assert _git_status_results() == before
    assert str(tmp_path / "cache" / "results") in capsys.readouterr().err


def test_update_results_writes_the_books_results(fake_lesson, tmp_path, monkeypatch):
    from servelab.runtime import results

    cli, rel = fake_lesson
    monkeypatch.setattr(results, "RESULTS", tmp_path / "book-results")  # stands in for results/
    assert cli.main(["run", rel, "--update-results"]) == 0
    assert (tmp_path / "book-results" / rel / "cli_probe.md").exists()


# --- provenance -----------------------------------------------------------------------------------------
def test_provenance_records_the_load_average():
    from servelab.runtime.provenance import describe, provenance

    prov = provenance()
    assert isinstance(prov["load_1min"], float)
    cpu = {**prov, "gpu": None, "load_1min": 0.42}
    assert "1 分鐘負載 0.42" in describe(cpu)
    gpu = {**prov, "gpu": {"name": "H200", "driver": "580", "memory": "x", "count": 1}, "device": "H200 ×1"}
    assert "負載" not in describe(gpu)



def test_log_cause_picks_the_root_cause_not_warnings_or_noise(tmp_path):
    log = tmp_path / "server.log"
    log.write_text(
        "(APIServer pid=1) WARNING [system_utils.py:255] … `OSError: [Errno 24] Too many open files`\n"
        "Traceback (most recent call last):\n"
        "ValueError: Unrecognized model type no-such-architecture\n"
        "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}\n"
        "nanobind: leaked 4 instances!\n")
    assert process_module.log_cause(log) == "ValueError: Unrecognized model type no-such-architecture"
    log.write_text("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): "
                   "address already in use\nRuntimeError: x\n")
    assert "address already in use" in process_module.log_cause(log)
