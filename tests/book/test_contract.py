"""The book's contract: each rule holds on the real tree, and a planted violation of it is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from servelab.book import contract
from servelab.book.stale_apis import COMPILED, scan_text
from servelab.book.tree import ROOT, lessons


@pytest.mark.parametrize("rule", sorted(contract.ALL_RULES))
def test_rule_holds_on_the_book(rule):
    errors = contract.ALL_RULES[rule](ROOT)
    assert not errors, f"{rule}: {len(errors)} violation(s)\n" + "\n".join(errors)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the book's docs/ and code/ to plant violations in."""
    for name in ("docs", "code", "results"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docker").mkdir(exist_ok=True)
    return tmp_path


def _page(tree: Path, text: str) -> Path:
    page = tree / "docs" / "planted.md"
    page.write_text(text, encoding="utf-8")
    return page


def test_missing_snippet_section_is_caught(tree):
    _page(tree, '# x\n\n```py\n--8<-- "servelab/runtime/settings.py:no_such_section"\n```\n')
    errors = contract.missing_snippets(tree)
    assert any("section 'no_such_section' not found" in e for e in errors)


def test_missing_snippet_file_is_caught(tree):
    _page(tree, '# x\n\n```py\n--8<-- "servelab/nowhere.py:main"\n```\n')
    assert any("servelab/nowhere.py does not exist" in e for e in contract.missing_snippets(tree))


def test_dead_snippet_is_caught(tree):
    module = tree / "code" / "servelab" / "runtime" / "settings.py"
    module.write_text(module.read_text() + "\n# --8<-- [start:orphan]\nX = 1\n# --8<-- [end:orphan]\n")
    assert any("section 'orphan' is not shown by any page" in e for e in contract.dead_sections(tree))


def test_unbalanced_section_is_caught(tree):
    module = tree / "code" / "servelab" / "runtime" / "settings.py"
    module.write_text(module.read_text() + "\n# --8<-- [start:half]\nX = 1\n")
    assert contract.unbalanced_sections(tree)


@pytest.mark.parametrize("fence", ["```py", "```console", "```pycon", "```python title=\"x.py\"", "```shell"])
def test_bare_code_block_is_caught(tree, fence):
    _page(tree, f"# x\n\n{fence}\nprint('never run')\n```\n")
    assert any("planted.md:3" in e for e in contract.bare_blocks(tree))


def test_runnable_and_included_blocks_pass(tree):
    _page(tree, '# x\n\n```python\nprint(1)\n```\n\n```py\n--8<-- "servelab/runtime/settings.py:settings"\n```\n')
    assert not [e for e in contract.bare_blocks(tree) if "planted.md" in e]


def test_skipped_block_is_caught(tree):
    _page(tree, "# x\n\n<!--pytest-codeblocks:skip-->\n```python\nprint(1)\n```\n")
    assert any("skipped code block" in e for e in contract.bare_blocks(tree))


# One case per row of every table in the shared stale-API list: (the stale form, the same name inside a
# "removed / replaced" note, the current form). The stale form is caught; the note and the current form pass.
STALE_CASES = [
    # vLLM
    ("python -m vllm.entrypoints.openai.api_server --model x",
     "`python -m vllm.entrypoints.openai.api_server` 已移除，改用 `vllm serve`。", "vllm serve x"),
    ("VLLM_USE_V1=1 vllm serve x", "`VLLM_USE_V1` 已移除：V1 是唯一的引擎。", "vllm serve x"),
    ("from vllm import AsyncLLMEngine", "V0 的 `AsyncLLMEngine` 已移除。",
     "from vllm.v1.engine.async_llm import AsyncLLM"),
    ("class X(MQLLMEngine): ...", "`MQLLMEngine` removed with V0.", "AsyncLLM.from_engine_args(args)"),
    ("LLM(model=m, speculative_model=d)", "`speculative_model=` 已移除，改用 `speculative_config`。",
     'LLM(model=m, speculative_config={"model": d, "num_speculative_tokens": 3})'),
    ("LLM(model=m, num_speculative_tokens=3)", "頂層的 `num_speculative_tokens=` 已移除。",
     'speculative_config={"method": "ngram", "num_speculative_tokens": 3}'),
    ("ngram_prompt_lookup_max=4", "`ngram_prompt_lookup_max` 已移除。", '{"prompt_lookup_max": 4}'),
    ("speculative_draft_tensor_parallel_size=1", "`speculative_draft_tensor_parallel_size` 已移除。",
     '{"draft_tensor_parallel_size": 1}'),
    ('extra_body={"guided_json": schema}', "`guided_json` 已移除，改用 `structured_outputs`。",
     'extra_body={"structured_outputs": {"json": schema}}'),
    ("vllm serve m --disable-log-requests", "`--disable-log-requests` 已移除。", "vllm serve m --enable-log-requests"),
    ("vllm serve m --use-v2-block-manager", "`--use-v2-block-manager` 已移除。", "vllm serve m"),
    ("rate(vllm:gpu_cache_usage_perc[1m])", "舊名 `vllm:gpu_cache_usage_perc` 已移除。", "vllm:kv_cache_usage_perc"),
    ("vllm:gpu_prefix_cache_hits_total", "`vllm:gpu_prefix_cache_hits_total` 已移除。",
     "vllm:prefix_cache_hits_total"),
    ("histogram_quantile(0.99, vllm:time_per_output_token_seconds_bucket)",
     "`vllm:time_per_output_token_seconds` 已移除，改用 ITL。", "vllm:inter_token_latency_seconds_bucket"),
    ("python benchmarks/benchmark_serving.py --model m", "`benchmark_serving.py` 已移除，改用 `vllm bench serve`。",
     "vllm bench serve --model m"),
    ("vllm serve m --task embed", "`--task` 已移除，改用 `--runner pooling`。", "vllm serve m --runner pooling"),
    ("CompilationConfig.level = 3", "`CompilationConfig.level` 已改名，改用 `mode`。", "CompilationConfig.mode = 3"),
    ("vllm serve m --preemption-mode swap", "`--preemption-mode` 已移除：V1 只以重算搶占。", "vllm serve m"),
    ("vllm serve m --calculate-kv-scales", "`--calculate-kv-scales` 在 0.32 已移除。",
     "vllm serve m --kv-cache-dtype fp8"),
    ("VLLM_CPU_KVCACHE_SPACE=2 vllm serve m", "`VLLM_CPU_KVCACHE_SPACE` 是 0.32 的舊式（legacy）設定。",
     "vllm serve m --kv-cache-memory-bytes 2G"),
    ("`gpu_memory_utilization` 預設 0.9，本書用 0.85。", "舊版文件說 `gpu_memory_utilization` 預設 0.9；已改為 0.92。",
     "`gpu_memory_utilization` 預設 0.92，本書用 0.85。"),
    ("vllm serve m --quantization fp8", "線上量化用 `--quantization fp8`（vLLM 0.26 的名字）。",
     "vllm serve m --quantization fp8_per_tensor"),
    ('LLM(model=m, quantization="bitsandbytes")', "`bitsandbytes` 量化在 0.32 已移除。",
     'LLM(model=m, quantization="compressed-tensors")'),
    ('speculative_config={"method": "deepseek_mtp"}', "`deepseek_mtp` 已改名，改用 `mtp`。",
     'speculative_config={"method": "mtp", "num_speculative_tokens": 1}'),
    ("vllm:spec_decode_draft_acceptance_rate", "`vllm:spec_decode_draft_acceptance_rate` 已移除。",
     "vllm:spec_decode_num_accepted_tokens_total / vllm:spec_decode_num_draft_tokens_total"),
    ("rate(vllm:spec_decode_num_emitted_tokens_total[1m])", "`spec_decode_num_emitted_tokens_total` 已移除。",
     "rate(vllm:spec_decode_num_accepted_tokens_total[1m])"),
    ('--kv-transfer-config \'{"kv_connector": "SharedStorageConnector"}\'', "`SharedStorageConnector` 已改名，改用 `ExampleConnector`。",
     '--kv-transfer-config \'{"kv_connector": "ExampleConnector"}\''),
    ('"kv_connector": "LMCacheConnector"', "V0 的 `LMCacheConnector` 已移除。", '"kv_connector": "LMCacheConnectorV1"'),
    ("from vllm.entrypoints.openai.protocol import ChatCompletionRequest",
     "`vllm.entrypoints.openai.protocol` 已移除。",
     "from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest"),
    ("from vllm.inputs.data import TokensPrompt", "`vllm.inputs.data.TokensPrompt` 已移除，改用 `vllm.inputs`。",
     "from vllm.inputs import TokensPrompt"),
    ("guidellm benchmark --target http://x --rate-type sweep", "舊版 guidellm 的 `guidellm benchmark` 已移除。",
     "guidellm run --backend kind=openai_http,target=http://x --profile kind=sweep"),
    ("from llmcompressor.transformers import oneshot", "`llmcompressor.transformers.oneshot` 已移除。",
     "from llmcompressor import oneshot"),
    # Triton
    ('{"model": "m", "disable_log_requests": true}', "`disable_log_requests` 已移除。", '{"model": "m"}'),
    ("genai-perf profile -m m", "GenAI-Perf 已被 AIPerf 取代。", "aiperf profile -m m"),
    ("backend: FasterTransformer", "FasterTransformer 已移除。", "backend: vllm"),
    ("tensorrtllm_backend/all_models/inflight_batcher_llm", "`inflight_batcher_llm` 已移除。",
     "tensorrt_llm llmapi"),
    ("trtexec --onnx=m.onnx --explicitBatch", "`--explicitBatch` 在 TensorRT 10 已移除。", "trtexec --onnx=m.onnx"),
    ("traced = torch.jit.trace(model, x)", "TorchScript（`torch.jit.trace`）只當舊路徑（legacy）介紹。",
     "compiled = torch.compile(model)"),
    ("tritonserver --strict-model-config=true", "`--strict-model-config` 已棄用，改用新旗標。",
     "tritonserver --disable-auto-complete-config"),
    ("tritonserver --trace-file=/tmp/t.json --trace-level=TIMESTAMPS", "`--trace-file` 已移除，改用 `--trace-config`。",
     "tritonserver --trace-config triton,file=/tmp/t.json"),
    ('model.py: from vllm.inputs.data import TokensPrompt', "後端的舊匯入 `vllm.inputs.data` 已移除。",
     "model.py: from vllm.inputs import TokensPrompt"),
    ("pip install torch-tensorrt", "torch-tensorrt 要 NGC 映像，PyPI 裝不起來。", "pip install tritonclient"),
    # PyTorch / ONNX
    ("torch.onnx.dynamo_export(model, x)", "`torch.onnx.dynamo_export` 已移除。",
     "torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes)"),
    # FastAPI
    ('@app.on_event("startup")', "`@app.on_event` 已棄用，改用 `lifespan=`。", "app = FastAPI(lifespan=lifespan)"),
]
STALE_IDS = [case[0][:40] for case in STALE_CASES]


def _stale(text: str, path: str = "docs/planted.md") -> list[tuple[int, str, str]]:
    return scan_text(f"# x\n\n一般說明。\n\n{text}\n", path)


@pytest.mark.parametrize("line", [case[0] for case in STALE_CASES], ids=STALE_IDS)
def test_stale_api_is_caught(line):
    assert [hit[0] for hit in _stale(line)] == [5]


@pytest.mark.parametrize("note", [case[1] for case in STALE_CASES], ids=STALE_IDS)
def test_stale_api_inside_a_removed_note_is_allowed(note):
    assert not _stale(note)


@pytest.mark.parametrize("current", [case[2] for case in STALE_CASES], ids=STALE_IDS)
def test_current_form_is_not_flagged(current):
    assert not _stale(current)


def test_every_stale_rule_has_a_planted_case():
    for pattern, *_ in COMPILED:
        assert any(pattern.search(case[0]) for case in STALE_CASES), f"no planted case for {pattern.pattern}"


def test_a_removed_note_two_lines_above_is_allowed():
    text = "# x\n\n!!! warning \"已移除\"\n\n    `guided_json` 改掉了：用 `structured_outputs`。\n"
    assert not scan_text(text)
    assert scan_text("# x\n\n!!! warning \"已移除\"\n\n\n    `guided_json`\n")  # three lines above: too far


@pytest.mark.parametrize("line", [
    "vllm serve m --enable-chunked-prefill",  # valid in 0.26 and 0.32 (on by default)
    "vllm serve m --no-enable-chunked-prefill",  # switches it off
    "LLM(model=m, enable_chunked_prefill=False)",
    "vllm serve m --spec-method mtp",
    "`LMCacheMPConnector`、`--kv-offloading-size 4 --kv-offloading-backend native`",
    "vllm serve m --kv-cache-dtype fp8",  # the KV-cache dtype is not online weight quantization
    "一張 24 GB 的 GPU、`gpu_memory_utilization=0.9`",  # setting 0.9 is fine; saying it is the default is not
    "pytest --tasks x; lm_eval --tasks gsm8k",
])
def test_current_forms_that_look_like_stale_ones_pass(line):
    assert not _stale(line)


@pytest.mark.parametrize("line", ["vllm serve m --quantization fp8", 'LLM(model=m, quantization="fp8")'])
def test_online_fp8_needs_the_version_it_belongs_to(line):
    assert _stale(line)
    assert not scan_text(f"# x\n\nvLLM 0.26 的線上 FP8 量化：\n\n{line}\n")
    assert not scan_text(f"# x\n\n{line}  # 0.26 還用這個名字；0.32 會警告\n")


def test_triton_pages_may_name_the_metric_tritons_vllm_backend_emits():
    line = "vllm:time_per_output_token_seconds_bucket"
    assert not _stale(line, "docs/triton/lab2_1/planted.md")
    assert not _stale(line, "code/servelab/triton/lab2_1/planted.py")
    assert _stale(line, "docs/vllm/lab2_1/planted.md")


@pytest.fixture
def small_tree(tmp_path) -> Path:
    """Just enough of a book for the stale-API scan (copying the whole book is slow)."""
    for name in ("docs/notebooks", "code/servelab/book", "results", "docker"):
        (tmp_path / name).mkdir(parents=True)
    return tmp_path


def test_stale_api_is_caught_in_pages_results_code_and_notebooks(small_tree):
    import nbformat

    (small_tree / "docs" / "planted.md").write_text("# x\n\nvllm serve m --preemption-mode swap\n")
    (small_tree / "results" / "planted.md").write_text("| VLLM_CPU_KVCACHE_SPACE=2 |\n")
    (small_tree / "code" / "servelab" / "planted.py").write_text("import os\nos.environ['VLLM_USE_V1'] = '1'\n")
    (small_tree / "code" / "servelab" / "book" / "stale_apis.py").write_text("VLLM_USE_V1\n")  # the list itself
    cell = nbformat.v4.new_code_cell("import os\nos.environ['VLLM_CPU_KVCACHE_SPACE'] = '2'")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), small_tree / "docs" / "notebooks" / "planted.ipynb")
    errors = "\n".join(contract.stale_api_hits(small_tree))
    for where in ("docs/planted.md:3", "results/planted.md:1", "code/servelab/planted.py:2",
                  "docs/notebooks/planted.ipynb: cell 1 line 2"):
        assert where in errors
    assert "stale_apis.py" not in errors


