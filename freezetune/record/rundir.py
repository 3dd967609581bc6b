"""The run folder: the on-disk contract of a run (docs/checkpoints.md, "The run record").

Files are written whole through a temporary name and ``os.replace``, so a run
killed mid-write leaves the previous version of a file, never half of one."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["RECORD_FILES", "RunDir", "RunExistsError", "atomic_write_bytes"]

RECORD_FILES = (
    "config.yaml",
    "freeze_plan.json",
    "metrics.jsonl",
    "events.jsonl",
    "summary.json",
    "model.pt",
    "checkpoint.pt",
)


class RunExistsError(FileExistsError):
    """The output folder already holds a run record, and no one said to replace it."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file, fsync, ``os.replace``."""
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

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        # False on every rank but 0 of a multi-process run: one writer per folder.
        self.write = write

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
        """Make the folder, removing an earlier run's files when ``overwrite`` allows it."""
        if not self.write:
            return
        self.check_free(self.path, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        # Remove only our own files: output_dir may point at a folder holding other things.
        for f in RECORD_FILES:
            (self.path / f).unlink(missing_ok=True)

    def _put(self, name: str, data: bytes) -> None:
        """Every whole-file write goes through here: atomic, and only where this process writes."""
        if self.write:
            atomic_write_bytes(self.path / name, data)

    def write_yaml(self, name: str, data: dict[str, Any]) -> None:
        """Write ``name`` as YAML, atomically."""
        self._put(name, yaml.safe_dump(data, sort_keys=False).encode())

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` as indented JSON, atomically."""
        self._put(name, (json.dumps(data, indent=2) + "\n").encode())

    def append_jsonl(self, name: str, row: dict[str, Any] | None) -> None:
        """Append one row (None: only make sure the file exists)."""
        if not self.write:
            return
        with open(self.path / name, "a") as f:
            if row is not None:
                f.write(json.dumps(row) + "\n")

    def keep_jsonl_rows(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``name`` with only the rows ``keep`` accepts (resume drops rows past the checkpoint)."""
        path = self.path / name
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self._put(name, "".join(json.dumps(r) + "\n" for r in rows if keep(r)).encode())

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> int:
        """``torch.save`` through a temporary file and ``os.replace``: a crash mid-save
        leaves the previous checkpoint whole. Returns the file's size in bytes."""
        buf = io.BytesIO()
        torch.save(state, buf)
        self._put(name, buf.getvalue())
        return buf.tell()

    def read_json(self, name: str) -> Any:
        """Read ``name`` back from JSON."""
        return json.loads((self.path / name).read_text())
