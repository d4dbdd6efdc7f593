"""02-Model_Repository_Design — generate, validate and load Triton model repositories.

The lesson module: a typed builder (dataclasses → ``config.pbtxt`` in protobuf text format), a validator
that checks a model folder before the server sees it, and the experiments the page shows (two versions
served at once, version policies, ``instance_group``, auto-completed configs, deliberately broken
models and the real messages Triton answers with).

The classes ``ScaleModel``, ``SelfDescribingModel``, ``BusyModel`` and ``CudaModel`` are Python-backend
models: :func:`render_model_py` writes one of them, unchanged, into ``<repo>/<name>/<version>/model.py``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # only inside Triton's Python backend stub; the lesson module itself never calls it
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - the normal case outside Triton
    pb_utils = None

LESSON = "triton/lab2_1/l02_model_repository_design"
PREFIX = "l02repo_"  # every model this lesson loads into a shared Triton starts with it
LOAD_TIMEOUT_S = 120.0


# --8<-- [start:default_files]
BACKEND_FILES = {  # backend → the file (or folder) each version folder must hold by default
    "python": "model.py",
    "onnxruntime": "model.onnx",
    "pytorch": "model.pt",
    "tensorrt": "model.plan",
    "tensorflow": "model.savedmodel",  # a folder; later Triton releases no longer ship this backend
    "openvino": "model.xml",
}
PLATFORMS = {  # the older "platform" field names a backend and its file format at once
    "onnxruntime_onnx": ("onnxruntime", "model.onnx"),
    "pytorch_libtorch": ("pytorch", "model.pt"),
    "tensorrt_plan": ("tensorrt", "model.plan"),
    "tensorflow_savedmodel": ("tensorflow", "model.savedmodel"),
    "tensorflow_graphdef": ("tensorflow", "model.graphdef"),
}
# --8<-- [end:default_files]


# --8<-- [start:tensor]
@dataclass(frozen=True)
class Tensor:
    """One ``input``/``output`` entry. ``dims`` excludes the batch dimension when max_batch_size > 0."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_INT64, TYPE_STRING, ...
    dims: tuple[int, ...]  # -1 = any size along that axis
    reshape: tuple[int, ...] | None = None  # the shape the model itself sees

    def to_pbtxt(self) -> str:
        lines = [f'name: "{self.name}"', f"data_type: {self.data_type}", f"dims: {_list(self.dims)}"]
        if self.reshape is not None:
            lines.append(f"reshape: {{ shape: {_list(self.reshape)} }}")
        return "{\n" + "".join(f"    {line}\n" for line in lines) + "  }"


@dataclass(frozen=True)
class InstanceGroup:
    count: int = 1
    kind: str = "KIND_CPU"  # KIND_CPU | KIND_GPU (| KIND_MODEL, KIND_AUTO)
    gpus: tuple[int, ...] = ()  # which GPUs; empty = every visible GPU gets `count` instances

    def to_pbtxt(self) -> str:
        gpus = f"\n    gpus: {_list(self.gpus)}" if self.gpus else ""
        return f"{{\n    count: {self.count}\n    kind: {self.kind}{gpus}\n  }}"


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def latest(cls, n: int = 1) -> VersionPolicy:
        return cls("latest", num_versions=n)

    @classmethod
    def all(cls) -> VersionPolicy:
        return cls("all")

    @classmethod
    def specific(cls, *versions: int) -> VersionPolicy:
        return cls("specific", versions=versions)

    def to_pbtxt(self) -> str:
        body = {"latest": f"latest: {{ num_versions: {self.num_versions} }}", "all": "all: { }",
                "specific": f"specific: {{ versions: {_list(self.versions)} }}"}[self.kind]
        return f"version_policy: {{ {body} }}"

    def __str__(self) -> str:
        return {"latest": f"latest {{ num_versions: {self.num_versions} }}", "all": "all { }",
                "specific": f"specific {{ versions: {list(self.versions)} }}"}[self.kind]