def test_incomplete_lesson_is_caught(tree):
    lesson = next(item for item in lessons() if not item.page.exists())
    module = tree / lesson.module.relative_to(ROOT)
    module.parent.mkdir(parents=True, exist_ok=True)
    module.write_text("def main():\n    return 0\n")
    errors = contract.mirror_errors(tree)
    assert any(lesson.rel in e and "lacks" in e for e in errors)


def test_unexecuted_notebook_is_caught(tree):
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    path = tree / "docs" / "notebooks" / "planted.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    errors = contract.unexecuted_notebooks(tree)
    assert any("planted.ipynb: code cell 1 has no output" in e for e in errors)
    assert any("planted.ipynb: does not record where it ran" in e for e in errors)


# --- the snippet contract: a copied snippet runs after the page's context section ------------------------
PLANTED_MODULE = """\
\"\"\"A planted lesson module.\"\"\"
from __future__ import annotations

# --8<-- [start:context]
import json
from dataclasses import dataclass

SHOWN = 3
# --8<-- [end:context]


def _hidden_helper(x):
    return x + 1


@dataclass
class Shape:
    n: int


# --8<-- [start:uses_hidden_helper]
def uses_hidden_helper(x):
    return _hidden_helper(x) * SHOWN
# --8<-- [end:uses_hidden_helper]

# --8<-- [start:self_sufficient]
def self_sufficient(x):
    return json.dumps({"x": x * SHOWN})
# --8<-- [end:self_sufficient]

# --8<-- [start:annotation_only]
def annotation_only(shape: Shape) -> int:
    return shape.n
# --8<-- [end:annotation_only]

# --8<-- [start:uses_file]
def uses_file():
    return json.dumps(__file__)
# --8<-- [end:uses_file]

class Model:
    # --8<-- [start:method]
    def execute(self, requests):
        return [self.answer(r) for r in requests]
    # --8<-- [end:method]
"""

