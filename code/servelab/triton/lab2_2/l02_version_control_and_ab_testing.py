"""02-Version_Control_and_AB_Testing — version policies, named versions, A/B splits, shadow, canary, statistics.

Triton 2.51 has versions and per-version metrics, but no traffic split. This lesson builds the split three
ways (a BLS router model inside Triton, a client/gateway split, and — to show why not — an ensemble),
mirrors traffic to a shadow version, promotes a canary from Triton's own per-version counters, and
decides an A/B winner with a two-proportion test computed here on the outcomes the requests produced.

The served model (``scorer``) is numpy-only so its stub starts in about a second. Each version folder
carries ``behaviour.json``: the probability that a request "converts" (a simulated user outcome: Triton
never sees real outcomes, they arrive later from your product's logs), an execute delay, and a failure rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from servelab.runtime.memo import experiment

try:  # inside Triton's stub; in this process the classes below are only rendered into model.py files
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

LESSON = "triton/lab2_2/l02_version_control_and_ab_testing"
PREFIX = "l02ab_"  # every model this lesson loads into the shared Triton starts with it
SCORER, ROUTER = PREFIX + "scorer", PREFIX + "router"
BEHAVIOUR = {  # version → simulated conversion rate, execute delay, failure rate
    1: {"p": 0.30, "delay_ms": 2, "fail": 0.0},   # the current model
    2: {"p": 0.40, "delay_ms": 2, "fail": 0.0},   # a better candidate
    3: {"p": 0.30, "delay_ms": 8, "fail": 0.10, "raise": True},  # a bad candidate: slower, failing 10 %
}
LOAD_TIMEOUT_S = 120.0


# --8<-- [start:scorer]
class ScorerModel:
    """KEY (user id) + NONCE → CONVERTED (simulated outcome) and VERSION; behaviour.json sets the version."""

    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.version = int(args["model_version"])
        with open(os.path.join(folder, "behaviour.json")) as f:
            self.b = json.load(f)

    def draw(self, key: bytes, nonce: int, salt: str) -> float:  # a fixed uniform number per request
        digest = hashlib.sha256(key + f"|{nonce}|{salt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def execute(self, requests):
        time.sleep(self.b["delay_ms"] / 1000 * len(requests))
        responses = []
        for request in requests:
            key = pb_utils.get_input_tensor_by_name(request, "KEY").as_numpy().reshape(-1)[0]
            nonce = int(pb_utils.get_input_tensor_by_name(request, "NONCE").as_numpy().reshape(-1)[0])
            if self.draw(key, nonce, "fail") < self.b["fail"]:  # (1)!
                if self.b.get("raise"):
                    raise pb_utils.TritonModelException(f"version {self.version} failed")
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"version {self.version} failed")))
                continue
            converted = self.draw(key, nonce, "outcome") < self.b["p"]  # (2)!
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("CONVERTED", np.array([[converted]], np.bool_)),
                pb_utils.Tensor("VERSION", np.array([[self.version]], np.int32))]))
        return responses
# --8<-- [end:scorer]


# --8<-- [start:router]
class RouterModel:
    """A BLS model: picks a version of TARGET by weight or by a hash of KEY, optionally mirrors to SHADOW."""

    def initialize(self, args):
        params = {k: v["string_value"] for k, v in
                  json.loads(args["model_config"]).get("parameters", {}).items()}
        self.target = params["TARGET"]
        self.a, self.b = params.get("A", "1"), params.get("B", "2")
        self.weight_b = float(params.get("WEIGHT_B", "0.5"))
        self.mode = params.get("MODE", "hash")  # "weight" or "hash"
        self.shadow = params.get("SHADOW", "")  # a version that sees every request, answers no one
        self.rng = random.Random(0)

    def pick(self, key: bytes) -> str:
        if self.mode == "weight":
            u = self.rng.random()  # (1)!
        else:
            u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64  # (2)!
        return self.b if u < self.weight_b else self.a

    def forward(self, request, version: str):
        inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("KEY", "NONCE")]
        return pb_utils.InferenceRequest(model_name=self.target, model_version=int(version),
                                         requested_output_names=["CONVERTED", "VERSION"],
                                         inputs=inputs)

    async def execute(self, requests):
        responses = []
        for request in requests:
            key = pb_utils.get_input_tensor_by_name(request, "KEY").as_numpy().reshape(-1)[0]
            calls = [self.forward(request, self.pick(key)).async_exec()]
            if self.shadow:
                calls.append(self.forward(request, self.shadow).async_exec())  # (3)!
            answers = await asyncio.gather(*calls)
            primary = answers[0]  # the shadow's answer is dropped
            if primary.has_error():
                responses.append(pb_utils.InferenceResponse(error=primary.error()))
            else:
                responses.append(pb_utils.InferenceResponse(primary.output_tensors()))
        return responses
# --8<-- [end:router]


MODEL_PY_HEADER = '''"""Written by servelab.triton.lab2_2.l02_version_control_and_ab_testing.render_model_py."""
import asyncio
import hashlib
import json
import os
import random
import time

import numpy as np
import triton_python_backend_utils as pb_utils

'''


def render_model_py(model_class: type) -> str:
    return MODEL_PY_HEADER + inspect.getsource(model_class) + f"\n\nTritonPythonModel = {model_class.__name__}\n"


# --8<-- [start:configs]
def version_policy(kind: str = "latest", versions: tuple[int, ...] = (1,)) -> dict:
    """The JSON form of ``version_policy`` (latest N / all / specific [..])."""
    if kind == "latest":
        return {"latest": {"num_versions": versions[0]}}
    if kind == "all":
        return {"all": {}}
    return {"specific": {"versions": list(versions)}}


def scorer_config(policy: dict, name: str = SCORER) -> dict:
    return {"name": name, "backend": "python", "max_batch_size": 0,
            "input": [{"name": "KEY", "data_type": "TYPE_STRING", "dims": [1]},
                      {"name": "NONCE", "data_type": "TYPE_INT64", "dims": [1]}],
            "output": [{"name": "CONVERTED", "data_type": "TYPE_BOOL", "dims": [1, 1]},
                       {"name": "VERSION", "data_type": "TYPE_INT32", "dims": [1, 1]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 1}],
            "version_policy": policy}


def router_config(mode: str = "hash", weight_b: float = 0.5, a: int = 1, b: int = 2, shadow: int | None = None,
                  name: str = ROUTER, target: str = SCORER) -> dict:
    config = scorer_config({"latest": {"num_versions": 1}}, name)
    config["parameters"] = {k: {"string_value": str(v)} for k, v in
                            {"TARGET": target, "MODE": mode, "WEIGHT_B": weight_b, "A": a, "B": b,
                             "SHADOW": "" if shadow is None else shadow}.items()}
    return config
# --8<-- [end:configs]


def to_pbtxt_json(config: dict) -> str:
    return json.dumps(config)


# --8<-- [start:write]
def write_scorer(repository: Path, name: str = SCORER, behaviour: dict = BEHAVIOUR) -> Path:
    """One folder, one version sub-folder per entry of ``behaviour``; config.pbtxt keeps Triton's default
    policy (latest 1): loads override it with a JSON config."""
    from servelab.runtime.triton_repo import write_model

    text = _pbtxt(scorer_config({"latest": {"num_versions": 1}}, name))
    for version, b in behaviour.items():
        write_model(repository, name, text, {"model.py": render_model_py(ScorerModel),
                                             "behaviour.json": json.dumps(b)}, version=version)
    return Path(repository) / name


def write_router(repository: Path, name: str = ROUTER) -> Path:
    from servelab.runtime.triton_repo import write_model

    return write_model(repository, name, _pbtxt(router_config(name=name)),
                       {"model.py": render_model_py(RouterModel)})
# --8<-- [end:write]


def _pbtxt(config: dict) -> str:
    """A minimal JSON → pbtxt for these configs (what Triton's load API accepts as JSON anyway)."""
    def tensor(t):
        return f'{{ name: "{t["name"]}" data_type: {t["data_type"]} dims: [ {", ".join(map(str, t["dims"]))} ] }}'
    lines = [f'name: "{config["name"]}"', f'backend: "{config["backend"]}"',
             f'max_batch_size: {config["max_batch_size"]}',
             "input [ " + ", ".join(tensor(t) for t in config["input"]) + " ]",
             "output [ " + ", ".join(tensor(t) for t in config["output"]) + " ]",
             "instance_group [ { kind: KIND_CPU count: 1 } ]"]
    for key, value in config.get("parameters", {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value["string_value"]}" }} }}')
    return "\n".join(lines)


# --8<-- [start:call]
def score(endpoint, model: str, key: str, nonce: int, version: str = "") -> dict:
    """One request; returns the version that answered and the outcome, or the error."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    k = httpclient.InferInput("KEY", [1], "BYTES")
    k.set_data_from_numpy(np.array([key.encode()], dtype=np.object_))
    n = httpclient.InferInput("NONCE", [1], "INT64")
    n.set_data_from_numpy(np.array([nonce], dtype=np.int64))
    start = time.perf_counter()
    try:
        result = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).infer(model, [k, n], model_version=version)
    except InferenceServerException as exc:
        return {"key": key, "status": int(exc.status() or 0), "error": exc.message(),
                "ms": (time.perf_counter() - start) * 1e3}
    return {"key": key, "status": 200, "version": int(result.as_numpy("VERSION").reshape(-1)[0]),
            "converted": bool(result.as_numpy("CONVERTED").reshape(-1)[0]),
            "ms": (time.perf_counter() - start) * 1e3}
# --8<-- [end:call]


def load(endpoint, name: str, config: dict) -> None:
    endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).load_model(name, config=json.dumps(config))


def ready_versions(endpoint, name: str) -> list[int]:
    index = endpoint.http_client().get_model_repository_index()
    return sorted(int(m["version"]) for m in index if m["name"] == name and m.get("state") == "READY")


# --8<-- [start:policies]
POLICIES = (("latest", (1,)), ("latest", (2,)), ("all", ()), ("specific", (1, 3)))


def policy_demo(endpoint) -> list[dict]:
    """Reload the scorer under each policy (a config override on load) and ask each version by name."""
    rows = []
    for kind, versions in POLICIES:
        load(endpoint, SCORER, scorer_config(version_policy(kind, versions)))  # (1)!
        ready = ready_versions(endpoint, SCORER)
        answers = {v: score(endpoint, SCORER, "u1", 0, version=str(v)) for v in (1, 2, 3)}  # (2)!
        default = score(endpoint, SCORER, "u1", 0)  # (3)!
        rows.append({"policy": f"{kind} {list(versions) if versions else ''}".strip(), "ready": ready,
                     "default_version": default.get("version"),
                     **{f"v{v}": a.get("version", a.get("status")) for v, a in answers.items()},
                     "error_v2": answers[2].get("error", "")})
    return rows
# --8<-- [end:policies]


# --8<-- [start:split]
def hash_bucket(key: str) -> float:
    """The same number in [0, 1) the router computes for a key: a client can reproduce the split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def client_split(endpoint, key: str, nonce: int, weight_b: float = 0.5) -> dict:
    """Split in the client (or a gateway): choose the version, then ask Triton for that version by name."""
    version = "2" if hash_bucket(key) < weight_b else "1"
    return score(endpoint, SCORER, key, nonce, version=version)


def run_traffic(endpoint, model: str | None, users: int, per_user: int, concurrency: int = 4,
                weight_b: float = 0.5, seed: int = 0) -> list[dict]:
    """``users`` × ``per_user`` requests (shuffled), through the router model, or split in the client."""
    rng = np.random.default_rng(seed)
    keys = [f"user-{u}" for u in range(users) for _ in range(per_user)]
    order = rng.permutation(len(keys))

    def one(i: int) -> dict:
        key = keys[i]
        if model is None:
            return client_split(endpoint, key, int(i), weight_b)
        return score(endpoint, model, key, int(i))

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, order))
# --8<-- [end:split]


