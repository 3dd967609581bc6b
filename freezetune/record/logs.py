"""Where a run's numbers go besides ``metrics.jsonl``: ``train.log`` (docs/logging.md).

``jsonl`` (the default) writes ``steps.jsonl``, a row per optimizer step; ``csv`` writes
``steps.csv`` and ``metrics.csv`` (``metrics.jsonl``'s rows, flattened); ``tensorboard`` writes
event files to ``tb/``. ``metrics.jsonl`` and ``events.jsonl`` are the record itself and are
written by the runner whatever ``train.log`` says.

A resumed run continues these files: rows past its checkpoint (written before a kill, and
about to be redone) are dropped first, and TensorBoard is told to purge them too."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import torch

from freezetune.config import ConfigError
from freezetune.record.rundir import RunDir, atomic_write_bytes
from freezetune.utils.files import writing

__all__ = ["LOG_FILES", "SYNC_EVERY", "RunLogs", "check_logs"]

STEPS_JSONL = "steps.jsonl"
STEPS_CSV = "steps.csv"
METRICS_CSV = "metrics.csv"
TB_DIR = "tb"
LOG_FILES = (STEPS_JSONL, STEPS_CSV, METRICS_CSV, TB_DIR)  # tb is a folder
# Off the CPU, reading a loss is a host sync: step losses wait on the device and are read
# this many at a time (one sync), then written. On the CPU every step is written at once.
SYNC_EVERY = 50
_TB_HINT = "pip install 'freezetune[tensorboard]'"


def check_logs(kinds: Iterable[str]) -> None:
    """Raise :class:`ConfigError` when ``train.log`` asks for a writer whose package is missing;
    called before the run folder is touched."""
    if "tensorboard" not in kinds:
        return
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; torch does not depend on it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            [
                f"train.log: tensorboard needs the tensorboard package, which is not installed ({exc}). "
                f"HINT: {_TB_HINT}, or drop tensorboard from train.log"
            ]
        ) from None


class RunLogs:
    """The writers ``train.log`` asks for, in one run folder; rank 0 only (``out.write``).

    Args:
        out: the run folder.
        kinds: ``train.log``.
        steps_per_epoch: optimizer steps in an epoch (a step's epoch follows from its number).
        steps_done: optimizer steps already taken (a resume): rows after it are dropped.
        epochs_done: epochs already finished (a resume): metrics rows after it are dropped.
    """

    def __init__(
        self, out: RunDir, kinds: Sequence[str], steps_per_epoch: int, steps_done: int = 0, epochs_done: int = 0
    ) -> None:
        self.write = out.write
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self._pending: list[tuple[int, torch.Tensor, dict[str, float]]] = []
        self._steps_jsonl: TextIO | None = None
        self._steps_csv: _Csv | None = None
        self._metrics_csv: _Csv | None = None
        self._tb: Any = None  # a SummaryWriter
        if not self.write:
            return
        folder = out.path
        # The checkpoint is the truth: whatever was logged after it is redone by this run.
        if "jsonl" in kinds:
            out.keep_jsonl_rows(STEPS_JSONL, lambda row: row["step"] <= steps_done)
            with writing(folder / STEPS_JSONL):  # a failed open is a write's, named as one
                self._steps_jsonl = open(folder / STEPS_JSONL, "a")  # closed in close()
        if "csv" in kinds:
            self._steps_csv = _Csv(folder / STEPS_CSV, lambda row: int(row["step"]) <= steps_done)
            self._metrics_csv = _Csv(folder / METRICS_CSV, lambda row: int(row["epoch"]) <= epochs_done)
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter  # slow to import: only when asked for

            # purge_step: TensorBoard hides what earlier sessions logged from this step on.
            self._tb = SummaryWriter(str(folder / TB_DIR), purge_step=steps_done + 1 if steps_done else None)

    def step(self, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """One optimizer step: its global number (from 1), mean loss and each group's LR
        (the signature of ``Trainer.step_hook``)."""
        if not self.write or (self._steps_jsonl is None and self._steps_csv is None and self._tb is None):
            return
        self._pending.append((step, loss.detach(), dict(lrs)))
        if loss.device.type == "cpu" or len(self._pending) >= SYNC_EVERY:
            self.flush()

    def epoch(self, row: dict[str, Any], step: int) -> None:
        """A finished epoch: ``row`` as ``metrics.jsonl`` has it; ``step`` its last step."""
        if not self.write:
            return
        self.flush()
        if self._metrics_csv is not None:
            self._metrics_csv.add([_flat(row)])
        if self._tb is not None:
            tb = self._tb
            tb.add_scalar("train/epoch_loss", row["train_loss"], step)
            tb.add_scalar("val/loss", row["val_loss"], step)
            tb.add_scalar("val/acc", row["val_acc"], step)
            tb.add_scalar("train/samples_per_s", row["samples_per_s"], step)
            tb.add_scalar("train/trainable_params", row["trainable_params"], step)
            tb.add_scalar("train/epoch", row["epoch"], step)
            tb.flush()

    def event(self, row: dict[str, Any], step: int) -> None:
        """A schedule event (a row of ``events.jsonl``), shown in TensorBoard's text tab at the
        first step it applies to."""
        if not self.write or self._tb is None:
            return
        self.flush()
        details = ", ".join(f"{k}: {json.dumps(v)}" for k, v in row.items() if k not in ("epoch", "event"))
        self._tb.add_text("events", f"epoch {row['epoch']}: **{row['event']}** {details}", step)

    def flush(self) -> None:
        """Write the steps still waiting (one host sync for all of them)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([loss.float() for _, loss, _ in pending]).tolist()
        rows = [
            {"step": step, "epoch": 1 + (step - 1) // self.steps_per_epoch, "loss": loss, "lr": lrs}
            for (step, _, lrs), loss in zip(pending, losses)
        ]
        if self._steps_jsonl is not None:
            self._steps_jsonl.write("".join(json.dumps(r) + "\n" for r in rows))
            self._steps_jsonl.flush()  # to the OS: a killed process loses no row
        if self._steps_csv is not None:
            self._steps_csv.add([_flat(r) for r in rows])
        if self._tb is not None:
            for r in rows:
                self._tb.add_scalar("train/loss", r["loss"], r["step"])
                for group, lr in r["lr"].items():
                    self._tb.add_scalar(f"train/lr/{group}", lr, r["step"])

    def close(self) -> None:
        """Write what is waiting and close the files; safe to call twice."""
        try:
            self.flush()
        finally:
            if self._steps_jsonl is not None:
                self._steps_jsonl.close()
                self._steps_jsonl = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            self._steps_csv = self._metrics_csv = None

    def __enter__(self) -> RunLogs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: nested dicts become ``key/name`` columns (``lr`` -> ``lr/<group>``)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{name}": v for name, v in value.items()})
        else:
            flat[key] = value
    return flat


class _Csv:
    """A CSV file appended to row by row. Its columns can grow (an unfreeze event adds an
    optimizer group, so an ``lr/<group>`` column): the file is then rewritten with the wider
    header, earlier rows leaving the new columns empty."""

    def __init__(self, path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
        self.path = path
        self.columns: list[str] = []
        if path.exists():  # a resumed run: keep the rows before its checkpoint
            columns, rows = self._read()
            self.columns = columns
            self._rewrite([r for r in rows if keep(r)])

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def add(self, rows: list[dict[str, Any]]) -> None:
        new = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in self.columns]
        if new or not self.path.exists():
            old = self._read()[1] if self.path.exists() else []
            self.columns += new
            self._rewrite([*old, *rows])
            return
        with writing(self.path), open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, lineterminator="\n").writerows(rows)
