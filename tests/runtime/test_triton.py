"""Triton Inference Server 2.51 from nvidia-pytriton: a Python-backend model over HTTP and gRPC with dynamic
batching, Prometheus metrics that count the requests, a model hosting vLLM, and a clean teardown."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from servelab.runtime import triton_server
from servelab.runtime.triton_repo import write_model, write_vllm_model

pytestmark = pytest.mark.engine

BATCHER = '''
name: "rt_batcher"
backend: "python"
max_batch_size: 16
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "BATCH" data_type: TYPE_INT32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
'''

BATCHER_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "X").as_numpy() for r in requests]
        rows = sum(x.shape[0] for x in xs)  # the batch the dynamic batcher formed
        out = []
        for x in xs:
            batch = np.full((x.shape[0], 1), rows, dtype=np.int32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 2).astype(np.float32)),
                                                   pb_utils.Tensor("BATCH", batch)]))
        return out
'''


def _metric(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{model}",version="1"}} ([0-9.e+]+)$', text, re.M)
    assert match, name
    return float(match.group(1))


@pytest.fixture(scope="module")
def batcher(triton_shared):
    folder = write_model(triton_shared.repository, "rt_batcher", BATCHER, {"model.py": BATCHER_PY})
    triton_shared.add_model(folder)
    return triton_shared


def test_http_and_grpc_give_the_same_answer(batcher):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    h = httpclient.InferInput("X", [2, 4], "FP32")
    h.set_data_from_numpy(x)
    g = grpcclient.InferInput("X", [2, 4], "FP32")
    g.set_data_from_numpy(x)
    via_http = batcher.http_client().infer("rt_batcher", [h]).as_numpy("Y")
    via_grpc = batcher.grpc_client().infer("rt_batcher", [g]).as_numpy("Y")
    np.testing.assert_array_equal(via_http, x * 2)
    np.testing.assert_array_equal(via_grpc, x * 2)


def test_dynamic_batching_merges_requests_and_metrics_count_them(batcher):
    import tritonclient.http as httpclient

    before = batcher.metrics_text()
    requests_before = _metric(before, "nv_inference_request_success", "rt_batcher")
    execs_before = _metric(before, "nv_inference_exec_count", "rt_batcher")

    def one(i: int):
        client = httpclient.InferenceServerClient(batcher.http)
        x = np.full((1, 4), i, dtype=np.float32)
        inp = httpclient.InferInput("X", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("rt_batcher", [inp])
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2)
        return int(result.as_numpy("BATCH")[0, 0])

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(one, range(8)))
    assert max(batches) > 1  # requests shared an execute() call
    after = batcher.metrics_text()
    assert _metric(after, "nv_inference_request_success", "rt_batcher") - requests_before == 8
    assert _metric(after, "nv_inference_exec_count", "rt_batcher") - execs_before < 8


def test_a_triton_model_hosting_vllm_answers(triton_shared):
    import tritonclient.http as httpclient

    folder = write_vllm_model(triton_shared.repository, "rt_vllm")
    triton_shared.add_model(folder)
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array(["What is the capital of France?".encode()], dtype=np.object_))
    limit = httpclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([12], dtype=np.int32))
    result = triton_shared.http_client().infer("rt_vllm", [prompt, limit])
    assert "Paris" in result.as_numpy("text")[0].decode()
    triton_shared.http_client().unload_model("rt_vllm")  # give its engine's memory back


def test_teardown_leaves_no_process(tmp_path):
    folder = write_model(tmp_path, "rt_batcher", BATCHER, {"model.py": BATCHER_PY})
    with triton_server(tmp_path) as endpoint:
        endpoint.http_client().load_model("rt_batcher")  # starts a Python-backend stub process
        pgid = endpoint.process.proc.pid
        assert endpoint.http_client().is_model_ready("rt_batcher")
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert folder.exists()
