"""01-Multi_Model_Repository — one Triton repository serving several real models side by side.

The repository this lesson builds (:func:`write_multi_model_repository`; lessons 02–04 reuse it):

* ``<prefix>tokenizer`` — pre/post-processing on the Python backend: text → token ids with the bundled
  model's own ``tokenizer.json`` (Hugging Face ``tokenizers``), and token ids → text;
* ``<prefix>classifier`` — a small torch model the package makes (EmbeddingBag 49152×64 → 4 classes);
* ``<prefix>pipeline`` — an ensemble: tokenizer → classifier, so a client sends text and gets a label;
* ``<prefix>llm`` — the bundled LLM (SmolLM2-135M-Instruct) with vLLM inside the Python backend
  (:func:`servelab.runtime.triton_repo.write_vllm_model`).

Every ``model.py`` is rendered from a class of this module (:func:`render_model_py`), so the top level
imports only the standard library, numpy and torch.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from servelab.runtime.memo import experiment

try:  # inside Triton's stub; in this process the classes below are only rendered into model.py files
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None

LESSON = "triton/lab2_2/l01_multi_model_repository"
PREFIX = "l01mm_"  # every model this lesson loads into a shared Triton starts with it
VOCAB, EMBED, N_CLASSES = 49152, 64, 4  # SmolLM2's vocabulary; a 64-wide bag of embeddings; 4 labels
MAX_TOKENS = 32  # the tokenizer pads or cuts every text to 32 ids
LOAD_TIMEOUT_S = 600.0  # the LLM's stub imports vLLM and builds an engine: tens of seconds on a CPU


# --8<-- [start:models]
class TokenizerModel:
    """TEXT → TOKEN_IDS (padded or cut to MAX_TOKENS, pad id 0) + N_TOKENS (the real length)."""

    def initialize(self, args):
        from tokenizers import Tokenizer

        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))  # (1)!
        params = json.loads(args["model_config"]).get("parameters", {})
        self.max_tokens = int(params.get("MAX_TOKENS", {}).get("string_value", "32"))

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            ids = np.zeros((len(texts), self.max_tokens), np.int64)  # pad id 0
            lengths = np.zeros((len(texts), 1), np.int32)
            for row, text in enumerate(texts):
                encoded = self.tokenizer.encode(text.decode("utf-8")).ids[: self.max_tokens]
                ids[row, : len(encoded)] = encoded
                lengths[row, 0] = len(encoded)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TOKEN_IDS", ids), pb_utils.Tensor("N_TOKENS", lengths)]))
        return responses


class BagClassifier(nn.Module):
    """Mean of the token embeddings → a linear head: [batch, MAX_TOKENS] ids → [batch, 4] logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(VOCAB, EMBED, mode="sum")  # weighted sum = mean
        self.head = nn.Linear(EMBED, N_CLASSES)

    def forward(self, ids, lengths):
        mask = torch.arange(ids.shape[1])[None, :] < lengths  # the padding does not count
        weights = mask.float() / lengths.clamp(min=1).float()
        return self.head(self.embed(ids, per_sample_weights=weights))


class ClassifierModel:
    """TOKEN_IDS + N_TOKENS → LOGITS + LABEL, with the weights in ``<version>/weights.pt``."""

    def initialize(self, args):
        torch.set_num_threads(1)  # (2)!
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.model = BagClassifier()
        self.model.load_state_dict(torch.load(os.path.join(folder, "weights.pt"), weights_only=True))
        self.model.eval()

    @torch.inference_mode()
    def execute(self, requests):
        responses = []
        for request in requests:
            ids = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "TOKEN_IDS").as_numpy())
            n = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "N_TOKENS").as_numpy())
            logits = self.model(ids, n).numpy()
            label = logits.argmax(axis=1).astype(np.int32).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LOGITS", logits), pb_utils.Tensor("LABEL", label)]))
        return responses
# --8<-- [end:models]


# The classes above become model.py files; torch's nn.Module classes travel with the model that uses them.
MODEL_PY_HEADER = '''"""Written by servelab.triton.lab2_2.l01_multi_model_repository.render_model_py."""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

VOCAB, EMBED, N_CLASSES = {VOCAB}, {EMBED}, {N_CLASSES}
'''


