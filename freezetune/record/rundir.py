"""The run folder: the on-disk contract of a run (docs/checkpoints.md, "The run record").

Files are written whole through a temporary name and ``os.replace`` (freezetune.utils.files,
the one writer of every command), so a run killed mid-write leaves the previous version of a
file, never half of one.

A run never replaces an earlier record before it has succeeded: with
``--overwrite``, the new run writes into the sibling folder ``NAME.overwriting``
and :meth:`RunDir.commit` swaps it in only once its summary is written. A run
that fails after its folder exists leaves a ``FAILED`` file saying why and how
to go on."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from freezetune.record.shared import FROZEN_FILE
from freezetune.utils.errors import UserError
from freezetune.utils.files import write_file, writing

__all__ = [
    "ADAPTER_FILES",
    "FAILED",
    "OWN_FILES",
    "RECORD_FILES",
    "RunDir",
    "RunExistsError",
    "atomic_write_bytes",
    "read_jsonl",
    "staging_for",
]

RECORD_FILES = (
    "config.yaml",
    "freeze_plan.json",
    "metrics.jsonl",
    "events.jsonl",
    "steps.jsonl",
    "summary.json",
    "model.pt",
    "best.pt",
    "checkpoint.pt",
)
FAILED = "FAILED"  # a run that stopped on an error: the error line and how to go on
# Everything freezetune itself may leave in a run folder: the cache spills to .npy files;
# train.log: csv and tensorboard add metrics.csv, steps.csv and the folder tb/ (freezetune.record.logs).
# frozen.pt: the run's frozen tensors until model.pt holds them (freezetune.record.shared).
# A run with freeze.adapters: the model merged, its adapters alone, and them in peft's format (a folder).
ADAPTER_FILES = ("merged.pt", "adapters.pt", "adapters")
OWN_FILES = (
    *RECORD_FILES,
    FAILED,
    FROZEN_FILE,
    "cache_train.npy",
    "cache_val.npy",
    "metrics.csv",
    "steps.csv",
    "tb",
    *ADAPTER_FILES,
)
STAGING_SUFFIX = ".overwriting"  # where an --overwrite run writes until it succeeds
_ASIDE_SUFFIX = ".replaced"  # the previous record, for the moment of the swap


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (``metrics.jsonl``, ``events.jsonl``), blank lines skipped."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunExistsError(UserError, FileExistsError):
    """The output folder already holds a run record, and no one said to replace it."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`freezetune.utils.files.write_files`)."""
    write_file(path, data)


