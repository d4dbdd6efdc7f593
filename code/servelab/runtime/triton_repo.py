"""Write Triton model folders: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<version>/<files>``."""

from __future__ import annotations

from pathlib import Path


def write_model(repository: Path, name: str, config: str, files: dict[str, str | bytes] | None = None,
                version: int = 1) -> Path:
    """Create (or replace the files of) one model folder and return it."""
    folder = Path(repository) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config.strip() + "\n")
    for filename, content in (files or {}).items():
        target = folder / str(version) / filename
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return folder