def render_model_py(model_class: type, *helpers: type, imports: str = "") -> str:
    """A model.py holding ``helpers`` and one class of this module, exposed as ``TritonPythonModel``."""
    parts = [MODEL_PY_HEADER.format(VOCAB=VOCAB, EMBED=EMBED, N_CLASSES=N_CLASSES) + imports]
    parts += [inspect.getsource(c) for c in (*helpers, model_class)]
    return "\n\n".join(parts) + f"\n\nTritonPythonModel = {model_class.__name__}\n"


# --8<-- [start:configs]
def tokenizer_config(name: str, max_batch_size: int = 8, count: int = 1) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [
  {{ name: "TOKEN_IDS" data_type: TYPE_INT64 dims: [ {MAX_TOKENS} ] }},
  {{ name: "N_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
parameters {{ key: "MAX_TOKENS" value: {{ string_value: "{MAX_TOKENS}" }} }}
"""


def classifier_config(name: str, max_batch_size: int = 8, count: int = 1) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [
  {{ name: "TOKEN_IDS" data_type: TYPE_INT64 dims: [ {MAX_TOKENS} ] }},
  {{ name: "N_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }}
]
output [
  {{ name: "LOGITS" data_type: TYPE_FP32 dims: [ {N_CLASSES} ] }},
  {{ name: "LABEL" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
"""


def pipeline_config(name: str, tokenizer: str, classifier: str) -> str:
    """An ensemble: TEXT → tokenizer → classifier → LABEL (a fixed graph; every step always runs)."""
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "LABEL" data_type: TYPE_INT32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{tokenizer}" model_version: -1
     input_map {{ key: "TEXT" value: "TEXT" }}
     output_map [ {{ key: "TOKEN_IDS" value: "ids" }}, {{ key: "N_TOKENS" value: "n" }} ] }},
  {{ model_name: "{classifier}" model_version: -1
     input_map [ {{ key: "TOKEN_IDS" value: "ids" }}, {{ key: "N_TOKENS" value: "n" }} ]
     output_map {{ key: "LABEL" value: "LABEL" }} }}
] }}
"""
# --8<-- [end:configs]


def classifier_weights(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(BagClassifier().state_dict(), buffer)
    return buffer.getvalue()


def tokenizer_json(settings=None) -> bytes:
    """The bundled model's ``tokenizer.json`` (prepared once by :func:`servelab.runtime.prepare_model`)."""
    from servelab.runtime import prepare_model

    return (prepare_model(settings, log=lambda _: None).path / "tokenizer.json").read_bytes()


def tokenizer_files(settings=None) -> dict[str, bytes | str]:
    return {"model.py": render_model_py(TokenizerModel), "tokenizer.json": tokenizer_json(settings)}


def classifier_files(seed: int = 0) -> dict[str, bytes | str]:
    code = render_model_py(ClassifierModel, BagClassifier, imports="import torch\nfrom torch import nn\n")
    return {"model.py": code, "weights.pt": classifier_weights(seed)}


# --8<-- [start:write_repository]
def write_multi_model_repository(repository: Path, prefix: str = PREFIX, *, llm: bool = True,
                                 settings=None, seed: int = 0) -> dict[str, str]:
    """Write the lesson's models into ``repository``; return {role: model name}.

    Roles: ``tokenizer``, ``classifier``, ``pipeline`` (ensemble tokenizer → classifier) and, with
    ``llm=True``, ``llm`` (the bundled LLM, vLLM inside the Python backend)."""
    from servelab.runtime.triton_repo import write_model, write_vllm_model

    names = {role: prefix + role for role in ("tokenizer", "classifier", "pipeline")}
    write_model(repository, names["tokenizer"], tokenizer_config(names["tokenizer"]), tokenizer_files(settings))
    write_model(repository, names["classifier"], classifier_config(names["classifier"]), classifier_files(seed))
    write_model(repository, names["pipeline"],  # an ensemble has an empty version folder
                pipeline_config(names["pipeline"], names["tokenizer"], names["classifier"]))
    if llm:
        names["llm"] = prefix + "llm"
        write_vllm_model(repository, names["llm"], settings)  # (1)!
    return names
