"""``servelab`` command line.

* ``servelab model prepare|info`` — the bundled model;
* ``servelab serve vllm [--api-key KEY]`` / ``servelab serve triton [--repo DIR]`` — the book's servers on
  fixed ports of 127.0.0.1 (vLLM 8000; Triton HTTP 8100, gRPC 8101, metrics 8102), until Ctrl-C, with the
  ``export`` lines a reader's shell needs;
* ``servelab run LESSON [--update-results]`` — a lesson's ``main()``; its figures go to a scratch folder
  unless ``--update-results`` says to rewrite the book's ``results/``.

Errors a reader can fix are one line (``servelab: error: …``); ``--debug`` or ``SERVELAB_DEBUG=1`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import shlex
import signal
import sys
import time
import traceback

from servelab.runtime.model import ModelPrepareError, model_dir, model_info, prepare_model
from servelab.runtime.process import ServerStartError
from servelab.runtime.settings import get_settings


def _say(message: str) -> None:
    print(f"[servelab] {message}", file=sys.stderr, flush=True)


def _model(args: argparse.Namespace) -> int:
    if args.action == "quantize":  # llm-compressor checkpoints of vllm/lab2_2/l03 (runs in .venv-quant)
        from servelab.vllm.lab2_2.l03_quantization_inference import prepare_quantized

        for path in prepare_quantized(log=lambda msg: print(f"[servelab] {msg}", flush=True)):
            print(path)
        return 0
    if args.action == "prepare":
        info = prepare_model(log=lambda msg: print(f"[servelab] {msg}", flush=True))
        print(info.path)
        return 0
    info = model_info()
    if info is None:
        print(f"未準備（預期位置 {model_dir()}）；請執行 servelab model prepare", file=sys.stderr)
        return 1
    print(json.dumps({"path": str(info.path), **{k: v for k, v in info.manifest.items() if k != "files"},
                      "files": len(info.manifest["files"])}, indent=2, ensure_ascii=False))
    return 0


# --- servelab run ---------------------------------------------------------------------------------------
def _lesson(name: str):
    from servelab.book.tree import lessons

    items = lessons()
    matches = [item for item in items if name.strip("/") in (item.rel, item.module_name, item.slug)]
    if len(matches) == 1:
        return matches[0]
    names = [item.rel for item in items if item.module.exists()]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.0) or difflib.get_close_matches(
        name, [item.slug for item in items if item.module.exists()], n=1, cutoff=0.0)
    if close and "/" not in close[0]:
        close = [item.rel for item in items if item.slug == close[0]]
    print(f"servelab: error: unknown lesson {name!r}" + (f"; did you mean {close[0]}?" if close else ""),
          file=sys.stderr)
    print("lessons you can run:", *(f"  {n}" for n in names), sep="\n", file=sys.stderr)
    return None


def _run(args: argparse.Namespace) -> int:
    """Run a lesson module's ``main()`` — the same code its page and notebook show."""
    from servelab.runtime import results

    lesson = _lesson(args.lesson)
    if lesson is None:
        return 2
    if args.update_results:
        os.environ.pop("SERVELAB_RESULTS_DIR", None)
        _say(f"--update-results: 結果寫入本書的 {results.RESULTS}（會改動 git 追蹤的檔案）")
    else:
        scratch = os.environ.get("SERVELAB_RESULTS_DIR") or str(get_settings().cache_dir / "results")
        os.environ["SERVELAB_RESULTS_DIR"] = scratch
        _say(f"結果寫入 {scratch}（本書的 results/ 不變；要更新書中的圖表請加 --update-results）")
    module = importlib.import_module(lesson.module_name)
    code = int(module.main() or 0)
    _say(f"結果在 {results.results_root() / lesson.rel}")
    return code


# --- servelab serve -------------------------------------------------------------------------------------
def _raise_interrupt(signum, frame):  # SIGTERM (e.g. from a test or a supervisor) stops like Ctrl-C
    raise KeyboardInterrupt


def _hold(name: str, process) -> int:
    """Wait until Ctrl-C (0) or until the server exits by itself (1)."""
    _say(f"{name} 就緒；按 Ctrl-C 停止（日誌：{process.log_path}）")
    try:
        while process.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        _say(f"停止 {name}…")
        return 0
    from servelab.runtime.process import log_cause

    cause = log_cause(process.log_path)
    print(f"servelab: error: {name} exited with code {process.proc.returncode}"
          + (f": {cause}" if cause else "") + f" — read {process.log_path}", file=sys.stderr)
    return 1


def _print_exports(env: dict[str, str]) -> None:
    print("# 在另一個終端機貼上這幾行，本書的 shell 與 curl 區塊就會連到這台伺服器：", flush=True)
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}", flush=True)


def _serve(args: argparse.Namespace) -> int:
    from servelab.runtime.process import become_subreaper, session_members

    become_subreaper()  # descendants orphaned at stop come to us and are reaped (no <defunct> VLLM::Worker)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = get_settings()
    try:
        if args.engine == "vllm":
            code, pid = _serve_vllm(args, settings)
        else:
            code, pid = _serve_triton(args, settings)
    except KeyboardInterrupt:
        _say("已中止")
        return 130
    left = session_members(pid, include_zombies=True) if pid else []
    _say("已停止，沒有留下任何伺服器行程" if not left else f"仍有行程：{left}")
    return code