CONTEXT_BLOCK = """\
??? info "本頁程式碼需要的匯入與常數（複製任一段程式碼前，先貼上這一段）"
    ```py title="servelab/planted.py"
    --8<-- "servelab/planted.py:context"
    ```
"""


def _snippet(section: str, marker: str = "") -> str:
    return f'{marker}\n```py title="servelab/planted.py"\n--8<-- "servelab/planted.py:{section}"\n```\n'


@pytest.fixture
def planted(tree) -> Path:
    (tree / "code" / "servelab" / "planted.py").write_text(PLANTED_MODULE, encoding="utf-8")
    return tree


def _undefined(tree: Path, page_text: str) -> list[str]:
    page = _page(tree, page_text)
    return contract.snippet_undefined_names(tree, pages=[page])


def test_snippet_using_a_hidden_helper_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_hidden_helper"))
    assert len(errors) == 1
    assert "planted.md:9 [servelab/planted.py:uses_hidden_helper]: undefined names _hidden_helper" in errors[0]


def test_snippet_with_its_context_passes(planted):
    assert _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("self_sufficient")) == []


def test_snippet_without_the_context_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + _snippet("self_sufficient"))
    assert any("undefined names json, SHOWN" in e and "no context section" in e for e in errors)


def test_future_annotations_do_not_hide_a_name(planted):
    """``from __future__ import annotations`` in the module is not on the page: the annotation must resolve."""
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("annotation_only"))
    assert any("undefined names Shape" in e for e in errors)