# --8<-- [start:metrics]
SAMPLE = re.compile(r'^(nv_inference_\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def version_counters(metrics_text: str, model: str) -> dict[int, dict[str, float]]:
    """Triton's per-version counters for ``model``: {version: {metric: value}} (failures summed over reasons)."""
    out: dict[int, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("model") != model or not labels.get("version", "").isdigit():
            continue
        counters = out.setdefault(int(labels["version"]), {})
        counters[m.group(1)] = counters.get(m.group(1), 0.0) + float(m.group(3))
    return out


def delta(after: dict, before: dict) -> dict[int, dict[str, float]]:
    return {v: {k: x - before.get(v, {}).get(k, 0.0) for k, x in c.items()} for v, c in after.items()}
# --8<-- [end:metrics]


# --8<-- [start:canary]
def canary_decision(counters: dict[int, dict[str, float]], baseline: int, canary: int, min_requests: int = 30,
                    max_extra_failure: float = 0.02, max_latency_ratio: float = 1.5) -> dict:
    """Promote, roll back, or wait — from Triton's per-version counters over the canary window."""
    def stats(v: int) -> dict:
        c = counters.get(v, {})
        ok, failed = c.get("nv_inference_request_success", 0.0), c.get("nv_inference_request_failure", 0.0)
        n = ok + failed
        return {"requests": n, "failure_rate": failed / n if n else 0.0,
                "mean_compute_ms": c.get("nv_inference_compute_infer_duration_us", 0.0) / 1e3 / ok if ok else 0.0}

    base, cand = stats(baseline), stats(canary)
    if cand["requests"] < min_requests:  # (1)!
        verdict = "wait"
    elif cand["failure_rate"] > base["failure_rate"] + max_extra_failure:  # (2)!
        verdict = "rollback"
    elif cand["mean_compute_ms"] > max_latency_ratio * base["mean_compute_ms"]:  # (3)!
        verdict = "rollback"
    else:
        verdict = "promote"
    return {"baseline": base, "canary": cand, "verdict": verdict}


def promote(endpoint, version: int) -> list[int]:
    """Serve only ``version`` from now on: a load with a specific-version policy (the old one is unloaded)."""
    load(endpoint, SCORER, scorer_config(version_policy("specific", (version,))))
    return ready_versions(endpoint, SCORER)
# --8<-- [end:canary]


# --8<-- [start:statistics]
def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def normal_quantile(p: float) -> float:
    """Inverse of :func:`normal_cdf` by bisection (enough for a textbook; scipy.stats.norm.ppf elsewhere)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if normal_cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def two_proportion_test(conv_a: int, n_a: int, conv_b: int, n_b: int, alpha: float = 0.05) -> dict:
    """Two-sided z-test of p_A = p_B, and the 1−alpha confidence interval of p_B − p_A."""
    pa, pb = conv_a / n_a, conv_b / n_b
    pooled = (conv_a + conv_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))  # (1)!
    z = (pb - pa) / se0
    p_value = 2 * (1 - normal_cdf(abs(z)))
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)  # (2)!
    half = normal_quantile(1 - alpha / 2) * se
    return {"p_a": pa, "p_b": pb, "diff": pb - pa, "z": z, "p_value": p_value,
            "ci_low": pb - pa - half, "ci_high": pb - pa + half, "significant": p_value < alpha}


def sample_size_per_arm(p_a: float, p_b: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Requests per arm to detect p_a → p_b with a two-sided test at ``alpha`` and ``power``."""
    z_a, z_b = normal_quantile(1 - alpha / 2), normal_quantile(power)
    p_bar = (p_a + p_b) / 2
    n = (z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p_a * (1 - p_a) + p_b * (1 - p_b))) ** 2
    return math.ceil(n / (p_b - p_a) ** 2)


def outcomes(records: list[dict]) -> dict[int, dict[str, int]]:
    """Per version: requests answered and conversions, from the measured responses."""
    out: dict[int, dict[str, int]] = {}
    for r in records:
        if r["status"] == 200:
            arm = out.setdefault(r["version"], {"n": 0, "converted": 0})
            arm["n"] += 1
            arm["converted"] += r["converted"]
    return out
# --8<-- [end:statistics]


def stickiness(records: list[dict]) -> float:
    """The share of users who always got the same version (1.0 = perfectly sticky)."""
    seen: dict[str, set[int]] = {}
    for r in records:
        if r["status"] == 200:
            seen.setdefault(r["key"], set()).add(r["version"])
    return sum(len(v) == 1 for v in seen.values()) / len(seen) if seen else 0.0


def share_b(records: list[dict], b: int = 2) -> float:
    ok = [r for r in records if r["status"] == 200]
    return sum(r["version"] == b for r in ok) / len(ok) if ok else 0.0


# --8<-- [start:ensemble]
def both_versions_ensemble(name: str = PREFIX + "ensemble") -> str:
    """An ensemble that 'splits' between v1 and v2: a fixed graph, so both steps run for every request."""
    step = '''{{ model_name: "{m}" model_version: {v}
     input_map [ {{ key: "KEY" value: "KEY" }}, {{ key: "NONCE" value: "NONCE" }} ]
     output_map {{ key: "VERSION" value: "VERSION_{v}" }} }}'''
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "KEY" data_type: TYPE_STRING dims: [ 1 ] }}, {{ name: "NONCE" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "VERSION_1" data_type: TYPE_INT32 dims: [ 1, 1 ] }},
         {{ name: "VERSION_2" data_type: TYPE_INT32 dims: [ 1, 1 ] }} ]
