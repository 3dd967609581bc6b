"""The run folder: the on-disk contract of a run (see README, "Run record").

Files are written whole through a temporary name and ``os.replace``, so a run
killed mid-write leaves the previous version of a file, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["RECORD_FILES", "RunDir", "RunExistsError", "atomic_write_bytes"]

RECORD_FILES = ("config.yaml", "freeze_plan.json", "metrics.jsonl", "summary.json", "model.pt")


class RunExistsError(FileExistsError):
    pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the write failed


class RunDir:
    """A run's output folder. Creating one never silently replaces an earlier run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def check_free(path: str | Path, overwrite: bool) -> None:
        """Raise :class:`RunExistsError` if ``path`` already holds a run record (or is a file)."""
        if Path(path).exists() and not Path(path).is_dir():
            raise RunExistsError(f"{path} exists and is not a folder. HINT: set train.output_dir to a folder path")
        existing = [f for f in RECORD_FILES if (Path(path) / f).exists()]
        if existing and not overwrite:
            raise RunExistsError(
                f"{path} already holds a run ({', '.join(existing)}). "
                "HINT: pass --overwrite to replace it, or set train.output_dir=... / name=... for a new run"
            )

    def create(self, overwrite: bool) -> None:
        self.check_free(self.path, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        # Remove only our own files: output_dir may point at a folder holding other things.
        for f in RECORD_FILES:
            (self.path / f).unlink(missing_ok=True)

    def write_yaml(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / name, yaml.safe_dump(data, sort_keys=False).encode())

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_bytes(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    def append_jsonl(self, name: str, row: dict[str, Any]) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        tmp = self.path / f".{name}.tmp"
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())