def _list(values: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"
# --8<-- [end:tensor]


# --8<-- [start:model_config]
@dataclass
class ModelConfig:
    """The fields of Triton's ModelConfig protobuf this lesson uses, rendered as ``config.pbtxt``."""

    name: str
    backend: str | None = "python"
    platform: str | None = None
    max_batch_size: int = 0  # 0: no batching, dims are the full shape
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    instance_groups: list[InstanceGroup] = field(default_factory=list)
    version_policy: VersionPolicy | None = None  # None: latest { num_versions: 1 }
    dynamic_batching: bool = False
    parameters: dict[str, str] = field(default_factory=dict)

    def to_pbtxt(self) -> str:
        out = [f'name: "{self.name}"']
        if self.backend:
            out.append(f'backend: "{self.backend}"')
        if self.platform:
            out.append(f'platform: "{self.platform}"')
        out.append(f"max_batch_size: {self.max_batch_size}")
        if self.version_policy:
            out.append(self.version_policy.to_pbtxt())
        for key, items in (("input", self.inputs), ("output", self.outputs),
                           ("instance_group", self.instance_groups)):
            if items:  # repeated fields: key [ {...}, {...} ]
                out.append(f"{key} [\n  " + ",\n  ".join(i.to_pbtxt() for i in items) + "\n]")
        for key, value in self.parameters.items():
            out.append(f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
        if self.dynamic_batching:
            out.append("dynamic_batching { }")
        return "\n".join(out) + "\n"
# --8<-- [end:model_config]


# --8<-- [start:model_folder]
MODEL_PY_HEADER = '''"""Written by servelab.triton.lab2_1.l02_model_repository_design.render_model_py."""
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

'''


def render_model_py(model_class: type) -> str:
    """A model.py holding one class of this module, exposed under the name the backend looks for."""
    return (MODEL_PY_HEADER + inspect.getsource(model_class)
            + f"\n\nTritonPythonModel = {model_class.__name__}\n")


@dataclass
class ModelFolder:
    """``<name>/config.pbtxt`` plus one sub-folder per version (normally named 1, 2, 3 ...)."""

    name: str
    config: ModelConfig | str | None  # None: no config.pbtxt at all (auto-complete must fill it)
    versions: dict[str, dict[str, str | bytes]]  # folder name → {file name: content}

    def write(self, repository: Path) -> Path:
        from servelab.runtime.triton_repo import write_model

        folder = Path(repository) / self.name
        shutil.rmtree(folder, ignore_errors=True)  # no stale versions from an earlier write
        text = self.config.to_pbtxt() if isinstance(self.config, ModelConfig) else self.config
        for version, files in self.versions.items():
            write_model(repository, self.name, text or "", files, version=version)
        if text is None:  # write_model always writes a config.pbtxt: remove it
            (folder / "config.pbtxt").unlink()
        return folder
# --8<-- [end:model_folder]


# --8<-- [start:scale_model]
class ScaleModel:
    """Y = X × version: a response tells which version folder answered."""

    def initialize(self, args):
        self.version = int(args["model_version"])  # (1)!

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = (x * self.version).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))  # (2)!
        return responses
# --8<-- [end:scale_model]


# --8<-- [start:scale_folder]
def scale_config(name: str, **overrides) -> ModelConfig:
    base = dict(name=name, backend="python", max_batch_size=8,
                inputs=[Tensor("X", "TYPE_FP32", (4,))], outputs=[Tensor("Y", "TYPE_FP32", (4,))],
                instance_groups=[InstanceGroup(count=1, kind="KIND_CPU")])
    return ModelConfig(**{**base, **overrides})


def scale_folder(name: str, versions=(1,), **overrides) -> ModelFolder:
    code = render_model_py(ScaleModel)
    return ModelFolder(name, scale_config(name, **overrides), {str(v): {"model.py": code} for v in versions})
# --8<-- [end:scale_folder]


# --8<-- [start:call]
def call(endpoint, name: str, inputs: dict[str, np.ndarray], version: str = "") -> dict:
    """One HTTP inference; the server's answer or its error, as a dict."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    tensors = []
    for key, array in inputs.items():
        tensors.append(httpclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype)))
        tensors[-1].set_data_from_numpy(array)
    try:
        result = client.infer(name, tensors, model_version=version)
    except InferenceServerException as exc:
        return {"status": int(exc.status() or 0), "error": exc.message()}
    finally:
        client.close()
    body = result.get_response()
    return {"status": 200, "model_version": body["model_version"],
            "outputs": {o["name"]: result.as_numpy(o["name"]) for o in body["outputs"]},
            "datatypes": {o["name"]: o["datatype"] for o in body["outputs"]},
            "shapes": {o["name"]: o["shape"] for o in body["outputs"]}}
# --8<-- [end:call]


def unload(endpoint, *names: str) -> None:
    """Unload models (ignoring ones that are not loaded) and remove their folders from the repository."""
    from tritonclient.utils import InferenceServerException

    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        for name in names:
            try:
                client.unload_model(name)
            except InferenceServerException:
                pass
            shutil.rmtree(endpoint.repository / name, ignore_errors=True)
    finally:
        client.close()


def workdir(path: Path | None = None) -> Path:
    from servelab.runtime import get_settings

    folder = Path(path) if path else get_settings().cache_dir / "lessons" / "l02_model_repository_design"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --8<-- [start:first_model]
def first_model(endpoint, repository: Path) -> dict:
    """Write a model folder, copy it into the server's repository, load it, infer."""
    folder = scale_folder(PREFIX + "scale").write(repository)
    endpoint.add_model(folder)  # copies the folder, then POST /v2/repository/models/<name>/load
    client = endpoint.http_client()
    try:
        metadata = client.get_model_metadata(folder.name)  # shapes as clients must send them
        config = client.get_model_config(folder.name)  # the config the server actually uses
    finally:
        client.close()
    answer = call(endpoint, folder.name, {"X": np.ones((2, 4), np.float32)})
    return {"config.pbtxt": (folder / "config.pbtxt").read_text(), "metadata": metadata,
            "server_config": config, "answer": answer}
# --8<-- [end:first_model]


# --8<-- [start:versions]
POLICIES = (VersionPolicy.latest(1), VersionPolicy.latest(2), VersionPolicy.all(), VersionPolicy.specific(1, 3))


def ready_versions(endpoint, name: str) -> list[int]:
    client = endpoint.http_client()
    try:
        index = client.get_model_repository_index()  # POST /v2/repository/index
    finally:
        client.close()
    return sorted(int(m["version"]) for m in index if m["name"] == name and m.get("state") == "READY")


