"""03-Integration_with_vLLM：路由策略與健康檢查（Router）、行程內 AsyncLLM、兩個副本、閘道對 vLLM 的成本。

One extra engine for the whole file: ``inproc`` (module scope), the in-process ``AsyncLLM`` service of the
lesson in a child process of its own (the session may hold an offline engine in this process: contributing
rule 6). It is both "way 2" of the comparison and the second replica next to ``vllm_shared`` for routing,
so the lab starts no other vLLM server. It starts in the background with the file's first test (the
Router's unit tests need no engine). The figures on the page come from ``servelab run`` (results files);
the tests check those files and measure small versions of the same things.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from servelab.book.tree import ROOT
from servelab.gateway.routing import NoHealthyUpstream, Router, affinity_key
from servelab.runtime.process import free_port
from servelab.testing.plugin import started_with_the_file
from servelab.vllm.lab2_3 import l03_integration_with_vllm as lesson


@pytest.fixture(scope="module", autouse=True)
def inproc_starting(request, bundled_model):
    with started_with_the_file(request, "inproc", lesson.inprocess_server, "inproc") as starting:
        yield starting


@pytest.fixture(scope="module")
def inproc(inproc_starting):
    return inproc_starting.result()


# ---------------------------------------------------------------- the Router (no engine)

def run(coro):
    return asyncio.run(coro)


def test_round_robin_takes_turns_and_skips_a_replica_that_is_out():
    router = Router(["http://a", "http://b", "http://c"], "round_robin")
    assert [router.pick().url for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2
    router.mark_down(router.upstreams[1], "test")
    assert {router.pick().url for _ in range(4)} == {"http://a", "http://c"}
    assert router.ready


def test_least_outstanding_sends_to_the_replica_with_fewer_requests_in_flight():
    async def scenario():
        router = Router(["http://a", "http://b"], "least_outstanding")
        async with router.lease() as first:
            async with router.lease() as second:
                assert {first.url, second.url} == {"http://a", "http://b"}  # a tie: both used
                async with router.lease() as third:
                    assert third.outstanding == 2
            # `second` finished; `first` is still busy: the next request goes to the other one
            nxt = router.pick()
            assert nxt.url != first.url and nxt.outstanding == 0
        assert [u.outstanding for u in router.upstreams] == [0, 0]
        assert sum(u.served for u in router.upstreams) == 3
    run(scenario())


def test_affinity_keeps_a_key_on_one_replica_and_moves_only_the_keys_of_a_replica_that_left():
    urls = [f"http://replica-{i}" for i in range(3)]
    router = Router(urls, "affinity")
    keys = [f"session:{i}" for i in range(300)]
    before = {k: router.pick(k).url for k in keys}
    assert all(router.pick(k).url == before[k] for k in keys)  # stable
    counts = [list(before.values()).count(u) for u in urls]
    assert min(counts) > 60  # rendezvous hashing spreads the keys
    router.mark_down(router.upstreams[0], "test")
    after = {k: router.pick(k).url for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert moved and all(before[k] == urls[0] for k in moved)  # only the keys of the replica that left
    router.upstreams[0].healthy = True
    assert {k: router.pick(k).url for k in keys} == before  # ... and they come back


def test_affinity_key_prefers_the_session_and_else_uses_the_prompts_beginning():
    body = {"model": "m", "messages": [{"role": "system", "content": "You are terse." * 50},
                                       {"role": "user", "content": "hi"}]}
    assert affinity_key(body, "abc") == "session:abc"
    other_question = {**body, "messages": [body["messages"][0], {"role": "user", "content": "bye"}]}
    assert affinity_key(body) == affinity_key(other_question)  # same long system prompt, same key
    assert affinity_key({"prompt": "x" * 300}) == affinity_key({"prompt": "x" * 256 + "y"})
    assert affinity_key({"prompt": "a"}) != affinity_key({"prompt": "b"})
    assert affinity_key({}) is None


def test_a_router_without_healthy_replicas_raises_and_bad_policies_are_refused():
    router = Router(["http://a"], "round_robin")
    router.mark_down(router.upstreams[0], "ConnectError: refused")
    with pytest.raises(NoHealthyUpstream, match="ConnectError: refused"):
        router.pick()
    assert not router.ready
    with pytest.raises(ValueError, match="unknown routing policy"):
        Router(["http://a"], "random")


def test_health_checks_take_a_replica_out_after_fail_after_and_put_it_back_after_recover_after():
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    status = {"code": 200}
    app = Starlette(routes=[Route("/health", lambda request: Response(status_code=status["code"]))])

    async def scenario():
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a real ConnectError
        async with httpx.AsyncClient(mounts={"http://flaky": httpx.ASGITransport(app=app)}) as client:
            router = Router(["http://flaky", dead], "round_robin", client, fail_after=2, recover_after=2)
            await router.check_once()
            assert [u.healthy for u in router.upstreams] == [True, True]  # one failure is not enough (fail_after=2)
            assert "ConnectError" in router.upstreams[1].last_error and router.upstreams[1].failures == 1
            status["code"] = 503
            await router.check_once()
            assert [u.healthy for u in router.upstreams] == [True, False]
            await router.check_once()
            assert not router.upstreams[0].healthy and router.upstreams[0].last_error == "/health answered 503"
            status["code"] = 200
            await router.check_once()
            assert not router.upstreams[0].healthy  # one good answer is not enough (recover_after=2)
            await router.check_once()
            assert router.upstreams[0].healthy and router.upstreams[0].last_error is None
            task = asyncio.create_task(router.check_health(0.01))  # the loop runs until cancelled
            await asyncio.sleep(0.05)
            task.cancel()
    run(scenario())


def test_a_connect_error_inside_a_lease_takes_the_replica_out_at_once():
    async def scenario():
        dead = f"http://127.0.0.1:{free_port()}"
        async with httpx.AsyncClient() as client:
            router = Router([dead], "round_robin", client)
            with pytest.raises(httpx.ConnectError):
                async with router.lease() as upstream:
                    await client.get(upstream.url + "/v1/models")
            assert not router.upstreams[0].healthy and router.upstreams[0].outstanding == 0
    run(scenario())


def test_the_shared_prefix_load_interleaves_sessions():
    prompts = lesson.session_prompts(2, 3, nonce="n")
    assert [s for s, _ in prompts] == ["n-0", "n-1"] * 3
    first, second = prompts[0][1], prompts[2][1]
    assert first.split("\n")[0] == second.split("\n")[0] and first != second  # same system prompt, new question


def test_gateway_overhead_arithmetic():
    rows = [{"way": w, "max_concurrency": 4, "num_prompts": 16, "output_throughput": tps, "request_throughput": 1,
             "p50_ttft_ms": ttft, "p90_ttft_ms": ttft, "p99_ttft_ms": ttft, "p50_itl_ms": itl, "p99_itl_ms": itl,
             "p50_e2el_ms": 1, "completed": 16, "failed": 0, "round": r}
            for w, tps, ttft, itl, r in [("vllm serve", 100, 50, 10, 0), ("gateway", 98, 53, 10.1, 0),
                                         ("vllm serve", 102, 52, 10, 1), ("gateway", 96, 55, 10.1, 1)]]
    (row,) = lesson.gateway_overhead(rows)
    assert row["direct_tok_s"] == 101 and row["gateway_tok_s"] == 97  # medians of the rounds
    assert row["throughput_loss_pct"] == pytest.approx(100 * (1 - 97 / 101))
    assert row["added_p50_ttft_ms"] == 3 and row["added_p50_itl_ms"] == pytest.approx(0.1)


def test_exercise_power_of_two_choices_prefers_the_less_busy_of_two():
    import random

    router = Router(["http://a", "http://b", "http://c"], "round_robin")
    router.upstreams[0].outstanding = 5
    rng = random.Random(0)
    picks = [lesson.pick_power_of_two(router, rng).url for _ in range(300)]
    assert picks.count("http://a") == 0  # a loses every draw it is in: it is never the less busy one
    assert min(picks.count("http://b"), picks.count("http://c")) > 100
    router.mark_down(router.upstreams[1], "test")
    router.mark_down(router.upstreams[2], "test")
    assert lesson.pick_power_of_two(router, rng).url == "http://a"  # the only healthy one, however busy


def test_exercise_drain_waits_for_the_requests_in_flight():
    async def scenario():
        router = Router(["http://a", "http://b"], "round_robin")
        release = asyncio.Event()

        async def busy():
            async with router.lease():  # round-robin: the first request goes to http://a
                await release.wait()

        task = asyncio.create_task(busy())
        await asyncio.sleep(0.01)
        drained = asyncio.create_task(lesson.drain(router, "http://a"))
        await asyncio.sleep(0.05)
        assert not drained.done() and router.pick().url == "http://b"  # no new work, the old one goes on
        release.set()
        waited = await drained
        await task
        assert waited >= 0.05 and router.upstreams[0].outstanding == 0
        with pytest.raises(TimeoutError):
            async with router.lease():  # http://b
                await lesson.drain(router, "http://b", timeout_s=0.05)
    run(scenario())


def test_exercise_expected_hit_tokens():
    assert lesson.common_prefix_tokens([1, 2, 3, 4], [1, 2, 9]) == 2
    # affinity: 3 sessions × (2 turns − 1 first visit) × 256 tokens in full 128-token blocks
    assert lesson.expected_hit_tokens(3, 2, common_tokens=300, block_size=128, visits=1) == 3 * 256
    assert lesson.expected_hit_tokens(3, 2, common_tokens=300, block_size=128, visits=2) == 0  # round-robin


# ---------------------------------------------------------------- engines

@pytest.mark.engine
def test_the_in_process_asyncllm_service_answers_like_vllm_serve(vllm_shared, inproc):
    body = {"model": vllm_shared.model, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    direct = httpx.post(f"{vllm_shared.api_url}/completions", json=body, timeout=60).json()
    mine = httpx.post(f"{inproc.api_url}/completions", json=body, timeout=60).json()
    assert mine["choices"][0]["text"] == direct["choices"][0]["text"]  # greedy, same model and dtype
    assert "Paris" in mine["choices"][0]["text"]
    assert mine["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"] == 8
    # the official client, streaming, with usage in the last chunk and [DONE] at the end
    lines = []
    with httpx.stream("POST", f"{inproc.api_url}/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == direct["choices"][0]["text"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
    text = vllm_shared.client().completions.create(**body).choices[0].text
    assert inproc.client().completions.create(**body).choices[0].text == text
    # what the short service leaves out: vLLM's request validation (its server answers 400, this one fails with 500)
    bad = {**body, "max_tokens": -1}
    assert httpx.post(f"{vllm_shared.api_url}/completions", json=bad, timeout=60).status_code == 400
    assert httpx.post(f"{inproc.api_url}/completions", json=bad, timeout=60).status_code == 500
    # /health asks the engine; /metrics carries vLLM's own metrics from this process
    assert httpx.get(f"{inproc.base_url}/health").status_code == 200
    assert lesson.scrape(inproc.base_url, lesson.PREFIX_METRICS)["vllm:prefix_cache_queries_total"] > 0


@pytest.mark.engine
def test_affinity_doubles_the_prefix_cache_hits_of_round_robin(vllm_shared, inproc):
    from transformers import AutoTokenizer

    rows = {(r["policy"], r["key"]): r
            for r in lesson.compare_policies((vllm_shared.base_url, inproc.base_url), vllm_shared.model)}
    rr, by_session, by_prefix = rows[("round_robin", "session")], rows[("affinity", "session")], \
        rows[("affinity", "prefix")]
    assert rr["served"] == [3, 3]  # 3 sessions × 2 turns in turn: every session's second turn changes replica
    # the exercise's formula, with the tokens of this load and the CPU block size (128)
    tokenizer = AutoTokenizer.from_pretrained(str(lesson.prepare_model(log=lambda _: None).path))
    (_, first), _, _, (_, second), _, _ = lesson.session_prompts(3, 2, nonce="abcd1234")
    common = lesson.common_prefix_tokens(tokenizer(first)["input_ids"], tokenizer(second)["input_ids"])
    block = int(lesson.cache_block_size(vllm_shared.base_url))
    assert rr["hit_tokens"] == lesson.expected_hit_tokens(3, 2, common, block, visits=2) == 0
    for row in (by_session, by_prefix):
        assert all(n % 2 == 0 for n in row["served"])  # each session stayed on one replica
        assert row["hit_tokens"] == lesson.expected_hit_tokens(3, 2, common, block, visits=1) > 0
    assert by_session["hit_rate"] > 0.3 > rr["hit_rate"]


@pytest.mark.engine
def test_a_cut_replica_is_taken_out_and_put_back(vllm_shared, inproc):
    events = asyncio.run(lesson.failover_demo(vllm_shared.base_url, inproc.base_url, vllm_shared.model))
    both, cut, checked, back = events
    assert both["healthy"] == [True, True] and set(both["routed_to"]) == {"replica-1", "replica-2"}
    # whichever comes first takes replica 2 out: a request that cannot connect (passive) or GET /health (active);
    # at most one request ever meets the cut line, every later one goes to replica 1
    assert cut["healthy"] == [True, False] and cut["statuses"].count("ConnectError") <= 1
    failed = cut["statuses"].index("ConnectError") if "ConnectError" in cut["statuses"] else -1
    assert cut["routed_to"][failed + 1:] == ["replica-1"] * (3 - failed)
    assert lesson.removed_by(cut) == ("被動：請求連不上" if failed >= 0 else "主動：/health 失敗")
    assert checked["statuses"] == [200] * 4 and checked["routed_to"] == ["replica-1"] * 4
    assert back["healthy"] == [True, True] and set(back["routed_to"]) == {"replica-1", "replica-2"}
    assert back["statuses"] == [200] * 4 and back["back_after_s"] < 5


@pytest.mark.engine
def test_vllm_bench_serve_runs_the_same_load_through_the_gateway(vllm_shared, bundled_model):
    """Direct: the very run of Lab 2.1 lesson 04's test (same arguments: shared by @experiment)."""
    rows = lesson.gateway_vs_direct(vllm_shared)
    direct, via = rows
    assert direct["way"] == "vllm serve" and via["way"] == "gateway"
    for row in rows:
        assert row["completed"] == row["num_prompts"] == 8 and row["failed"] == 0
        assert row["total_output_tokens"] == 8 * 32
    # on two shared cores the gateway's few milliseconds drown in noise; only gross costs would show
    assert via["output_throughput"] > 0.5 * direct["output_throughput"]


