"""Triton Python-backend model that hosts a vLLM engine (copied into a repository as ``1/model.py``).

Inputs: ``prompt`` (BYTES, [1]) and optional ``max_tokens`` (INT32, [1]); output: ``text`` (BYTES, [1]).
Engine arguments come from the model config's ``parameters { key: "engine_args" ... }`` (JSON).
"""

import json
import locale
import os

# The stub embeds Python without applying the environment's locale, so open() would default to ASCII
# and torch fails reading its UTF-8 templates ("'ascii' codec can't decode byte 0xe2"): set UTF-8 here.
# vLLM inside the stub also needs an in-process engine core (no multiprocessing from the stub).
locale.setlocale(locale.LC_ALL, "C.UTF-8")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        from vllm import LLM

        config = json.loads(args["model_config"])
        engine_args = json.loads(config["parameters"]["engine_args"]["string_value"])
        for key, value in engine_args.pop("env", {}).items():
            os.environ.setdefault(key, str(value))
        self.llm = LLM(**engine_args)

    def execute(self, requests):
        from vllm import SamplingParams

        prompts, params = [], []
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().reshape(-1)[0]
            limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
            max_tokens = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else 16
            prompts.append([{"role": "user", "content": prompt.decode("utf-8")}])
            params.append(SamplingParams(max_tokens=max_tokens, temperature=0.0))
        outputs = self.llm.chat(prompts, params, use_tqdm=False)  # one engine step batch for all requests
        responses = []
        for output in outputs:
            text = np.array([output.outputs[0].text.encode("utf-8")], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("text", text)]))
        return responses

    def finalize(self):
        del self.llm
