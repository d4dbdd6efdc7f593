"""The seed's lab tree: two tracks, nine labs, 36 lessons — the one source of truth for the book's layout.

Navigation, the status page and the contract tests all derive from :data:`TRACKS`. A lesson's files:

* page      ``docs/<track>/<lab>/<lesson>.md``
* code      ``code/servelab/<track>/<lab>/<lesson>.py``
* tests     ``tests/<track>/<lab>/test_<lesson>.py``
* notebook  ``docs/notebooks/<track>/<lab>/<lesson>.ipynb``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Lesson:
    track: str  # "vllm" | "triton"
    lab: str  # e.g. "lab2_1"
    slug: str  # e.g. "l01_setup_and_installation"
    seed_name: str  # e.g. "01-Setup_and_Installation"
    title: str  # Traditional Chinese title

    @property
    def rel(self) -> str:
        return f"{self.track}/{self.lab}/{self.slug}"

    @property
    def page(self) -> Path:
        return ROOT / "docs" / f"{self.rel}.md"

    @property
    def module(self) -> Path:
        return ROOT / "code" / "servelab" / f"{self.rel}.py"

    @property
    def test(self) -> Path:
        return ROOT / "tests" / self.track / self.lab / f"test_{self.slug}.py"

    @property
    def notebook(self) -> Path:
        return ROOT / "docs" / "notebooks" / f"{self.rel}.ipynb"

    @property
    def module_name(self) -> str:
        return f"servelab.{self.track}.{self.lab}.{self.slug}"


@dataclass(frozen=True)
class Lab:
    track: str
    slug: str
    seed_name: str
    title: str
    lessons: tuple[Lesson, ...]


@dataclass(frozen=True)
class Track:
    slug: str
    seed_name: str
    title: str
    labs: tuple[Lab, ...]


def _lab(track: str, slug: str, seed_name: str, title: str, lessons: list[tuple[str, str]]) -> Lab:
    items = []
    for seed_lesson, zh in lessons:
        number, _, rest = seed_lesson.partition("-")
        items.append(Lesson(track, slug, f"l{number}_{rest.lower()}", seed_lesson, zh))
    return Lab(track, slug, seed_name, title, tuple(items))


TRACKS: tuple[Track, ...] = (
    Track("vllm", "vLLM_Track", "vLLM 快速上手軌道", (
        _lab("vllm", "lab2_1", "Lab-2.1-vLLM_Deployment", "vLLM 部署", [
            ("01-Setup_and_Installation", "安裝與環境設定"),
            ("02-Basic_Inference", "基礎推論"),
            ("03-Advanced_Features", "進階功能"),
            ("04-Production_Deployment", "生產環境部署"),
        ]),
        _lab("vllm", "lab2_2", "Lab-2.2-Inference_Optimization", "推論最佳化", [
            ("01-KV_Cache_Optimization", "KV 快取最佳化"),
            ("02-Speculative_Decoding", "推測解碼"),
            ("03-Quantization_Inference", "量化推論"),
            ("04-Comprehensive_Optimization", "綜合最佳化"),
        ]),
        _lab("vllm", "lab2_3", "Lab-2.3-FastAPI_Service", "FastAPI 服務", [
            ("01-Basic_API", "基礎 API"),
            ("02-Async_Processing", "非同步處理"),
            ("03-Integration_with_vLLM", "整合 vLLM"),
            ("04-Monitoring_and_Deploy", "監控與部署"),
        ]),
        _lab("vllm", "lab2_4", "Lab-2.4-Production_Deployment", "生產部署", [
            ("01-Architecture_Design", "架構設計"),
            ("02-Deployment_Implementation", "部署實作"),
            ("03-Performance_and_Cost", "效能與成本"),
            ("04-Security_and_Compliance", "安全與合規"),
        ]),
    )),
    Track("triton", "Triton_Track", "Triton 企業級軌道", (
        _lab("triton", "lab2_1", "Lab-2.1-Triton_Server_Basics", "Triton 伺服器基礎", [
            ("01-Triton_Setup_and_Installation", "Triton 安裝與設定"),
            ("02-Model_Repository_Design", "模型儲存庫設計"),
            ("03-PyTorch_Backend_Deployment", "PyTorch 後端部署"),
            ("04-Monitoring_and_Performance", "監控與效能"),
        ]),
        _lab("triton", "lab2_2", "Lab-2.2-Multi_Model_Management", "多模型管理", [
            ("01-Multi_Model_Repository", "多模型儲存庫"),
            ("02-Version_Control_and_AB_Testing", "版本控制與 A/B 測試"),
            ("03-Model_Lifecycle_Management", "模型生命週期管理"),
            ("04-Advanced_Configuration", "進階設定"),
        ]),
        _lab("triton", "lab2_3", "Lab-2.3-Backend_Integration", "後端整合", [
            ("01-PyTorch_Backend_Advanced", "PyTorch 後端進階"),
            ("02-TensorRT_Integration", "TensorRT 整合"),
            ("03-vLLM_Backend_Integration", "vLLM 後端整合"),
            ("04-Custom_Python_Backend", "自訂 Python 後端"),
        ]),
        _lab("triton", "lab2_4", "Lab-2.4-Enterprise_Features", "企業級功能", [
            ("01-Model_Ensemble_and_Pipeline", "模型組合與管線"),
            ("02-Dynamic_Batching_Advanced", "動態批次進階"),
            ("03-Performance_Optimization", "效能最佳化"),
            ("04-Enterprise_Features", "企業級功能"),
        ]),
        _lab("triton", "lab2_5", "Lab-2.5-Production_Operations", "生產維運", [
            ("01-Kubernetes_Integration", "Kubernetes 整合"),
            ("02-CICD_and_MLOps", "CI/CD 與 MLOps"),
            ("03-Monitoring_and_Observability", "監控與可觀測性"),
            ("04-Operations_and_Maintenance", "維運與維護"),
        ]),
    )),
)


def lessons() -> list[Lesson]:
    return [lesson for track in TRACKS for lab in track.labs for lesson in lab.lessons]


def lesson_for_module(module_path: Path) -> Lesson | None:
    module_path = module_path.resolve()
    return next((item for item in lessons() if item.module == module_path), None)