@pytest.mark.engine
def test_the_same_router_checks_triton_on_its_ready_path(triton_shared):
    async def scenario():
        async with httpx.AsyncClient() as client:
            router = Router([f"http://{triton_shared.http}"], "round_robin", client,
                            health_path="/v2/health/ready", fail_after=1)
            for _ in range(90):  # the shared Triton may be loading another lesson's model (ready: 400)
                if (await router.check_once())[0]["healthy"]:
                    break
                await asyncio.sleep(1)
            assert router.ready
            wrong = Router([f"http://{triton_shared.http}"], "round_robin", client)  # vLLM's /health path
            await wrong.check_once()
            assert not wrong.ready and wrong.upstreams[0].last_error == "/health answered 404"
    run(scenario())


# ---------------------------------------------------------------- the measured results on the page

def _results(name: str) -> dict:
    return json.loads((ROOT / "results" / lesson.LESSON / f"{name}.json").read_text())


def test_results_files_support_what_the_page_says():
    ways = _results("three_ways")
    assert ways["provenance"]["profile"] == "cpu"
    assert {r["way"] for r in ways["rows"]} == {"vllm serve", "gateway", "AsyncLLM 行程內"}
    assert all(r["failed"] == 0 for r in ways["rows"])
    overhead = _results("gateway_overhead")
    assert [r["max_concurrency"] for r in overhead["rows"]] == list(lesson.CPU_CONCURRENCIES)
    assert overhead["goals"] == lesson.GOALS
    # the page: on two shared cores the gateway even "wins" a cell (concurrency 1) — noise, not a speed-up
    assert overhead["rows"][0]["throughput_loss_pct"] < 0
    # the table's figures are the collapsed raw runs of three_ways
    computed = lesson.gateway_overhead(ways["raw"])
    assert computed == [{key: row[key] for key in computed[0]} for row in overhead["rows"]]
    policies = {(r["policy"], r["key"]): r for r in _results("policies")["raw"]}
    assert policies[("affinity", "session")]["hit_rate"] > policies[("round_robin", "session")]["hit_rate"]
    balancing = {r["policy"]: r for r in _results("balancing")["raw"]}
    assert balancing["round_robin"]["long_requests_per_replica"] == [4, 0]  # long, short, long, short ...
    assert max(balancing["least_outstanding"]["long_requests_per_replica"]) < 4
    failover = _results("failover")["raw"]
    assert failover[2]["routed_to"] == ["replica-1"] * 4 and failover[3]["healthy"] == [True, True]