ensemble_scheduling {{ step [ {step.format(m=SCORER, v=1)}, {step.format(m=SCORER, v=2)} ] }}
"""
# --8<-- [end:ensemble]


def call_ensemble(endpoint, name: str, n: int, outputs=("VERSION_1", "VERSION_2")) -> int:
    import tritonclient.http as httpclient

    ok, wanted = 0, [httpclient.InferRequestedOutput(o) for o in outputs]
    for i in range(n):
        k = httpclient.InferInput("KEY", [1], "BYTES")
        k.set_data_from_numpy(np.array([f"user-{i}".encode()], dtype=np.object_))
        x = httpclient.InferInput("NONCE", [1], "INT64")
        x.set_data_from_numpy(np.array([i], dtype=np.int64))
        endpoint.http_client().infer(name, [k, x], outputs=wanted)
        ok += 1
    return ok


def counters_now(endpoint) -> dict[int, dict[str, float]]:
    return version_counters(endpoint.metrics_text(), SCORER)


def _window(endpoint, fn):
    """Run ``fn`` and return (its result, the scorer's per-version counter deltas during it)."""
    before = counters_now(endpoint)
    result = fn()
    return result, delta(counters_now(endpoint), before)


# --8<-- [start:error_accounting]
ERRORS = PREFIX + "errors"


def error_accounting(endpoint, n: int = 20) -> list[dict]:
    """Two ways a Python model fails a request, and what Triton's per-version counters make of them."""
    both = {1: {"p": 0.3, "delay_ms": 0, "fail": 0.5},  # (1)!
            2: {"p": 0.3, "delay_ms": 0, "fail": 0.5, "raise": True}}  # (2)!
    write_scorer(endpoint.repository, ERRORS, both)
    load(endpoint, ERRORS, scorer_config(version_policy("all"), ERRORS))
    before = version_counters(endpoint.metrics_text(), ERRORS)
    seen = {v: [score(endpoint, ERRORS, f"u{i}", i, version=str(v))["status"] for i in range(n)] for v in both}
    counted = delta(version_counters(endpoint.metrics_text(), ERRORS), before)
    return [{"version": v, "how": "raise" if both[v].get("raise") else "error response",
             "client_errors": sum(s != 200 for s in seen[v]),
             "counted_success": int(counted[v].get("nv_inference_request_success", 0)),
             "counted_failure": int(counted[v].get("nv_inference_request_failure", 0))} for v in both]
# --8<-- [end:error_accounting]


# --8<-- [start:experiment]
@experiment
def ab_experiment(endpoint, users: int = 200, per_user: int = 4, concurrency: int = 4) -> dict:
    """Everything the page shows, on the shared Triton: policies, splits, shadow, canary, statistics."""
    from servelab.runtime.triton_repo import write_model

    write_scorer(endpoint.repository), write_router(endpoint.repository)
    ens = PREFIX + "ensemble"
    write_model(endpoint.repository, ens, both_versions_ensemble(ens))
    out: dict = {}
    try:
        out["policies"] = policy_demo(endpoint)
        load(endpoint, SCORER, scorer_config(version_policy("all")))  # v1, v2, v3 side by side

        endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).load_model(ens)
        out["ensemble"] = []
        for wanted in (("VERSION_1", "VERSION_2"), ("VERSION_1",)):
            n, counters = _window(endpoint, lambda: call_ensemble(endpoint, ens, 40, wanted))
            out["ensemble"].append({"outputs": " + ".join(wanted), "requests": n,
                                    **{f"v{v}": int(counters.get(v, {}).get("nv_inference_request_success", 0))
                                       for v in (1, 2)}})
        out["error_accounting"] = error_accounting(endpoint)

        load(endpoint, ROUTER, router_config("weight", 0.2))
        weighted = run_traffic(endpoint, ROUTER, users // 4, per_user, concurrency)
        out["weighted"] = {"share_b": share_b(weighted), "sticky": stickiness(weighted), "n": len(weighted)}

        load(endpoint, ROUTER, router_config("hash", 0.5))
        start = time.perf_counter()
        hashed = run_traffic(endpoint, ROUTER, users, per_user, concurrency)
        out["hashed"] = {"share_b": share_b(hashed), "sticky": stickiness(hashed), "n": len(hashed),
                         "seconds": time.perf_counter() - start, "outcomes": outcomes(hashed)}
        client = run_traffic(endpoint, None, users // 4, 1, concurrency)
        router_pick = {r["key"]: r["version"] for r in hashed}
        out["client_agrees"] = sum(router_pick[r["key"]] == r["version"] for r in client) / len(client)

        load(endpoint, ROUTER, router_config("weight", 0.0, shadow=3))
        mirrored, counters = _window(endpoint, lambda: run_traffic(endpoint, ROUTER, 25, 4, concurrency))
        out["shadow"] = {"client_versions": sorted({r["version"] for r in mirrored if r["status"] == 200}),
                         "client_errors": sum(r["status"] != 200 for r in mirrored), "n": len(mirrored),
                         "v3_success": counters.get(3, {}).get("nv_inference_request_success", 0),
                         "v3_failure": counters.get(3, {}).get("nv_inference_request_failure", 0)}

        out["canary"] = []
        for candidate in (2, 3):
            load(endpoint, ROUTER, router_config("weight", 0.15, a=1, b=candidate))
            records, counters = _window(endpoint, lambda: run_traffic(endpoint, ROUTER, 100, 4, concurrency,
                                                                      seed=candidate))
            decision = canary_decision(counters, 1, candidate)
            out["canary"].append({"candidate": candidate, **decision,
                                  "client_errors": sum(r["status"] != 200 for r in records)})
        out["promoted"] = promote(endpoint, 2)
        out["after_promotion"] = score(endpoint, SCORER, "u1", 0)
    finally:
        from servelab.triton.lab2_1.l02_model_repository_design import unload  # Lab 2.1 的卸載＋刪資料夾

        unload(endpoint, ROUTER, ens, SCORER, ERRORS)
    return out
# --8<-- [end:experiment]


# --8<-- [start:exercises]
def expected_sticky(weight_b: float, requests_per_user: int) -> float:
    """Exercise 1: under a per-request weighted split, the chance that one user sees one version only."""
    return (1 - weight_b) ** requests_per_user + weight_b ** requests_per_user


def min_canary_requests(failure_rate: float, confidence: float = 0.95) -> int:
    """Exercise 2: canary requests needed to see at least one failure of a version failing at
    ``failure_rate``, with probability ``confidence``: 1 − (1 − f)^n ≥ confidence."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - failure_rate))
# --8<-- [end:exercises]


POLICY_COLUMNS = {"policy": "version_policy", "ready": "READY 的版本", "default_version": "不指定版本時回答的版本",
                  "v1": "指定 v1", "v2": "指定 v2", "v3": "指定 v3"}
SPLIT_COLUMNS = {"method": "分流方式", "n": "請求數", "share_b": "B（v2）的比例", "target": "設定的比例",
                 "sticky": "始終同一版本的使用者比例"}
OUTCOME_COLUMNS = {"version": "版本", "n": "請求數", "converted": "轉換數", "rate": "轉換率"}
TEST_COLUMNS = {"diff": "p_B − p_A", "ci_low": "95% CI 下限", "ci_high": "95% CI 上限", "z": "z",
                "p_value": "p 值", "needed_per_arm": "每組所需樣本數（80% 檢定力）", "n_per_arm": "每組實際樣本數"}
CANARY_COLUMNS = {"candidate": "候選版本", "canary_requests": "金絲雀請求數", "canary_failure_rate": "失敗率",
                  "canary_ms": "平均運算（ms）", "baseline_ms": "v1 平均運算（ms）", "client_errors": "用戶端看到的錯誤",
                  "verdict": "決定"}
ERROR_COLUMNS = {"version": "版本", "how": "失敗方式", "client_errors": "用戶端看到的錯誤",
                 "counted_success": "nv_inference_request_success", "counted_failure": "nv_inference_request_failure"}
SHADOW_COLUMNS = {"n": "請求數", "client_versions": "用戶端看到的版本", "client_errors": "用戶端看到的錯誤",
                  "v3_success": "v3（影子）成功", "v3_failure": "v3（影子）失敗"}
ENSEMBLE_COLUMNS = {"outputs": "要求的輸出", "requests": "請求數", "v1": "v1 執行次數", "v2": "v2 執行次數"}


# --8<-- [start:decide]
def decide_winner(out: dict, alpha: float = 0.05) -> dict:
    """The A/B verdict from the hash-split run's measured outcomes."""
    arms = {int(k): v for k, v in out["hashed"]["outcomes"].items()}
    a, b = arms[1], arms[2]
    test = two_proportion_test(a["converted"], a["n"], b["converted"], b["n"], alpha)
    needed = sample_size_per_arm(BEHAVIOUR[1]["p"], BEHAVIOUR[2]["p"], alpha)  # (1)!
    enough = min(a["n"], b["n"]) >= needed
    return {**test, "needed_per_arm": needed, "n_per_arm": min(a["n"], b["n"]), "enough_samples": enough,
            "winner": 2 if enough and test["significant"] and test["diff"] > 0 else None}
# --8<-- [end:decide]


def write_all(endpoint, root: Path | None = None) -> dict:
    """Run :func:`ab_experiment` and write this lesson's results files."""
    from servelab.runtime.results import write_results

    out = ab_experiment(endpoint)
    verdict = decide_winner(out)
    write_results(LESSON, "version_policies", out["policies"], POLICY_COLUMNS, root=root)
    split_rows = [{"method": "BLS 路由：每個請求依權重", "target": 0.2, **_pick(out["weighted"])},
                  {"method": "BLS 路由：使用者 id 的雜湊", "target": 0.5, **_pick(out["hashed"])}]
    write_results(LESSON, "ab_split", split_rows, SPLIT_COLUMNS, {"client_agrees": out["client_agrees"]}, root=root)
    arms = [{"version": int(v), **o, "rate": o["converted"] / o["n"]}
            for v, o in sorted(out["hashed"]["outcomes"].items(), key=lambda kv: int(kv[0]))]
    write_results(LESSON, "ab_outcomes", arms, OUTCOME_COLUMNS,
                  {"true_rates": {v: b["p"] for v, b in BEHAVIOUR.items()}}, root=root)
    write_results(LESSON, "ab_test", [verdict], TEST_COLUMNS, root=root)
    write_results(LESSON, "canary", [{"candidate": c["candidate"], "canary_requests": c["canary"]["requests"],
                                      "canary_failure_rate": c["canary"]["failure_rate"],
                                      "canary_ms": c["canary"]["mean_compute_ms"],
                                      "baseline_ms": c["baseline"]["mean_compute_ms"],
                                      "client_errors": c["client_errors"], "verdict": c["verdict"]}
                                     for c in out["canary"]], CANARY_COLUMNS,
                  {"promoted": out["promoted"]}, root=root)
    write_results(LESSON, "shadow", [out["shadow"]], SHADOW_COLUMNS, root=root)
    write_results(LESSON, "error_accounting", out["error_accounting"], ERROR_COLUMNS, root=root)
    write_results(LESSON, "ensemble_steps", out["ensemble"], ENSEMBLE_COLUMNS, root=root)
    return {**out, "verdict": verdict}


def _pick(run: dict) -> dict:
    return {"n": run["n"], "share_b": run["share_b"], "sticky": run["sticky"]}


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_2/l02_version_control_and_ab_testing``."""
    import tempfile

    from servelab.runtime import triton_endpoint

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        out = write_all(endpoint)
    print(json.dumps(out, ensure_ascii=False, indent=1, default=str))
    return 0
# --8<-- [end:main]


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import asyncio
import hashlib
import inspect
import json
import math
import numpy as np
import os
import random
import re
import time
try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None
from servelab.runtime.memo import experiment
from servelab.triton.lab2_2.l02_version_control_and_ab_testing import (
    _pbtxt, _pick, _window, ab_experiment, BEHAVIOUR, both_versions_ensemble, call_ensemble,
    CANARY_COLUMNS, canary_decision, client_split, counters_now, decide_winner, delta,
    ENSEMBLE_COLUMNS, error_accounting, ERROR_COLUMNS, ERRORS, expected_sticky, hash_bucket, LESSON,
    load, LOAD_TIMEOUT_S, main, min_canary_requests, MODEL_PY_HEADER, normal_cdf, normal_quantile,
    OUTCOME_COLUMNS, outcomes, POLICIES, POLICY_COLUMNS, policy_demo, PREFIX, promote,
    ready_versions, render_model_py, ROUTER, router_config, RouterModel, run_traffic, SAMPLE,
    sample_size_per_arm, score, SCORER, scorer_config, ScorerModel, SHADOW_COLUMNS, share_b,
    SPLIT_COLUMNS, stickiness, TEST_COLUMNS, to_pbtxt_json, two_proportion_test,
    version_counters, version_policy, write_all, write_router, write_scorer
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