def version_policy_demo(endpoint, repository: Path, policies=POLICIES) -> list[dict]:
    """Three version folders; reload the same model under each policy and ask every version."""
    name, rows = PREFIX + "versions", []
    x = {"X": np.ones((1, 4), np.float32)}
    for policy in policies:
        folder = scale_folder(name, versions=(1, 2, 3), version_policy=policy).write(repository)
        endpoint.add_model(folder)  # explicit mode: a second load_model reloads with the new config
        row = {"policy": str(policy), "ready": ready_versions(endpoint, name)}
        for version in ("", "1", "2", "3"):  # "" = let the server choose
            answer = call(endpoint, name, x, version=version)
            row[f"v{version or '_'}"] = (f"v{answer['model_version']} → {answer['outputs']['Y'][0, 0]:g}"
                                         if answer["status"] == 200 else answer["error"])
        rows.append(row)
    return rows
# --8<-- [end:versions]


# --8<-- [start:busy_model]
class BusyModel:
    """Pure-Python work per request; answers which process ran it, and when (a clock all processes share)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.iterations = int(config["parameters"]["WORK_ITERATIONS"]["string_value"])
        self.pid = os.getpid()  # (1)!

    def execute(self, requests):
        responses = []
        for _ in requests:
            start, total = time.monotonic(), 0
            for i in range(self.iterations):  # holds this stub process's GIL
                total += i * i
            span = np.array([start, time.monotonic()], dtype=np.float64)
            pid = np.array([self.pid], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("PID", pid), pb_utils.Tensor("SPAN", span)]))
        return responses
# --8<-- [end:busy_model]


# --8<-- [start:instance_groups]
def busy_folder(name: str, count: int, iterations: int = 150_000, kind: str = "KIND_CPU") -> ModelFolder:
    config = ModelConfig(name, max_batch_size=0, inputs=[Tensor("X", "TYPE_FP32", (1,))],
                         outputs=[Tensor("PID", "TYPE_INT64", (1,)), Tensor("SPAN", "TYPE_FP64", (2,))],
                         instance_groups=[InstanceGroup(count=count, kind=kind)],
                         parameters={"WORK_ITERATIONS": str(iterations)})
    return ModelFolder(name, config, {"1": {"model.py": render_model_py(BusyModel)}})


def run_requests(endpoint, name: str, n: int, concurrency: int) -> tuple[float, set[int], list]:
    """n requests, `concurrency` in flight: (seconds, process ids that answered, execution spans)."""
    import tritonclient.http as httpclient

    client = endpoint.http_client(concurrency=concurrency, network_timeout=LOAD_TIMEOUT_S)
    x = httpclient.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32))
    try:
        start = time.perf_counter()
        results = [p.get_result() for p in [client.async_infer(name, [x]) for _ in range(n)]]  # (1)!
        seconds = time.perf_counter() - start
    finally:
        client.close()
    return (seconds, {int(r.as_numpy("PID")[0]) for r in results},
            [tuple(r.as_numpy("SPAN")) for r in results])


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most executions that were running at the same instant."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def measure_instance_groups(endpoint, repository: Path, counts=(1, 2, 4), requests: int = 32,
                            concurrency: int = 4, rounds: int = 3) -> list[dict]:
    """One model per count, loaded side by side; measurement rounds interleave (median resists noise)."""
    stats = {}
    for count in counts:
        folder = busy_folder(f"{PREFIX}busy_c{count}", count).write(repository)
        start = time.perf_counter()
        endpoint.add_model(folder)  # returns when every instance is initialized
        stats[count] = {"load_s": time.perf_counter() - start, "pids": set(), "spans": [], "rps": []}
        run_requests(endpoint, folder.name, concurrency, concurrency)  # warm-up
    for _ in range(rounds):
        for count in counts:
            seconds, pids, spans = run_requests(endpoint, f"{PREFIX}busy_c{count}", requests, concurrency)
            stats[count]["rps"].append(requests / seconds)
            stats[count]["pids"] |= pids
            stats[count]["spans"] += spans
    unload(endpoint, *(f"{PREFIX}busy_c{c}" for c in counts))
    median = {c: sorted(s["rps"])[rounds // 2] for c, s in stats.items()}
    return [{"count": c, "load_s": s["load_s"], "processes": len(s["pids"]), "parallel": max_overlap(s["spans"]),
             "rps": median[c], "speedup": median[c] / median[counts[0]]} for c, s in stats.items()]
# --8<-- [end:instance_groups]


# --8<-- [start:self_describing_model]
class SelfDescribingModel:
    """A model that tells Triton its own inputs, outputs and batch size."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):  # (1)!
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [4]})
        auto_complete_model_config.set_dynamic_batching()  # (2)!
        return auto_complete_model_config

    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * self.version)]))
        return responses
# --8<-- [end:self_describing_model]


# --8<-- [start:strict_server]
@contextmanager
def strict_triton(repository: Path) -> Iterator:
    """A second Triton that does not auto-complete configs (the flag replaces --strict-model-config)."""
    from servelab.runtime import triton_server

    Path(repository).mkdir(parents=True, exist_ok=True)
    with triton_server(repository, extra_args=["--disable-auto-complete-config"]) as endpoint:
        try:
            yield endpoint
        finally:  # a model stuck in LOADING keeps Triton from exiting on SIGTERM: kill it sooner
            endpoint.process.stop(timeout_s=5)
