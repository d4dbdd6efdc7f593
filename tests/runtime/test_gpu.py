"""The GPU profile on a real GPU: vLLM 0.26.0 in bf16, the 8B-shaped dummy model, and Triton's Python
backend running torch on the GPU. On CPU these are reported as skipped with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from servelab.runtime import dummy_llama_8b, offline_llm, triton_server, vllm_server
from servelab.runtime.triton_repo import write_model, write_vllm_model

pytestmark = [pytest.mark.gpu, pytest.mark.engine]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_offline_bf16_on_the_gpu_answers_paris(settings, bundled_model):
    import torch
    from vllm import SamplingParams

    assert settings.dtype == "bfloat16" and torch.cuda.is_available()
    with offline_llm() as llm:
        out = llm.chat(QUESTION, SamplingParams(max_tokens=12, temperature=0.0), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text


def test_8b_shaped_dummy_model_generates(settings):
    from vllm import SamplingParams

    with offline_llm(model=str(dummy_llama_8b(settings)), load_format="dummy", max_model_len=1024) as llm:
        config = llm.llm_engine.model_config.hf_config
        assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (32, 4096, 8)
        out = llm.generate(["Hello"] * 4, SamplingParams(max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in out] == [16] * 4


def test_vllm_serve_on_the_gpu(bundled_model):
    with vllm_server() as endpoint:
        reply = endpoint.client().chat.completions.create(model=endpoint.model, messages=QUESTION,
                                                          max_tokens=12, temperature=0.0)
    assert "Paris" in reply.choices[0].message.content


TORCH_GPU = '''
name: "rt_torch_gpu"
backend: "python"
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "ON_CUDA" data_type: TYPE_BOOL dims: [ 1 ] } ]
dynamic_batching { }
instance_group [ { kind: KIND_GPU count: 1 } ]
'''
TORCH_GPU_PY = '''
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        self.weight = torch.eye(4, device=self.device) * 3

    def execute(self, requests):
        out = []
        for r in requests:
            x = torch.from_numpy(pb_utils.get_input_tensor_by_name(r, "X").as_numpy()).to(self.device)
            y = x @ self.weight
            flag = np.full((x.shape[0], 1), y.is_cuda, dtype=bool)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y.cpu().numpy()),
                                                   pb_utils.Tensor("ON_CUDA", flag)]))
        return out
'''


def test_triton_python_backend_runs_torch_on_the_gpu_and_hosts_vllm(tmp_path, bundled_model):
    import tritonclient.http as httpclient

    write_model(tmp_path, "rt_torch_gpu", TORCH_GPU, {"model.py": TORCH_GPU_PY})
    write_vllm_model(tmp_path, "rt_vllm_gpu", gpu_memory_utilization=0.3)
    with triton_server(tmp_path) as endpoint:
        client = endpoint.http_client()
        client.load_model("rt_torch_gpu")
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = httpclient.InferInput("X", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("rt_torch_gpu", [inp])
        np.testing.assert_allclose(result.as_numpy("Y"), x * 3)
        assert result.as_numpy("ON_CUDA").all()
        assert "nv_gpu_utilization" in endpoint.metrics_text()
        client.load_model("rt_vllm_gpu")
        prompt = httpclient.InferInput("prompt", [1], "BYTES")
        prompt.set_data_from_numpy(np.array([b"What is the capital of France?"], dtype=np.object_))
        answer = client.infer("rt_vllm_gpu", [prompt]).as_numpy("text")[0].decode()
    assert "Paris" in answer