# --8<-- [end:write_repository]


# --8<-- [start:tiny]
class TinyModel:
    """Y = X + version: numpy only, so its stub starts in about a second (for the control-mode demos)."""

    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + np.float32(self.version))])
            for r in requests]


def tiny_config(name: str) -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def write_tiny(repository: Path, name: str, version: int = 1, code: str | None = None) -> Path:
    from servelab.runtime.triton_repo import write_model

    code = code or render_model_py(TinyModel)
    return write_model(repository, name, tiny_config(name), {"model.py": code}, version)
# --8<-- [end:tiny]


# --8<-- [start:call]
def classify(endpoint, name: str, texts: list[str]) -> list[int]:
    """Text → label through a model that takes TEXT (the pipeline ensemble)."""
    import tritonclient.http as httpclient

    batch = np.array([[t.encode()] for t in texts], dtype=np.object_)
    text = httpclient.InferInput("TEXT", list(batch.shape), "BYTES")
    text.set_data_from_numpy(batch)
    result = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).infer(name, [text])
    return result.as_numpy("LABEL").reshape(-1).tolist()


def ask(endpoint, name: str, prompt: str, max_tokens: int = 8) -> str:
    """One prompt to the LLM model (input ``prompt``, optional ``max_tokens``; output ``text``)."""
    import tritonclient.http as httpclient

    p = httpclient.InferInput("prompt", [1], "BYTES")
    p.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    m = httpclient.InferInput("max_tokens", [1], "INT32")
    m.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    result = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).infer(name, [p, m])
    return result.as_numpy("text").reshape(-1)[0].decode()
# --8<-- [end:call]


# --8<-- [start:accounting]
def stub_processes(name: str) -> list[dict]:
    """The Python-backend stub processes of model ``name``: one per model instance.

    A stub's command line holds the model's ``model.py`` path and the instance name
    ``<name>_<group>_<index>``; PSS shares pages between processes fairly (torch's libraries
    mapped by five stubs count one fifth in each)."""
    import psutil

    stubs = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] != "triton_python_backend_stub" or len(cmd) < 9:
            continue
        if not re.fullmatch(re.escape(name) + r"_\d+_\d+", cmd[8]):  # (1)!
            continue
        try:
            mem = proc.memory_full_info()
        except psutil.Error:
            continue
        stubs.append({"pid": proc.pid, "instance": cmd[8], "parent": proc.ppid(), "model_py": cmd[1],
                      "rss_mib": mem.rss / 2**20, "pss_mib": mem.pss / 2**20, "uss_mib": mem.uss / 2**20})
    return sorted(stubs, key=lambda s: s["instance"])


def server_rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20
# --8<-- [end:accounting]


def unload(endpoint, *names: str, remove: bool = True) -> None:
    """Unload models (ignoring ones not loaded) and remove their folders from the repository."""
    from tritonclient.utils import InferenceServerException

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    for name in names:
        try:
            client.unload_model(name)
        except InferenceServerException:
            pass
        if remove:
            shutil.rmtree(endpoint.repository / name, ignore_errors=True)


def wait_gone(name: str, timeout_s: float = 30.0) -> None:
    """Unload returns before the stub processes have exited: wait for them."""
    deadline = time.monotonic() + timeout_s
    while stub_processes(name) and time.monotonic() < deadline:
        time.sleep(0.2)


def _summary(role: str, name: str, load_s: float, stubs: list[dict], server_growth: float) -> dict:
    return {"role": role, "model": name, "load_s": round(load_s, 2), "instances": len(stubs),
            "stub_rss_mib": round(sum(s["rss_mib"] for s in stubs), 1),
            "stub_pss_mib": round(sum(s["pss_mib"] for s in stubs), 1),
            "stub_uss_mib": round(sum(s["uss_mib"] for s in stubs), 1),
            "server_growth_mib": round(server_growth, 1)}