def _serve_vllm(args, settings) -> tuple[int, int | None]:
    from servelab.runtime.process import ensure_port_free
    from servelab.runtime.vllm_engine import check_model_path, vllm_server

    ensure_port_free(settings.host, args.port)  # before preparing anything
    model = args.model or settings.model
    if model:
        check_model_path(model)
    else:
        model = str(prepare_model(settings, log=_say).path)
    log_path = settings.cache_dir / "logs" / f"vllm-{args.port}.log"
    _say(f"啟動 vllm serve 於 {settings.host}:{args.port}（CPU 上約半分鐘；日誌：{log_path}）")
    with vllm_server(port=args.port, api_key=args.api_key, model=model, log_path=log_path,
                     settings=settings) as endpoint:
        env = {"SERVELAB_VLLM_URL": endpoint.base_url}
        if args.api_key:
            env["SERVELAB_API_KEY"] = args.api_key
        _print_exports(env)
        code = _hold("vllm serve", endpoint.process)
        pid = endpoint.process.proc.pid
    return code, pid


def _serve_triton(args, settings) -> tuple[int, int | None]:
    from pathlib import Path

    from servelab.runtime.triton_server import TritonSetupError, triton_server

    if args.repo:
        repo = Path(args.repo).expanduser().resolve()
        if not repo.is_dir():
            raise TritonSetupError(f"model repository {repo} does not exist: create it, or leave out --repo "
                                   "for an empty one")
    else:
        repo = settings.cache_dir / "triton" / "repository"
        repo.mkdir(parents=True, exist_ok=True)
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    extra = ["--load-model=*"] if models else []  # explicit mode, with what the folder holds loaded
    ports = {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    _say(f"啟動 tritonserver 於 {settings.host}:{ports['http']}（gRPC {ports['grpc']}、metrics {ports['metrics']}）；"
         f"模型儲存庫 {repo}" + (f"，載入 {', '.join(models)}" if models else "（空的；以 load API 載入模型）"))
    with triton_server(repo, settings=settings, ports=ports, extra_args=extra) as endpoint:
        _print_exports({"SERVELAB_TRITON_URL": f"http://{endpoint.http}",
                        "SERVELAB_TRITON_GRPC": endpoint.grpc,
                        "SERVELAB_TRITON_METRICS_URL": f"http://{endpoint.metrics}",
                        "SERVELAB_TRITON_ENDPOINT": endpoint.to_env()})
        code = _hold("tritonserver", endpoint.process)
        pid = endpoint.process.proc.pid
    return code, pid


def main(argv: list[str] | None = None) -> int:
    from servelab.runtime.triton_server import TRITON_PORTS, TritonSetupError
    from servelab.runtime.vllm_engine import VLLM_PORT

    parser = argparse.ArgumentParser(prog="servelab", description="「高效推理與服務」的執行工具")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: SERVELAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="the bundled model (SmolLM2-135M-Instruct)")
    model.add_argument("action", choices=["prepare", "info", "quantize"])
    model.set_defaults(func=_model)
    run = sub.add_parser("run", help="run a lesson, e.g. servelab run vllm/lab2_1/l02_basic_inference")
    run.add_argument("lesson")
    run.add_argument("--update-results", action="store_true",
                     help="write the book's results/ (default: a scratch folder in the cache)")
    run.set_defaults(func=_run)
    serve = sub.add_parser("serve", help="start the book's vLLM or Triton server until Ctrl-C")
    engines = serve.add_subparsers(dest="engine", required=True)
    vllm = engines.add_parser("vllm", help=f"vllm serve on 127.0.0.1:{VLLM_PORT}")
    vllm.add_argument("--port", type=int, default=VLLM_PORT)
    vllm.add_argument("--api-key", help="require Authorization: Bearer KEY (exported as SERVELAB_API_KEY)")
    vllm.add_argument("--model", help="a model folder instead of the bundled model (also: SERVELAB_MODEL)")
    triton = engines.add_parser("triton", help=f"tritonserver on 127.0.0.1:{TRITON_PORTS['http']} "
                                               f"(gRPC {TRITON_PORTS['grpc']}, metrics {TRITON_PORTS['metrics']})")
    triton.add_argument("--repo", help="model repository; its models are loaded at start (default: an empty one)")
    triton.add_argument("--http-port", type=int, default=TRITON_PORTS["http"])
    triton.add_argument("--grpc-port", type=int, default=TRITON_PORTS["grpc"])
    triton.add_argument("--metrics-port", type=int, default=TRITON_PORTS["metrics"])
    serve.set_defaults(func=_serve)
    sub.add_parser("settings", help="print the active settings").set_defaults(
        func=lambda _: print(get_settings().model_dump_json(indent=2)) or 0)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("SERVELAB_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except (ServerStartError, ModelPrepareError, TritonSetupError) as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (servelab --debug shows the traceback)"
        print(f"servelab: error: {getattr(exc, 'summary', str(exc))}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