# --8<-- [end:strict_server]


# --8<-- [start:auto_complete]
def self_describing_folder(name: str, with_config: bool = True) -> ModelFolder:
    config = 'backend: "python"\n' if with_config else None  # nothing but the backend
    return ModelFolder(name, config, {"1": {"model.py": render_model_py(SelfDescribingModel)}})


def completed_config(endpoint, repository: Path, name: str = PREFIX + "auto") -> dict:
    """Load the minimal folder; return GET /v2/models/<name>/config and one inference."""
    endpoint.add_model(self_describing_folder(name).write(repository))
    client = endpoint.http_client()
    try:
        config = client.get_model_config(name)
    finally:
        client.close()
    return {"config": config, "answer": call(endpoint, name, {"X": np.ones((2, 4), np.float32)})}
# --8<-- [end:auto_complete]


def _summary(config: dict, key: str) -> str:
    value = config.get(key)
    if key in ("input", "output"):
        return ", ".join(f"{t['name']} {t['data_type']} {list(map(int, t['dims']))}" for t in value or []) or "（空）"
    if key == "instance_group":
        return ", ".join(f"{g.get('count', 1)} × {g.get('kind', 'KIND_AUTO')}" for g in value or []) or "（未寫）"
    if key == "dynamic_batching":
        return "（未寫）" if value is None else f"開啟，preferred_batch_size {value.get('preferred_batch_size', [])}"
    if key == "version_policy":
        return json.dumps(value) if value else "（未寫）"
    return "（未寫）" if value in (None, "") else str(value)