# --8<-- [start:tour]
@experiment(ignore=("settings",))
def tour(endpoint, prefix: str = PREFIX, llm: bool = True, settings=None) -> dict:
    """Write the repository into the running server's repository, load model by model (explicit mode),
    measure each model's stubs and the server's growth, call each model, then unload everything."""
    names = write_multi_model_repository(endpoint.repository, prefix, llm=llm, settings=settings)
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    index_before = [m for m in client.get_model_repository_index() if m["name"].startswith(prefix)]
    rows, server_pid = [], None
    try:
        for role in ("tokenizer", "classifier", "pipeline", *(["llm"] if llm else [])):
            before = server_rss_mib(server_pid) if server_pid else None
            start = time.perf_counter()
            client.load_model(names[role])  # (1)!
            load_s = time.perf_counter() - start
            stubs = stub_processes(names[role])
            server_pid = server_pid or (stubs[0]["parent"] if stubs else None)
            growth = server_rss_mib(server_pid) - before if before is not None and server_pid else 0.0
            rows.append(_summary(role, names[role], load_s, stubs, growth))
        index_after = [m for m in client.get_model_repository_index() if m["name"].startswith(prefix)]
        texts = ["the movie was wonderful", "the service was slow and rude"]
        answers = {"pipeline": classify(endpoint, names["pipeline"], texts)}
        if llm:
            answers["llm"] = ask(endpoint, names["llm"], "What is the capital of France?", max_tokens=8)
        config = client.get_model_config(names["classifier"])
        config["instance_group"][0]["count"] = 2  # (2)!
        start = time.perf_counter()
        client.load_model(names["classifier"], config=json.dumps(config))
        reload_s = time.perf_counter() - start
        two = stub_processes(names["classifier"])
        rows.append(_summary("classifier ×2", names["classifier"], reload_s, two, 0.0))
        after_override = client.get_model_config(names["classifier"])["instance_group"][0]["count"]
        on_disk = "count: 1" in (endpoint.repository / names["classifier"] / "config.pbtxt").read_text()
    finally:
        unload(endpoint, *reversed(list(names.values())))
    for name in names.values():
        wait_gone(name)
    return {"names": names, "rows": rows, "index_before": index_before, "index_after": index_after,
            "answers": answers, "override_count": after_override, "file_still_count_1": on_disk,
            "stubs_left": sum(len(stub_processes(n)) for n in names.values())}
# --8<-- [end:tour]


