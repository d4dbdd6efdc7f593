"""vLLM, offline and served, answers for real; the launcher names its failures and leaves no process behind."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from servelab.runtime import ServerStartError, vllm_server
from servelab.runtime.vllm_engine import engine_kwargs

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
pytestmark = pytest.mark.engine


def test_offline_llm_answers_paris(llm_shared):
    from vllm import SamplingParams

    out = llm_shared.chat(QUESTION, SamplingParams(max_tokens=12, temperature=0.0), use_tqdm=False)
    assert "Paris" in out[0].outputs[0].text


def test_server_answers_paris_with_the_openai_client(vllm_shared):
    client = vllm_shared.client()
    assert [m.id for m in client.models.list().data] == [vllm_shared.model]
    reply = client.chat.completions.create(model=vllm_shared.model, messages=QUESTION, max_tokens=12,
                                           temperature=0.0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 12


def test_server_streams(vllm_shared):
    stream = vllm_shared.client().chat.completions.create(
        model=vllm_shared.model, messages=QUESTION, max_tokens=12, temperature=0.0, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 2  # token by token, not one blob
    assert "Paris" in "".join(pieces)


def test_server_health_and_metrics(vllm_shared):
    assert httpx.get(f"{vllm_shared.base_url}/health").status_code == 200
    metrics = httpx.get(f"{vllm_shared.base_url}/metrics").text
    assert "vllm:request_success_total" in metrics


def test_engine_kwargs_follow_the_profile(settings):
    kwargs = engine_kwargs(settings)
    assert kwargs["dtype"] == ("float32" if settings.profile == "cpu" else "bfloat16")
    assert kwargs["served_model_name"] == "smollm2"


def test_port_taken_is_named(settings):
    with socket.socket() as sock:
        sock.bind((settings.host, 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerStartError, match=rf"port 127.0.0.1:{port} is already in use"):
            with vllm_server(port=port):
                pass


def test_server_that_dies_reports_exit_code_and_log(tmp_path, bundled_model):
    log = tmp_path / "vllm.log"
    with pytest.raises(ServerStartError) as caught:
        with vllm_server(model=str(tmp_path / "no-such-model"), log_path=log):
            pass
    message = str(caught.value)
    assert "vllm serve exited with code" in message and "before it was ready" in message
    assert str(log) in message and "no-such-model" in message  # the log's last lines name the cause