def _check_writable(path: Path) -> None:
    """Refuse a folder this process cannot write in, before anything is created: a probe
    file in the nearest folder that exists (``os.access`` says yes to root even on a
    read-only file system)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise RunExistsError(f"{path}: {existing} is a file, not a folder. HINT: set train.output_dir to a folder path")
    if not existing.is_dir():
        return  # the path itself is a file: check_free says so
    try:
        with open(existing / f".freezetune-probe-{os.getpid()}", "wb") as probe:
            probe_path = Path(probe.name)
        probe_path.unlink()
    except OSError as exc:
        raise RunExistsError(
            f"{path}: cannot write in {existing} ({exc.strerror}). HINT: set train.output_dir to a folder you can write"
        ) from None


def staging_for(final: str | Path) -> Path:
    """Where an ``--overwrite`` run of ``final`` writes until it succeeds."""
    final = Path(final)
    return final.with_name(final.name + STAGING_SUFFIX)


class RunDir:
    """A run's output folder. Creating one never silently replaces an earlier run.

    ``path`` is where this run writes; ``final`` where its record belongs. They differ
    for an ``--overwrite`` of an existing record (``path`` is ``final``'s staging
    sibling) until :meth:`commit`."""

    def __init__(self, path: str | Path, write: bool = True, final: str | Path | None = None) -> None:
        self.path = Path(path)
        self.final = Path(final) if final is not None else self.path
        # False on every rank but 0 of a multi-process run: one writer per folder.
        self.write = write

    @classmethod
    def for_new_run(cls, final: str | Path, overwrite: bool, write: bool = True) -> RunDir:
        """The folder a new run writes to: ``final`` itself, or its staging sibling when
        ``overwrite`` replaces a record there. Checks first (:meth:`check_free`)."""
        cls.check_free(final, overwrite)
        replacing = overwrite and any((Path(final) / f).exists() for f in OWN_FILES)
        return cls(staging_for(final) if replacing else final, write, final)

    @classmethod
    def for_resume(cls, folder: str | Path, final: str | Path, write: bool = True) -> RunDir:
        """The folder a resumed run continues in; a staging folder of ``final`` still replaces
        ``final`` when the run finishes."""
        folder = Path(folder)
        staged = folder.resolve() == staging_for(final).resolve()
        return cls(folder, write, final if staged else folder)

    @staticmethod
    def check_free(path: str | Path, overwrite: bool) -> None:
        """Raise :class:`RunExistsError` if ``path`` already holds a run record (or is a file),
        is the working directory or one above it, or cannot be written."""
        path = Path(path)
        if Path.cwd().resolve().is_relative_to(path.resolve()):
            raise RunExistsError(
                f"{path} is the working directory or a folder above it: a run needs a folder of its own. "
                "HINT: set train.output_dir to a new folder, e.g. runs/NAME"
            )
        _check_writable(path)
        if path.exists() and not path.is_dir():
            raise RunExistsError(f"{path} exists and is not a folder. HINT: set train.output_dir to a folder path")
        existing = [f for f in RECORD_FILES if (path / f).exists()]
        others = (
            sorted(e.name for e in path.iterdir() if e.name not in OWN_FILES and not e.name.startswith("."))
            if (path.is_dir())
            else []
        )
        if others and not existing and not (path / FAILED).exists():
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise RunExistsError(
                f"{path} already holds files freezetune did not write ({shown}): a run needs a folder of its own. "
                "HINT: set train.output_dir (or name) to a new folder"
            )
        if (path / FAILED).is_file() and not overwrite:
            reason = (path / FAILED).read_text().splitlines()[0] if (path / FAILED).stat().st_size else ""
            resume = f" continue it with --resume {path}, or" if (path / "checkpoint.pt").is_file() else ""
            raise RunExistsError(
                f"{path} holds a run that failed ({FAILED}: {reason}). HINT:{resume} pass --overwrite to start again"
            )
        if existing and not overwrite:
            raise RunExistsError(
                f"{path} already holds a run ({', '.join(existing)}). "
                "HINT: pass --overwrite to replace it, or set train.output_dir=... / name=... for a new run"
            )

    @property
    def staged(self) -> bool:
        """Whether this run writes beside ``final`` and replaces it on :meth:`commit`."""
        return self.path != self.final

    def create(self, overwrite: bool) -> None:
        """Make the folder this run writes to. A new run in ``final`` removes only an earlier
        run's own files there (never other files); a staged run starts from an empty staging folder."""
        if not self.write:
            return
        if self.staged:
            shutil.rmtree(self.path, ignore_errors=True)  # an earlier, abandoned attempt at the same overwrite
        else:
            self.check_free(self.path, overwrite)
        with writing(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        for f in OWN_FILES:
            target = self.path / f
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # tb/: an earlier run's TensorBoard events
            else:
                target.unlink(missing_ok=True)

    def commit(self) -> None:
        """Put a finished staged run in place of ``final``: the previous record is moved aside,
        the new folder renamed into place, files that were not freezetune's moved back, and
        the previous record deleted. Each step is a rename: a crash between them loses
        nothing (both records stay on disk, complete)."""
        if not self.write or not self.staged:
            return
        if not self.final.exists():  # deleted meanwhile: nothing to move aside
            os.rename(self.path, self.final)
            self.path = self.final
            return
        aside = self.final.with_name(self.final.name + _ASIDE_SUFFIX)
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(self.final, aside)
        os.rename(self.path, self.final)
        for entry in aside.iterdir():
            if entry.name not in OWN_FILES and not entry.name.startswith("."):
                os.rename(entry, self.final / entry.name)  # the user's own files stay with the run folder
        shutil.rmtree(aside)
        self.path = self.final

    def fail(self, message: str, interrupted: bool = False) -> None:
        """Mark the folder as a failed run: ``FAILED`` holds the error and how to go on
        (``interrupted``: the user stopped it, so there is no problem to fix first)."""
        if not self.write or not self.path.is_dir():
            return
        if self.staged:
            hint = (
                f"{self.final} (the previous run) is unchanged. Delete {self.path}, or fix the problem and "
                "rerun with --overwrite"
            )
        elif (self.path / "checkpoint.pt").is_file():
            hint = f"continue with --resume {self.path} (from its last checkpoint), or rerun with --overwrite"
        elif interrupted:
            hint = "no checkpoint was saved yet, so there is nothing to continue from: rerun with --overwrite"
        else:
            hint = "fix the problem and rerun with --overwrite"
        try:
            atomic_write_bytes(self.path / FAILED, f"{message}\n{hint}\n".encode())
        except OSError:
            pass  # the disk may be what failed; the error itself still reaches the user

    def next_step(self) -> str:
        """How to go on once the cause of a fault (a full disk) is fixed, as is true of this
        folder now: ``--resume`` only where a checkpoint exists to continue from."""
        if self.staged:
            return f"rerun with --overwrite ({self.final}, the previous run, is unchanged)"
        if (self.path / "checkpoint.pt").is_file():
            return f"continue with --resume {self.path} (from its last checkpoint)"
        return "rerun with --overwrite (no checkpoint was saved yet, so --resume has nothing to continue from)"

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
        with writing(self.path / name), open(self.path / name, "a") as f:
            if row is not None:
                f.write(json.dumps(row) + "\n")

    def keep_jsonl_rows(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite ``name`` with only the rows ``keep`` accepts (resume drops rows past the checkpoint)."""
        path = self.path / name
        if path.exists():
            rows = read_jsonl(path)
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
