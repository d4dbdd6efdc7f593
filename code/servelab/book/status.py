"""Each lesson's state, computed from the repository (the seed's ✅/🔄/📋 marks, but true)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from servelab.book.tree import ROOT, TRACKS, Lesson

RESULTS = ROOT / "results"


@dataclass(frozen=True)
class LessonStatus:
    lesson: Lesson
    page: bool
    code: bool
    tests: bool
    notebook: bool
    gpu_results: tuple[str, ...]  # result files whose provenance names a GPU
    gpu_tests: tuple[str, ...] = ()  # gpu-marked tests that passed on the GPU runner (results/gpu_runs.json)

    @property
    def complete(self) -> bool:
        return self.page and self.code and self.tests and self.notebook

    @property
    def mark(self) -> str:
        if self.complete:
            return "✅"
        if self.page or self.code or self.tests or self.notebook:
            return "🔄"
        return "📋"


def gpu_results(lesson: Lesson) -> tuple[str, ...]:
    folder = RESULTS / lesson.rel
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            prov = json.loads(path.read_text()).get("provenance", {})
        except json.JSONDecodeError:
            continue
        if prov.get("gpu"):
            found.append(path.relative_to(ROOT).as_posix())
    return tuple(found)


def gpu_runs() -> dict:
    path = RESULTS / "gpu_runs.json"
    return json.loads(path.read_text()).get("tests", {}) if path.exists() else {}


def gpu_tests(prefix: str) -> tuple[str, ...]:
    return tuple(sorted(node for node, run in gpu_runs().items()
                        if node.startswith(prefix) and run["outcome"] == "passed"))


def lesson_status(lesson: Lesson) -> LessonStatus:
    prefix = lesson.test.relative_to(ROOT).as_posix()
    return LessonStatus(lesson, lesson.page.exists(), lesson.module.exists(), lesson.test.exists(),
                        lesson.notebook.exists(), gpu_results(lesson), gpu_tests(prefix))


def render_status_page() -> str:
    yes = lambda flag: "✔" if flag else "—"  # noqa: E731
    lines = [
        "# 撰寫進度",
        "",
        "這一頁在每次建置網站時由 `servelab.book.status` 從儲存庫**自動產生**：每一課的頁面、程式、測試、"
        "筆記本是否存在，以及 GPU 執行器上的驗證——通過的 GPU 測試（`results/gpu_runs.json`）與 GPU 結果檔"
        "（`results/…/*_gpu.json`）。沒有這兩者的課程，GPU 驗證欄顯示「—」（未驗證）。"
        "標記的意思：✅ 四者齊備、🔄 部分完成、📋 尚未開始。"
        "尚未撰寫的課程只出現在這裡，不會以空白頁面出現在導覽中。",
        "",
    ]
    for track in TRACKS:
        lines += [f"## {track.title}（`{track.seed_name}`）", ""]
        for lab in track.labs:
            statuses = [lesson_status(item) for item in lab.lessons]
            done = sum(s.complete for s in statuses)
            lab_mark = "✅" if done == len(statuses) else ("🔄" if any(s.mark != "📋" for s in statuses) else "📋")
            lines += [f"### {lab_mark} {lab.seed_name} — {lab.title}（{done}/{len(statuses)}）", "",
                      "| 課程 | 狀態 | 頁面 | 程式 | 測試 | 筆記本 | GPU 驗證 |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for s in statuses:
                name = f"`{s.lesson.seed_name}` {s.lesson.title}"
                if s.page:
                    name = f"[{name}]({s.lesson.rel}.md)"
                parts = []
                if s.gpu_tests:
                    parts.append(f"{len(s.gpu_tests)} 項 GPU 測試通過")
                if s.gpu_results:
                    parts.append(f"{len(s.gpu_results)} 個結果檔")
                gpu = f"✔（{'、'.join(parts)}）" if parts else "—"
                lines.append(f"| {name} | {s.mark} | {yes(s.page)} | {yes(s.code)} | {yes(s.tests)} | "
                             f"{yes(s.notebook)} | {gpu} |")
            lines.append("")
    runs = gpu_runs()
    runtime = {node: run for node, run in runs.items() if node.startswith("tests/runtime/")}
    lines += ["## 共用執行環境（`servelab.runtime`）在 GPU 上的驗證", ""]
    if runtime:
        lines += ["| 測試 | 結果 | 裝置 | 驅動 | 日期 |", "| --- | --- | --- | --- | --- |"]
        for node, run in runtime.items():
            mark = "✔ 通過" if run["outcome"] == "passed" else f"✘ {run['outcome']}"
            lines.append(f"| `{node.split('::')[-1]}` | {mark} | {run['device']} | {run.get('driver') or ''} | "
                         f"{run['date']} |")
    else:
        lines.append("尚未在 GPU 執行器上執行（未驗證）。")
    lines.append("")
    return "\n".join(lines)