def test_file_in_a_snippet_is_caught(planted):
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_file"))
    assert any("uses __file__" in e for e in errors)


def test_partial_snippet_is_skipped_only_when_marked(planted):
    unmarked = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("uses_hidden_helper"))
    marked = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n"
                        + _snippet("uses_hidden_helper", contract.PARTIAL_MARKER))
    assert unmarked and marked == []


def test_indented_method_snippet_is_dedented(planted):
    assert _undefined(planted, "# x\n\n" + CONTEXT_BLOCK + "\n" + _snippet("method")) == []


def test_undefined_name_in_the_context_is_caught(planted):
    module = planted / "code" / "servelab" / "planted.py"
    module.write_text(module.read_text().replace("SHOWN = 3", "SHOWN = HIDDEN_CONSTANT"))
    errors = _undefined(planted, "# x\n\n" + CONTEXT_BLOCK)
    assert any("context: undefined names HIDDEN_CONSTANT" in e for e in errors)


def _lesson_with_snippets():
    return next(item for item in lessons() if item.page.exists())


def test_lesson_page_without_its_context_is_caught(tree):
    lesson = _lesson_with_snippets()
    page = tree / lesson.page.relative_to(ROOT)
    own = f"servelab/{lesson.rel}.py"
    page.write_text(f'# x\n\n```py title="{own}"\n--8<-- "{own}:main"\n```\n', encoding="utf-8")
    errors = [e for e in contract.snippet_context_shown(tree) if lesson.rel in e]
    assert errors and f"does not show {own}:context" in errors[0]