def compare_auto_complete(default: dict, strict: dict, file_text: str) -> list[dict]:
    """Rows: field | what config.pbtxt says | default server | --disable-auto-complete-config."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    written = json_format.MessageToDict(text_format.Parse(file_text, model_config_pb2.ModelConfig()),
                                        preserving_proto_field_name=True)
    rows = [{"field": key, "file": _summary(written, key), "default": _summary(default["config"], key),
             "strict": _summary(strict["config"], key)}
            for key in ("backend", "max_batch_size", "input", "output", "dynamic_batching",
                        "instance_group", "default_model_filename")]
    answer = {k: (f"200，Y 形狀 {v['answer']['shapes']['Y']}" if v["answer"]["status"] == 200 else v["answer"]["error"])
              for k, v in (("default", default), ("strict", strict))}
    rows.append({"field": "推論 X[2,4]", "file": "", **answer})
    return rows


# --8<-- [start:validator]
@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error": Triton will refuse or misbehave; "warning": probably not what you meant
    detail: str


def version_folders(folder: Path) -> tuple[list[int], list[str]]:
    """Numeric sub-folders Triton serves, and sub-folders it silently ignores ("v2", "01", "0")."""
    served, ignored = [], []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        (served if child.name.isdigit() and not child.name.startswith("0") else ignored).append(child.name)
    return sorted(int(v) for v in served), ignored


def validate_model(folder: Path, gpus: int | None = None, backends: set[str] | None = None,
                   requests: dict[str, tuple[int, ...]] | None = None) -> list[Finding]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    found: list[Finding] = []
    versions, ignored = version_folders(folder)
    if ignored:
        found.append(Finding("ignored-folder", "warning", f"Triton 會忽略 {ignored}（非數字或以 0 開頭）"))
    if not versions:
        found.append(Finding("no-version", "error", "沒有任何數字版本資料夾"))
    if not (folder / "config.pbtxt").exists():
        found.append(Finding("no-config", "warning", "沒有 config.pbtxt：只能靠後端自動補完"))
        return found
    try:  # (1)!
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        return [*found, Finding("config-parse", "error", str(exc))]
    if config.name and config.name != folder.name:
        found.append(Finding("name-mismatch", "error", f"name {config.name!r} ≠ 資料夾 {folder.name!r}"))
    backend, filename = config.backend, BACKEND_FILES.get(config.backend)
    if config.platform in PLATFORMS:
        backend, filename = PLATFORMS[config.platform]
    if not backend:
        found.append(Finding("no-backend", "error", "backend 與 platform 都沒寫"))
    elif backends is not None and backend not in backends:
        found.append(Finding("backend-not-installed", "error", f"伺服器沒有 {backend!r} 後端"))
    filename = config.default_model_filename or filename
    for version in versions:
        if filename and not (folder / str(version) / filename).exists():
            found.append(Finding("missing-model-file", "error", f"{version}/{filename} 不存在"))
    if config.version_policy.HasField("specific"):
        missing = sorted(set(config.version_policy.specific.versions) - set(versions))
        if missing:
            found.append(Finding("policy-version-missing", "error", f"version_policy 指定的 {missing} 不存在"))
    found += _check_tensors(config, requests or {})
    for group in config.instance_group:
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and gpus == 0:
            found.append(Finding("no-gpu", "error", "KIND_GPU，但這台機器沒有 GPU"))
    if backend == "python":
        found += _check_python_outputs(folder, versions, filename or "model.py", config)
    return found
# --8<-- [end:validator]


# --8<-- [start:validator_tensors]
def full_shape(dims, max_batch_size: int) -> list[int]:
    """The shape clients must send: [-1] + dims when the model batches, dims otherwise."""
    return ([-1] if max_batch_size > 0 else []) + [int(d) for d in dims]


def _check_tensors(config, requests: dict[str, tuple[int, ...]]) -> list[Finding]:
    found, names = [], set()
    for tensor in [*config.input, *config.output]:
        if tensor.name in names:
            found.append(Finding("duplicate-name", "error", f"{tensor.name} 出現兩次"))
        names.add(tensor.name)
        if not tensor.dims:
            found.append(Finding("dims-empty", "error", f"{tensor.name}: dims 不可為空，純量請寫 [ 1 ]"))
        if any(d == 0 or d < -1 for d in tensor.dims):
            found.append(Finding("dims-invalid", "error", f"{tensor.name}: dims 只能是正整數或 -1"))
        if config.max_batch_size > 0 and tensor.dims and tensor.dims[0] == config.max_batch_size:
            found.append(Finding("batch-dim-in-dims", "warning",
                                 f"{tensor.name}: dims[0] = max_batch_size，批次維度被寫了兩次？"))
        if tensor.HasField("reshape") and -1 not in tensor.dims and -1 not in tensor.reshape.shape \
                and math.prod(tensor.dims) != math.prod(tensor.reshape.shape):
            found.append(Finding("reshape-size", "error",
                                 f"{tensor.name}: dims {list(tensor.dims)} 與 reshape {list(tensor.reshape.shape)} 元素數不同"))
    if config.max_batch_size < 0:
        found.append(Finding("max-batch-size", "error", "max_batch_size 不可為負"))
    for tensor in config.input:  # (1)!
        if tensor.name in requests and tensor.dims:
            want, got = full_shape(tensor.dims, config.max_batch_size), list(requests[tensor.name])
            if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got)):
                found.append(Finding("request-shape", "error", f"{tensor.name}: 伺服器期待 {want}，請求是 {got}"))
            elif config.max_batch_size > 0 and got[0] > config.max_batch_size:
                found.append(Finding("request-batch", "error", f"批次 {got[0]} > max_batch_size"))
    return found


def _check_python_outputs(folder: Path, versions: list[int], filename: str, config) -> list[Finding]:
    """Heuristic: every configured output name should appear as a string literal in model.py."""
    found = []
    for version in versions:
        path = folder / str(version) / filename
        source = path.read_text() if path.is_file() else ""
        for tensor in config.output:
            if source and f'"{tensor.name}"' not in source and f"'{tensor.name}'" not in source:
                found.append(Finding("output-not-produced", "warning",
                                     f"{version}/{filename} 沒有提到輸出 {tensor.name!r}"))
    return found
# --8<-- [end:validator_tensors]


# --8<-- [start:try_load]
@dataclass
class LoadOutcome:
    name: str
    loaded: bool
    status: str  # HTTP status of load_model, or "timeout"
    message: str  # what load_model answered
    log: list[str]  # the server log lines about this model written during the load
    seconds: float


def server_log(endpoint) -> Path | None:
    """The log file runtime.triton_server writes (also for a session's shared server)."""
    from servelab.runtime import get_settings

    if endpoint.process is not None:
        return endpoint.process.log_path
    path = get_settings().cache_dir / "logs" / f"triton-{endpoint.http.rsplit(':', 1)[1]}.log"
    return path if path.exists() else None


def try_load(endpoint, folder: Path, timeout_s: float = LOAD_TIMEOUT_S) -> LoadOutcome:
    from tritonclient.utils import InferenceServerException

    log = server_log(endpoint)
    offset = log.stat().st_size if log else 0
    endpoint.add_model(folder, load=False)  # copy only
    client = endpoint.http_client(network_timeout=timeout_s)
    start = time.perf_counter()
    try:
        client.load_model(folder.name)
        loaded, status, message = True, "200", "loaded"
    except InferenceServerException as exc:
        loaded, status, message = False, str(exc.status()), exc.message().strip()
    except TimeoutError:  # (1)!
        loaded, status, message = False, "timeout", f"load_model 在 {timeout_s:g} 秒內沒有回應"
    finally:
        client.close()
    seconds = time.perf_counter() - start
    time.sleep(0.3)  # the stub's own lines reach the log a moment later
    return LoadOutcome(folder.name, loaded, status, message, _log_lines(log, offset, folder.name), seconds)


def _log_lines(log: Path | None, offset: int, name: str) -> list[str]:
    if log is None:
        return []
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    keep = []
    for line in text.splitlines():
        if "libprotobuf ERROR" in line or (name in line and line[:1] in "EW") or \
                (name in line and "pb_stub" in line):
            keep.append(line.split("] ", 1)[-1].strip().strip('"'))
    return keep
# --8<-- [end:try_load]


# --8<-- [start:broken_cases]
def broken_cases() -> dict[str, ModelFolder]:
    """One deliberate mistake per model; every other line is the working ScaleModel."""
    code = render_model_py(ScaleModel)
    one = {"1": {"model.py": code}}
    cases = {
        "dtype": scale_config("", inputs=[Tensor("X", "TYPE_FLOAT32", (4,))]),  # no such enum value
        "name": scale_config("l02repo_other"),  # name ≠ folder
        "policy": scale_config("", version_policy=VersionPolicy.specific(2)),  # only 1/ exists
        "nodims": scale_config("", inputs=[Tensor("X", "TYPE_FP32", ())]),
        "reshape": scale_config("", inputs=[Tensor("X", "TYPE_FP32", (4,), reshape=(3,))]),
        "batchdim": scale_config("", inputs=[Tensor("X", "TYPE_FP32", (8, 4))]),  # batch dim twice
        "output": scale_config("", outputs=[Tensor("OUT", "TYPE_FP32", (4,))]),  # model.py makes "Y"
        "outdtype": scale_config("", outputs=[Tensor("Y", "TYPE_FP64", (4,))]),  # model.py makes FP32
        "kindgpu": scale_config("", instance_groups=[InstanceGroup(1, "KIND_GPU")]),
        "backend": scale_config("", backend="onnxruntime"),
    }
    folders = {}
    for key, config in cases.items():
        name = f"{PREFIX}bad_{key}"
        config.name = config.name or name
        files = {"1": {"model.onnx": b"not an onnx file"}} if key == "backend" else one
        folders[key] = ModelFolder(name, config, files)
    folders["noversion"] = ModelFolder(f"{PREFIX}bad_noversion", scale_config(f"{PREFIX}bad_noversion"),
                                       {"v1": {"model.py": code}})  # "v1" is not a version folder
    return folders
# --8<-- [end:broken_cases]


CASE_TITLES = {
    "dtype": "data_type 拼錯（TYPE_FLOAT32）", "name": "config 的 name ≠ 資料夾名",
    "noversion": "版本資料夾叫 v1", "policy": "specific 指定不存在的版本 2",
    "nodims": "dims 為空", "reshape": "dims [4] 配 reshape [3]",
    "batchdim": "max_batch_size 8 又把批次寫進 dims [8,4]", "output": "輸出名 OUT，model.py 產生 Y",
    "outdtype": "輸出宣告 FP64，model.py 給 FP32", "kindgpu": "instance_group 用 KIND_GPU", "backend": "backend onnxruntime（未安裝）",
    "nofile": "版本資料夾裡沒有 model.py",
}
PROBE = {"X": np.ones((2, 4), np.float32)}  # the request every loaded broken model gets


# --8<-- [start:capture]
def visible_gpus() -> int:
    from servelab.runtime.provenance import provenance

    return (provenance()["gpu"] or {}).get("count", 0)


def capture_broken(endpoint, repository: Path, keys=None) -> list[dict]:
    """Validate each broken folder, then let the real server load it (and answer one request)."""
    from servelab.runtime.triton_server import backends_dir

    installed = {p.name for p in backends_dir().iterdir() if p.is_dir()}  # here: {"python"}
    gpus = visible_gpus()
    rows = []
    for key, model in broken_cases().items():
        if keys is not None and key not in keys:
            continue
        folder = model.write(repository)
        findings = validate_model(folder, gpus=gpus, backends=installed, requests={"X": (2, 4)})
        outcome = try_load(endpoint, folder)
        row = {"case": key, "title": CASE_TITLES[key], "validator": ", ".join(f.rule for f in findings) or "（無）",
               "stage": "載入", "status": outcome.status, "message": outcome.message,
               "log": " / ".join(outcome.log[-2:])}
        if outcome.loaded:  # the load succeeded: the mistake shows (or hides) at inference time
            answer = call(endpoint, folder.name, PROBE)
            row["stage"], row["status"] = "推論", str(answer["status"])
            produced = [f"{k} {t}" for k, t in answer.get("datatypes", {}).items()]
            row["message"] = answer.get("error") or f"200，outputs = {produced}"
        unload(endpoint, folder.name)
        rows.append(row)
    return rows


def capture_missing_file(strict_endpoint, repository: Path, timeout_s: float = 8.0) -> dict:
    """A version folder without model.py: run only on a throwaway server (the load never finishes)."""
    from servelab.runtime.triton_server import backends_dir

    installed = {p.name for p in backends_dir().iterdir() if p.is_dir()}
    folder = ModelFolder(f"{PREFIX}bad_nofile", scale_config(f"{PREFIX}bad_nofile"), {"1": {}}).write(repository)
    findings = validate_model(folder, backends=installed)
    outcome = try_load(strict_endpoint, folder, timeout_s=timeout_s)
    client = strict_endpoint.http_client()
    try:
        state = next((m.get("state") for m in client.get_model_repository_index() if m["name"] == folder.name), None)
    finally:
        client.close()
    return {"case": "nofile", "title": CASE_TITLES["nofile"], "validator": ", ".join(f.rule for f in findings),
            "stage": "載入", "status": outcome.status, "message": f"{outcome.message}；狀態停在 {state}",
            "log": " / ".join(outcome.log[-2:]), "state": state}
# --8<-- [end:capture]


# --8<-- [start:formulas]
DTYPE_BYTES = {"TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_INT16": 2, "TYPE_FP16": 2, "TYPE_BF16": 2,
               "TYPE_INT32": 4, "TYPE_UINT32": 4, "TYPE_FP32": 4, "TYPE_INT64": 8, "TYPE_UINT64": 8, "TYPE_FP64": 8}


def tensor_bytes(dims, data_type: str, batch: int = 1, max_batch_size: int = 0, **sizes: int) -> int:
    """Bytes of one tensor in a request: full shape = [batch] + dims (batching) or dims, -1 from `sizes`."""
    shape = full_shape(dims, max_batch_size)
    if max_batch_size > 0:
        shape[0] = batch
    values = iter(sizes.values())
    return math.prod(d if d != -1 else next(values) for d in shape) * DTYPE_BYTES[data_type]


def llama_parameters(cfg: dict) -> int:
    """Parameter count of a Llama-architecture config.json (embeddings, 30/32 layers, head)."""
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # q,o + k,v + gate,up,down + 2 norms
    embeddings = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + embeddings + h


def instance_weight_bytes(parameters: int, bytes_per_parameter: int, count: int) -> int:
    """Every instance in an instance_group holds its own copy of the weights."""
    return parameters * bytes_per_parameter * count
# --8<-- [end:formulas]


# --8<-- [start:vllm_counterpart]
def vllm_served_model(base_url: str) -> dict:
    """What a vLLM server serves: one model folder under one (or more) served names."""
    import httpx

    card = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]
    root = Path(card["root"])
    files = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return {"served_name": card["id"], "model_folder": str(root), "max_model_len": card["max_model_len"],
            "files": files}