# --8<-- [start:payload]
@experiment(ignore=("settings",))
def load_from_payload(endpoint, name: str = PREFIX + "payload", settings=None) -> dict:
    """Load a model that is NOT in the repository: its config as JSON and its files in the request."""
    from tritonclient.utils import InferenceServerException

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    files = {f"file:1/{filename}": content if isinstance(content, bytes) else content.encode()
             for filename, content in tokenizer_files(settings).items()}  # (1)!
    config = {"name": name, "backend": "python", "max_batch_size": 8,
              "input": [{"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]}],
              "output": [{"name": "TOKEN_IDS", "data_type": "TYPE_INT64", "dims": [MAX_TOKENS]},
                         {"name": "N_TOKENS", "data_type": "TYPE_INT32", "dims": [1]}],
              "instance_group": [{"kind": "KIND_CPU", "count": 1}]}
    outcome = {"in_repository": (endpoint.repository / name).exists()}
    try:
        client.load_model(name, files=files)  # files without a config: refused
    except InferenceServerException as exc:
        outcome["files_without_config"] = {"status": int(exc.status() or 0), "message": exc.message()}
    try:
        client.load_model(name, config=json.dumps(config), files=files)  # (2)!
        outcome["ready"] = client.is_model_ready(name)
        outcome["indexed"] = [m for m in client.get_model_repository_index() if m["name"] == name]
        outcome["stubs"] = len(stub_processes(name))
        outcome["model_py"] = [s["model_py"] for s in stub_processes(name)]  # (3)!
    finally:
        unload(endpoint, name, remove=False)
    return outcome
# --8<-- [end:payload]


# --8<-- [start:control_modes]
def index_states(endpoint) -> dict[str, str]:
    """{model: state} from the repository index (state "" = found on disk, never loaded)."""
    return {m["name"]: m.get("state", "") for m in endpoint.http_client().get_model_repository_index()}


def try_load(endpoint, name: str) -> dict:
    from tritonclient.utils import InferenceServerException

    try:
        endpoint.http_client(network_timeout=LOAD_TIMEOUT_S).load_model(name)
        return {"status": 200, "message": ""}
    except InferenceServerException as exc:
        return {"status": int(exc.status() or 0), "message": exc.message()}


@experiment
def control_modes(prefix: str = PREFIX, poll_secs: int = 1) -> dict:
    """The same two-model repository under NONE, EXPLICIT (--load-model) and POLL; in POLL, the race."""
    from servelab.runtime import triton_server
    from servelab.runtime.triton_server import server_env

    a, b = prefix + "a", prefix + "b"
    modes = {"none": [], "explicit": [f"--load-model={a}"], "poll": [f"--repository-poll-secs={poll_secs}"]}

    def run(mode: str) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp)
            write_tiny(repo, a, code=code), write_tiny(repo, b, code=code)
            start = time.perf_counter()
            with triton_server(repo, control_mode=mode, extra_args=modes[mode]) as endpoint:  # (1)!
                row = {"mode": mode, "flags": " ".join(modes[mode]),
                       "ready_s": round(time.perf_counter() - start, 2), "at_start": index_states(endpoint)}
                load_b = try_load(endpoint, b)  # (2)!
                row.update(load_status=load_b["status"], load_message=load_b["message"],
                           after_load=index_states(endpoint))
                if mode == "poll":
                    row["race"] = poll_race(endpoint, repo, prefix + "race", poll_secs)
                return row

    server_env()  # prepares the backend's Python environment once, before three threads read it
    code = render_model_py(TinyModel)  # inspect.getsource is not safe from several threads at once
    with ThreadPoolExecutor(len(modes)) as pool:  # three small servers side by side: one wait, not three
        rows = list(pool.map(run, modes))
    return {"modes": rows, "race": rows[-1].pop("race")}
# --8<-- [end:control_modes]


# --8<-- [start:poll_race]
HALF_WRITTEN = "class TritonPythonModel:\n    def initialize(self, args):\n"  # a copy cut mid-file


def poll_race(endpoint, repo: Path, name: str, poll_secs: int = 1, copy_s: float = 2.0,
              max_copy_s: float = 15.0) -> dict:
    """POLL mode sees a model folder while it is still being copied (a slow ``cp -r``, a ``git pull``).
    The copy takes at least ``copy_s`` and lasts until a poll has seen the half (at most ``max_copy_s``)."""
    timeline, start = [], time.perf_counter()

    def watch(until: float, stop_at: str = "") -> None:
        while time.perf_counter() - start < until:
            state = index_states(endpoint).get(name, "absent")
            if not timeline or timeline[-1]["state"] != state:
                served = call_tiny(endpoint, name)
                timeline.append({"t_s": round(time.perf_counter() - start, 2), "state": state,
                                 "infer_status": served["status"], "infer_message": served["message"]})
            if stop_at and state == stop_at and time.perf_counter() - start >= copy_s:
                return
            time.sleep(0.1)

    folder = repo / name / "1"
    folder.mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(tiny_config(name))  # (1)!
    (folder / "model.py").write_text(HALF_WRITTEN)
    watch(max_copy_s, stop_at="UNAVAILABLE")  # the copy is slow: Triton polls in between
    (folder / "model.py").write_text(render_model_py(TinyModel))  # (2)!
    copied_at = round(time.perf_counter() - start, 2)
    watch(copied_at + 4 * poll_secs + 15, stop_at="READY")  # a loaded machine: loading can take seconds
    return {"timeline": timeline, "copied_at_s": copied_at,
            "ready_finally": endpoint.http_client().is_model_ready(name)}


def call_tiny(endpoint, name: str, x: float = 1.0) -> dict:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("X", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[x]], np.float32))
    try:
        y = endpoint.http_client().infer(name, [tensor]).as_numpy("Y")
        return {"status": 200, "message": "", "y": float(y[0, 0])}
    except InferenceServerException as exc:
        return {"status": int(exc.status() or 0), "message": exc.message()}
