"""vLLM, offline and served, answers for real; the launcher names its failures and leaves no process behind."""

from __future__ import annotations

import sys

import httpx
import pytest

from servelab.runtime import ServerDiedError
from servelab.runtime.process import ManagedProcess, free_port
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


def test_server_that_dies_reports_exit_code_cause_and_log(tmp_path):
    """The launcher's error path, on a real process that dies while starting (seconds, not a vLLM import);
    a real ``vllm serve`` that dies is ``tests/runtime/test_serve.py``'s one-line CLI error."""
    log = tmp_path / "server.log"
    server = ManagedProcess("vllm serve", [sys.executable, "-c", "import sys; print('loading…'); "
                            "print('vllm serve: error: unrecognized arguments: --no-such-flag', file=sys.stderr); "
                            "sys.exit(2)"], log)
    server.start()
    with pytest.raises(ServerDiedError) as caught:
        server.wait_ready(f"http://127.0.0.1:{free_port()}/health", timeout_s=30)
    summary = caught.value.summary
    assert "\n" not in summary and "vllm serve exited with code 2 before it was ready" in summary
    assert "unrecognized arguments: --no-such-flag" in summary and str(log) in summary
    assert "last log lines" in str(caught.value) and "loading…" in str(caught.value)  # the details keep the log's tail