# --8<-- [end:vllm_counterpart]


# --8<-- [start:cuda_model]
class CudaModel:
    """Y = 2·X computed with torch on the device Triton assigned to this instance."""

    def initialize(self, args):
        import torch

        if args["model_instance_kind"] == "GPU":  # (1)!
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            self.where = f"{self.device} {torch.cuda.get_device_name(self.device)}"
        else:
            self.device, self.where = torch.device("cpu"), "cpu"
        self.instance = args["model_instance_name"]

    def execute(self, requests):
        import torch

        responses = []
        for request in requests:
            x = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "X").as_numpy())
            y = (x.to(self.device) * 2).cpu().numpy()
            where = np.array([[f"{self.where} | {self.instance}".encode()]] * len(y), dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", y), pb_utils.Tensor("DEVICE", where)]))
        return responses
# --8<-- [end:cuda_model]


# --8<-- [start:gpu_groups]
def cuda_folder(name: str, count: int, gpus: tuple[int, ...] = (0,)) -> ModelFolder:
    config = ModelConfig(name, max_batch_size=8, inputs=[Tensor("X", "TYPE_FP32", (4,))],
                         outputs=[Tensor("Y", "TYPE_FP32", (4,)), Tensor("DEVICE", "TYPE_STRING", (1,))],
                         instance_groups=[InstanceGroup(count=count, kind="KIND_GPU", gpus=gpus)])
    return ModelFolder(name, config, {"1": {"model.py": render_model_py(CudaModel)}})


def gpu_instance_groups(endpoint, repository: Path, counts=(1, 2), requests: int = 64) -> list[dict]:
    """KIND_GPU instances on GPU 0: load time, the device each instance reports, requests/s."""
    rows = []
    for count in counts:
        name = f"{PREFIX}cuda_c{count}"
        start = time.perf_counter()
        endpoint.add_model(cuda_folder(name, count).write(repository))
        load_s = time.perf_counter() - start
        client = endpoint.http_client()
        try:
            group = client.get_model_config(name)["instance_group"][0]
        finally:
            client.close()
        start, seen = time.perf_counter(), set()
        for _ in range(requests):
            answer = call(endpoint, name, {"X": np.ones((1, 4), np.float32)})
            seen.add(answer["outputs"]["DEVICE"].ravel()[0].decode())
        seconds = time.perf_counter() - start
        rows.append({"count": count, "kind": group["kind"], "gpus": group["gpus"], "load_s": load_s,
                     "instances": len(seen), "device": sorted(seen)[0].split(" | ")[0],
                     "rps": requests / seconds, "y0": float(answer["outputs"]["Y"][0, 0])})
        unload(endpoint, name)
    return rows
# --8<-- [end:gpu_groups]


# --8<-- [start:ex_override]
def load_with_policy(endpoint, name: str, policy: dict) -> list[int]:
    """Exercise 1: change version_policy without touching config.pbtxt (explicit mode only)."""
    client = endpoint.http_client(network_timeout=LOAD_TIMEOUT_S)
    try:
        config = client.get_model_config(name)  # the complete config the server uses now
        config["version_policy"] = policy  # e.g. {"all": {}}
        client.load_model(name, config=json.dumps(config))  # replaces the whole config, not a patch
    finally:
        client.close()
    return ready_versions(endpoint, name)
# --8<-- [end:ex_override]


# --8<-- [start:ex_fit]
def max_instances(parameters: int, bytes_per_parameter: int, budget_bytes: int) -> int:
    """Exercise 2: how many weight copies fit in a memory budget (before any activation or KV cache)."""
    return budget_bytes // instance_weight_bytes(parameters, bytes_per_parameter, 1)
# --8<-- [end:ex_fit]


# --8<-- [start:ex_reshape]
class RankModel:
    """Exercise 3: the model wants X as [batch]; clients send [batch, 1]."""

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()  # shape [batch]
            rank = np.full(x.shape, x.ndim, dtype=np.int32)  # tells the client what the model saw
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("RANK", rank)]))
        return responses


