"""``servelab`` command line: ``servelab model prepare``, ``servelab model info``, ``servelab run LESSON``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from servelab.runtime.model import ModelPrepareError, model_dir, model_info, prepare_model
from servelab.runtime.settings import get_settings


def _model(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        try:
            info = prepare_model(log=lambda msg: print(f"[servelab] {msg}", flush=True))
        except ModelPrepareError as exc:
            print(f"servelab: error: {exc}", file=sys.stderr)
            return 1
        print(info.path)
        return 0
    info = model_info()
    if info is None:
        print(f"未準備（預期位置 {model_dir()}）；請執行 servelab model prepare", file=sys.stderr)
        return 1
    print(json.dumps({"path": str(info.path), **{k: v for k, v in info.manifest.items() if k != "files"},
                      "files": len(info.manifest["files"])}, indent=2, ensure_ascii=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    """Run a lesson module's ``main()`` — the same code its page and notebook show."""
    from servelab.book.tree import lessons

    matches = [item for item in lessons() if args.lesson in (item.rel, item.module_name, item.slug)]
    if len(matches) != 1:
        print(f"unknown lesson {args.lesson!r}; e.g. vllm/lab2_1/l02_basic_inference", file=sys.stderr)
        return 2
    module = importlib.import_module(matches[0].module_name)
    return int(module.main() or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servelab", description="「高效推理與服務」的執行工具")
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model", help="the bundled model (SmolLM2-135M-Instruct)")
    model.add_argument("action", choices=["prepare", "info"])
    model.set_defaults(func=_model)
    run = sub.add_parser("run", help="run a lesson, e.g. servelab run vllm/lab2_1/l02_basic_inference")
    run.add_argument("lesson")
    run.set_defaults(func=_run)
    sub.add_parser("settings", help="print the active settings").set_defaults(
        func=lambda _: print(get_settings().model_dump_json(indent=2)) or 0)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