# --8<-- [end:poll_race]


# --8<-- [start:remote]
def s3_unreachable(bucket_url: str = "s3://127.0.0.1:9/models") -> dict:
    """Triton 2.51 with an S3 repository whose endpoint does not answer: what the server says."""
    import subprocess

    from servelab.runtime import get_settings
    from servelab.runtime.process import free_port
    from servelab.runtime.triton_server import serve_spec, server_env

    settings = get_settings()
    ports = {k: free_port(settings.host) for k in ("http", "grpc", "metrics")}
    argv = serve_spec(settings, [Path("/REPO")], ports)
    argv = [f"--model-repository={bucket_url}" if a.startswith("--model-repository") else a for a in argv]
    env = {**os.environ, **server_env(settings), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    error = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    return {"returncode": proc.returncode, "error": error[-1] if error else "",
            "seconds": round(time.perf_counter() - start, 1)}
# --8<-- [end:remote]


# --8<-- [start:exercise_fit]
def instances_that_fit(budget_mib: float, first_pss_mib: float, extra_uss_mib: float) -> int:
    """Exercise 1: how many instances of one model fit in a memory budget, from measured figures:
    the first instance costs its PSS (it brings the shared libraries), each further one its USS."""
    if budget_mib < first_pss_mib:
        return 0
    return 1 + int((budget_mib - first_pss_mib) // extra_uss_mib)
# --8<-- [end:exercise_fit]


# --8<-- [start:exercise_publish]
def publish_atomically(model_folder: Path, repository: Path) -> Path:
    """Exercise 2: copy a model folder next to the repository, then rename it in. A rename inside one
    file system is atomic: a POLL-mode server sees no folder, or the whole folder, never half of it."""
    repository = Path(repository)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repository.parent))  # (1)!
    shutil.copytree(model_folder, staging / model_folder.name)
    target = repository / model_folder.name
    if target.exists():
        shutil.rmtree(target)
    os.rename(staging / model_folder.name, target)  # (2)!
    staging.rmdir()
    return target
# --8<-- [end:exercise_publish]


MEMORY_COLUMNS = {"role": "角色", "model": "模型", "instances": "執行個體（stub 行程）", "load_s": "載入秒數",
                  "stub_rss_mib": "stub RSS（MiB）", "stub_pss_mib": "stub PSS（MiB）",
                  "stub_uss_mib": "stub USS（MiB）", "server_growth_mib": "tritonserver 增長（MiB）"}
MODE_COLUMNS = {"mode": "模式", "flags": "旗標", "ready_s": "就緒秒數", "at_start": "啟動後的索引",
                "load_status": "load b 的 HTTP", "load_message": "訊息"}
RACE_COLUMNS = {"t_s": "時間（s）", "state": "索引裡的狀態", "infer_status": "推論 HTTP", "infer_message": "推論訊息"}


def _states(index: dict) -> str:
    return ", ".join(f"{k.removeprefix(PREFIX)}={v or '（未載入）'}" for k, v in sorted(index.items()))


# --8<-- [start:write_all]
def write_all(endpoint, settings=None, root: Path | None = None) -> dict:
    """Run the lesson's measurements and write its results files."""
    from servelab.runtime.results import write_results

    seen = tour(endpoint, settings=settings)
    modes = control_modes()
    payload = load_from_payload(endpoint, settings=settings)
    write_results(LESSON, "per_model_memory", seen["rows"], MEMORY_COLUMNS,
                  {"answers": seen["answers"], "override_count": seen["override_count"]}, root=root)
    write_results(LESSON, "control_modes", [{**r, "at_start": _states(r["at_start"])} for r in modes["modes"]],
                  MODE_COLUMNS, root=root)
    write_results(LESSON, "poll_race", modes["race"]["timeline"], RACE_COLUMNS,
                  {"copied_at_s": modes["race"]["copied_at_s"]}, root=root)
    return {"tour": seen, "modes": modes, "payload": payload}