def test_lesson_page_with_its_context_first_passes(tree):
    lesson = _lesson_with_snippets()
    page = tree / lesson.page.relative_to(ROOT)
    own = f"servelab/{lesson.rel}.py"
    context = f'??? info "x"\n    ```py title="{own}"\n    --8<-- "{own}:context"\n    ```\n\n'
    snippet = f'```py title="{own}"\n--8<-- "{own}:main"\n```\n'
    page.write_text("# x\n\n" + context + snippet, encoding="utf-8")
    assert not [e for e in contract.snippet_context_shown(tree) if lesson.rel in e]
    page.write_text("# x\n\n" + snippet + "\n" + context, encoding="utf-8")
    assert any("comes before" in e for e in contract.snippet_context_shown(tree) if lesson.rel in e)


# --- notebook hygiene: no machine paths, no library warnings in stored outputs --------------------------
def _stored_notebook(tree: Path, outputs: list[dict]) -> Path:
    import nbformat

    cell = nbformat.v4.new_code_cell("from servelab.book.notebooks import where_it_ran\nwhere_it_ran()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="執行環境：CPU\n"),
                    *[nbformat.v4.new_output("stream", **o) for o in outputs]]
    path = tree / "docs" / "notebooks" / "planted.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
    return path


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("stdout", "model at /root/.cache/servelab/models/smollm2\n", "machine path /root/.cache"),
    ("stdout", "repository: /tmp/tmpab12cd/serve-repo\n", "machine path /tmp/tmpab12cd"),
    ("stdout", "('/work/main/.venv/bin/python', 0)\n", "machine path /work/main/.venv"),
    ("stdout", "/home/alice/servelab\n", "machine path /home/alice"),
    ("stderr", "x.py:3: FutureWarning: `reduce_op` is deprecated\n  if x:\n", "library noise"),
    ("stderr", "foo.py:9: UserWarning: careful\n", "library noise"),
    ("stderr", "[W1126 05:02:38.3 utils.cpp:68] Warning: NUMA binding\n", "library noise"),
    ("stderr", "nanobind: leaked 30 instances!\n", "library noise"),
])
def test_dirty_notebook_output_is_caught_and_scrubbed(tree, name, text, expected):
    from servelab.book.notebooks import scrub_file

    path = _stored_notebook(tree, [{"name": name, "text": text}])
    errors = [e for e in contract.notebook_hygiene(tree) if "planted.ipynb" in e]
    assert any(expected in e for e in errors), errors
    assert scrub_file(path)
    assert not [e for e in contract.notebook_hygiene(tree) if "planted.ipynb" in e]
    assert "執行環境：CPU" in path.read_text(encoding="utf-8")  # the provenance line stays
    assert not [e for e in contract.unexecuted_notebooks(tree) if "planted.ipynb" in e]


def test_scrubber_keeps_real_output_and_makes_paths_portable(tree):
    from servelab.book.notebooks import scrub_stderr, scrub_text

    assert scrub_text(f"{ROOT}/results/x.json") == "results/x.json"
    assert scrub_text("/root/.cache/servelab/models/m") == "~/.cache/servelab/models/m"
    assert scrub_text("/x/venv/lib/python3.11/site-packages/vllm/a.py") == "site-packages/vllm/a.py"
    assert scrub_text("http://127.0.0.1:8000/v1/models") == "http://127.0.0.1:8000/v1/models"
    assert scrub_stderr("x.py:1: UserWarning: w\n  src\nTraceback: real\n") == "Traceback: real\n"