def reshape_folder(name: str = PREFIX + "reshape") -> ModelFolder:
    config = ModelConfig(name, max_batch_size=8, inputs=[Tensor("X", "TYPE_FP32", (1,), reshape=())],
                         outputs=[Tensor("RANK", "TYPE_INT32", (1,), reshape=())])
    return ModelFolder(name, config, {"1": {"model.py": render_model_py(RankModel)}})
# --8<-- [end:ex_reshape]


# --8<-- [start:write_results]
INSTANCE_COLUMNS = {"count": "instance count", "load_s": "載入秒數", "processes": "回應的行程數",
                    "parallel": "最多同時執行", "rps": "每秒請求（中位數）", "speedup": "相對 count=1"}


BROKEN_COLUMNS = {"title": "錯誤", "validator": "驗證器規則", "stage": "失敗在", "status": "HTTP",
                  "message": "伺服器回應", "log": "伺服器日誌"}


def write_all(endpoint, repository: Path) -> dict[str, Path]:
    """The CPU results the page includes (real server, this machine)."""
    from servelab.runtime.results import results_root, write_results

    out = {}
    example = scale_folder(PREFIX + "versions", versions=(1, 2, 3), version_policy=VersionPolicy.latest(2))
    (results_root() / LESSON).mkdir(parents=True, exist_ok=True)
    (results_root() / LESSON / "example_config.pbtxt").write_text(example.config.to_pbtxt())
    rows = version_policy_demo(endpoint, repository)
    out["versions"] = write_results(LESSON, "version_policy", rows, {
        "policy": "version_policy", "ready": "READY 的版本", "v_": "不指定版本", "v1": "指定 1", "v2": "指定 2",
        "v3": "指定 3"})
    unload(endpoint, PREFIX + "versions")
    rows = measure_instance_groups(endpoint, repository)
    out["instances"] = write_results(LESSON, "instance_groups", rows, INSTANCE_COLUMNS,
                                     extra={"requests": 32, "concurrency": 4, "rounds": 3})
    with strict_triton(repository / "strict-repo") as strict:
        default = completed_config(endpoint, repository)
        strict_result = completed_config(strict, strict.repository)
        rows = compare_auto_complete(default, strict_result, self_describing_folder("x").config)
        out["auto"] = write_results(LESSON, "auto_complete", rows, {
            "field": "欄位", "file": "config.pbtxt 寫的", "default": "預設（自動補完）",
            "strict": "--disable-auto-complete-config"}, extra={"completed": default["config"]})
        unload(endpoint, PREFIX + "auto")
        broken = capture_broken(endpoint, repository) + [capture_missing_file(strict, strict.repository)]
    out["broken"] = write_results(LESSON, "broken_models", broken, BROKEN_COLUMNS)
    return out