# --8<-- [end:write_all]


def write_remote(root: Path | None = None) -> dict:
    """The S3 attempt (about a minute: the S3 client retries before it gives up), as ``remote_s3``."""
    from servelab.runtime.results import write_results

    outcome = s3_unreachable()
    write_results(LESSON, "remote_s3", [outcome], {"returncode": "結束碼", "seconds": "秒數",
                                                   "error": "tritonserver 的訊息"}, root=root)
    return outcome


# --8<-- [start:gpu]
def gpu_used_mib(endpoint) -> float:
    """Triton's own ``nv_gpu_memory_used_bytes``, summed over GPUs (refreshed every metrics interval, 2 s)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in endpoint.metrics_text().splitlines()
               if line.startswith("nv_gpu_memory_used_bytes{")) / 2**20


def write_gpu(endpoint, root: Path | None = None) -> list[dict]:
    """GPU profile: load the four models one by one and record the GPU memory each one adds
    (the LLM's instance is KIND_GPU there); written as ``per_model_memory_gpu``."""
    from servelab.runtime.results import write_results

    names = write_multi_model_repository(endpoint.repository, PREFIX + "gpu_")
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    rows = []
    try:
        for role in ("tokenizer", "classifier", "pipeline", "llm"):
            time.sleep(2.5)  # one metrics interval: the "before" figure is current
            before = gpu_used_mib(endpoint)
            start = time.perf_counter()
            client.load_model(names[role])
            load_s = time.perf_counter() - start
            time.sleep(2.5)
            stubs = stub_processes(names[role])
            rows.append({**_summary(role, names[role], load_s, stubs, 0.0),
                         "gpu_mib": round(gpu_used_mib(endpoint) - before, 1)})
        rows[-1]["answer"] = ask(endpoint, names["llm"], "What is the capital of France?", max_tokens=8)
    finally:
        unload(endpoint, *reversed(list(names.values())))
    write_results(LESSON, "per_model_memory_gpu", rows,
                  {**{k: v for k, v in MEMORY_COLUMNS.items() if k != "server_growth_mib"},
                   "gpu_mib": "GPU 記憶體增加（MiB）"}, root=root)
    return rows
# --8<-- [end:gpu]


# --8<-- [start:main]
def main() -> int:
    """``servelab run triton/lab2_2/l01_multi_model_repository``."""
    from servelab.runtime import triton_endpoint

    from servelab.runtime import get_settings

    with tempfile.TemporaryDirectory() as tmp, triton_endpoint(Path(tmp)) as endpoint:
        if get_settings().profile == "gpu":
            print(json.dumps(write_gpu(endpoint), ensure_ascii=False, indent=1))
            return 0
        out = write_all(endpoint)
    out["remote"] = write_remote()
    print(json.dumps(out, ensure_ascii=False, indent=1, default=str))
    return 0
# --8<-- [end:main]


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from torch import nn
import inspect
import io
import json
import numpy as np
import os
import re
import shutil
import tempfile
import time
import torch
try:  # only inside Triton's Python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None
from servelab.runtime.memo import experiment
from servelab.triton.lab2_2.l01_multi_model_repository import (
    _states, _summary, ask, BagClassifier, call_tiny, classifier_config, classifier_files,
    classifier_weights, ClassifierModel, classify, control_modes, EMBED, HALF_WRITTEN, index_states,
    instances_that_fit, LESSON, load_from_payload, LOAD_TIMEOUT_S, main, MAX_TOKENS, MEMORY_COLUMNS,
    MODE_COLUMNS, MODEL_PY_HEADER, N_CLASSES, pipeline_config, poll_race, PREFIX,
    publish_atomically, RACE_COLUMNS, render_model_py, s3_unreachable, server_rss_mib,
    gpu_used_mib, write_gpu,
    stub_processes, tiny_config, TinyModel, tokenizer_config, tokenizer_files, tokenizer_json,
    TokenizerModel, tour, try_load, unload, VOCAB, wait_gone, write_all,
    write_multi_model_repository, write_remote, write_tiny
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