@pytest.mark.gpu
@pytest.mark.engine
def test_gpu_gateway_overhead_against_vllm_directly():
    """The lead's H200 run: vllm serve (the bundled model, bf16, CUDA graphs) directly, through one gateway process
    and through four (uvicorn workers), alternating, 100 requests per cell. Writes gateway_overhead_gpu.* and
    three_ways_gpu.* first; the issue's goals are judged per row in the file (`met`), not by this test.
    What the test asserts is what the page concludes from the two H200 runs: at the highest concurrency one
    gateway process is the bottleneck (its loss is over 20 %, and it uses most of a core), and four processes
    take most of that loss away (less than half of it)."""
    from servelab.runtime.provenance import provenance
    from servelab.runtime.results import results_root

    assert provenance()["gpu"] is not None
    rows = lesson.gpu_overhead()
    assert all(r["failed"] == 0 and r["completed"] == r["num_prompts"] >= 100 for r in rows)
    saved = json.loads((results_root() / lesson.LESSON / "gateway_overhead_gpu.json").read_text())
    many = f"gateway ×{lesson.GPU_WORKERS}"
    assert [(r["way"], r["max_concurrency"]) for r in saved["rows"]] == \
        [(way, c) for way in ("gateway", many) for c in lesson.GPU_CONCURRENCIES]
    top = {r["way"]: r for r in saved["rows"] if r["max_concurrency"] == max(lesson.GPU_CONCURRENCIES)}
    assert top["gateway"]["throughput_loss_pct"] > 20, top
    assert top["gateway"]["gateway_cpu_cores"] > 0.5, top
    assert top[many]["throughput_loss_pct"] < top["gateway"]["throughput_loss_pct"] / 2, top