def write_gpu(endpoint, repository: Path) -> Path:
    """The GPU runner: KIND_GPU on the GPU, and the KIND_CPU experiment again on its many cores."""
    from servelab.runtime.results import write_results

    rows = measure_instance_groups(endpoint, repository)
    write_results(LESSON, "instance_groups_gpu", rows, INSTANCE_COLUMNS,
                  extra={"requests": 32, "concurrency": 4, "rounds": 3})
    rows = gpu_instance_groups(endpoint, repository)
    return write_results(LESSON, "kind_gpu_gpu", rows, {
        "count": "count", "kind": "kind", "gpus": "gpus", "load_s": "載入秒數", "instances": "回應的執行個體數",
        "device": "執行個體回報的裝置", "rps": "每秒請求（循序）"})
# --8<-- [end:write_results]


def main() -> int:
    from servelab.runtime import get_settings, triton_endpoint

    settings = get_settings()
    repository = workdir()
    serve_dir = workdir(repository / "serve-repo")
    with triton_endpoint(serve_dir) as endpoint:
        if settings.profile == "gpu":
            print(write_gpu(endpoint, repository))
            return 0
        first = first_model(endpoint, repository)
        print(first["config.pbtxt"])
        print("answer:", first["answer"]["outputs"]["Y"].tolist())
        for name, path in write_all(endpoint, repository).items():
            print(f"{name}: {path}")
        unload(endpoint, PREFIX + "scale")
    return 0


# --8<-- [start:context]
# What this page's snippets use: imports, constants, and the lesson's own functions from the installed
# package, so that any one snippet runs on its own after this block.
import inspect
import json
import math
import numpy as np
import os
import shutil
import time
try:  # exists only inside Triton's Python-backend stub (the model classes use it there)
    import triton_python_backend_utils as pb_utils
except ImportError:
    pb_utils = None
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from servelab.triton.lab2_1.l02_model_repository_design import (
    BACKEND_FILES, BusyModel, CASE_TITLES, CudaModel, Finding, InstanceGroup, LESSON, LOAD_TIMEOUT_S,
    ModelConfig, ModelFolder, PLATFORMS, PREFIX, PROBE, ScaleModel, SelfDescribingModel, Tensor,
    VersionPolicy, _check_python_outputs, _check_tensors, broken_cases, call, capture_broken,
    capture_missing_file, compare_auto_complete, completed_config, full_shape, gpu_instance_groups,
    instance_weight_bytes, measure_instance_groups, ready_versions, render_model_py, scale_config,
    scale_folder, self_describing_folder, strict_triton, try_load, unload, validate_model,
    version_policy_demo
)
# --8<-- [end:context]


if __name__ == "__main__":
    raise SystemExit(main())
